"""What a sweep knows about one node and its GPUs at one moment.

`None` always means "not reported" (the tool printed N/A, the field does not exist
on this GPU generation, or the source could not say). It never means zero: the
assessment treats a missing value as missing evidence, not as good news.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# "quick": a frequent sweep that skipped the slow tools (`nvidia-smi -q`, NVLink error counters);
# "full": everything the source can read.
ReadingDepth = Literal["quick", "full"]

_PCI_ID = re.compile(
    r"^(?:PCI:)?(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?$"
)


def canonical_pci_bus_id(bus_id: str | None) -> str | None:
    """One spelling for one GPU: `0000:3b:00.0`.

    nvidia-smi prints `00000000:3B:00.0`, the kernel's Xid line `PCI:0000:3b:00`, DCGM
    `00000000:3B:00.0`. The domain is kept: Azure NDv4 puts each GPU on bus 00 of its
    own domain (0001..0008), so dropping it would merge eight GPUs into one.
    """
    if not bus_id:
        return None
    match = _PCI_ID.match(bus_id.strip())
    if not match:
        return None
    domain, bus, device, function = match.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(device, 16):02x}.{int(function or '0')}"


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., ...` kernel log line."""

    code: int
    pci_bus_id: str | None  # normalised "0000:3b:00.0" form where it could be read
    time: datetime | None  # None when the log line carried no parsable timestamp
    text: str  # the whole message after the code, for the human and for Xid 154


@dataclass(frozen=True, slots=True)
class NvLinkState:
    link: int
    active: bool | None
    crc_errors: int | None = None  # flit + data CRC errors since the last reset
    replay_errors: int | None = None
    recovery_errors: int | None = None


@dataclass(frozen=True, slots=True)
class RowRemapBanks:
    """Bank Remap Availability Histogram: how many banks have how many spare rows left."""

    max: int | None = None
    high: int | None = None
    partial: int | None = None
    low: int | None = None
    none: int | None = None


@dataclass(frozen=True, slots=True)
class GpuTelemetry:
    index: int
    uuid: str | None = None
    serial: str | None = None
    pci_bus_id: str | None = None
    name: str | None = None

    temperature_c: float | None = None
    temp_slowdown_c: float | None = None  # absolute; T.Limit-relative readings are converted
    temp_shutdown_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    # Active clock event ("throttle") reasons, canonical snake_case names such as
    # "hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown",
    # "sw_power_cap", "gpu_idle".
    throttle_reasons: frozenset[str] = frozenset()

    ecc_sbe_volatile: int | None = None
    ecc_dbe_volatile: int | None = None
    ecc_sbe_aggregate: int | None = None
    ecc_dbe_aggregate: int | None = None
    # NVML's SRAM `bThresholdExceeded` (nvidia-smi -q "SRAM Threshold Exceeded", Ampere and later):
    # the GPU's SRAM uncorrectable errors exceed the threshold of NVIDIA's field diagnostic.
    sram_threshold_exceeded: bool | None = None

    retired_pages_sbe: int | None = None  # pre-Ampere page retirement
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None

    remapped_rows_correctable: int | None = None  # Ampere and later row remapping
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    remap_banks: RowRemapBanks | None = None

    nvlinks: tuple[NvLinkState, ...] = ()
    pcie_replay: int | None = None
    # The driver's own recommendation (R570+ `gpu_recovery_action`): "None", "Reset",
    # "Reboot", "Drain_P2P", "Drain_And_Reset"...; None when the driver has no such field.
    recovery_action: str | None = None


@dataclass(frozen=True, slots=True)
class NodeTelemetry:
    node: str
    collected_at: datetime
    source: str  # "ssh", "exporter", "dcgm", ...
    gpus: tuple[GpuTelemetry, ...] = ()
    expected_gpu_count: int | None = None
    xid_events: tuple[XidEvent, ...] = ()
    # Problems met while collecting (unreachable, auth failure, unparsable output).
    # Any entry makes the data untrustworthy: the assessment reports `unknown`.
    collection_errors: tuple[str, ...] = field(default=())
    depth: ReadingDepth = "full"

    def gpu(self, index: int) -> GpuTelemetry | None:
        return next((g for g in self.gpus if g.index == index), None)

    def same_gpu(self, gpu: GpuTelemetry) -> GpuTelemetry | None:
        """This reading of the board `gpu` is a reading of: by UUID, else PCI bus id, else index.

        A replaced board has a new UUID, so nothing read from its predecessor is taken for it."""
        for mine in self.gpus:
            if gpu.uuid is not None and mine.uuid is not None:
                if gpu.uuid.strip().lower() == mine.uuid.strip().lower():
                    return mine
            elif gpu.pci_bus_id is not None and mine.pci_bus_id is not None:
                if canonical_pci_bus_id(gpu.pci_bus_id) == canonical_pci_bus_id(mine.pci_bus_id):
                    return mine
            elif gpu.index == mine.index:
                return mine
        return None
