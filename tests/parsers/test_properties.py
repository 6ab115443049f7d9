"""Properties over generated input: nothing but `ParseError` escapes, and a cut-short
real output never yields a value the whole output does not have."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumedic.domain.diagnostics import DiagReport, ResetOutcome
from gpumedic.domain.telemetry import GpuTelemetry, NvLinkState, RowRemapBanks
from gpumedic.parsers.errors import ParseError
from tests.parsers.corpus import ACCEPTS, MISSING, PARSERS, corpus_files, read

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
CUTS = settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Real lines from every file, so generated input looks like tool output often enough to
# reach deep into the parsers instead of failing on the first line.
_REAL_LINES = sorted({ln for name in corpus_files() if name != MISSING for ln in read(name).splitlines()[:400]})
# With the corpus missing, one placeholder case keeps these tests failing rather than skipped.
_ACCEPTED = [(parser, name) for parser, names in ACCEPTS.items() for name in names] or [("parse_nvidia_smi_q", MISSING)]


@functools.cache
def parse_whole(parser: str, name: str) -> Any:
    return PARSERS[parser](read(name))


def parse_or_refuse(parser: str, text: str) -> object | None:
    """The parser's value, or None when it raised ParseError. Any other exception fails the test."""
    try:
        return PARSERS[parser](text)
    except ParseError as err:
        refusal = err
    assert refusal.reason, "a ParseError must say why"
    return None


@pytest.mark.parametrize("parser", list(PARSERS))
@FAST
@given(text=st.text(max_size=2000))
def test_random_text_only_ever_raises_parse_error(parser: str, text: str) -> None:
    parse_or_refuse(parser, text)


@pytest.mark.parametrize("parser", list(PARSERS))
@FAST
@given(data=st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_parse_error(parser: str, data: bytes) -> None:
    parse_or_refuse(parser, data.decode("utf-8", errors="replace"))
    parse_or_refuse(parser, data.decode("latin-1"))


@pytest.mark.parametrize("parser", list(PARSERS))
@FAST
@given(lines=st.lists(st.sampled_from(_REAL_LINES or ["(corpus missing)"]), max_size=60))
def test_shuffled_real_lines_only_ever_raise_parse_error(parser: str, lines: list[str]) -> None:
    parse_or_refuse(parser, "\n".join(lines))


@pytest.mark.parametrize(("parser", "name"), _ACCEPTED)
@CUTS
@given(fraction=st.floats(0, 1))
def test_a_real_output_cut_mid_line_invents_no_value(parser: str, name: str, fraction: float) -> None:
    # A stream cut mid-number ("631.95 W" -> "631.9") must be refused or left unread.
    text = read(name)
    partial = parse_or_refuse(parser, text[: int(len(text) * fraction)])
    if partial is not None:
        assert_no_invented_values(parser, partial, parse_whole(parser, name))


@pytest.mark.parametrize(("parser", "name"), _ACCEPTED)
@CUTS
@given(fraction=st.floats(0, 1))
def test_a_real_output_cut_between_lines_invents_no_value(parser: str, name: str, fraction: float) -> None:
    text = read(name)
    lines = text.splitlines(keepends=True)
    cut = "".join(lines[: int(len(lines) * fraction)])
    partial = parse_or_refuse(parser, cut)
    if partial is not None:
        assert_no_invented_values(parser, partial, parse_whole(parser, name))


_GPU_LISTS = {"parse_query_gpu_csv", "parse_nvidia_smi_q", "parse_dcgm_exporter"}
_LINK_MAPS = {"parse_nvlink_status", "parse_nvlink_errors", "parse_dcgmi_nvlink_status", "parse_dcgmi_nvlink_errors"}


def assert_no_invented_values(parser: str, partial: Any, full: Any) -> None:
    if parser in _GPU_LISTS:
        by_index = {g.index: g for g in full}
        for gpu in partial:
            assert gpu.index in by_index
            assert_fields_known_or_missing(gpu, by_index[gpu.index])
    elif parser in _LINK_MAPS:
        for gpu, links in partial.items():
            whole = {s.link: s for s in full[gpu]}
            for state in links:
                assert_fields_known_or_missing(state, whole[state.link])
    elif parser == "parse_kernel_log":
        assert len(partial) <= len(full)
        for got, whole in zip(partial, full, strict=False):
            assert (got.code, got.pci_bus_id, got.time) == (whole.code, whole.pci_bus_id, whole.time)
            assert whole.text.startswith(got.text)
    elif parser == "parse_dcgm_exporter_xids":
        assert partial.items() <= full.items()
    elif parser == "parse_dcgmi_diag":
        assert isinstance(partial, DiagReport)
        assert not partial.passed or full.passed, "a cut-short diagnostic read as a pass"
        assert partial.failed_gpus <= full.failed_gpus
    elif parser == "parse_gpu_reset":
        assert isinstance(partial, ResetOutcome)
        assert not partial.success or full.success, "a cut-short reset output read as a success"
    else:  # health checks and discovery are all or nothing
        assert partial == full, parser


def assert_fields_known_or_missing(got: GpuTelemetry | NvLinkState | RowRemapBanks, whole: Any) -> None:
    for field in dataclasses.fields(got):
        value, expected = getattr(got, field.name), getattr(whole, field.name)
        if isinstance(value, RowRemapBanks):
            assert_fields_known_or_missing(value, expected)
        elif isinstance(value, frozenset):
            assert value <= expected, field.name
        elif isinstance(value, tuple):
            assert set(value) <= set(expected), field.name
        else:
            assert value is None or value == expected, f"{field.name}: {value!r} is not {expected!r}"


_JSON_KEYS = st.sampled_from(
    [
        "DCGM GPU Diagnostic",
        "DCGM Diagnostic",
        "test_categories",
        "category",
        "tests",
        "name",
        "results",
        "status",
        "gpu_ids",
        "entity_id",
        "entity_group",
        "warnings",
        "warning",
        "info",
        "test_summary",
        "runtime_error",
        "metadata",
        "version",
        "body",
        "header",
        "Overall Health",
        "GPU",
        "children",
        "value",
        "overflow",
        "Errors",
        "0",
        "1",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["Pass", "Fail", "Warning", "Healthy", "0,1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_KEYS, inner, max_size=5),
    max_leaves=30,
)


@pytest.mark.parametrize("parser", ["parse_dcgmi_diag", "parse_dcgmi_health"])
@FAST
@given(document=st.dictionaries(_JSON_KEYS, _JSON, max_size=4))
def test_json_of_any_shape_only_ever_raises_parse_error(parser: str, document: dict[str, Any]) -> None:
    parse_or_refuse(parser, json.dumps(document))
