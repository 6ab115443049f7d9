"""Remediation records in any state, reached by driving the real state machine (no hand-made records)."""

from __future__ import annotations

from datetime import datetime, timedelta

from gpumedic.domain.budget import FleetView, RemediationPolicy, UnhealthyObservation
from gpumedic.domain.remediation import (
    ACTING_STEPS,
    ApprovalReceived,
    ApprovalTimedOut,
    Cordon,
    Done,
    FileTicket,
    Halt,
    NodeRecord,
    Readmit,
    RemediationState,
    RequestApproval,
    StepOutcome,
    TicketFiled,
    WaitForProbation,
    apply_outcome,
    begin_step,
    next_step,
    open_incident,
    simulated_outcome,
)
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

S = RemediationState
MINUTE = timedelta(minutes=1)


def _assessment(node: str, action: Action) -> NodeAssessment:
    verdict = Verdict.HEALTHY if action is Action.NONE else Verdict.FAILED
    gpu = GpuAssessment(0, verdict, action, () if action is Action.NONE else ("Xid 79 on GPU 0",), uuid=f"GPU-{node}")
    return NodeAssessment(node, verdict, action, (), (gpu,))


def _outcome(step: object, *, decided: bool) -> StepOutcome:
    if isinstance(step, RequestApproval):
        return ApprovalReceived("alice", approve=True, reason="RMA it", rma="RMA-7") if decided else ApprovalTimedOut()
    if isinstance(step, FileTicket):
        return TicketFiled("GPU-9")
    return simulated_outcome(step)  # type: ignore[arg-type]


def walk(
    node: str,
    action: Action,
    *,
    until: S | None,
    at: datetime,
    policy: RemediationPolicy | None = None,
    dry_run: bool = False,
    settled: bool = False,
    decided: bool = True,
    storm: bool = False,
) -> NodeRecord:
    """Open an incident at `at` and run the state machine until it enters `until` (None: to its end, or a halt).

    It stops with the step that enters `until` begun and not finished, or (`settled`) finished.
    Approvals are given (or, unless `decided`, time out); tickets are filed as GPU-9. In a `storm`, 4 other
    nodes of the 10 turned unhealthy at `at`, so the circuit breaker is open for its first hour.
    """
    unhealthy = storm_at(node, at) if storm else ()
    policy = policy or RemediationPolicy()
    now = at
    record = open_incident(
        _assessment(node, action), incident_id=f"inc-{node}", now=now, policy=policy, dry_run=dry_run
    )
    if record.state is until:
        return record  # just opened: nothing done yet (e.g. no room in the disruption budget)
    cordoned: set[str] = set()
    for _ in range(60):
        # The sweeps see the node broken until it is readmitted, and healthy from then on.
        latest = _assessment(node, Action.NONE if record.state is S.READMITTED else action)
        fleet = FleetView(gpu_nodes=10, records=(record,), unschedulable=frozenset(cordoned), unhealthy=unhealthy)
        step = next_step(record, latest=latest, observed_at=now, now=now, policy=policy, fleet=fleet)
        if isinstance(step, WaitForProbation):
            now = step.until + MINUTE
            continue
        if isinstance(step, Done | Halt):
            assert until is None, f"{node} ended before {until}: {step}"
            return record
        assert isinstance(step, ACTING_STEPS), step
        record = begin_step(record, step, now=now)
        if record.state is until and not settled:
            return record
        if isinstance(step, Cordon) and not dry_run:
            cordoned.add(node)
        if isinstance(step, Readmit) and not dry_run:
            cordoned.discard(node)
        record = apply_outcome(record, step, _outcome(step, decided=decided), now=now)
        if record.state is until:
            return record
        now += MINUTE
    raise AssertionError(f"{node} never reached {until}")


def storm_at(node: str, at: datetime) -> tuple[UnhealthyObservation, ...]:
    """4 other nodes of 10 turned unhealthy at `at`: the circuit breaker is open for the next hour."""
    return tuple(UnhealthyObservation(f"{node}-peer-{i}", at) for i in range(4))


def refuse_breaker_override(record: NodeRecord, action: Action, *, at: datetime,
                            policy: RemediationPolicy | None = None) -> NodeRecord:
    """A storm breaks out at `at` while the incident is under way: its override is asked for and times out."""
    policy = policy or RemediationPolicy()
    fleet = FleetView(gpu_nodes=10, records=(record,), unschedulable=frozenset({record.node}),
                      unhealthy=storm_at(record.node, at))
    step = next_step(record, latest=_assessment(record.node, action), observed_at=at, now=at, policy=policy,
                     fleet=fleet)
    assert isinstance(step, RequestApproval) and step.kind == "breaker", step
    record = begin_step(record, step, now=at)
    return apply_outcome(record, step, ApprovalTimedOut(), now=at)

