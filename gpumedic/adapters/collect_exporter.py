"""Collect one node's GPU telemetry from its dcgm-exporter (Prometheus text over HTTP)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import httpx

from gpumedic.adapters.collect_ssh import unreachable
from gpumedic.adapters.targets import NodeTarget
from gpumedic.domain.telemetry import NodeTelemetry, XidEvent, canonical_pci_bus_id
from gpumedic.parsers import ParseError
from gpumedic.parsers.prometheus import parse_dcgm_exporter, parse_dcgm_exporter_xids


def collect_from_exporter(
    target: NodeTarget, *, client: httpx.Client, timeout_s: float, now: datetime | None = None
) -> NodeTelemetry:
    """Never raises. DCGM_FI_DEV_XID_ERRORS holds only the *last* Xid per GPU, with no time."""
    now = now or datetime.now(UTC)
    if not target.exporter_url:
        return unreachable(target, now, "no dcgm-exporter URL for this node", "exporter")
    try:
        response = client.get(target.exporter_url, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as err:
        return unreachable(target, now, f"dcgm-exporter at {target.exporter_url}: {err}", "exporter")
    try:
        gpus = parse_dcgm_exporter(response.text)
        last_xids = parse_dcgm_exporter_xids(response.text)
    except ParseError as err:
        return unreachable(target, now, str(err), "exporter")
    bus_of = {g.index: g.pci_bus_id for g in gpus}
    events = tuple(
        XidEvent(code=code, pci_bus_id=bus_of.get(index), time=None, text="last Xid reported by DCGM")
        for index, code in sorted(last_xids.items())
        if code
    )
    return NodeTelemetry(
        node=target.name,
        collected_at=now,
        source="exporter",
        gpus=tuple(gpus),
        expected_gpu_count=target.expected_gpus,
        xid_events=events,
    )


def new_gauge_xids(current: NodeTelemetry, previous: NodeTelemetry | None) -> NodeTelemetry:
    """Keep only Xids the exporter's last-Xid gauge did not already show at the previous sweep.

    DCGM_FI_DEV_XID_ERRORS keeps its value until the next Xid, so the same event would
    otherwise count as new evidence (and trigger remediation) on every sweep.
    """
    if current.source != "exporter" or previous is None or previous.source != "exporter":
        return current
    seen = {(canonical_pci_bus_id(e.pci_bus_id), e.code) for e in previous.xid_events}
    fresh = tuple(e for e in current.xid_events if (canonical_pci_bus_id(e.pci_bus_id), e.code) not in seen)
    return dataclasses.replace(current, xid_events=fresh)
