"""Remediate one GPU node, as the runbook reads: read the record on the Node, look again,
decide the next step, record the intent, do it, record the outcome; until the node is
readmitted, ticketed, or has to wait.

The decisions are the pure state machine's (`gpumedic.domain.remediation.next_step`);
this flow only fetches what it needs to decide, runs the step's task and persists the
record on the Node (the source of truth a restarted run resumes from). The policy is the
fleet file's `fleet.remediation`, with the run's `policy` parameter merged on top.

**The budget lock.** Deciding a `Cordon` and recording it happen under the Prefect global
concurrency limit `gpumedic-budget` (one slot, created when missing): the fleet view is read
again inside the lock, so two runs never both spend the last slot of the disruption budget.

**Human approval** (replace, inspect, breaker override) is asked only after the record says
`awaiting_approval` (the intent is persisted before the question), and waits in one of two ways:

- *Suspension*, when this run is a top-level run of a deployment (the server refuses to
  suspend subflows and runs without a deployment). The run calls `suspend_flow_run` with the
  key `<incident>-<kind>` and its process exits: nothing is held while the human thinks. On
  resume the run starts again from the top, reads the record from the Node, reaches the same
  question and the same key, and `suspend_flow_run` returns the submitted `ReplacementDecision`
  at once (the server remembers the fired key; the run's flow-run input holds the answer).
- *Pause in a subflow* (`request_replacement_approval`), everywhere else (tests, the in-process
  demo, a run called as a subflow). The subflow blocks, polling; a pause that times out fails the
  subflow and never the parent, which treats it as the timeout (catching the timeout inside the
  paused flow itself would still fail that run).

**Timeouts.** A suspended run that nobody resumes before its timeout is failed by the server
(its `FailExpiredPauses` service: "The flow was suspended and never resumed"); a resume after
the deadline is refused (`FlowPauseTimeout`). None of our code runs then, so the timeout's
outcome is applied by the next run for the node: when suspending, the run schedules one run of
the same deployment just after the deadline (idempotency key `<incident>-<kind>-timeout`), and
any other run for the node does the same (`resume-remediations` starts one for a request past
its timeout, and from then on the sweep raises `gpumedic.node.unhealthy` again for the node if it is
still broken: before the deadline a sweep that can read the records holds those events back). A
run that finds the request older than the approval timeout, and no live run still waiting for it,
applies `ApprovalTimedOut`: a replace/inspect ticket is filed marked "awaiting decision"; a
breaker override that timed out halts the node while the breaker stays open. A run that finds
another run already waiting for the same decision does not ask a second time: it stops with
`waiting = "approval: ..."`.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.states import State

from gpumedic.adapters.store import StoredForecast, shared_window
from gpumedic.config import ClusterAccess, ConfigError, load_fleet_settings
from gpumedic.domain.budget import FleetView, RemediationPolicy
from gpumedic.domain.remediation import (
    ApprovalKind,
    ApprovalReceived,
    ApprovalTimedOut,
    Cancel,
    CaptureBootId,
    CloseIncident,
    Cordon,
    Done,
    Drain,
    FileTicket,
    Halt,
    NodeRecord,
    Readmit,
    Reboot,
    RemediationState,
    RequestApproval,
    ResetGpus,
    RunDiagnostics,
    Step,
    StepOutcome,
    Succeeded,
    VerifyRebooted,
    WaitForBudget,
    WaitForEvidence,
    WaitForProbation,
    apply_outcome,
    approval_deadline,
    approval_requested_at,
    begin_step,
    failure_ticket,
    next_step,
    open_incident,
    should_open_incident,
    simulated_outcome,
)
from gpumedic.remediation_status import fleet_status, headline, table_rows
from gpumedic.run_names import REMEDIATION_RUN, flow_run_named
from tasks.forecast import read_node_forecast
from tasks.node_conditions import publish_node_conditions
from tasks.remediation import (
    FreshEvidence,
    assess_node_now,
    budget_lock,
    build_fleet_view,
    cancel_incident,
    capture_boot_id,
    cordon_node,
    drain_node,
    file_ticket,
    find_waiting_approval,
    fleet_cluster,
    read_node_record,
    readmit_node,
    reboot_node,
    remediation_policy,
    remember_incident,
    reset_gpus,
    run_diagnostics,
    schedule_approval_check,
    verify_rebooted,
    write_node_record,
)

AUTO_APPROVER = "auto-approve (demo)"
MAX_STEPS = 60
# The check run for an approval timeout starts this long after the deadline, once the
# server has failed the expired suspension.
APPROVAL_CHECK_GRACE = timedelta(seconds=30)

# Test hook: called as hook(point, step_key) at "begun" (intent persisted), "executed" (the
# step ran, outcome not applied) and "applied" (outcome persisted). A test raises from it
# to play an orchestrator that dies at that point.
crash_hook: Callable[[str, str], None] | None = None


class ReplacementDecision(RunInput):
    """The approval form shown in the Prefect UI."""

    approve: bool
    approver: str
    reason: str
    rma_reference: str | None = None


@dataclass(frozen=True, slots=True)
class StillWaiting:
    """No decision yet, and this run is not the one waiting for it: stop, keep the record as it is."""

    reason: str


def _hook(point: str, key: str) -> None:
    if crash_hook is not None:
        crash_hook(point, key)


# --------------------------------------------------------------------------- approval


def evidence_markdown(
    record: NodeRecord, step: RequestApproval | FileTicket, forecast: Sequence[StoredForecast] = ()
) -> str:
    what = {ApprovalKind.REPLACE: "replace its GPU hardware (RMA ticket)",
            ApprovalKind.INSPECT: "hand it to a human for inspection (ticket)",
            ApprovalKind.BREAKER: "override the open circuit breaker for this incident"}[step.kind]
    diags = [h for h in record.history if h.step.startswith("diag:")]
    title = "Approval needed" if isinstance(step, RequestApproval) else "Evidence"
    lines = [
        f"# {title}: {record.node}",
        "",
        f"gpumedic proposes to **{what}**. Incident `{record.incident_id}`, state `{record.state}`, "
        f"repair rung `{record.repair}`, GPUs: {', '.join(map(str, record.gpus)) or 'none'}.",
        "",
        "## Evidence",
        *([f"- {e}" for e in step.evidence] or ["- (none recorded)"]),
        "",
        "## Diagnostics",
        *([f"- {h.time:%Y-%m-%d %H:%M:%S} {h.note}" for h in diags] or ["- none run in this incident"]),
        "",
        f"## Failure forecast (risk of failure {shared_window(forecast)})" if forecast
        else "## Failure forecast",
        *([f"- {'node' if f.gpu is None else f'GPU {f.gpu}'}: {f.risk:.0%}"
           + (f" ({'; '.join(f.factors[:3])})" if f.factors else "")
           + f", computed {f.computed_at:%Y-%m-%d %H:%M} UTC" for f in forecast[:8]]
          or ["- no forecast for this node yet"]),
        "",
        "## History",
        "| time | from | to | step | note |",
        "|---|---|---|---|---|",
        *[f"| {h.time:%H:%M:%S} | {h.from_state} | {h.to_state} | {h.step} | {h.note} |" for h in record.history],
        "",
    ]
    if isinstance(step, RequestApproval):
        lines.append("Resume this run with **approve**, your name, a reason and (for a replacement) the RMA "
                     "reference.")
    return "\n".join(lines)


def ticket_markdown(record: NodeRecord, step: FileTicket) -> str:
    """The ticket's description: the evidence, then the decision (or that none came)."""
    a = record.approval
    if record.state is RemediationState.FAILED:
        decision = (f"**Automated remediation stopped**: {record.outcome}. The node is left out of service; "
                    "a human must take over.")
    elif step.awaiting_decision or a is None:
        decision = "**Awaiting decision**: nobody approved or rejected the request in time."
    else:
        decision = f"**{a.decision}** by {a.approver} at {a.time:%Y-%m-%d %H:%M:%S} UTC: {a.reason}" + (
            f" (RMA {a.rma})" if a.rma else "")
    return evidence_markdown(record, step) + "\n## Decision\n" + decision + "\n"


@flow(name="request-replacement-approval", log_prints=True, flow_run_name=flow_run_named("{kind}-decision-{node}"),
      description="Wait for a human's decision on a replacement, with the evidence in the form.")
def request_replacement_approval(
    node: str, incident: str, kind: str, description: str, timeout_s: int, poll_interval_s: int = 5,
    key: str | None = None,
) -> dict[str, Any]:
    """Pause until a human submits a `ReplacementDecision`; fails when the pause times out.

    Args:
        node: The node the decision is about.
        incident: Its remediation incident (or forecast order).
        kind: What is asked: replace, inspect, breaker or order.
        description: The evidence, in markdown, shown in the form.
        timeout_s: Seconds to wait for a decision before the run fails.
        poll_interval_s: Seconds between checks for a decision.
        key: The pause key the decision is stored under; empty: derived from incident and kind.
    """
    logger = get_run_logger()
    logger.info("node=%s incident=%s waiting up to %ss for a %s decision", node, incident, timeout_s, kind)
    decision = pause_flow_run(
        # Only the description: an initial value would make its field optional in the form's schema.
        wait_for_input=ReplacementDecision.with_initial_data(description=description),
        timeout=timeout_s, poll_interval=poll_interval_s, key=key or approval_key(incident, kind),
    )
    logger.info("node=%s incident=%s decision approve=%s by %s", node, incident, decision.approve, decision.approver)
    return {"approve": decision.approve, "approver": decision.approver, "reason": decision.reason,
            "rma": decision.rma_reference}


def approval_key(incident: str, kind: str) -> str:
    """The pause/suspension key of one decision: stable across runs (the server keys input by it)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{incident}-{kind}".lower())  # input keys: lower case, digits, dashes


def approval_wait_mode(flow_run: FlowRun | None) -> Literal["suspend", "pause"]:
    """Suspend where the server allows it (a top-level run of a deployment), else pause in a subflow."""
    if flow_run is not None and flow_run.deployment_id is not None and flow_run.parent_task_run_id is None:
        return "suspend"
    return "pause"


def _decision(d: ReplacementDecision) -> ApprovalReceived:
    return ApprovalReceived(d.approver, bool(d.approve), d.reason, d.rma_reference)


def _ask(record: NodeRecord, step: RequestApproval, *, auto_approve: bool, timeout_s: int | None,
         poll_interval_s: int, forecast: Sequence[StoredForecast] = ()) -> StepOutcome | StillWaiting:
    logger = get_run_logger()
    if auto_approve:
        return ApprovalReceived(AUTO_APPROVER, True, "demo run with --auto-approve", f"RMA-{record.incident_id}"
                                if step.kind is ApprovalKind.REPLACE else None)
    key = approval_key(record.incident_id, step.kind)
    ctx = FlowRunContext.get()
    this_run = ctx.flow_run if ctx is not None else None
    mode = approval_wait_mode(this_run)
    description = evidence_markdown(record, step, forecast)
    if mode == "suspend" and this_run is not None and key in (this_run.empirical_policy.pause_keys or set()):
        # Resumed: this run suspended for this decision and was resumed with the answer.
        return _decision(suspend_flow_run(wait_for_input=ReplacementDecision.with_initial_data(
            description=description), key=key))
    deadline = approval_deadline(record, step, timedelta(seconds=timeout_s) if timeout_s is not None else None)
    waiting = find_waiting_approval(key, [remediate_node.name, request_replacement_approval.name],
                                    exclude=str(this_run.id) if this_run else None)
    if waiting is not None and waiting.resumed:
        return StillWaiting(f"the {step.kind} decision was given to flow run {waiting.name} ({waiting.id}), "
                            "which applies it")
    if waiting is not None:
        return StillWaiting(f"a {step.kind} decision is awaited in flow run {waiting.name} ({waiting.id}) until "
                            f"{(waiting.timeout or deadline):%Y-%m-%d %H:%M:%S} UTC")
    remaining = (deadline - datetime.now(UTC)).total_seconds()
    if remaining <= 0:
        logger.warning("node=%s incident=%s no %s decision since %s: timed out", record.node, record.incident_id,
                       step.kind, approval_requested_at(record, step).isoformat())
        return ApprovalTimedOut()
    create_markdown_artifact(key=f"approval-{_slug(record.node)}", markdown=description,
                             description=f"Evidence for the {step.kind} approval of {record.node} "
                                         f"({record.incident_id})")
    if mode == "suspend" and this_run is not None and this_run.deployment_id is not None:
        parameters = {**this_run.parameters, "incident": record.incident_id}
        schedule_approval_check(str(this_run.deployment_id), parameters, deadline + APPROVAL_CHECK_GRACE,
                                f"{key}-timeout", this_run.name)
        logger.info("node=%s incident=%s suspending for a %s decision (key %s) until %s", record.node,
                    record.incident_id, step.kind, key, deadline.isoformat())
        # Raises `Pause` now (the process exits); returns the submitted input once resumed.
        return _decision(suspend_flow_run(wait_for_input=ReplacementDecision.with_initial_data(
            description=description), key=key, timeout=max(1, math.ceil(remaining))))
    state: State[Any] = request_replacement_approval(
        record.node, record.incident_id, str(step.kind), description, max(1, math.ceil(remaining)), poll_interval_s,
        key=key, return_state=True,
    )
    if state.is_completed():
        d = state.result()
        return ApprovalReceived(d["approver"], bool(d["approve"]), d["reason"], d["rma"])
    if datetime.now(UTC) >= deadline:  # the server fails a timed-out pause with its own message
        logger.warning("node=%s incident=%s no %s decision by %s: timed out", record.node, record.incident_id,
                       step.kind, deadline.isoformat())
        return ApprovalTimedOut()
    # It ended before its deadline without a decision (it could not pause, it was cancelled):
    # not a timeout. The record still says awaiting approval; the next run asks again.
    raise RuntimeError(f"the {step.kind} approval of {record.node} ended {state.type} before its deadline: "
                       f"{state.message}")


# --------------------------------------------------------------------------- one step


def _execute(step: Any, record: NodeRecord, evidence: FreshEvidence, *, fleet_file: str, cluster: ClusterAccess,
             tickets: str, auto_approve: bool, approval_timeout_s: int | None, poll_interval_s: int
             ) -> StepOutcome | StillWaiting:
    node = record.node
    match step:
        case Cordon():
            return cordon_node(cluster, node, step)
        case Drain():
            return drain_node(cluster, node, step)
        case CaptureBootId():
            return capture_boot_id(fleet_file, node, step)
        case ResetGpus():
            return reset_gpus(fleet_file, node, step, evidence.bus_ids)
        case Reboot():
            return reboot_node(fleet_file, node, step)
        case VerifyRebooted():
            return verify_rebooted(fleet_file, node, step)
        case RunDiagnostics():
            return run_diagnostics(fleet_file, node, step)
        case Readmit():
            readmitted = readmit_node(cluster, node, step)
            if isinstance(readmitted, Succeeded):
                _tell_the_node(fleet_file, cluster, evidence)
            return readmitted
        case Cancel():
            return cancel_incident(cluster, node, step)
        case RequestApproval():
            return _ask(record, step, auto_approve=auto_approve, timeout_s=approval_timeout_s,
                        poll_interval_s=poll_interval_s, forecast=read_node_forecast(fleet_file, node))
        case FileTicket():
            return file_ticket(fleet_file, tickets, record, step, evidence.assessment, ticket_markdown(record, step))
        case CloseIncident():
            return Succeeded()
    raise TypeError(f"no task for {type(step).__name__}")


# --------------------------------------------------------------------------- the flow


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@flow(name="remediate-node", log_prints=True, flow_run_name=flow_run_named(REMEDIATION_RUN),
      description="Remediate one node: cordon, drain, reset its GPUs, diagnose and readmit, or escalate to a human "
      "for replacement approval and a Jira ticket. Every step is recorded on the Node; a re-run resumes.")
def remediate_node(
    node: str,
    incident: str | None = None,
    fleet_file: str = "fleet.yaml",
    kubeconfig: str = "",
    dry_run: bool = False,
    auto_approve: bool = False,
    policy: dict[str, Any] | None = None,
    tickets: str = "jira",
    approval_timeout_s: int | None = None,
    approval_poll_s: int = 5,
    evidence_retries: int = 3,
    evidence_retry_s: float = 5.0,
) -> dict[str, Any]:
    """Take `node` through its remediation incident as far as it can go now.

    Returns `{node, incident, final_state, outcome, waiting, actions, ticket}`. `waiting`
    names what stopped the run short of a closed incident (budget, evidence, probation, an
    approval awaited elsewhere, a halt), or is None. Re-running for the same node resumes
    from the record on the Node.

    Args:
        node: The Kubernetes node to remediate.
        incident: The incident to resume or open under this id; empty opens a new one (a node's open incident
            is always resumed, whatever is asked).
        fleet_file: Path of the fleet YAML file on the worker: how to reach the node for fresh evidence, the
            remediation policy, the Jira project.
        kubeconfig: Path of a kubeconfig on the worker (cordon, drain, the incident record on the Node). Empty:
            the fleet file's `kubernetes:` block, else $GPUMEDIC_KUBECONFIG, else the client's default. A file
            other than the one the fleet file names is refused: sweeps and remediation act on one cluster.
        dry_run: Decide and log every step, and change nothing: no cordon, eviction, reset, reboot or ticket.
        auto_approve: Approve replacements without asking a human. For demos and tests only.
        policy: Overrides of the fleet file's `fleet.remediation` keys (disruption budget, loop caps, timeouts).
        tickets: The ticket desk: "jira" files through the durable outbox into the fleet file's `fleet.jira`
            (token from the environment variable it names).
        approval_timeout_s: Seconds a human has to approve or reject; empty: the policy's approval timeout.
        approval_poll_s: Seconds between checks for a decision while the run waits paused.
        evidence_retries: Fresh-evidence reads allowed to fail before the run stops (a later run resumes).
        evidence_retry_s: Seconds between those reads.
    """
    logger = get_run_logger()
    rules = remediation_policy(fleet_file, policy)
    cluster = fleet_cluster(fleet_file, kubeconfig)
    logger.info("node=%s cluster: %s", node, cluster)
    snapshot = read_node_record(cluster, node)
    record, stored = snapshot.record, snapshot.record
    if dry_run and record is not None and not record.closed:
        logger.info("node=%s dry run: incident %s is already open (%s); nothing to simulate", node,
                    record.incident_id, record.state)
        return _result(record, "an incident is already open", [])
    executed: list[str] = []
    waiting: str | None = None
    evidence_misses = 0
    evidence: FreshEvidence | None = None
    stale_evidence = True
    remembered = False  # the incident is in the store's prior incidents (for the forecast)

    for _ in range(MAX_STEPS):
        fleet = build_fleet_view(cluster)
        if evidence is None or stale_evidence or (datetime.now(UTC) - evidence.observed_at).total_seconds() > 60:
            evidence = assess_node_now(fleet_file, node)
            stale_evidence = False
        now = datetime.now(UTC)
        if record is not None and record.closed and failure_ticket(record) is not None:
            pass  # the incident failed while holding the node: hand it to a human (a ticket) first
        elif record is None or record.closed:
            if record is not None and (executed or (incident is not None and record.incident_id == incident)):
                break  # this incident is over (in this run, or a re-run of it): nothing more to do
            decision = should_open_incident(record, evidence.assessment, observed_at=evidence.observed_at, now=now,
                                            policy=rules, fleet=fleet)
            if not decision.open:
                logger.info("node=%s no incident opened: %s", node, decision.reason)
                return _result(record, decision.reason, executed, opened=False)
            record = open_incident(evidence.assessment, incident_id=incident or _new_incident(node), now=now,
                                   policy=rules, prior=record, dry_run=dry_run)
            stored = _persist(cluster, record, stored, dry_run)
            logger.info("node=%s incident=%s opened: %s -> %s", node, record.incident_id, evidence.assessment.action,
                        record.repair)
            if not dry_run:
                _remember(fleet_file, record, evidence, resumed=False)
                remembered = True
        elif incident is not None and record.incident_id != incident:
            logger.info("node=%s resuming the node's open incident %s (asked for %s)", node, record.incident_id,
                        incident)
        if not (dry_run or remembered or record.closed):
            _remember(fleet_file, record, evidence, resumed=True)  # a crash may have come before the record
            remembered = True

        step = _decide(record, evidence, now, rules, fleet)
        if isinstance(step, Done):
            break
        if isinstance(step, WaitForEvidence):
            evidence_misses += 1
            if evidence_misses > evidence_retries:
                waiting = f"evidence: {step.reason}"
                break
            logger.info("node=%s incident=%s waiting for evidence (%s)", node, record.incident_id, step.reason)
            time.sleep(evidence_retry_s)
            stale_evidence = True
            continue
        if isinstance(step, WaitForBudget):
            waiting = f"budget: {step.reason}"
            break
        if isinstance(step, WaitForProbation):
            waiting = f"probation: {step.reason}"
            break
        if isinstance(step, Halt):
            waiting = f"halted: {step.reason}"
            break
        evidence_misses = 0

        if isinstance(step, Cordon) and not dry_run:
            # The budget is spent by the cordon's record: decide and record it one node at a
            # time fleet-wide, on a fleet view read inside the lock.
            with budget_lock():
                now = datetime.now(UTC)
                step = _decide(record, evidence, now, rules, build_fleet_view(cluster))
                if isinstance(step, Cordon):
                    record = begin_step(record, step, now=now)
                    stored = _persist(cluster, record, stored, dry_run)
            if not isinstance(step, Cordon):
                logger.info("node=%s incident=%s the fleet changed while deciding: %s", node, record.incident_id,
                            type(step).__name__)
                continue  # the budget was spent meanwhile (or another wait): handled from the top
        else:
            record = begin_step(record, step, now=now)
            stored = _persist(cluster, record, stored, dry_run)
        _hook("begun", step.key)
        if dry_run:
            logger.info("node=%s incident=%s would do %s: %s", node, record.incident_id, step.key, step)
            outcome: StepOutcome | StillWaiting = simulated_outcome(step)
        else:
            logger.info("node=%s incident=%s step=%s %s", node, record.incident_id, step.key, type(step).__name__)
            outcome = _execute(step, record, evidence, fleet_file=fleet_file, cluster=cluster, tickets=tickets,
                               auto_approve=auto_approve, approval_timeout_s=approval_timeout_s,
                               poll_interval_s=approval_poll_s)
        if isinstance(outcome, StillWaiting):
            waiting = f"approval: {outcome.reason}"
            break
        _hook("executed", step.key)
        # The node's health may have changed: look again before the next decision.
        stale_evidence = stale_evidence or isinstance(step, ResetGpus | Reboot | VerifyRebooted | RunDiagnostics)
        record = apply_outcome(record, step, outcome, now=datetime.now(UTC))
        stored = _persist(cluster, record, stored, dry_run)
        executed.append(f"{step.key}: {record.history[-1].note}")
        _hook("applied", step.key)
    else:
        waiting = f"stopped after {MAX_STEPS} steps"

    assert record is not None
    _publish(record, cluster, dry_run, rules)
    logger.info("node=%s incident=%s state=%s outcome=%s waiting=%s", node, record.incident_id, record.state,
                record.outcome, waiting)
    return _result(record, waiting, executed)


def _tell_the_node(fleet_file: str, cluster: ClusterAccess, evidence: FreshEvidence) -> None:
    """The readmitted Node's `GpuUnhealthy` condition from the evidence it was readmitted on, where the
    fleet's sweeps write conditions: else it would say the GPUs need repair until the next sweep (a
    day, on a fleet swept nightly). A failure to write is logged; the node stays readmitted."""
    try:
        kubernetes = load_fleet_settings(fleet_file).kubernetes
    except ConfigError as err:  # read a moment ago; edited since: the next sweep writes the condition
        get_run_logger().warning("node=%s condition not written after readmission: %s", evidence.assessment.node, err)
        return
    if kubernetes is None or not kubernetes.node_conditions:
        return
    state = publish_node_conditions(kubernetes, cluster, [evidence.assessment], [], evidence.observed_at,
                                    return_state=True)
    if not state.is_completed():
        get_run_logger().warning("node=%s condition not written after readmission: %s", evidence.assessment.node,
                                 state.message)


def _remember(fleet_file: str, record: NodeRecord, evidence: FreshEvidence, *, resumed: bool) -> None:
    """Record the incident for the forecast; a failure to do so is logged and the repair goes on."""
    state = remember_incident(fleet_file, record, evidence.assessment, resumed=resumed, return_state=True)
    if not state.is_completed():
        get_run_logger().warning("node=%s incident=%s not recorded for the forecast: %s", record.node,
                                 record.incident_id, state.message)


def _decide(record: NodeRecord, evidence: FreshEvidence, now: datetime, rules: RemediationPolicy,
            fleet: FleetView) -> Step:
    return next_step(record, latest=evidence.assessment, observed_at=evidence.observed_at, now=now, policy=rules,
                     fleet=_with(fleet, record))


def _with(fleet: FleetView, record: NodeRecord) -> FleetView:
    """The fleet view with this run's own record (newer than what was listed, or a dry run's)."""
    others = tuple(r for r in fleet.records if r.node != record.node)
    return FleetView(fleet.gpu_nodes, (*others, record), fleet.unschedulable, fleet.unhealthy, fleet.opted_out,
                     fleet.breaker_override)


def _persist(cluster: ClusterAccess, record: NodeRecord, stored: NodeRecord | None, dry_run: bool) -> NodeRecord | None:
    """Write the record to the Node (never in a dry run, which changes nothing)."""
    if dry_run:
        return stored
    write_node_record(cluster, record.node, record, stored)
    return record


def _new_incident(node: str) -> str:
    return f"{node}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _result(record: NodeRecord | None, waiting: str | None, executed: list[str], *, opened: bool = True
            ) -> dict[str, Any]:
    if record is None:
        return {"node": None, "incident": None, "final_state": "in_service", "outcome": None, "waiting": waiting,
                "actions": executed, "ticket": None, "history": []}
    return {
        "node": record.node,
        "incident": record.incident_id,
        "final_state": str(record.state),
        "outcome": record.outcome,
        "waiting": waiting,
        "actions": executed,
        "ticket": record.ticket_key,
        "history": [f"{h.step}: {h.from_state} -> {h.to_state}: {h.note}" for h in record.history],
        "dry_run": record.dry_run,
    }


def timeline_markdown(record: NodeRecord) -> str:
    lines = [
        f"# Incident {record.incident_id}: {record.node}" + (" (dry run)" if record.dry_run else ""),
        "",
        f"- state: **{record.state}**; outcome: {record.outcome or 'open'}",
        f"- requested: {record.requested}; rung: {record.repair}; attempt {record.attempt}; "
        f"GPUs: {', '.join(map(str, record.gpus)) or 'none'}",
        f"- ticket: {record.ticket_key or '-'}",
        "",
        "## Reasons",
        *[f"- {r}" for r in record.reasons],
        "",
        "## Timeline",
        "| time (UTC) | from | to | step | note |",
        "|---|---|---|---|---|",
        *[f"| {h.time.astimezone(UTC):%Y-%m-%d %H:%M:%S} | {h.from_state} | {h.to_state} | {h.step} | {h.note} |"
          for h in record.history],
    ]
    if record.approval is not None:
        a = record.approval
        lines += ["", f"Approval ({a.kind}): {a.decision} by {a.approver or '-'}: {a.reason}"
                  + (f" (RMA {a.rma})" if a.rma else "")]
    return "\n".join(lines)


def _publish(record: NodeRecord, cluster: ClusterAccess, dry_run: bool, rules: RemediationPolicy) -> None:
    create_markdown_artifact(key=f"incident-{_slug(record.node)}", markdown=timeline_markdown(record),
                             description=f"Remediation timeline of {record.node}, incident {record.incident_id}")
    try:
        fleet = build_fleet_view(cluster)
    except Exception as err:  # the table is a report; the incident is already persisted
        get_run_logger().warning("fleet remediation table not updated: %s", err)
        return
    records = {r.node: r for r in fleet.records}
    if dry_run:
        records[record.node] = record
    status = fleet_status(replace(fleet, records=tuple(records.values())), rules, datetime.now(UTC),
                          include_closed=True)
    create_table_artifact(key="fleet-remediation",
                          table=table_rows(status) or [{"node": "-", "state": "no incidents"}],
                          description="Remediation state of every node with a record (`gpumedic remediation "
                                      "status` prints the same). " + "; ".join(headline(status)))

