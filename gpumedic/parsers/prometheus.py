"""dcgm-exporter `/metrics` (Prometheus text exposition 0.0.4) -> `GpuTelemetry`.

A small tokenizer reads the exposition format itself (label value escapes, `# HELP` and
`# TYPE` lines, optional timestamps, `NaN`/`+Inf`), so a `grep` of the page parses as
well as the whole page. A line that is not valid exposition text fails the parse: a
page cut mid-line by a timeout must not pass as a complete reading.

The GPU index is the exporter's `gpu` label. One GPU carries several series of the same
field when MIG instances or pod labels differ; device-level fields are the same in each,
so the first one is kept.

Not mapped: `DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL` without a `link` label is a
sum over links, and `GpuTelemetry.nvlinks` holds per-link states only. Per-link series
(`..._L<n>` fields, or a `link` label) are mapped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from gpumedic.domain.telemetry import GpuTelemetry, NvLinkState, RowRemapBanks, canonical_pci_bus_id
from gpumedic.parsers._common import (
    ELISION,
    decode_throttle_mask,
    is_digits,
    raise_if_tool_error,
    require_complete_last_line,
    require_text,
)
from gpumedic.parsers.errors import ParseError

SOURCE = "dcgm-exporter"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"[+-]?(?:Inf|inf|NaN|nan|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_TIMESTAMP = re.compile(r"-?\d+")
_INT32_BLANK = 0x7FFFFFF0
_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}

# nvmlDeviceGpuRecoveryAction_t, spelled as nvidia-smi prints `gpu_recovery_action`.
_RECOVERY_ACTIONS = {0: "None", 1: "Reset", 2: "Reboot", 3: "Drain_P2P", 4: "Drain_And_Reset"}

_FLOAT_FIELDS = {
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_SLOWDOWN_TEMP": "temp_slowdown_c",
    "DCGM_FI_DEV_SHUTDOWN_TEMP": "temp_shutdown_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": "power_limit_w",
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": "power_limit_w",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
}
_COUNT_FIELDS = {
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "ecc_sbe_volatile",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "ecc_dbe_volatile",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": "ecc_sbe_aggregate",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": "ecc_dbe_aggregate",
    "DCGM_FI_DEV_RETIRED_SBE": "retired_pages_sbe",
    "DCGM_FI_DEV_RETIRED_DBE": "retired_pages_dbe",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": "remapped_rows_correctable",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "remapped_rows_uncorrectable",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "pcie_replay",
}
_FLAG_FIELDS = {
    "DCGM_FI_DEV_RETIRED_PENDING": "retired_pages_pending",
    "DCGM_FI_DEV_ROW_REMAP_PENDING": "row_remap_pending",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": "row_remap_failure",
}
_THROTTLE_FIELDS = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")
_BANK_FIELDS = {
    "DCGM_FI_DEV_BANKS_REMAP_ROWS_AVAIL_MAX": "max",
    "DCGM_FI_DEV_BANKS_REMAP_ROWS_AVAIL_HIGH": "high",
    "DCGM_FI_DEV_BANKS_REMAP_ROWS_AVAIL_PARTIAL": "partial",
    "DCGM_FI_DEV_BANKS_REMAP_ROWS_AVAIL_LOW": "low",
    "DCGM_FI_DEV_BANKS_REMAP_ROWS_AVAIL_NONE": "none",
}
_NVLINK_COUNTERS = {
    "CRC_FLIT": "crc_errors",  # flit and data CRC errors are summed, as NvLinkState defines
    "CRC_DATA": "crc_errors",
    "REPLAY": "replay_errors",
    "RECOVERY": "recovery_errors",
}
_NVLINK_FIELD = re.compile(
    r"^DCGM_FI_DEV_NVLINK_(?P<kind>CRC_FLIT|CRC_DATA|REPLAY|RECOVERY)_ERROR_COUNT_(?:L(?P<link>\d+)|TOTAL)$"
)


# Every per-GPU numeric DCGM field this module reads: the DCGM-bindings collector asks DCGM
# for the same set and reads the answers with `gpu_from_dcgm_values`, so both sources agree.
DCGM_NUMERIC_FIELDS: tuple[str, ...] = (
    *_FLOAT_FIELDS, *_COUNT_FIELDS, *_FLAG_FIELDS, *_THROTTLE_FIELDS, *_BANK_FIELDS,
    "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION",
)


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int | None = None


def parse_exposition(text: str, source: str = SOURCE) -> list[Sample]:
    """Every sample in a Prometheus text exposition; comments and blank lines skipped."""
    samples: list[Sample] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ELISION:
            continue
        try:
            samples.append(_sample(stripped))
        except _SyntaxError as err:
            raise ParseError(source, f"line {number} is not Prometheus exposition text: {err}", line) from None
    return samples


def parse_dcgm_exporter(text: str) -> list[GpuTelemetry]:
    samples = _dcgm_samples(text)
    by_gpu: dict[int, list[Sample]] = {}
    for sample in samples:
        gpu = sample.labels.get("gpu")
        if gpu is None or not is_digits(gpu):
            continue
        by_gpu.setdefault(int(gpu), []).append(sample)
    if not by_gpu:
        raise ParseError(SOURCE, "no DCGM_FI_DEV sample carries a `gpu` label", text)
    return [_gpu(index, by_gpu[index]) for index in sorted(by_gpu)]


def parse_dcgm_exporter_xids(text: str) -> dict[int, int]:
    """GPU index -> the last Xid DCGM saw (`DCGM_FI_DEV_XID_ERRORS`; 0 means none).

    A GPU missing from the result had no XID_ERRORS series (the exporter was not asked
    for that field): not reported, which is not the same as 0.
    """
    result: dict[int, int] = {}
    for sample in _dcgm_samples(text):
        gpu = sample.labels.get("gpu")
        if sample.name != "DCGM_FI_DEV_XID_ERRORS" or gpu is None or not is_digits(gpu):
            continue
        if not math.isfinite(sample.value) or _is_blank(sample.value, counter=True):
            continue
        result.setdefault(int(gpu), int(sample.value))
    return result


def _dcgm_samples(text: str) -> list[Sample]:
    require_text(SOURCE, text)
    raise_if_tool_error(SOURCE, text, first_lines=3)
    # The exposition format requires a line feed after the last line, too.
    require_complete_last_line(SOURCE, text)
    samples = [s for s in parse_exposition(text) if s.name.startswith("DCGM_FI_DEV_")]
    if not samples:
        raise ParseError(SOURCE, "no DCGM_FI_DEV_* samples: not dcgm-exporter output", text)
    return samples


def _gpu(index: int, samples: list[Sample]) -> GpuTelemetry:
    floats: dict[str, float | None] = {}
    counts: dict[str, int | None] = {}
    flags: dict[str, bool | None] = {}
    banks: dict[str, int | None] = {}
    links: dict[int, dict[str, int]] = {}
    reasons: frozenset[str] | None = None
    recovery: str | None = None
    for sample in samples:
        value = None if math.isnan(sample.value) else sample.value
        name = sample.name
        if name in _FLOAT_FIELDS:
            blank = value is None or not math.isfinite(value) or _is_blank(value, counter=False)
            floats.setdefault(_FLOAT_FIELDS[name], None if blank else value)
        elif name in _COUNT_FIELDS:
            counts.setdefault(_COUNT_FIELDS[name], _count(value, sample))
        elif name in _FLAG_FIELDS:
            count = _count(value, sample)
            flags.setdefault(_FLAG_FIELDS[name], None if count is None else count != 0)
        elif name in _BANK_FIELDS:
            banks.setdefault(_BANK_FIELDS[name], _count(value, sample))
        elif name in _THROTTLE_FIELDS and reasons is None:
            count = _count(value, sample)
            reasons = frozenset() if count is None else decode_throttle_mask(count)
        elif name == "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION" and recovery is None:
            count = _count(value, sample)
            recovery = None if count is None else _RECOVERY_ACTIONS.get(count, f"unknown ({count})")
        elif match := _NVLINK_FIELD.match(name):
            link = match.group("link") or sample.labels.get("link")
            count = _count(value, sample)
            if link is None or not is_digits(link) or count is None:
                continue
            kind = _NVLINK_COUNTERS[match.group("kind")]
            counters = links.setdefault(int(link), {})
            counters[kind] = counters.get(kind, 0) + count
    first = samples[0].labels
    return GpuTelemetry(
        index=index,
        uuid=first.get("UUID") or None,
        pci_bus_id=canonical_pci_bus_id(first.get("pci_bus_id")),
        name=first.get("modelName") or None,
        temperature_c=floats.get("temperature_c"),
        temp_slowdown_c=floats.get("temp_slowdown_c"),
        temp_shutdown_c=floats.get("temp_shutdown_c"),
        power_w=floats.get("power_w"),
        power_limit_w=floats.get("power_limit_w"),
        sm_clock_mhz=floats.get("sm_clock_mhz"),
        throttle_reasons=reasons or frozenset(),
        ecc_sbe_volatile=counts.get("ecc_sbe_volatile"),
        ecc_dbe_volatile=counts.get("ecc_dbe_volatile"),
        ecc_sbe_aggregate=counts.get("ecc_sbe_aggregate"),
        ecc_dbe_aggregate=counts.get("ecc_dbe_aggregate"),
        retired_pages_sbe=counts.get("retired_pages_sbe"),
        retired_pages_dbe=counts.get("retired_pages_dbe"),
        retired_pages_pending=flags.get("retired_pages_pending"),
        remapped_rows_correctable=counts.get("remapped_rows_correctable"),
        remapped_rows_uncorrectable=counts.get("remapped_rows_uncorrectable"),
        row_remap_pending=flags.get("row_remap_pending"),
        row_remap_failure=flags.get("row_remap_failure"),
        remap_banks=RowRemapBanks(**banks) if any(v is not None for v in banks.values()) else None,
        nvlinks=tuple(
            NvLinkState(
                link=k,
                active=None,
                crc_errors=links[k].get("crc_errors"),
                replay_errors=links[k].get("replay_errors"),
                recovery_errors=links[k].get("recovery_errors"),
            )
            for k in sorted(links)
        ),
        pcie_replay=counts.get("pcie_replay"),
        recovery_action=recovery,
    )


def _count(value: float | None, sample: Sample) -> int | None:
    if value is None or _is_blank(value, counter=True):
        return None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ParseError(SOURCE, f"{sample.name} for GPU {sample.labels.get('gpu')} is not a count", str(value))
    return int(value)


def _is_blank(value: float, *, counter: bool) -> bool:
    """DCGM's "no value" sentinels: DCGM_INT32_BLANK (0x7ffffff0) and up, DCGM_INT64_BLANK
    and DCGM_FP64_BLANK (2**47). No temperature, wattage or clock comes near 2**31; a
    64-bit error counter can pass it (billions of corrected ECC errors are on record),
    so for counters only the 32-bit sentinel band and the 64-bit sentinel count as blank.
    """
    if not math.isfinite(value):
        return False
    if not counter:
        return value >= _INT32_BLANK
    return _INT32_BLANK <= value < 2**31 or value >= _INT64_BLANK


class _SyntaxError(Exception):
    pass


def _sample(line: str) -> Sample:
    name_match = _NAME.match(line)
    if not name_match:
        raise _SyntaxError("no metric name")
    name = name_match.group(0)
    rest = line[name_match.end() :]
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        labels, consumed = _labels(rest)
        rest = rest[consumed:]
    if not rest[:1].isspace():
        raise _SyntaxError("no value after the metric")
    parts = rest.split()
    if not 1 <= len(parts) <= 2 or not _VALUE.fullmatch(parts[0]):
        raise _SyntaxError("the value is missing or not a number")
    timestamp = None
    if len(parts) == 2:
        if not _TIMESTAMP.fullmatch(parts[1]):
            raise _SyntaxError("the timestamp is not an integer")
        timestamp = int(parts[1])
    return Sample(name, labels, float(parts[0]), timestamp)


def _labels(text: str) -> tuple[dict[str, str], int]:
    """Parse `{a="x",b="y\\"z"}` at the start of `text`; returns the labels and length read."""
    labels: dict[str, str] = {}
    chars = _Cursor(text, 1)
    while True:
        chars.skip_spaces()
        if chars.peek() == "}":
            return labels, chars.pos + 1
        match = _LABEL_NAME.match(text, chars.pos)
        if not match:
            raise _SyntaxError("bad label name")
        chars.pos = match.end()
        chars.skip_spaces()
        chars.expect("=")
        chars.skip_spaces()
        chars.expect('"')
        labels[match.group(0)] = "".join(chars.quoted())
        chars.skip_spaces()
        if chars.peek() == ",":
            chars.pos += 1
        elif chars.peek() != "}":
            raise _SyntaxError("labels not separated by ','")


class _Cursor:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def peek(self) -> str:
        if self.pos >= len(self.text):
            raise _SyntaxError("the line ends inside the label set")
        return self.text[self.pos]

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _SyntaxError(f"expected {char!r}")
        self.pos += 1

    def quoted(self) -> Iterator[str]:
        """Characters of a label value up to its closing quote, escapes resolved."""
        while True:
            char = self.peek()
            self.pos += 1
            if char == '"':
                return
            if char == "\\":
                escaped = self.peek()
                self.pos += 1
                yield _ESCAPES.get(escaped, "\\" + escaped)
            else:
                yield char


def gpu_from_dcgm_values(
    index: int, values: Mapping[str, float], *, uuid: str | None = None, pci_bus_id: str | None = None,
    name: str | None = None,
) -> GpuTelemetry:
    """One GPU from DCGM field values read some other way (the DCGM bindings): the same fields,
    types and "no value" sentinels as dcgm-exporter's text. Raises ParseError on a value that
    cannot be what its field says (a negative count, say)."""
    labels = {"gpu": str(index)} | {k: v for k, v in (("UUID", uuid), ("pci_bus_id", pci_bus_id),
                                                      ("modelName", name)) if v}
    samples = [Sample(field, labels, float(value)) for field, value in values.items()]
    if not samples:
        return GpuTelemetry(index=index, uuid=uuid, pci_bus_id=canonical_pci_bus_id(pci_bus_id), name=name)
    return _gpu(index, samples)
