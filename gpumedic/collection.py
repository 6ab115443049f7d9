"""Collect telemetry from many nodes at once, with bounded concurrency.

Plain Python (no Prefect): the sweep's Prefect tasks call it per shard, and the benchmark
calls it in a plain loop to measure what orchestration costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from gpumedic.adapters.collect_dcgm import collect_from_dcgm
from gpumedic.adapters.collect_exporter import collect_from_exporter
from gpumedic.adapters.collect_ssh import collect_over_ssh, unreachable
from gpumedic.adapters.targets import NodeTarget, ssh_settings
from gpumedic.config import FleetSettings
from gpumedic.domain.telemetry import NodeTelemetry, ReadingDepth

# What a sweep asks for. A source that reads everything at once (exporter, DCGM) reads full either way.
Depth = ReadingDepth


def collect_nodes(
    fleet: FleetSettings,
    targets: Sequence[NodeTarget],
    *,
    since: Mapping[str, datetime] | None = None,
    depth: Depth = "full",
    now: datetime | None = None,
    on_collected: Callable[[NodeTelemetry], None] | None = None,
    concurrency: int | None = None,
) -> list[NodeTelemetry]:
    """One NodeTelemetry per target, in target order; never raises for a node's failure."""
    now = now or datetime.now(UTC)
    since = since or {}
    lookback = timedelta(hours=fleet.kernel_log_lookback_h)
    settings = ssh_settings(fleet)
    workers = max(1, min(concurrency or fleet.concurrency, len(targets) or 1))

    with httpx.Client() as http:

        def collect(target: NodeTarget) -> NodeTelemetry:
            try:
                if fleet.source == "exporter":
                    result = collect_from_exporter(target, client=http, timeout_s=fleet.exporter_timeout_s, now=now)
                elif fleet.source == "dcgm":
                    result = collect_from_dcgm(target, now=now)
                else:
                    assert settings is not None  # FleetSettings validation guarantees it for ssh
                    result = collect_over_ssh(
                        target, settings, since=since.get(target.name), lookback=lookback, now=now, depth=depth
                    )
            except Exception as err:  # a bug in one node's handling must not sink the sweep
                result = unreachable(target, now, f"internal error while collecting: {type(err).__name__}: {err}",
                                     fleet.source)
            if on_collected is not None:
                on_collected(result)
            return result

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect") as pool:
            return list(pool.map(collect, targets))
