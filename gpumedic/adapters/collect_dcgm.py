"""Collect GPU telemetry through NVIDIA's DCGM Python bindings (pydcgm), where installed.

pydcgm is not on PyPI: it ships with NVIDIA's datacenter-gpu-manager package, under
`/usr/share/datacenter-gpu-manager-4/bindings/python3` (DCGM 4) or
`/usr/local/dcgm/bindings/python3` (DCGM 3). Put that directory on PYTHONPATH (or set
GPUMEDIC_DCGM_BINDINGS) on the orchestrator. Each node runs `nv-hostengine`; gpumedic
connects to it at `<node>:5555`, DCGM's remote mode.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gpumedic.adapters.collect_ssh import unreachable
from gpumedic.adapters.errors import PermanentError
from gpumedic.adapters.targets import NodeTarget
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry
from gpumedic.parsers import ParseError
from gpumedic.parsers.prometheus import DCGM_NUMERIC_FIELDS, gpu_from_dcgm_values

_BINDING_DIRS = ("/usr/share/datacenter-gpu-manager-4/bindings/python3", "/usr/local/dcgm/bindings/python3")

# Identity fields come back as text; every numeric field is the one dcgm-exporter's parser reads.
_IDENTITY = {
    "DCGM_FI_DEV_UUID": "uuid",
    "DCGM_FI_DEV_SERIAL": "serial",
    "DCGM_FI_DEV_PCI_BUSID": "pci_bus_id",
    "DCGM_FI_DEV_NAME": "name",
}


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


def gpu_from_field_values(index: int, values: Mapping[str, Any]) -> GpuTelemetry:
    """One GPU from `DcgmReader`'s {field name: value}; DCGM's blank sentinels read as not reported."""
    text = {attr: str(values[field]).strip() for field, attr in _IDENTITY.items()
            if values.get(field) is not None and str(values[field]).strip() not in ("", "N/A")}
    numeric = {field: values[field] for field in DCGM_NUMERIC_FIELDS
               if isinstance(values.get(field), int | float)}
    gpu = gpu_from_dcgm_values(index, numeric, uuid=text.get("uuid"), pci_bus_id=text.get("pci_bus_id"),
                               name=text.get("name"))
    return dataclasses.replace(gpu, serial=text.get("serial"))


def collect_from_dcgm(target: NodeTarget, *, now: datetime | None = None, port: int = 5555) -> NodeTelemetry:
    """Never raises. Untested against real hardware in this repository's CI (no GPU there)."""
    now = now or datetime.now(UTC)
    try:
        dcgm_fields, reader_class = _import_bindings()
        names = (*_IDENTITY, *DCGM_NUMERIC_FIELDS)
        field_ids = [getattr(dcgm_fields, name) for name in names if hasattr(dcgm_fields, name)]
        host = target.ssh.host if target.ssh else target.name
        reader = reader_class(hostname=f"{host}:{port}", fieldIds=field_ids, updateFrequency=1_000_000)
        try:
            by_gpu = reader.GetLatestGpuValuesAsFieldNameDict()
        finally:
            reader.Shutdown()
        gpus = tuple(gpu_from_field_values(int(index), values) for index, values in sorted(by_gpu.items()))
    except (PermanentError, ParseError) as err:
        return unreachable(target, now, str(err), "dcgm")
    except Exception as err:  # the bindings raise their own DCGMError hierarchy
        return unreachable(target, now, f"DCGM at {target.name}:{port}: {type(err).__name__}: {err}", "dcgm")
    return NodeTelemetry(node=target.name, collected_at=now, source="dcgm", gpus=gpus,
                         expected_gpu_count=target.expected_gpus)
