"""Prefect tasks of the per-node remediation: each wraps one adapter call or one domain step.

Every acting task answers with the domain's `StepOutcome`. A permanent adapter error
(`PermanentError`) becomes `Failed(reason)`, which the state machine turns into an
escalation or a final outcome. A transient one is retried with backoff
(`retry_condition_fn`); when the retries are spent it propagates, the flow run fails, and
the record on the Node (step intended, not done) is what the next run resumes from.

No task result is cached: the ledger in the Node annotations (`steps_intended` /
`steps_done`) is what makes a re-run skip what already took effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpumedic.adapters.errors import PermanentError, TransientError, is_transient
from gpumedic.adapters.kube_nodes import KubeNodes, NodeView, is_managed
from gpumedic.adapters.node_actions import NodeActions
from gpumedic.adapters.targets import ssh_settings
from gpumedic.collection import collect_nodes
from gpumedic.domain.assess import assess_node
from gpumedic.domain.budget import FleetView, UnhealthyObservation
from gpumedic.domain.remediation import (
    ANNOTATION_KEYS,
    ApprovalKind,
    BootIdRead,
    Cancel,
    CaptureBootId,
    Cordon,
    CorruptRecord,
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
)
from gpumedic.domain.verdict import NodeAssessment
from gpumedic.inventory import resolve_fleet

OPT_OUT_ANNOTATION = "gpumedic.io/opt-out"
MANAGER = "gpumedic"
RETRY_DELAYS: list[float] = [1, 2, 4]


def _transient_only(_task: Any, _task_run: Any, state: Any) -> bool:
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


def _nodes(kubeconfig: str) -> KubeNodes:
    return KubeNodes.from_kubeconfig(kubeconfig)


def _actions(fleet_file: str, node: str) -> NodeActions:
    fleet, targets = resolve_fleet(fleet_file)
    target = next((t for t in targets if t.name == node), None)
    settings = ssh_settings(fleet)
    if target is None or target.ssh is None or settings is None:
        raise PermanentError(f"{node}: not in {fleet_file}, or the fleet has no SSH settings")
    return NodeActions(node, target.ssh, settings)


# --------------------------------------------------------------------------- reading state


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node's remediation record as the API server has it, with the version it was read at."""

    record: NodeRecord | None
    resource_version: str
    unschedulable: bool
    managed: bool


@task(name="read-node-record", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only, timeout_seconds=60)
def read_node_record(kubeconfig: str, node: str) -> NodeSnapshot:
    """The record stored in the Node's annotations. Raises `CorruptRecord`: never start afresh."""
    with _nodes(kubeconfig) as kube:
        view = kube.get_node(node)
    return NodeSnapshot(NodeRecord.from_annotations(view.annotations), view.resource_version,
                        view.unschedulable, _opted_in(view))


def _opted_in(view: NodeView) -> bool:
    return is_managed(view) and view.annotations.get(OPT_OUT_ANNOTATION, "").lower() != "true"


class RecordChangedElsewhere(PermanentError):
    """Another workflow wrote this node's record since we read it: stop, do not overwrite it."""


@task(name="write-node-record", cache_policy=NO_CACHE, retries=5, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only, timeout_seconds=60)
def write_node_record(kubeconfig: str, node: str, record: NodeRecord, previous: NodeRecord | None) -> str:
    """Persist `record` with optimistic concurrency; the node's new resourceVersion.

    The write is conditional on the node's resourceVersion just read, and only made when
    the record stored there is still `previous` (the one this run last read or wrote): a
    second workflow on the same node makes this fail instead of silently losing its step.
    """
    annotations = record.to_annotations()
    assert set(annotations) <= set(ANNOTATION_KEYS)
    with _nodes(kubeconfig) as kube:
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
      retry_condition_fn=_transient_only, timeout_seconds=120)
def build_fleet_view(kubeconfig: str, breaker_override_until: datetime | None = None) -> FleetView:
    """The budget's and the breaker's view, from every Node's annotations and cordon state."""
    with _nodes(kubeconfig) as kube:
        views = kube.list_nodes()
    return fleet_view_from(views, breaker_override_until)


def fleet_view_from(views: list[NodeView], breaker_override_until: datetime | None = None) -> FleetView:
    records: list[NodeRecord] = []
    unhealthy: list[UnhealthyObservation] = []
    for view in views:
        try:
            record = NodeRecord.from_annotations(view.annotations)
        except CorruptRecord:
            _log().warning("node=%s unreadable remediation record: left out of the fleet view", view.name)
            continue
        if record is None:
            continue
        records.append(record)
        # Each incident was opened on a sweep that found its node needing remediation.
        unhealthy.append(UnhealthyObservation(record.node, record.opened_at))
    gpu_nodes = sum(1 for v in views if v.gpu_capacity > 0) or len(views)
    return FleetView(
        gpu_nodes=gpu_nodes,
        records=tuple(records),
        unschedulable=frozenset(v.name for v in views if v.unschedulable),
        unhealthy=tuple(unhealthy),
        opted_out=frozenset(v.name for v in views if not _opted_in(v)),
        breaker_override_until=breaker_override_until,
    )


@dataclass(frozen=True, slots=True)
class FreshEvidence:
    assessment: NodeAssessment
    observed_at: datetime
    bus_ids: dict[int, str] = field(default_factory=dict)  # GPU index -> PCI bus id, as just read


@task(name="assess-node-now", cache_policy=NO_CACHE, timeout_seconds=300)
def assess_node_now(fleet_file: str, node: str) -> FreshEvidence:
    """Collect the node again and assess it: no destructive step without a fresh, parsed reason."""
    fleet, targets = resolve_fleet(fleet_file)
    target = [t for t in targets if t.name == node]
    if not target:
        raise PermanentError(f"{node} is not in the fleet file {fleet_file}")
    (telemetry,) = collect_nodes(fleet, target, depth="full", concurrency=1)
    assessment = assess_node(telemetry, fleet.health_policy())
    bus_ids = {g.index: g.pci_bus_id for g in telemetry.gpus if g.pci_bus_id}
    _log().info("node=%s evidence=%s/%s", node, assessment.verdict, assessment.action)
    return FreshEvidence(assessment, telemetry.collected_at, bus_ids)


# --------------------------------------------------------------------------- acting steps



@task(name="cordon-node", timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def cordon_node(kubeconfig: str, node: str, step: Cordon) -> StepOutcome:
    try:
        with _nodes(kubeconfig) as kube:
            result = kube.cordon(node, taint_value=str(step.repair), manager=MANAGER)
    except PermanentError as err:
        return Failed(str(err))
    _log().info("node=%s step=%s cordoned already_cordoned_by_other=%s", node, step.key,
                result.already_cordoned_by_other)
    return Succeeded("already cordoned by someone else; tainted" if result.already_cordoned_by_other
                     else "cordoned and tainted")


@task(name="drain-node", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def drain_node(kubeconfig: str, node: str, step: Drain, gpu_pods_only: bool = False) -> StepOutcome:
    try:
        with _nodes(kubeconfig) as kube:
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


@task(name="capture-boot-id", timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def capture_boot_id(fleet_file: str, node: str, step: CaptureBootId) -> StepOutcome:
    try:
        return BootIdRead(_actions(fleet_file, node).boot_id())
    except PermanentError as err:
        return Failed(str(err))


@task(name="reset-gpus", timeout_seconds=600, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def reset_gpus(fleet_file: str, node: str, step: ResetGpus, bus_ids: dict[int, str]) -> StepOutcome:
    """`nvidia-smi --gpu-reset` per GPU, addressed by PCI bus id (indices move when a GPU falls off)."""
    missing = [i for i in step.indices if i not in bus_ids]
    if missing:
        return Failed(f"no PCI bus id known for GPU(s) {missing}: will not reset by index")
    actions = _actions(fleet_file, node)
    done = []
    try:
        for index in step.indices:
            outcome = actions.reset_gpu(bus_ids[index])
            done.append(f"GPU {index} ({bus_ids[index]}): {outcome.message.strip()[:80]}")
            _log().info("node=%s step=%s action=reset gpu=%s bus=%s", node, step.key, index, bus_ids[index])
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("; ".join(done))


def _reboot_outcome(actions: NodeActions, old: str, timeout_s: float) -> StepOutcome:
    try:
        new = actions.wait_until_back(old, timeout_s=timeout_s, poll_s=0.5)
    except TransientError as err:
        return Failed(str(err))
    return Rebooted(new)


@task(name="reboot-node", timeout_seconds=3600, cache_policy=NO_CACHE)
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


@task(name="verify-rebooted", timeout_seconds=3600, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def verify_rebooted(fleet_file: str, node: str, step: VerifyRebooted) -> StepOutcome:
    """Did an interrupted reboot take effect? Never reboots."""
    try:
        current = _actions(fleet_file, node).boot_id()
    except PermanentError as err:
        return Failed(str(err))
    if current == step.expected_old_boot_id:
        return NotRebooted("boot id unchanged")
    return Rebooted(current)


@task(name="run-diagnostics", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
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


@task(name="readmit-node", timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def readmit_node(kubeconfig: str, node: str, step: Readmit) -> StepOutcome:
    try:
        with _nodes(kubeconfig) as kube:
            kube.uncordon(node, we_cordoned=step.uncordon)
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("taint removed" + (", uncordoned" if step.uncordon else "; cordon left to its owner"))


@task(name="cancel-incident", timeout_seconds=120, cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only)
def cancel_incident(kubeconfig: str, node: str, step: Cancel) -> StepOutcome:
    """Someone uncordoned the node by hand: remove our taint only, never touch the cordon."""
    try:
        with _nodes(kubeconfig) as kube:
            kube.uncordon(node, we_cordoned=False)
    except PermanentError as err:
        return Failed(str(err))
    return Succeeded("our taint removed")


# --------------------------------------------------------------------------- tickets


@dataclass(frozen=True, slots=True)
class TicketRequest:
    node: str
    incident: str
    kind: ApprovalKind
    summary: str
    description: str
    dedupe_key: str  # the incident id: the desk returns the existing ticket for it, if any
    awaiting_decision: bool
    labels: tuple[str, ...] = ()
    rma: str | None = None


class TicketDesk(Protocol):
    """Where tickets go (the Jira outbox). `file` is idempotent by `dedupe_key`; returns the key.

    Raises `TransientError` while the desk cannot take the ticket (Jira down): the request
    must then be kept (outbox) or the step retried later; never filed twice.
    """

    def file(self, request: TicketRequest) -> str: ...


_desk_factories: dict[str, Callable[[], TicketDesk]] = {}


def register_ticket_desk(name: str, factory: Callable[[], TicketDesk]) -> None:
    """Make a ticket desk available to `file_ticket` under `name` (the flow's `tickets` parameter)."""
    _desk_factories[name] = factory


def ticket_desk(name: str) -> TicketDesk:
    if name in _desk_factories:
        return _desk_factories[name]()
    try:  # the Jira adapter, when installed: a settings file path names it
        from gpumedic.adapters import ticket_outbox
    except ImportError as err:
        raise PermanentError(f"no ticket desk {name!r}: the Jira outbox adapter is not installed") from err
    opener = getattr(ticket_outbox, "desk_from_settings", None)
    if opener is None:
        raise PermanentError("gpumedic.adapters.ticket_outbox has no desk_from_settings(path)")
    desk: TicketDesk = opener(name)
    return desk


@task(name="file-ticket", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=_transient_only, timeout_seconds=300)
def file_ticket(tickets: str, request: TicketRequest) -> StepOutcome:
    try:
        key = ticket_desk(tickets).file(request)
    except PermanentError as err:
        return Failed(str(err))
    _log().info("node=%s incident=%s action=ticket key=%s", request.node, request.incident, key)
    return TicketFiled(key)


def ticket_request(record: NodeRecord, step: FileTicket) -> TicketRequest:
    """The ticket for `step`: the evidence, the approval and the incident's history."""
    lines = [f"Node: {record.node}", f"Incident: {record.incident_id}", f"GPUs: {list(record.gpus)}", "",
             "Evidence:"]
    lines += [f"- {e}" for e in step.evidence] or ["- (none recorded)"]
    if record.approval is not None:
        a = record.approval
        lines += ["", f"Decision: {a.decision} by {a.approver or '-'} at {a.time.isoformat()}: {a.reason}"]
    lines += ["", "History:"] + [f"- {h.time.isoformat()} {h.from_state} -> {h.to_state} [{h.step}] {h.note}"
                                  for h in record.history]
    return TicketRequest(
        node=record.node, incident=record.incident_id, kind=step.kind, summary=step.summary,
        description="\n".join(lines), dedupe_key=step.dedupe_key, awaiting_decision=step.awaiting_decision,
        labels=("gpumedic", f"node-{record.node}", f"incident-{record.incident_id}"), rma=step.rma,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
