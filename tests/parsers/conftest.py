from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.parsers.corpus import CORPUS_DIR, read


@pytest.fixture
def corpus_dir() -> Path:
    """`<checkout>/../shared/real-outputs`; its absence fails the test, it is never skipped."""
    assert CORPUS_DIR.is_dir(), f"the real-output corpus is required and missing: {CORPUS_DIR}"
    return CORPUS_DIR


@pytest.fixture
def corpus(corpus_dir: Path) -> Callable[[str], str]:
    """`corpus("file name")` -> the text of that real output."""
    return read
