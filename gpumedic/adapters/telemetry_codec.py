"""NodeTelemetry <-> JSON, for the store's last-snapshot table and for Prefect results."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, RowRemapBanks, XidEvent


def telemetry_to_json(telemetry: NodeTelemetry) -> dict[str, Any]:
    def gpu(g: GpuTelemetry) -> dict[str, Any]:
        data = dataclasses.asdict(g)
        data["throttle_reasons"] = sorted(g.throttle_reasons)
        return data

    return {
        "node": telemetry.node,
        "collected_at": telemetry.collected_at.isoformat(),
        "source": telemetry.source,
        "gpus": [gpu(g) for g in telemetry.gpus],
        "expected_gpu_count": telemetry.expected_gpu_count,
        "xid_events": [
            {**dataclasses.asdict(e), "time": e.time.isoformat() if e.time else None} for e in telemetry.xid_events
        ],
        "collection_errors": list(telemetry.collection_errors),
        "depth": telemetry.depth,
    }


def telemetry_from_json(data: dict[str, Any]) -> NodeTelemetry:
    def gpu(d: dict[str, Any]) -> GpuTelemetry:
        d = dict(d)
        d["throttle_reasons"] = frozenset(d.get("throttle_reasons", ()))
        d["nvlinks"] = tuple(NvLinkState(**link) for link in d.get("nvlinks", ()))
        d["remap_banks"] = RowRemapBanks(**d["remap_banks"]) if d.get("remap_banks") else None
        return GpuTelemetry(**d)

    return NodeTelemetry(
        node=data["node"],
        collected_at=datetime.fromisoformat(data["collected_at"]),
        source=data["source"],
        gpus=tuple(gpu(g) for g in data["gpus"]),
        expected_gpu_count=data.get("expected_gpu_count"),
        xid_events=tuple(
            XidEvent(code=e["code"], pci_bus_id=e["pci_bus_id"],
                     time=datetime.fromisoformat(e["time"]) if e["time"] else None, text=e["text"])
            for e in data.get("xid_events", ())
        ),
        collection_errors=tuple(data.get("collection_errors", ())),
        # A snapshot written before readings had a depth is taken as full; had it been a quick
        # one, its full-only fields are empty, so it carries and rates nothing.
        depth="quick" if data.get("depth") == "quick" else "full",
    )
