"""Collect GPU telemetry through NVIDIA's DCGM Python bindings (pydcgm), where installed.

pydcgm is not on PyPI: it ships with NVIDIA's datacenter-gpu-manager package, under
`/usr/share/datacenter-gpu-manager-4/bindings/python3` (DCGM 4) or
`/usr/local/dcgm/bindings/python3` (DCGM 3). Put that directory on PYTHONPATH (or set
GPUMEDIC_DCGM_BINDINGS) on the orchestrator. Each node runs `nv-hostengine`; gpumedic
connects to it at `<node>:5555`, DCGM's remote mode.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

from gpumedic.adapters.collect_ssh import unreachable
from gpumedic.adapters.errors import PermanentError
from gpumedic.adapters.targets import NodeTarget
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry

_BINDING_DIRS = ("/usr/share/datacenter-gpu-manager-4/bindings/python3", "/usr/local/dcgm/bindings/python3")

# DCGM field name -> GpuTelemetry attribute.
FIELD_MAP = {
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_SLOWDOWN_TEMP": "temp_slowdown_c",
    "DCGM_FI_DEV_SHUTDOWN_TEMP": "temp_shutdown_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "ecc_sbe_volatile",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "ecc_dbe_volatile",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": "ecc_sbe_aggregate",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": "ecc_dbe_aggregate",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": "remapped_rows_correctable",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": "remapped_rows_uncorrectable",
    "DCGM_FI_DEV_ROW_REMAP_PENDING": "row_remap_pending",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": "row_remap_failure",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "pcie_replay",
    "DCGM_FI_DEV_UUID": "uuid",
    "DCGM_FI_DEV_SERIAL": "serial",
    "DCGM_FI_DEV_PCI_BUSID": "pci_bus_id",
    "DCGM_FI_DEV_NAME": "name",
}
_BOOLEAN = {"row_remap_pending", "row_remap_failure"}
_TEXT = {"uuid", "serial", "pci_bus_id", "name"}


def _import_bindings() -> tuple[Any, Any]:
    extra = os.environ.get("GPUMEDIC_DCGM_BINDINGS")
    for directory in ((extra,) if extra else ()) + _BINDING_DIRS:
        if directory and os.path.isdir(directory) and directory not in sys.path:
            sys.path.append(directory)
    try:
        import dcgm_fields
        from DcgmReader import DcgmReader
    except ImportError as err:
        raise PermanentError(
            "the DCGM Python bindings (pydcgm) are not installed: install NVIDIA's datacenter-gpu-manager "
            f"package and put its bindings directory ({' or '.join(_BINDING_DIRS)}) on PYTHONPATH"
        ) from err
    return dcgm_fields, DcgmReader


def _gpu_from_values(index: int, values: dict[str, Any]) -> GpuTelemetry:
    kwargs: dict[str, Any] = {}
    for field, attr in FIELD_MAP.items():
        value = values.get(field)
        # DCGM marks missing data with large sentinel values (DCGM_INT64_BLANK and friends).
        if value is None or (isinstance(value, int | float) and abs(value) >= 0x7FFFFFF0):
            continue
        if attr in _TEXT:
            kwargs[attr] = str(value)
        elif attr in _BOOLEAN:
            kwargs[attr] = bool(value)
        elif attr in ("temperature_c", "temp_slowdown_c", "temp_shutdown_c", "power_w", "sm_clock_mhz"):
            kwargs[attr] = float(value)
        else:
            kwargs[attr] = int(value)
    return GpuTelemetry(index=index, **kwargs)


def collect_from_dcgm(target: NodeTarget, *, now: datetime | None = None, port: int = 5555) -> NodeTelemetry:
    """Never raises. Untested against real hardware in this repository's CI (no GPU there)."""
    now = now or datetime.now(UTC)
    try:
        dcgm_fields, reader_class = _import_bindings()
        field_ids = [getattr(dcgm_fields, name) for name in FIELD_MAP if hasattr(dcgm_fields, name)]
        host = target.ssh.host if target.ssh else target.name
        reader = reader_class(hostname=f"{host}:{port}", fieldIds=field_ids, updateFrequency=1_000_000)
        try:
            by_gpu = reader.GetLatestGpuValuesAsFieldNameDict()
        finally:
            reader.Shutdown()
    except PermanentError as err:
        return unreachable(target, now, str(err), "dcgm")
    except Exception as err:  # the bindings raise their own DCGMError hierarchy
        return unreachable(target, now, f"DCGM at {target.name}:{port}: {type(err).__name__}: {err}", "dcgm")
    gpus = tuple(_gpu_from_values(int(index), values) for index, values in sorted(by_gpu.items()))
    return NodeTelemetry(node=target.name, collected_at=now, source="dcgm", gpus=gpus,
                         expected_gpu_count=target.expected_gpus)
