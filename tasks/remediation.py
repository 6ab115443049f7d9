"""Prefect tasks of the per-node remediation: each wraps one adapter call or one domain step.

Every acting task answers with the domain's `StepOutcome`. A permanent adapter error
(`PermanentError`) becomes `Failed(reason)`, which the state machine turns into an
escalation or a final outcome. A transient one is retried with backoff
(`retry_condition_fn`); when the retries are spent it propagates, the flow run fails, and
the record on the Node (step intended, not done) is what the next run resumes from.

No task result is cached: the ledger in the Node annotations (`steps_intended` /
`steps_done`) is what makes a re-run skip what already took effect.

Tickets go through the durable outbox (`OutboxDesk`) to Jira, as the fleet file's
`fleet.jira` says (`jira_for_fleet`); a missing `jira:` block or API token is `TicketDeskMisconfigured`,
raised (not a `Failed` outcome) so the incident waits at its ticket step until it is fixed.
The budget lock and the approval look-ups at the end speak to the Prefect API itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpumedic.adapters.breaker_override import read_breaker_override
from gpumedic.adapters.errors import PermanentError, TransientError, is_transient
from gpumedic.adapters.jira_tickets import Approval as JiraApproval
from gpumedic.adapters.jira_tickets import JiraSettings, gpu_dedup_key
from gpumedic.adapters.jira_tickets import TicketRequest as JiraTicketRequest
from gpumedic.adapters.kube_nodes import KubeNodes, NodeView, is_managed
from gpumedic.adapters.node_actions import NodeActions
from gpumedic.adapters.store import TelemetryStore
from gpumedic.adapters.targets import ssh_settings
from gpumedic.adapters.ticket_outbox import file_through_outbox
from gpumedic.collection import collect_nodes
from gpumedic.config import ClusterAccess, ConfigError, JiraConfig, cluster_access, load_fleet_settings
from gpumedic.domain.assess import assess_node
from gpumedic.domain.budget import BreakerOverride, FleetView, RemediationPolicy, UnhealthyObservation
from gpumedic.domain.remediation import (
    ANNOTATION_KEYS,
    ApprovalKind,
    BootIdRead,
    Cancel,
    CaptureBootId,
    Cordon,
    CorruptRecord,
    Decision,
    DiagnosticsResult,
    Drain,
    Failed,
    FileTicket,
    NodeRecord,
    NotRebooted,
    Readmit,
    Reboot,
    Rebooted,
    ResetGpus,
    RunDiagnostics,
    StepOutcome,
    Succeeded,
    TicketFiled,
    VerifyRebooted,
    incident_kinds,
)
from gpumedic.domain.verdict import GpuAssessment, NodeAssessment
from gpumedic.inventory import resolve_node
from gpumedic.remediation_status import FleetStatus, fleet_status
from gpumedic.run_names import REMEDIATION_RUN, run_name

OPT_OUT_ANNOTATION = "gpumedic.io/opt-out"
MANAGER = "gpumedic"
RETRY_DELAYS: list[float] = [1, 2, 4]


def retry_if_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a task only when it failed with a `TransientError` (never on a permanent one)."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as err:  # the task's own exception, re-raised by the state
        return is_transient(err)
    return False


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # called outside a run (unit use): plain logging
        return logging.getLogger(__name__)


def _nodes(cluster: ClusterAccess) -> KubeNodes:
    return KubeNodes.for_cluster(cluster)


def _actions(fleet_file: str, node: str) -> NodeActions:
    fleet, target = resolve_node(fleet_file, node)
    settings = ssh_settings(fleet)
    if target.ssh is None or settings is None:
        raise PermanentError(f"{node}: the fleet of {fleet_file} has no SSH settings")
    return NodeActions(node, target.ssh, settings)


# --------------------------------------------------------------------------- reading state


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node's remediation record as the API server has it, with the version it was read at."""

    record: NodeRecord | None
    resource_version: str
    unschedulable: bool
    managed: bool


@task(name="read-node-record", task_run_name="read-record-{node}",
      cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, timeout_seconds=60)
def read_node_record(cluster: ClusterAccess, node: str) -> NodeSnapshot:
    """The record stored in the Node's annotations. Raises `CorruptRecord`: never start afresh."""
    with _nodes(cluster) as kube:
        view = kube.get_node(node)
    return NodeSnapshot(NodeRecord.from_annotations(view.annotations), view.resource_version,
                        view.unschedulable, _opted_in(view))


def _opted_in(view: NodeView) -> bool:
    return is_managed(view) and view.annotations.get(OPT_OUT_ANNOTATION, "").lower() != "true"


class RecordChangedElsewhere(PermanentError):
    """Another workflow wrote this node's record since we read it: stop, do not overwrite it."""


@task(name="write-node-record", task_run_name="write-record-{node}",
      cache_policy=NO_CACHE, retries=5, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, timeout_seconds=60)
def write_node_record(cluster: ClusterAccess, node: str, record: NodeRecord, previous: NodeRecord | None) -> str:
    """Persist `record` with optimistic concurrency; the node's new resourceVersion.

    The write is conditional on the node's resourceVersion just read, and only made when
    the record stored there is still `previous` (the one this run last read or wrote): a
    second workflow on the same node makes this fail instead of silently losing its step.
    """
    annotations = record.to_annotations()
    assert set(annotations) <= set(ANNOTATION_KEYS)
    with _nodes(cluster) as kube:
        view = kube.get_node(node)
        stored = NodeRecord.from_annotations(view.annotations)
        if stored != previous and stored != record:
            raise RecordChangedElsewhere(
                f"{node}: the remediation record changed under us (stored incident "
                f"{stored.incident_id if stored else None}, state {stored.state if stored else None})"
            )
        if stored == record:
            return view.resource_version
        return kube.write_annotations(node, dict(annotations), expected_resource_version=view.resource_version)


@task(name="fleet-view", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, timeout_seconds=120)
def build_fleet_view(cluster: ClusterAccess) -> FleetView:
    """The budget's and the breaker's view, from every Node's annotations and cordon state, and the
    operator's fleet-wide breaker override (a Prefect Variable)."""
    with _nodes(cluster) as kube:
        views = kube.list_nodes()
    try:
        override = read_breaker_override()
    except Exception as err:  # without it each incident asks for its own override: the safe side
        _log().warning("the fleet-wide breaker override could not be read, so none applies: %s", err)
        override = None
    return fleet_view_from(views, override)


def read_records(views: list[NodeView]) -> tuple[list[NodeRecord], list[tuple[str, str]]]:
    """The remediation records on the nodes, and the nodes whose record cannot be read, with why."""
    records: list[NodeRecord] = []
    unreadable: list[tuple[str, str]] = []
    for view in views:
        try:
            record = NodeRecord.from_annotations(view.annotations)
        except CorruptRecord as err:
            unreadable.append((view.name, str(err)))
            continue
        if record is not None:
            records.append(record)
    return records, unreadable


def fleet_view_from(views: list[NodeView], breaker_override: BreakerOverride | None = None) -> FleetView:
    records, unreadable = read_records(views)
    for node, _why in unreadable:
        _log().warning("node=%s unreadable remediation record: left out of the fleet view", node)
    return _fleet_view(views, records, breaker_override)


def _fleet_view(
    views: list[NodeView], records: list[NodeRecord], breaker_override: BreakerOverride | None = None
) -> FleetView:
    # Each incident was opened on a sweep that found its node needing remediation.
    unhealthy = [UnhealthyObservation(record.node, record.opened_at) for record in records]
    gpu_nodes = sum(1 for v in views if v.gpu_capacity > 0) or len(views)
    return FleetView(
        gpu_nodes=gpu_nodes,
        records=tuple(records),
        unschedulable=frozenset(v.name for v in views if v.unschedulable),
        unhealthy=tuple(unhealthy),
        opted_out=frozenset(v.name for v in views if not _opted_in(v)),
        breaker_override=breaker_override,
    )


def remediation_status_now(
    cluster: ClusterAccess, policy: RemediationPolicy, *, include_closed: bool = False,
    breaker_override: BreakerOverride | None = None,
) -> FleetStatus:
    """`gpumedic remediation status`: the fleet's remediation, read from the Nodes now."""
    with _nodes(cluster) as kube:
        views = kube.list_nodes()
    records, unreadable = read_records(views)
    return fleet_status(_fleet_view(views, records, breaker_override), policy, datetime.now(UTC),
                        unreadable=unreadable, include_closed=include_closed)


@dataclass(frozen=True, slots=True)
class FreshEvidence:
    assessment: NodeAssessment
    observed_at: datetime
    bus_ids: dict[str, str] = field(default_factory=dict)  # GPU UUID -> PCI bus id, as just read


@task(name="remember-incident", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def remember_incident(fleet_file: str, record: NodeRecord, assessment: NodeAssessment, *, resumed: bool) -> bool:
    """Record the incident's failing GPUs (none: the node) in the telemetry store, each with what its
    evidence says broke: the daily forecast reads them as prior incidents (the strongest predictor in
    every field study), and the weekly refit learns from them per failure class.

    `resumed`: the incident was opened by an earlier run, which may have crashed before
    recording it; record it now unless it already was (today's failing GPUs stand in)."""
    return TelemetryStore(load_fleet_settings(fleet_file).store_url).record_incident(
        record.incident_id, record.node, incident_kinds(assessment, record.requested), record.opened_at,
        overwrite=not resumed,
    )


@task(name="assess-node-now", task_run_name="assess-{node}", cache_policy=NO_CACHE, timeout_seconds=300,
      retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def assess_node_now(fleet_file: str, node: str) -> FreshEvidence:
    """Collect the node again and assess it: no destructive step without a fresh, parsed reason.

    A node that cannot be reached is assessed `unknown` (no retry: that is the answer); the retries are for
    a fleet whose nodes come from Kubernetes, while its API server cannot be read."""
    fleet, target = resolve_node(fleet_file, node)
    (telemetry,) = collect_nodes(fleet, [target], depth="full", concurrency=1)
    assessment = assess_node(telemetry, fleet.health_policy())
    bus_ids = {g.uuid: g.pci_bus_id for g in telemetry.gpus if g.uuid and g.pci_bus_id}
    _log().info("node=%s evidence=%s/%s", node, assessment.verdict, assessment.action)
    return FreshEvidence(assessment, telemetry.collected_at, bus_ids)


# --------------------------------------------------------------------------- acting steps



@task(name="cordon-node", task_run_name="cordon-{node}",
      timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def cordon_node(cluster: ClusterAccess, node: str, step: Cordon) -> StepOutcome:
    try:
        with _nodes(cluster) as kube:
            result = kube.cordon(node, taint_value=str(step.repair), manager=MANAGER)
    except PermanentError as err:
        return Failed(str(err))
    _log().info("node=%s step=%s cordoned already_cordoned_by_other=%s", node, step.key,
                result.already_cordoned_by_other)
    return Succeeded("already cordoned by someone else; tainted" if result.already_cordoned_by_other
                     else "cordoned and tainted")


@task(name="drain-node", task_run_name="drain-{node}",
      cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def drain_node(cluster: ClusterAccess, node: str, step: Drain, gpu_pods_only: bool = False) -> StepOutcome:
    try:
        with _nodes(cluster) as kube:
            report = kube.drain(node, deadline_s=step.timeout.total_seconds(), gpu_pods_only=gpu_pods_only,
                                poll_s=0.5, backoff=(0.5, 1, 2, 4))
    except PermanentError as err:
        return Failed(str(err))
    _log().info("node=%s step=%s evicted=%s blocked=%s skipped=%d", node, step.key, report.evicted,
                report.blocked, len(report.skipped))
    if report.complete:
        return Succeeded(f"drained: {len(report.evicted)} pods evicted, {len(report.skipped)} skipped")
    blocked = "; ".join(f"{k}: {v}" for k, v in sorted(report.blocked.items())) or ", ".join(report.remaining)
    return Failed(f"pods still on the node: {blocked}")


@task(name="capture-boot-id", task_run_name="capture-boot-id-{node}",
      timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def capture_boot_id(fleet_file: str, node: str, step: CaptureBootId) -> StepOutcome:
    try:
        return BootIdRead(_actions(fleet_file, node).boot_id())
    except PermanentError as err:
        return Failed(str(err))


@task(name="reset-gpus", task_run_name="reset-gpus-{node}",
      timeout_seconds=600, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def reset_gpus(fleet_file: str, node: str, step: ResetGpus, bus_ids: dict[str, str]) -> StepOutcome:
    """`nvidia-smi --gpu-reset` per GPU, found by UUID in the telemetry just read and addressed by
    PCI bus id: indices move when a GPU falls off the bus, and a reset must never hit a bystander."""
    unknown = [str(t) for t in step.gpus if t.uuid is None]
    if unknown:
        return Failed(f"no UUID known for {', '.join(unknown)}: will not reset by index")
    gone = [str(t) for t in step.gpus if t.uuid not in bus_ids]
    if gone:
        return Failed(f"{', '.join(gone)} not found on the node now (no PCI bus id): nothing reset")
    actions = _actions(fleet_file, node)
    done = []
    try:
        for target in step.gpus:
            bus = bus_ids[cast(str, target.uuid)]
            outcome = actions.reset_gpu(bus)
            done.append(f"{target} at {bus}: {outcome.message.strip()[:80]}")
            _log().info("node=%s step=%s action=reset gpu=%s bus=%s", node, step.key, target, bus)
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("; ".join(done))


def _reboot_outcome(actions: NodeActions, old: str, timeout_s: float) -> StepOutcome:
    try:
        new = actions.wait_until_back(old, timeout_s=timeout_s, poll_s=0.5)
    except TransientError as err:
        return Failed(str(err))
    return Rebooted(new)


@task(name="reboot-node", task_run_name="reboot-{node}", timeout_seconds=3600, cache_policy=NO_CACHE)
def reboot_node(fleet_file: str, node: str, step: Reboot) -> StepOutcome:
    """Issue the reboot and wait for a new boot id. Not retried: a reboot is never issued blind twice."""
    actions = _actions(fleet_file, node)
    try:
        current = actions.boot_id()
    except (PermanentError, TransientError) as err:
        return Failed(f"could not read the boot id before rebooting: {err}")
    if step.expected_old_boot_id and current != step.expected_old_boot_id:
        # It already rebooted (a reboot issued before a crash took effect): do not reboot again.
        return Rebooted(current)
    actions.reboot()
    _log().info("node=%s step=%s action=reboot old_boot_id=%s", node, step.key, current)
    return _reboot_outcome(actions, current, step.timeout.total_seconds())


@task(name="verify-rebooted", task_run_name="verify-rebooted-{node}",
      timeout_seconds=3600, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def verify_rebooted(fleet_file: str, node: str, step: VerifyRebooted) -> StepOutcome:
    """Did an interrupted reboot take effect? Never reboots."""
    try:
        current = _actions(fleet_file, node).boot_id()
    except PermanentError as err:
        return Failed(str(err))
    if current == step.expected_old_boot_id:
        return NotRebooted("boot id unchanged")
    return Rebooted(current)


@task(name="run-diagnostics", task_run_name="diagnose-{node}",
      cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def run_diagnostics(fleet_file: str, node: str, step: RunDiagnostics) -> StepOutcome:
    try:
        report = _actions(fleet_file, node).run_diagnostics(step.level, timeout_s=step.timeout.total_seconds())
    except PermanentError as err:
        return Failed(str(err))
    failed = [t.name for t in report.tests if t.status == "fail"]
    summary = f"dcgmi diag -r {step.level}: " + (
        "all tests passed" if report.passed else f"failed {', '.join(failed) or 'tests'}; GPUs "
        f"{sorted(report.failed_gpus)}"
    )
    _log().info("node=%s step=%s %s", node, step.key, summary)
    return DiagnosticsResult(report.passed, tuple(sorted(report.failed_gpus)), summary)


@task(name="readmit-node", task_run_name="readmit-{node}",
      timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def readmit_node(cluster: ClusterAccess, node: str, step: Readmit) -> StepOutcome:
    try:
        with _nodes(cluster) as kube:
            kube.uncordon(node, we_cordoned=step.uncordon)
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("taint removed" + (", uncordoned" if step.uncordon else "; cordon left to its owner"))


@task(name="cancel-incident", task_run_name="cancel-incident-{node}",
      timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def cancel_incident(cluster: ClusterAccess, node: str, step: Cancel) -> StepOutcome:
    """Someone uncordoned the node by hand: remove our taint only, never touch the cordon."""
    try:
        with _nodes(cluster) as kube:
            kube.uncordon(node, we_cordoned=False)
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("our taint removed")


# --------------------------------------------------------------------------- settings


def remediation_policy(fleet_file: str, overrides: Mapping[str, Any] | None = None) -> RemediationPolicy:
    """The fleet file's `fleet.remediation` with `overrides` (a run's `policy` parameter) merged on top."""
    return RemediationPolicy.model_validate({**load_fleet_settings(fleet_file).remediation, **(overrides or {})})


def fleet_cluster(fleet_file: str, kubeconfig: str = "") -> ClusterAccess:
    """The cluster the fleet file's sweeps read and write, which remediation must act on too; a run's
    own `kubeconfig` (empty: none) that names another file raises `ConflictingClusters`."""
    return cluster_access(load_fleet_settings(fleet_file).kubernetes, os.environ, given=kubeconfig or None)


# --------------------------------------------------------------------------- tickets

NODE_DEDUP_PREFIX = "gpumedic-node-"
_LABEL_UNSAFE = re.compile(r"[^a-z0-9._:-]+")


class TicketDeskMisconfigured(PermanentError):
    """The fleet file or the environment does not say how to reach Jira: fix it, then re-run.

    Raised out of `file_ticket` (not turned into a `Failed` outcome): the incident stays at
    its ticket step and the next run files the ticket once the configuration is fixed.
    """


def _label(text: str) -> str:
    return _LABEL_UNSAFE.sub("-", text.strip().lower()).strip("-")


def node_dedup_key(node: str) -> str:
    """The dedup label of a ticket about a node whose failing GPU has no known UUID or serial."""
    return NODE_DEDUP_PREFIX + _label(node)


def replaced_gpu(record: NodeRecord, assessment: NodeAssessment | None) -> GpuAssessment | None:
    """The GPU a ticket is about: the incident's first GPU the fresh assessment finds failing,
    else any failing GPU, else the incident's first GPU the assessment still lists."""
    if assessment is None:
        return None
    by_uuid = {g.uuid: g for g in assessment.gpus if g.uuid}
    by_index = {g.index: g for g in assessment.gpus}
    # By UUID where the incident knows it: an index may name another GPU by now.
    ours = [g for t in record.gpus if (g := by_uuid.get(t.uuid) if t.uuid else by_index.get(t.index))]
    failing = sorted((g for g in assessment.gpus if g.action.needs_remediation), key=lambda g: g.index)
    return next(iter([g for g in ours if g.action.needs_remediation] + failing + ours), None)


def ticket_request(record: NodeRecord, step: FileTicket, assessment: NodeAssessment | None, *, project: str,
                   issue_type: str, description: str) -> JiraTicketRequest:
    """The Jira ticket for the domain's `FileTicket` step: deduplicated by the replaced GPU's label."""
    gpu = replaced_gpu(record, assessment)
    dedup: str | None = None
    if gpu is not None:
        try:
            dedup = gpu_dedup_key(uuid=gpu.uuid, serial=gpu.serial)
        except ValueError:  # neither a UUID nor a serial (a GPU off the bus): the node's key
            dedup = None
    what = "replacement" if step.kind is ApprovalKind.REPLACE else "inspection"
    if gpu is not None:
        ids = ", ".join(f"{n} {v}" for n, v in (("UUID", gpu.uuid), ("serial", gpu.serial)) if v)
        summary = f"{record.node}: GPU {gpu.index}" + (f" ({ids})" if ids else "") + f" needs {what}"
    else:
        summary = f"{record.node}: GPU node needs {what}"
    if step.awaiting_decision:
        summary += " (awaiting decision)"
    approval = None
    if record.approval is not None and record.approval.decision is Decision.APPROVE:
        a = record.approval
        approval = JiraApproval(a.approver, a.reason, step.rma or a.rma)
    labels = [f"gpumedic-{step.kind}", node_dedup_key(record.node)]
    if step.awaiting_decision:
        labels.append("gpumedic-awaiting-decision")
    return JiraTicketRequest(
        dedup_key=dedup or node_dedup_key(record.node), incident_id=record.incident_id, project=project,
        issue_type=issue_type, summary=summary, description=description, node=record.node,
        labels=tuple(labels), gpu_index=gpu.index if gpu else None, gpu_uuid=gpu.uuid if gpu else None,
        gpu_serial=gpu.serial if gpu else None, approval=approval,
    )


def jira_for_fleet(fleet_file: str) -> tuple[JiraConfig, JiraSettings, str | None]:
    """The fleet's Jira block, its client settings (token from the variable it names, never logged)
    and the store URL that holds the outbox. Misconfiguration is `TicketDeskMisconfigured`."""
    try:
        fleet = load_fleet_settings(fleet_file)
    except ConfigError as err:
        raise TicketDeskMisconfigured(str(err)) from None
    if fleet.jira is None:
        raise TicketDeskMisconfigured(f"{fleet_file}: no `fleet.jira` block: cannot file tickets")
    try:
        settings = JiraSettings.from_config(fleet.jira.url, fleet.jira.user, fleet.jira.token_env)
    except PermanentError as err:
        raise TicketDeskMisconfigured(f"{err} (fleet.jira.token_env in {fleet_file})") from None
    return fleet.jira, settings, fleet.store_url


@task(name="file-ticket", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient, timeout_seconds=300)
def file_ticket(fleet_file: str, tickets: str, record: NodeRecord, step: FileTicket,
                assessment: NodeAssessment | None, description: str) -> StepOutcome:
    """File the incident's ticket through the durable outbox (`OutboxDesk`), then Jira.

    While Jira is down the ticket stays pending in the outbox and this raises `TransientError`
    (retried, then the run fails and the next run files it). A ticket Jira refuses is parked
    in the outbox and answered `Failed`. The first request stored for an incident is the one
    filed, so a re-run never files a second ticket under a different GPU label.
    """
    if tickets != "jira":
        raise TicketDeskMisconfigured(f"unknown ticket desk {tickets!r}: the only desk is 'jira'")
    jira, settings, store_url = jira_for_fleet(fleet_file)
    request = ticket_request(record, step, assessment, project=jira.project,
                             issue_type=jira.replacement_issue_type, description=description)
    try:
        key, filed = file_through_outbox(store_url, settings, request)
    except TransientError:
        raise
    except PermanentError as err:
        return Failed(str(err))
    _log().info("node=%s incident=%s action=ticket key=%s dedup=%s", record.node, record.incident_id, key,
                filed.dedup_key)
    return TicketFiled(key)


# --------------------------------------------------------------------------- the budget lock

BUDGET_LOCK = "gpumedic-budget"


def ensure_budget_lock(name: str = BUDGET_LOCK) -> None:
    """Make sure the global concurrency limit `name` exists, active, with one slot.

    `concurrency(..., strict=False)` on a missing limit silently skips the lock, so the
    limit is created here and then acquired with `strict=True`. A limit someone widened or
    deactivated is refused: the budget is only safe one decision at a time.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created by a run beside this one
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
            limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active:
        raise PermanentError(
            f"the global concurrency limit {name!r} must be active with limit 1 (it is limit={limit.limit}, "
            f"active={limit.active}): set it back with `prefect gcl update {name} --limit 1 --enable`"
        )


@contextmanager
def budget_lock(timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the fleet-wide budget lock: one cordon decision (and its record) at a time."""
    from prefect.concurrency.sync import concurrency

    ensure_budget_lock()
    with concurrency(BUDGET_LOCK, occupy=1, timeout_seconds=timeout_s, strict=True):
        yield


# --------------------------------------------------------------------------- approvals


@dataclass(frozen=True, slots=True)
class WaitingRun:
    """A flow run that holds the decision of one approval (by its pause key)."""

    id: str
    name: str
    timeout: datetime | None  # when its pause or suspension expires
    resumed: bool  # the decision was submitted; the run is on its way to apply it


def _runs_in_states(states: list[Any], **filters: Any) -> list[Any]:
    """Every flow run in one of `states` that `filters` (read_flow_runs' filters) select, all pages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    in_states = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)))
    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:  # the API answers at most 200 runs a page
            page = client.read_flow_runs(flow_run_filter=in_states, limit=200, offset=len(runs), **filters)
            runs += page
            if len(page) < 200:
                return runs


@task(name="find-waiting-approval", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      timeout_seconds=60)
def find_waiting_approval(pause_key: str, flow_names: list[str], exclude: str | None = None) -> WaitingRun | None:
    """A live run of `flow_names` (not `exclude`) waiting for the decision `pause_key`, or resumed with it.

    Paused or suspended with the key and not expired: the human may still answer there.
    Resumed with it (the key is among its fired pause keys) and not finished yet: the
    answer is on its way. Either way another run must not ask again, nor time it out.
    """
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.objects import StateType

    live = [StateType.PAUSED, StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    runs = _runs_in_states(live, flow_filter=FlowFilter(name=FlowFilterName(any_=flow_names)))
    now = utcnow()
    for run in runs:
        if run.state is None or str(run.id) == exclude:
            continue
        details = run.state.state_details
        if run.state.is_paused():
            if details.pause_key == pause_key and (details.pause_timeout is None or details.pause_timeout > now):
                return WaitingRun(str(run.id), run.name, details.pause_timeout, resumed=False)
        elif pause_key in (run.empirical_policy.pause_keys or set()):
            return WaitingRun(str(run.id), run.name, None, resumed=True)
    return None


@task(name="nodes-with-live-remediation-runs", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      timeout_seconds=60)
def nodes_with_live_runs(deployment: str) -> set[str]:
    """The nodes a run of `deployment` ("flow/deployment") is working on, or about to.

    Pending, running, paused (waiting for a human), cancelling, or scheduled to start within a
    minute. A run scheduled for later (an approval's timeout check, a day out) is not at work now.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import StateType

    live = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    soon = utcnow() + timedelta(minutes=1)
    nodes: set[str] = set()
    for run in _runs_in_states(live, deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))):
        state = run.state
        later = state is not None and state.is_scheduled() and (state.state_details.scheduled_time or soon) > soon
        if run.parameters.get("node") and not later:
            nodes.add(str(run.parameters["node"]))
    return nodes


@task(name="start-remediation-run", task_run_name="start-remediation-{node}",
      cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      timeout_seconds=60)
def start_remediation_run(deployment: str, node: str, incident: str, key: str) -> str:
    """A run of the remediation `deployment` ("flow/deployment") for the node's open incident: its name
    and id (names say what a run is about, so runs for the same node share one).

    `key` makes the request idempotent: two resumers that saw the same record start one run.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    parameters = {"node": node, "incident": incident}
    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun, not a coroutine
        deployment, parameters=parameters, flow_run_name=run_name(REMEDIATION_RUN, parameters), timeout=0,
        as_subflow=False, idempotency_key=key, tags=["gpumedic", "resumed"],
    )
    return f"{run.name} ({run.id})"


@task(name="schedule-approval-check", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      timeout_seconds=60)
def schedule_approval_check(deployment_id: str, parameters: dict[str, Any], at: datetime, key: str, name: str) -> str:
    """A run of the deployment at `at` (once per `key`), named `name` while it waits: it applies the timeout if
    nobody decided."""
    from uuid import UUID

    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun, not a coroutine
        UUID(deployment_id), parameters=parameters, scheduled_time=at, flow_run_name=name, timeout=0,
        as_subflow=False, idempotency_key=key, tags=["gpumedic", "approval-timeout-check"])
    _log().info("approval check %s scheduled at %s (flow run %s, %s)", key, at.isoformat(), run.name, run.id)
    return str(run.id)


def utcnow() -> datetime:
    return datetime.now(UTC)
