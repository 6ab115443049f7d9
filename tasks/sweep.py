"""Prefect tasks of the fleet sweep: each wraps one adapter call or one domain step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from gpumedic.adapters.errors import AdapterError
from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.adapters.store import TelemetryStore, shared_window
from gpumedic.adapters.targets import NodeTarget
from gpumedic.collection import Depth, collect_nodes
from gpumedic.config import ClusterAccess, FleetSettings, KubernetesSettings
from gpumedic.domain.assess import assess_node
from gpumedic.domain.budget import FleetView
from gpumedic.domain.forecast import CondemnedGpu
from gpumedic.domain.observation import Observation
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import NodeTelemetry
from gpumedic.domain.verdict import NodeAssessment
from gpumedic.inventory import resolve_fleet
from gpumedic.remediation_status import SweepRequest
from gpumedic.reporting import age_text, markdown_report, table_rows, unseen_text
from gpumedic.run_names import shard_run_name
from tasks.remediation import RETRY_DELAYS, fleet_view_from, retry_if_transient

UNHEALTHY_EVENT = "gpumedic.node.unhealthy"
UNSEEN_EVENT = "gpumedic.node.unseen"
SEEN_AGAIN_EVENT = "gpumedic.node.seen-again"


# Never persisted: the settings carry store_url, which may hold the database's password.
@task(name="list-fleet-nodes", cache_policy=NO_CACHE, persist_result=False, retries=3,
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient, timeout_seconds=300)
def list_fleet_nodes(fleet_file: str) -> tuple[FleetSettings, list[NodeTarget]]:
    """The fleet file and the nodes to sweep: those it lists, or the Nodes its label selector matches.

    A cluster that cannot be read is retried, then fails the sweep: a sweep of no nodes would report a
    healthy fleet."""
    return resolve_fleet(fleet_file)


@task(name="collect-shard", task_run_name=shard_run_name, cache_policy=NO_CACHE, retries=0)
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


class Previous(NamedTuple):
    """What earlier sweeps left in the store for this one."""

    snapshots: dict[str, NodeTelemetry]  # each node's last clean telemetry: rates, kernel log since
    full_snapshots: dict[str, NodeTelemetry]  # its last clean full one: what a quick sweep cannot read
    before_full_snapshots: dict[str, NodeTelemetry]  # the full one before: the link rates the last one measured
    prior_xids: dict[str, dict[str, set[int]]]  # repeat-offender rules
    observations: dict[str, Observation]  # when each node was last seen: blind spots
    condemned: list[CondemnedGpu]  # the GPUs the last sweep sent to a human: kept for nodes this one cannot assess


@task(name="load-previous-telemetry", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_previous(
    store_url: str | None, nodes: Sequence[str], before: datetime, xid_window_h: float, depth: Depth
) -> Previous:
    store = TelemetryStore(store_url)
    # Only a quick sweep states the link rates the last full sweep measured; a full one measures its own.
    return Previous(store.last_snapshots(nodes), store.last_snapshots(nodes, full=True),
                    store.last_snapshots(nodes, before_last_full=True) if depth == "quick" else {},
                    store.prior_xids(nodes, before, timedelta(hours=xid_window_h)), store.last_observations(nodes),
                    store.latest_condemned())


@task(name="assess-fleet", cache_policy=NO_CACHE)
def assess_fleet(
    policy: HealthPolicy,
    telemetry: Sequence[NodeTelemetry],
    previous: Previous,
) -> list[NodeAssessment]:
    return [
        assess_node(t, policy, previous=previous.snapshots.get(t.node), prior_xids=previous.prior_xids.get(t.node),
                    last_full=previous.full_snapshots.get(t.node),
                    before_last_full=previous.before_full_snapshots.get(t.node))
        for t in telemetry
    ]


@task(name="record-telemetry", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15])
def record_telemetry(store_url: str | None, telemetry: Sequence[NodeTelemetry], evidence: Sequence[NodeTelemetry],
                     observations: Sequence[Observation], sweep_id: str, started: datetime,
                     summary: dict[str, Any]) -> int:
    store = TelemetryStore(store_url)
    rows = store.record(telemetry, evidence=evidence)
    store.record_observations(observations)
    store.record_sweep(sweep_id, started, summary)
    return rows


@task(name="prune-history", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prune_history(store_url: str | None, before: datetime) -> int:
    deleted = TelemetryStore(store_url).prune(before)
    get_run_logger().info("history retention: deleted %d rows older than %s", deleted, before.isoformat())
    return deleted


@task(name="publish-reports", cache_policy=NO_CACHE)
def publish_reports(
    store_url: str | None, sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment],
    observations: Sequence[Observation], unseen_alert_after: timedelta, elapsed_s: float, depth_note: str = "",
    remediation: Mapping[str, str] | None = None,
) -> None:
    """`remediation`: per node that needs it, what the sweep does about it (`SweepRequest.note`)."""
    latest = TelemetryStore(store_url).latest_forecasts(a.node for a in assessments)
    risks = {key: f.risk for key, f in latest.items()}
    window = shared_window(latest.values())
    seen = {o.node: o for o in observations}
    rows = table_rows(assessments, risks, seen, remediation)
    create_table_artifact(
        key="fleet-unhealthy-nodes",
        table=rows or [{"node": "-", "verdict": "healthy", "action": "none", "gpus": "-",
                       "forecast risk": "-", "not seen for": "-", "remediation": "-", "reasons": "all healthy"}],
        description=f"Unhealthy or unknown nodes in sweep {sweep_id}, most severe first"
        + (f"; forecast risk: probability of failure {window} (latest failure-forecast run)"
           if risks else ""),
    )
    create_markdown_artifact(
        key="fleet-health-report",
        markdown=markdown_report(sweep_id, started, assessments, elapsed_s, risks, window, seen, unseen_alert_after,
                                 depth_note, remediation),
        description=f"Fleet health report for sweep {sweep_id}",
    )


@task(name="emit-unhealthy-events", cache_policy=NO_CACHE)
def emit_unhealthy_events(document: dict[str, Any], requests: Mapping[str, SweepRequest]) -> list[str]:
    """One `gpumedic.node.unhealthy` event per node whose request says so (`sweep_requests`); the
    others are logged with why not (a run would only stop). Returns the nodes whose event was raised.

    The payload is the node's entry in the sweep `document`, with the sweep id.
    """
    logger = get_run_logger()
    sweep_id = document["sweep_id"]
    emitted = []
    for entry in document["nodes"]:
        request = requests.get(entry["node"])
        if request is None:
            continue
        if not request.raised:
            logger.info("%s: no remediation event raised: %s", entry["node"], request.why)
            continue
        _emit_node_event(UNHEALTHY_EVENT, entry["node"], {"sweep_id": sweep_id, **entry})
        emitted.append(entry["node"])
    return emitted


@task(name="read-remediation-records", cache_policy=NO_CACHE)
def read_remediation_records(kubernetes: KubernetesSettings, cluster: ClusterAccess) -> FleetView | None:
    """The remediation records on the fleet's Nodes (one list), for `sweep_requests`.

    Best effort, on the side of raising: a cluster that cannot be read gives None, and no event is held
    back, as if the fleet file named no cluster; a record that cannot be read is left out.
    """
    try:
        with KubeNodes.for_cluster(cluster) as kube:
            views = kube.list_nodes(kubernetes.label_selector)
    except AdapterError as err:
        get_run_logger().warning("remediation records not read, so no remediation event is held back: %s", err)
        return None
    return fleet_view_from(views)


@task(name="announce-blind-spots", cache_policy=NO_CACHE)
def announce_blind_spots(
    newly: Sequence[Observation], back: Sequence[tuple[Observation, Observation]], sweep_id: str, after: timedelta
) -> list[str]:
    """`gpumedic.node.unseen` for each node whose dark spell reached `after` at this sweep, and
    `gpumedic.node.seen-again` for each node seen after an announced spell; returns the first ones.

    Nothing else is done: a node that cannot be assessed is never remediated. The events are there
    for a Prefect automation (page someone, resolve the page) and for the record.
    """
    logger = get_run_logger()
    for o in newly:
        logger.warning("%s: %s; no sweep could assess it for %s or more", o.node, unseen_text(o), age_text(after))
        _emit_node_event(UNSEEN_EVENT, o.node, {
            "sweep_id": sweep_id, "unseen_hours": _hours(o.unseen_for),
            "last_seen": None if o.seen_at is None else o.seen_at.isoformat(),
            "first_checked": o.first_checked_at.isoformat()})
    for before, now in back:
        dark = before.unseen_for + (now.checked_at - before.checked_at)
        logger.info("%s: seen again after %s dark", now.node, age_text(dark))
        _emit_node_event(SEEN_AGAIN_EVENT, now.node, {
            "sweep_id": sweep_id, "unseen_hours": _hours(dark),
            "last_seen": None if before.seen_at is None else before.seen_at.isoformat(),
            "seen_at": now.checked_at.isoformat()})
    return [o.node for o in newly]


def _hours(span: timedelta) -> float:
    return round(span.total_seconds() / 3600, 2)


def _emit_node_event(event: str, node: str, payload: dict[str, Any]) -> None:
    """An event about `node`: its resource is the node, its payload names it."""
    emit_event(event=event, resource={"prefect.resource.id": f"gpumedic.node.{node}", "prefect.resource.name": node},
               payload={"node": node, **payload})
