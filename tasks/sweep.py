"""Prefect tasks of the fleet sweep: each wraps one adapter call or one domain step."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from gpumedic.adapters.store import TelemetryStore, shared_window
from gpumedic.adapters.targets import NodeTarget
from gpumedic.collection import Depth, collect_nodes
from gpumedic.config import FleetSettings
from gpumedic.domain.assess import assess_node
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import NodeTelemetry
from gpumedic.domain.verdict import NodeAssessment
from gpumedic.reporting import markdown_report, table_rows

UNHEALTHY_EVENT = "gpumedic.node.unhealthy"


@task(name="collect-shard", cache_policy=NO_CACHE, retries=0)
def collect_shard(
    fleet: FleetSettings, targets: Sequence[NodeTarget], since: dict[str, datetime], depth: Depth, concurrency: int
) -> list[NodeTelemetry]:
    """Collect a shard of nodes; a node that cannot be reached comes back with collection errors."""
    logger = get_run_logger()
    telemetry = collect_nodes(fleet, targets, since=since, depth=depth, concurrency=concurrency)
    failed = [t.node for t in telemetry if t.collection_errors]
    logger.info("collected %d nodes (%d with collection errors: %s)", len(telemetry), len(failed),
                ", ".join(failed[:10]) or "none")
    return telemetry


@task(name="load-previous-telemetry", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_previous(store_url: str | None, nodes: Sequence[str], before: datetime, xid_window_h: float) -> tuple[
    dict[str, NodeTelemetry], dict[str, dict[str, set[int]]]
]:
    store = TelemetryStore(store_url)
    return store.last_snapshots(nodes), store.prior_xids(nodes, before, timedelta(hours=xid_window_h))


@task(name="assess-fleet", cache_policy=NO_CACHE)
def assess_fleet(
    policy: HealthPolicy,
    telemetry: Sequence[NodeTelemetry],
    previous: dict[str, NodeTelemetry],
    prior_xids: dict[str, dict[str, set[int]]],
) -> list[NodeAssessment]:
    return [
        assess_node(t, policy, previous=previous.get(t.node), prior_xids=prior_xids.get(t.node))
        for t in telemetry
    ]


@task(name="record-telemetry", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def record_telemetry(store_url: str | None, telemetry: Sequence[NodeTelemetry], evidence: Sequence[NodeTelemetry],
                     sweep_id: str, started: datetime, summary: dict[str, Any]) -> int:
    store = TelemetryStore(store_url)
    rows = store.record(telemetry, evidence=evidence)
    store.record_sweep(sweep_id, started, summary)
    return rows


@task(name="prune-history", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prune_history(store_url: str | None, before: datetime) -> int:
    deleted = TelemetryStore(store_url).prune(before)
    get_run_logger().info("history retention: deleted %d rows older than %s", deleted, before.isoformat())
    return deleted


@task(name="publish-reports", cache_policy=NO_CACHE)
def publish_reports(
    store_url: str | None, sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment], elapsed_s: float
) -> None:
    latest = TelemetryStore(store_url).latest_forecasts(a.node for a in assessments)
    risks = {key: f.risk for key, f in latest.items()}
    window = shared_window(latest.values())
    rows = table_rows(assessments, risks)
    create_table_artifact(
        key="fleet-unhealthy-nodes",
        table=rows or [{"node": "-", "verdict": "healthy", "action": "none", "gpus": "-",
                       "forecast risk": "-", "reasons": "all healthy"}],
        description=f"Unhealthy or unknown nodes in sweep {sweep_id}, most severe first"
        + (f"; forecast risk: probability of failure {window} (latest failure-forecast run)"
           if risks else ""),
    )
    create_markdown_artifact(
        key="fleet-health-report",
        markdown=markdown_report(sweep_id, started, assessments, elapsed_s, risks, window),
        description=f"Fleet health report for sweep {sweep_id}",
    )


@task(name="emit-unhealthy-events", cache_policy=NO_CACHE)
def emit_unhealthy_events(document: dict[str, Any], assessments: Sequence[NodeAssessment]) -> list[str]:
    """One `gpumedic.node.unhealthy` event per node whose action needs a remediation workflow.

    The payload is the node's entry in the sweep `document`, with the sweep id.
    """
    sweep_id = document["sweep_id"]
    by_node = {n["node"]: n for n in document["nodes"]}
    emitted = []
    for a in assessments:
        if not a.needs_remediation:
            continue
        emit_event(
            event=UNHEALTHY_EVENT,
            resource={"prefect.resource.id": f"gpumedic.node.{a.node}", "prefect.resource.name": a.node},
            payload={"sweep_id": sweep_id, **by_node[a.node]},
        )
        emitted.append(a.node)
    return emitted
