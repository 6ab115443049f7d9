from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.parsers.corpus import CORPUS_DIR, read


@pytest.fixture
def corpus() -> Callable[[str], str]:
    """`corpus("file name")` -> the text of that real output."""
    assert CORPUS_DIR.is_dir(), f"the real-output corpus is required and missing: {CORPUS_DIR}"
    return read
