"""Every parser against every real output: a value for its own format, `ParseError` for the rest."""

from __future__ import annotations

import pytest

from gpumedic.parsers.errors import ParseError
from tests.parsers.corpus import ACCEPTS, CORPUS_DIR, ERROR_FILES, MISSING, PARSERS, corpus_files, read


def run(parser: str, text: str) -> tuple[object, ParseError | None]:
    """The parser's value, or its ParseError. Any other exception fails the test."""
    try:
        return PARSERS[parser](text), None
    except ParseError as err:
        return None, err


def test_the_corpus_is_present() -> None:
    assert CORPUS_DIR.is_dir(), f"the real-output corpus is required and missing: {CORPUS_DIR}"
    assert len(corpus_files()) >= 70


def test_every_format_in_the_corpus_has_its_parser_exercised() -> None:
    assert all(ACCEPTS[name] for name in PARSERS), "a parser has no corpus file of its own format"
    assert len(ERROR_FILES) == 5


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize("name", corpus_files())
def test_parser_returns_its_format_and_refuses_everything_else(parser: str, name: str) -> None:
    assert name != MISSING, f"the real-output corpus is required and missing: {CORPUS_DIR}"
    text = read(name)
    result, err = run(parser, text)
    if err is not None:
        assert err.reason, "a ParseError must say why"
        assert name not in ACCEPTS[parser] or name in ERROR_FILES, f"{parser} refused its own format: {err}"
        if name in ERROR_FILES:
            # The operator sees the tool's own words, not a generic "could not parse".
            first_line = next(ln.strip() for ln in text.splitlines() if ln.strip())
            assert first_line[:40] in str(err) or "MIG mode" in str(err)
        return
    assert name not in ERROR_FILES, f"{parser} returned {result!r} for an error message"
    if parser == "parse_kernel_log":
        assert isinstance(result, list)
        assert result == [] or name in ACCEPTS[parser], "Xid events found in a file that is not a kernel log"
    else:
        assert name in ACCEPTS[parser], f"{parser} accepted a file of another format: {result!r}"
        assert result or result == {}, "an accepted output must carry data"
