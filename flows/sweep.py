"""The fleet sweep, as the runbook reads: inventory, collect, assess, record, report, alert."""

from __future__ import annotations

import math
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from gpumedic.adapters.collect_exporter import new_gauge_xids
from gpumedic.adapters.targets import NodeTarget
from gpumedic.collection import Depth
from gpumedic.config import cluster_access
from gpumedic.domain.deep_readings import quick_sweep_note, without_full_readings
from gpumedic.domain.forecast import condemned_by
from gpumedic.domain.observation import newly_unseen, observe_fleet, seen_again, without_unannounced
from gpumedic.domain.telemetry import NodeTelemetry
from gpumedic.remediation_status import sweep_requests
from gpumedic.reporting import summary_line, sweep_document
from gpumedic.run_names import flow_run_named
from tasks.node_conditions import publish_node_conditions
from tasks.sweep import (
    announce_blind_spots,
    assess_fleet,
    collect_shard,
    emit_unhealthy_events,
    list_fleet_nodes,
    load_previous,
    prune_history,
    publish_reports,
    read_remediation_records,
    record_telemetry,
)


def _shards(targets: list[NodeTarget], size: int) -> list[list[NodeTarget]]:
    return [targets[i : i + size] for i in range(0, len(targets), size)]


@flow(
    name="fleet-sweep",
    flow_run_name=flow_run_named("{depth}-sweep"),
    description="Sweep the GPU fleet: collect telemetry, assess every GPU, report, and raise remediation events.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    log_prints=True,
)
def fleet_sweep(fleet_file: str, depth: Depth = "full", emit_events: bool = True) -> dict[str, Any]:
    """Returns the sweep document: `{sweep_id, started, nodes: [{node, verdict, action, last_seen, remediation,
    reasons, gpus}]}`.

    Args:
        fleet_file: Path of the fleet YAML file on the worker: how to reach the nodes, the telemetry store,
            the health policy.
        depth: "full" also reads `nvidia-smi -q` (SRAM flag, spare-row banks, slowdown temperatures, PCIe replays)
            and NVLink error counters over SSH, and applies the history retention; "quick" skips those, for
            frequent sweeps, and takes the state readings among them from each node's last full sweep (at most
            the policy's `full_reading_max_age_hours` old; reasons from them say when they were read).
        emit_events: Raise `gpumedic.node.unhealthy` for every node whose recommended action is reset_gpu or
            worse, which starts its remediate-node run (not where that run would only stop, when the fleet file
            names the cluster: an approval pending, a replacement on order, opted out; the report's
            "remediation" column says which), and
            `gpumedic.node.unseen` for every node no sweep could assess for the policy's `unseen_alert_after_hours`
            (once per dark spell; `gpumedic.node.seen-again` when it returns). Off: report only (a dry run: the
            report says what a sweep with events would request and hold back); a dark spell that
            reaches the alert delay (or ends) during such a sweep is announced by the next sweep with events on.

    With a `kubernetes:` block in the fleet file, each node's verdict is also written to its Node as the
    `GpuUnhealthy` condition (True: a GPU needs repair; False: healthy or watched; Unknown: not assessed),
    whatever `emit_events` says: it is a report, seen by `kubectl describe node`.
    """
    logger = get_run_logger()
    started = datetime.now(UTC)
    clock = time.monotonic()
    sweep_id = f"sweep-{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    fleet, targets = list_fleet_nodes(fleet_file)
    logger.info("sweep %s: %d nodes (%s, %s sweep)", sweep_id, len(targets), fleet.source, depth)

    policy = fleet.health_policy()
    previous = load_previous(fleet.store_url, [t.name for t in targets], started, policy.xid_repeat_window_hours,
                             depth)
    since = {node: snap.collected_at for node, snap in previous.snapshots.items()}

    shards = _shards(targets, fleet.shard_size)
    per_shard = max(1, min(fleet.shard_size, math.ceil(fleet.concurrency / max(1, min(len(shards), 4)))))
    progress = cast(UUID, create_progress_artifact(0.0, key="fleet-sweep-progress",
                                                   description=f"Collecting {len(targets)} nodes"))
    futures = [
        collect_shard.submit(fleet, shard, {t.name: since[t.name] for t in shard if t.name in since}, depth, per_shard)
        for shard in shards
    ]
    telemetry: list[NodeTelemetry] = []
    for future in as_completed(futures):
        telemetry += future.result()
        update_progress_artifact(progress, 100.0 * len(telemetry) / max(1, len(targets)))
        logger.info("collected %d/%d nodes", len(telemetry), len(targets))
    order = {t.name: i for i, t in enumerate(targets)}
    telemetry.sort(key=lambda t: order[t.node])

    evidence = [new_gauge_xids(t, previous.snapshots.get(t.node)) for t in telemetry]
    assessments = assess_fleet(policy, evidence, previous)
    observations = observe_fleet(previous.observations, assessments, started)
    unseen_alert_after = timedelta(hours=policy.unseen_alert_after_hours)
    recorded = observations if emit_events else without_unannounced(previous.observations, observations,
                                                                     unseen_alert_after)
    record_telemetry(fleet.store_url, telemetry, evidence, recorded, sweep_id, started,
                     {"summary": summary_line(assessments),
                      "condemned": [c.to_json() for c in condemned_by(assessments, sweep_id, previous.condemned)]})
    if depth == "full":
        prune_history(fleet.store_url, started - timedelta(days=fleet.history_retention_days))
    depth_note = ""
    if any(t.depth == "quick" for t in telemetry):
        max_age = timedelta(hours=policy.full_reading_max_age_hours)
        lacking = without_full_readings(telemetry, previous.full_snapshots, max_age)
        if lacking and max_age > timedelta(0):
            logger.warning("no clean full sweep of %d nodes in %g h, so their SRAM flag and spare rows are not "
                           "judged: %s", len(lacking), policy.full_reading_max_age_hours, ", ".join(lacking[:10]))
        depth_note = quick_sweep_note(policy.full_reading_max_age_hours, lacking)
    needing = [a.node for a in assessments if a.needs_remediation]
    # One cluster for everything that touches the Nodes, the same one remediation acts on.
    cluster = cluster_access(fleet.kubernetes, os.environ) if fleet.kubernetes is not None else None
    if cluster is not None:
        logger.info("cluster: %s", cluster)
    records = read_remediation_records(fleet.kubernetes, cluster) if needing and fleet.kubernetes and cluster else None
    requests = sweep_requests(needing, records, fleet.remediation_policy(), started, events=emit_events)
    notes = {node: r.note for node, r in requests.items()}
    document = sweep_document(sweep_id, started, assessments, {o.node: o for o in observations}, notes)
    publish_reports(fleet.store_url, sweep_id, started, assessments, observations, unseen_alert_after,
                    time.monotonic() - clock, depth_note, notes)
    if emit_events:
        emitted = emit_unhealthy_events(document, requests)
        logger.info("remediation requested for %d nodes: %s", len(emitted), ", ".join(emitted) or "none")
        announce_blind_spots(newly_unseen(previous.observations, observations, unseen_alert_after),
                             seen_again(previous.observations, observations, unseen_alert_after), sweep_id,
                             unseen_alert_after)
    if fleet.kubernetes is not None and cluster is not None and fleet.kubernetes.node_conditions:
        publish_node_conditions(fleet.kubernetes, cluster, assessments, observations, started)
    logger.info("sweep %s done: %s", sweep_id, summary_line(assessments))
    return document


__all__ = ["fleet_sweep"]
