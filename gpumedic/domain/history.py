"""Telemetry history in long form: one value of one field of one GPU at one time.

This is the shape of the telemetry store's rows and of the backtest's HISTORY.csv
(`time,node,gpu,field,value`), so the forecaster reads production history and
backtest history the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, canonical_pci_bus_id

# Fields of the telemetry model recorded in history. Counters are cumulative as the
# driver reports them; a drop means the counter was reset (driver reload, GPU reset).
HISTORY_FIELDS: tuple[str, ...] = (
    "ecc_sbe_volatile",
    "ecc_sbe_aggregate",
    "ecc_dbe_volatile",
    "ecc_dbe_aggregate",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "row_remap_pending",
    "row_remap_failure",
    "remap_banks_low",
    "remap_banks_none",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "temperature_c",
    "power_w",
    "nvlink_crc_errors",
    "nvlink_down",
    "pcie_replay",
    "xid",  # an event: the value is the Xid code
)


@dataclass(frozen=True, slots=True)
class Sample:
    time: datetime
    node: str
    gpu: int | None  # None for node-level rows (e.g. an Xid that names no known GPU)
    field: str
    value: float


def _gpu_values(gpu: GpuTelemetry) -> Iterator[tuple[str, float]]:
    scalar = {
        "ecc_sbe_volatile": gpu.ecc_sbe_volatile,
        "ecc_sbe_aggregate": gpu.ecc_sbe_aggregate,
        "ecc_dbe_volatile": gpu.ecc_dbe_volatile,
        "ecc_dbe_aggregate": gpu.ecc_dbe_aggregate,
        "remapped_rows_correctable": gpu.remapped_rows_correctable,
        "remapped_rows_uncorrectable": gpu.remapped_rows_uncorrectable,
        "row_remap_pending": gpu.row_remap_pending,
        "row_remap_failure": gpu.row_remap_failure,
        "remap_banks_low": gpu.remap_banks.low if gpu.remap_banks else None,
        "remap_banks_none": gpu.remap_banks.none if gpu.remap_banks else None,
        "retired_pages_sbe": gpu.retired_pages_sbe,
        "retired_pages_dbe": gpu.retired_pages_dbe,
        "temperature_c": gpu.temperature_c,
        "power_w": gpu.power_w,
        "pcie_replay": gpu.pcie_replay,
    }
    for name, value in scalar.items():
        if value is not None:
            yield name, float(value)
    crc = [link.crc_errors for link in gpu.nvlinks if link.crc_errors is not None]
    if crc:
        yield "nvlink_crc_errors", float(sum(crc))
    if gpu.nvlinks and any(link.active is not None for link in gpu.nvlinks):
        yield "nvlink_down", float(sum(1 for link in gpu.nvlinks if link.active is False))


# Readings that change all the time: kept at most hourly (the forecaster works on an hourly grid).
GAUGE_FIELDS: frozenset[str] = frozenset({"temperature_c", "power_w"})
# Events, not readings: every one is kept.
EVENT_FIELDS: frozenset[str] = frozenset({"xid"})


@dataclass(frozen=True, slots=True)
class HistoryThinning:
    """Which of a sweep's readings the history keeps.

    Quick sweeps every 15 minutes over 1,000 nodes would otherwise write millions of rows a
    day that say "no change". Counters and state flags are kept when they change (a drop, a
    reset, is a change) and once a day regardless, so a series is visibly alive; gauges at
    most hourly; events always. The forecaster reads a counter recorded only when it
    changes exactly as one recorded every sweep.
    """

    gauge_every: timedelta = timedelta(minutes=55)  # hourly, with room for sweep jitter
    heartbeat: timedelta = timedelta(hours=24)

    def keep(self, sample: Sample, last: tuple[datetime, float] | None) -> bool:
        """Keep `sample`, given the last kept (time, value) of its series (None: never kept)."""
        if sample.field in EVENT_FIELDS or last is None:
            return True
        at, value = last
        age = sample.time - at
        if age >= self.heartbeat or age < timedelta(0):  # a clock that went backwards: keep, never lose a reading
            return True
        if sample.field in GAUGE_FIELDS:
            return age >= self.gauge_every
        return sample.value != value


def samples_from_telemetry(telemetry: NodeTelemetry) -> list[Sample]:
    """Flatten one node's telemetry into history rows; unreported values are not recorded."""
    at = telemetry.collected_at
    rows = [
        Sample(at, telemetry.node, gpu.index, name, value)
        for gpu in telemetry.gpus
        for name, value in _gpu_values(gpu)
    ]
    by_bus = {canonical_pci_bus_id(g.pci_bus_id): g.index for g in telemetry.gpus if g.pci_bus_id}
    for event in telemetry.xid_events:
        bus = canonical_pci_bus_id(event.pci_bus_id)
        gpu_index = by_bus.get(bus) if bus else None
        rows.append(Sample(event.time or at, telemetry.node, gpu_index, "xid", float(event.code)))
    return rows

