"""`nvidia-smi --query-gpu=<fields> --format=csv[,noheader][,nounits]` -> `GpuTelemetry`.

nvidia-smi rejects the whole query when one field name is unknown to the driver
(`Field "x" is not a valid field to query.`), so the field lists below are split by
the driver generation that introduced them; the collector asks for the core list
and adds the others only where the driver is new enough (or retries without them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from gpumedic.domain.telemetry import GpuTelemetry, RowRemapBanks, canonical_pci_bus_id
from gpumedic.parsers._common import (
    ELISION,
    decode_throttle_mask,
    optional_bool,
    optional_float,
    optional_int,
    optional_str,
    raise_if_tool_error,
    require_complete_last_line,
    require_text,
)
from gpumedic.parsers.errors import ParseError

SOURCE = "nvidia-smi --query-gpu"

_T = TypeVar("_T")

# Every field here exists from R470 on. `clocks_throttle_reasons.active` is the name R470
# knows; R535+ renamed it `clocks_event_reasons.active` but still accepts the old name as
# an alias (and prints the new one in the CSV header), so the old spelling works on both.
# There is no PCIe replay counter among the query fields at any driver version (checked
# against the R590 list of ~260 fields), so `pcie_replay` comes from `nvidia-smi -q`.
QUERY_GPU_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "serial",
    "pci.bus_id",
    "name",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "clocks.current.sm",
    "clocks_throttle_reasons.active",
    "ecc.errors.corrected.volatile.total",
    "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.aggregate.total",
    "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.single_bit_ecc.count",
    "retired_pages.double_bit.count",
    "retired_pages.pending",
    "remapped_rows.correctable",
    "remapped_rows.uncorrectable",
    "remapped_rows.pending",
    "remapped_rows.failure",
)

# The same query without the row-remapper fields, for a driver that rejects them: they
# are documented in `--query-remapped-rows` since R460 but we could not confirm from a
# primary source that every R470 build also accepts them in `--query-gpu`.
QUERY_GPU_FIELDS_NO_REMAP: tuple[str, ...] = tuple(f for f in QUERY_GPU_FIELDS if not f.startswith("remapped_rows."))

# R570+ only: the driver's own recovery recommendation. Asked in a separate query so an
# older driver's refusal does not cost the core telemetry.
QUERY_GPU_RECOVERY_FIELDS: tuple[str, ...] = ("index", "gpu_recovery_action")

# Spellings nvidia-smi accepts for the same field; the CSV header prints the canonical one.
_ALIASES: Mapping[str, str] = {
    "gpu_uuid": "uuid",
    "gpu_serial": "serial",
    "gpu_bus_id": "pci.bus_id",
    "gpu_name": "name",
    "clocks.sm": "clocks.current.sm",
    "retired_pages.sbe": "retired_pages.single_bit_ecc.count",
    "retired_pages.dbe": "retired_pages.double_bit.count",
}

_HEADER_CELL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)(?:\s*\[[^\]]*\])?$")


def canonical_field(name: str) -> str:
    """`clocks_throttle_reasons.active` -> `clocks_event_reasons.active`, `power.draw [W]` -> `power.draw`."""
    match = _HEADER_CELL.match(name.strip())
    field = match.group(1) if match else name.strip()
    field = _ALIASES.get(field, field)
    if field.startswith("clocks_throttle_reasons."):
        field = "clocks_event_reasons." + field.removeprefix("clocks_throttle_reasons.")
    return field


def parse_query_gpu_csv(text: str, fields: Sequence[str] | None = None) -> list[GpuTelemetry]:
    """Parse one `--query-gpu` run.

    With `fields=None` the first line must be the CSV header (`--format=csv`); units in
    it (`power.draw [W]`) are dropped and aliases resolved. With `fields` given the text
    is `noheader` and the columns are the fields in order. Values may carry units or not.
    The `index` field is required: without it a row cannot name its GPU.
    """
    require_text(SOURCE, text)
    raise_if_tool_error(SOURCE, text)
    require_complete_last_line(SOURCE, text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if fields is None:
        columns = _header_columns(lines[0])
        rows = lines[1:]
    else:
        columns = [canonical_field(f) for f in fields]
        if not columns:
            raise ParseError(SOURCE, "no query fields were given")
        rows = lines
        # Tolerate a header even though `noheader` was asked for: it names the same fields.
        if rows and [canonical_field(c) for c in rows[0].split(",")] == columns:
            rows = rows[1:]
    if "index" not in columns:
        raise ParseError(SOURCE, "the query has no `index` field, so rows cannot be tied to GPUs", lines[0])
    if not rows:
        raise ParseError(SOURCE, "the output has a header but no GPU rows", text)
    gpus = [_row_to_gpu(columns, row) for row in rows]
    seen: set[int] = set()
    for gpu in gpus:
        if gpu.index in seen:
            raise ParseError(SOURCE, f"GPU index {gpu.index} appears twice", text)
        seen.add(gpu.index)
    return gpus


def _header_columns(line: str) -> list[str]:
    cells = [c.strip() for c in line.split(",")]
    if not all(_HEADER_CELL.match(c) for c in cells):
        raise ParseError(SOURCE, "the first line is not a --query-gpu CSV header", line)
    return [canonical_field(c) for c in cells]


def _row_to_gpu(columns: Sequence[str], row: str) -> GpuTelemetry:
    if row.strip() in ELISION:
        raise ParseError(SOURCE, "the output was cut (an elided row)", row)
    cells = [c.strip() for c in row.split(",")]
    if len(cells) != len(columns):
        raise ParseError(SOURCE, f"a row has {len(cells)} columns, the query has {len(columns)}", row)
    values = dict(zip(columns, cells, strict=True))

    index = optional_int(SOURCE, values["index"], "index")
    if index is None:
        raise ParseError(SOURCE, "a row has no GPU index", row)
    where = f"GPU {index}"

    def get(field: str, convert: Callable[[str, str, str], _T | None]) -> _T | None:
        raw = values.get(field)
        return None if raw is None else convert(SOURCE, raw, f"{where} {field}")

    def first(fields: Sequence[str], convert: Callable[[str, str, str], _T | None]) -> _T | None:
        for field in fields:
            value = get(field, convert)
            if value is not None:
                return value
        return None

    return GpuTelemetry(
        index=index,
        uuid=get("uuid", optional_str),
        serial=get("serial", optional_str),
        pci_bus_id=canonical_pci_bus_id(get("pci.bus_id", optional_str)),
        name=get("name", optional_str),
        temperature_c=get("temperature.gpu", optional_float),
        # On Ampere and later `power.draw` is the 1 s average; the explicit spellings are
        # what R550+ also offers, used only when the plain field is missing.
        power_w=first(("power.draw", "power.draw.average", "power.draw.instant"), optional_float),
        power_limit_w=first(("power.limit", "enforced.power.limit"), optional_float),
        sm_clock_mhz=get("clocks.current.sm", optional_float),
        throttle_reasons=_throttle_reasons(values, where),
        ecc_sbe_volatile=get("ecc.errors.corrected.volatile.total", optional_int),
        ecc_dbe_volatile=get("ecc.errors.uncorrected.volatile.total", optional_int),
        ecc_sbe_aggregate=get("ecc.errors.corrected.aggregate.total", optional_int),
        ecc_dbe_aggregate=get("ecc.errors.uncorrected.aggregate.total", optional_int),
        retired_pages_sbe=get("retired_pages.single_bit_ecc.count", optional_int),
        retired_pages_dbe=get("retired_pages.double_bit.count", optional_int),
        retired_pages_pending=get("retired_pages.pending", optional_bool),
        remapped_rows_correctable=get("remapped_rows.correctable", optional_int),
        remapped_rows_uncorrectable=get("remapped_rows.uncorrectable", optional_int),
        row_remap_pending=get("remapped_rows.pending", optional_bool),
        row_remap_failure=get("remapped_rows.failure", optional_bool),
        remap_banks=_remap_banks(values, where),
        recovery_action=get("gpu_recovery_action", optional_str),
    )


def _throttle_reasons(values: Mapping[str, str], where: str) -> frozenset[str]:
    reasons: set[str] = set()
    mask = values.get("clocks_event_reasons.active")
    if mask is not None:
        raw = optional_str(SOURCE, mask, f"{where} clocks_event_reasons.active")
        if raw is not None:
            try:
                reasons |= decode_throttle_mask(int(raw, 16))
            except ValueError:
                raise ParseError(SOURCE, f"{where} clocks event bitmask is not hex", raw) from None
    # Per-reason columns ("Active"/"Not Active") when the query asked for them.
    for field, raw in values.items():
        if not field.startswith("clocks_event_reasons.") or field.endswith((".active", ".supported")):
            continue
        if optional_bool(SOURCE, raw, f"{where} {field}"):
            reasons.add(field.removeprefix("clocks_event_reasons."))
    return frozenset(reasons)


def _remap_banks(values: Mapping[str, str], where: str) -> RowRemapBanks | None:
    levels = ("max", "high", "partial", "low", "none")
    counts: dict[str, int | None] = {}
    for level in levels:
        raw = values.get(f"remapped_rows.histogram.{level}")
        counts[level] = None if raw is None else optional_int(SOURCE, raw, f"{where} histogram {level}")
    if all(v is None for v in counts.values()):
        return None
    return RowRemapBanks(**counts)
