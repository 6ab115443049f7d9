"""Remediate one GPU node, as the runbook reads: read the record on the Node, look again,
decide the next step, record the intent, do it, record the outcome; until the node is
readmitted, ticketed, or has to wait.

The decisions are the pure state machine's (`gpumedic.domain.remediation.next_step`);
this flow only fetches what it needs to decide, runs the step's task and persists the
record on the Node (the source of truth a restarted run resumes from).

Human approval (replace, inspect, breaker override) runs in the subflow
`request_replacement_approval`, which pauses for a `ReplacementDecision` form in the
Prefect UI. Its final state is what the parent branches on: a pause that times out
fails the subflow, never the parent (catching the timeout inside the paused flow itself
would still fail that run).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import State

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
    RequestApproval,
    ResetGpus,
    RunDiagnostics,
    StepOutcome,
    Succeeded,
    VerifyRebooted,
    WaitForBudget,
    WaitForEvidence,
    WaitForProbation,
    apply_outcome,
    begin_step,
    next_step,
    open_incident,
    should_open_incident,
    simulated_outcome,
)
from tasks.remediation import (
    FreshEvidence,
    assess_node_now,
    build_fleet_view,
    cancel_incident,
    capture_boot_id,
    cordon_node,
    drain_node,
    file_ticket,
    read_node_record,
    readmit_node,
    reboot_node,
    reset_gpus,
    run_diagnostics,
    ticket_request,
    verify_rebooted,
    write_node_record,
)

AUTO_APPROVER = "auto-approve (demo)"
DEFAULT_KUBECONFIG = os.environ.get("GPUMEDIC_KUBECONFIG", os.path.expanduser("~/.kube/config"))
MAX_STEPS = 60

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


def _hook(point: str, key: str) -> None:
    if crash_hook is not None:
        crash_hook(point, key)


# --------------------------------------------------------------------------- approval


def evidence_markdown(record: NodeRecord, step: RequestApproval) -> str:
    what = {ApprovalKind.REPLACE: "replace its GPU hardware (RMA ticket)",
            ApprovalKind.INSPECT: "hand it to a human for inspection (ticket)",
            ApprovalKind.BREAKER: "override the open circuit breaker for this incident"}[step.kind]
    diags = [h for h in record.history if h.step.startswith("diag:")]
    lines = [
        f"# Approval needed: {record.node}",
        "",
        f"gpumedic proposes to **{what}**. Incident `{record.incident_id}`, state `{record.state}`, "
        f"repair rung `{record.repair}`, GPUs {list(record.gpus)}.",
        "",
        "## Evidence",
        *[f"- {e}" for e in step.evidence],
        "",
        "## Diagnostics",
        *([f"- {h.time:%Y-%m-%d %H:%M:%S} {h.note}" for h in diags] or ["- none run in this incident"]),
        "",
        "## History",
        "| time | from | to | step | note |",
        "|---|---|---|---|---|",
        *[f"| {h.time:%H:%M:%S} | {h.from_state} | {h.to_state} | {h.step} | {h.note} |" for h in record.history],
        "",
        "Resume this run with **approve**, your name, a reason and (for a replacement) the RMA reference.",
    ]
    return "\n".join(lines)


@flow(name="request-replacement-approval", log_prints=True)
def request_replacement_approval(
    node: str, incident: str, kind: str, description: str, timeout_s: int, poll_interval_s: int = 5
) -> dict[str, Any]:
    """Pause until a human submits a `ReplacementDecision`; fails when the pause times out."""
    logger = get_run_logger()
    create_markdown_artifact(key=f"approval-{_slug(node)}", markdown=description,
                             description=f"Evidence for the {kind} approval of {node} ({incident})")
    logger.info("node=%s incident=%s waiting up to %ss for a %s decision", node, incident, timeout_s, kind)
    decision = pause_flow_run(
        # Only the description: an initial value would make its field optional in the form's schema.
        wait_for_input=ReplacementDecision.with_initial_data(description=description),
        timeout=timeout_s, poll_interval=poll_interval_s, key=f"{incident}-{kind}",
    )
    logger.info("node=%s incident=%s decision approve=%s by %s", node, incident, decision.approve, decision.approver)
    return {"approve": decision.approve, "approver": decision.approver, "reason": decision.reason,
            "rma": decision.rma_reference}


def _ask(record: NodeRecord, step: RequestApproval, *, auto_approve: bool, timeout_s: int | None,
         poll_interval_s: int) -> StepOutcome:
    if auto_approve:
        return ApprovalReceived(AUTO_APPROVER, True, "demo run with --auto-approve", f"RMA-{record.incident_id}"
                                if step.kind is ApprovalKind.REPLACE else None)
    timeout = timeout_s if timeout_s is not None else int(step.timeout.total_seconds())
    state: State[Any] = request_replacement_approval(
        record.node, record.incident_id, str(step.kind), evidence_markdown(record, step), timeout,
        poll_interval_s, return_state=True,
    )
    if state.is_completed():
        d = state.result()
        return ApprovalReceived(d["approver"], bool(d["approve"]), d["reason"], d["rma"])
    get_run_logger().warning("node=%s incident=%s approval ended %s: treated as a timeout", record.node,
                             record.incident_id, state.type)
    return ApprovalTimedOut()


# --------------------------------------------------------------------------- one step


def _execute(step: Any, record: NodeRecord, evidence: FreshEvidence, *, fleet_file: str, kubeconfig: str,
             tickets: str, auto_approve: bool, approval_timeout_s: int | None, poll_interval_s: int) -> StepOutcome:
    node = record.node
    match step:
        case Cordon():
            return cordon_node(kubeconfig, node, step)
        case Drain():
            return drain_node(kubeconfig, node, step)
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
            return readmit_node(kubeconfig, node, step)
        case Cancel():
            return cancel_incident(kubeconfig, node, step)
        case RequestApproval():
            return _ask(record, step, auto_approve=auto_approve, timeout_s=approval_timeout_s,
                        poll_interval_s=poll_interval_s)
        case FileTicket():
            return file_ticket(tickets, ticket_request(record, step))
        case CloseIncident():
            return Succeeded()
    raise TypeError(f"no task for {type(step).__name__}")


# --------------------------------------------------------------------------- the flow


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _policy(overrides: dict[str, Any] | None) -> RemediationPolicy:
    return RemediationPolicy.model_validate(overrides or {})


@flow(name="remediate-node", log_prints=True)
def remediate_node(
    node: str,
    incident: str | None = None,
    fleet_file: str = "fleet.yaml",
    kubeconfig: str = DEFAULT_KUBECONFIG,
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
    names what stopped the run short of a closed incident (budget, evidence, probation, a
    halt), or is None. Re-running for the same node resumes from the record on the Node.
    """
    logger = get_run_logger()
    rules = _policy(policy)
    snapshot = read_node_record(kubeconfig, node)
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

    for _ in range(MAX_STEPS):
        fleet = build_fleet_view(kubeconfig)
        if evidence is None or stale_evidence or (datetime.now(UTC) - evidence.observed_at).total_seconds() > 60:
            evidence = assess_node_now(fleet_file, node)
            stale_evidence = False
        now = datetime.now(UTC)
        if record is None or record.closed:
            if record is not None and (executed or (incident is not None and record.incident_id == incident)):
                break  # this incident is over (in this run, or a re-run of it): nothing more to do
            decision = should_open_incident(record, evidence.assessment, observed_at=evidence.observed_at, now=now,
                                            policy=rules, fleet=fleet)
            if not decision.open:
                logger.info("node=%s no incident opened: %s", node, decision.reason)
                return _result(record, decision.reason, executed, opened=False)
            record = open_incident(evidence.assessment, incident_id=incident or _new_incident(node), now=now,
                                   policy=rules, prior=record, dry_run=dry_run)
            stored = _persist(kubeconfig, record, stored, dry_run)
            logger.info("node=%s incident=%s opened: %s -> %s", node, record.incident_id, evidence.assessment.action,
                        record.repair)
        elif incident is not None and record.incident_id != incident:
            logger.info("node=%s resuming the node's open incident %s (asked for %s)", node, record.incident_id,
                        incident)

        step = next_step(record, latest=evidence.assessment, observed_at=evidence.observed_at, now=now,
                         policy=rules, fleet=_with(fleet, record))
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

        record = begin_step(record, step, now=now)
        stored = _persist(kubeconfig, record, stored, dry_run)
        _hook("begun", step.key)
        if dry_run:
            logger.info("node=%s incident=%s would do %s: %s", node, record.incident_id, step.key, step)
            outcome = simulated_outcome(step)
        else:
            logger.info("node=%s incident=%s step=%s %s", node, record.incident_id, step.key, type(step).__name__)
            assert evidence is not None
            outcome = _execute(step, record, evidence, fleet_file=fleet_file, kubeconfig=kubeconfig, tickets=tickets,
                               auto_approve=auto_approve, approval_timeout_s=approval_timeout_s,
                               poll_interval_s=approval_poll_s)
        _hook("executed", step.key)
        # The node's health may have changed: look again before the next decision.
        stale_evidence = stale_evidence or isinstance(step, ResetGpus | Reboot | VerifyRebooted | RunDiagnostics)
        record = apply_outcome(record, step, outcome, now=datetime.now(UTC))
        stored = _persist(kubeconfig, record, stored, dry_run)
        executed.append(f"{step.key}: {record.history[-1].note}")
        _hook("applied", step.key)
    else:
        waiting = f"stopped after {MAX_STEPS} steps"

    assert record is not None
    _publish(record, kubeconfig, dry_run)
    logger.info("node=%s incident=%s state=%s outcome=%s waiting=%s", node, record.incident_id, record.state,
                record.outcome, waiting)
    return _result(record, waiting, executed)


def _with(fleet: FleetView, record: NodeRecord) -> FleetView:
    """The fleet view with this run's own record (newer than what was listed, or a dry run's)."""
    others = tuple(r for r in fleet.records if r.node != record.node)
    return FleetView(fleet.gpu_nodes, (*others, record), fleet.unschedulable, fleet.unhealthy, fleet.opted_out,
                     fleet.breaker_override_until)


def _persist(kubeconfig: str, record: NodeRecord, stored: NodeRecord | None, dry_run: bool) -> NodeRecord | None:
    """Write the record to the Node (never in a dry run, which changes nothing)."""
    if dry_run:
        return stored
    write_node_record(kubeconfig, record.node, record, stored)
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
        f"- requested: {record.requested}; rung: {record.repair}; attempt {record.attempt}; GPUs {list(record.gpus)}",
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


def _publish(record: NodeRecord, kubeconfig: str, dry_run: bool) -> None:
    create_markdown_artifact(key=f"incident-{_slug(record.node)}", markdown=timeline_markdown(record),
                             description=f"Remediation timeline of {record.node}, incident {record.incident_id}")
    try:
        fleet = build_fleet_view(kubeconfig)
    except Exception as err:  # the table is a report; the incident is already persisted
        get_run_logger().warning("fleet remediation table not updated: %s", err)
        return
    records = {r.node: r for r in fleet.records}
    if dry_run:
        records[record.node] = record
    rows = [
        {"node": r.node, "incident": r.incident_id, "state": str(r.state), "repair": str(r.repair),
         "out_of_service": "yes" if r.node in fleet.unschedulable else "no",
         "ticket": r.ticket_key or "", "outcome": r.outcome or "", "updated": r.updated_at.isoformat()}
        for r in sorted(records.values(), key=lambda r: r.node)
    ]
    create_table_artifact(key="fleet-remediation", table=rows or [{"node": "-", "state": "no incidents"}],
                          description="Remediation state of every node with a record")


def approval_timeout(policy: RemediationPolicy) -> timedelta:
    return policy.approval_timeout
