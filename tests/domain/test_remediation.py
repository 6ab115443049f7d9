"""The remediation state machine: transitions, paths, idempotency, safety, persistence, crashes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from itertools import product

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumedic.domain.budget import FleetView, RemediationPolicy, UnhealthyObservation
from gpumedic.domain.remediation import (
    ACTING_STEPS,
    ANNOTATION_KEYS,
    ANNOTATION_PREFIX,
    DESTRUCTIVE_STEPS,
    HISTORY_LIMIT,
    TRANSITIONS,
    Approval,
    ApprovalKind,
    ApprovalReceived,
    ApprovalTimedOut,
    BootIdRead,
    Cancel,
    CaptureBootId,
    CloseIncident,
    Cordon,
    CorruptRecord,
    Decision,
    DiagnosticsResult,
    Done,
    Drain,
    Failed,
    FileTicket,
    GpuTarget,
    Halt,
    HistoryEntry,
    IllegalTransition,
    IncidentSummary,
    NodeRecord,
    NotRebooted,
    Readmit,
    Reboot,
    Rebooted,
    RemediationState,
    Repair,
    RequestApproval,
    ResetGpus,
    RunDiagnostics,
    Step,
    StepNotBegun,
    StepOutcome,
    Succeeded,
    TicketFiled,
    VerifyRebooted,
    WaitForBudget,
    WaitForEvidence,
    WaitForProbation,
    apply_outcome,
    approval_deadline,
    approval_requested_at,
    begin_step,
    check_evidence,
    failure_ticket,
    next_step,
    open_incident,
    should_open_incident,
    simulated_outcome,
    transition,
)
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

S = RemediationState
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NODE = "gpu-007"
POLICY = RemediationPolicy()
MINUTE = timedelta(minutes=1)


UUIDS = st.from_regex(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}", fullmatch=True)


def assess(
    action: Action = Action.RESET_GPU, *, node: str = NODE, gpus: tuple[int, ...] = (3,)
) -> NodeAssessment:
    verdict = Verdict.HEALTHY if action is Action.NONE else Verdict.FAILED
    per_gpu = tuple(
        GpuAssessment(
            i,
            verdict if i in gpus else Verdict.HEALTHY,
            action if i in gpus else Action.NONE,
            (f"Xid 79 on GPU {i}",) if i in gpus else (),
            uuid=f"GPU-{NODE}-{i}",
        )
        for i in range(8)
    )
    return NodeAssessment(node, verdict, action, (), per_gpu)


HEALTHY = assess(Action.NONE, gpus=())
# `unknown` that even recommends an action: it must still never justify one.
UNKNOWN = NodeAssessment(NODE, Verdict.UNKNOWN, Action.INSPECT, ("ssh: connection refused",), ())


def roundtrip(record: NodeRecord) -> NodeRecord:
    """Persist to Node annotations and read back, as the workflow does between steps."""
    annotations = json.loads(json.dumps(record.to_annotations()))
    restored = NodeRecord.from_annotations(annotations)
    assert restored == record
    return restored


def fresh_record(action: Action = Action.RESET_GPU, *, dry_run: bool = False) -> NodeRecord:
    return open_incident(assess(action), incident_id="inc-1", now=T0, policy=POLICY, dry_run=dry_run)


def expected_resume(step: Step) -> tuple[type, str]:
    """What next_step must return after `step` was begun and the process died."""
    assert isinstance(step, ACTING_STEPS)
    if isinstance(step, ResetGpus):
        return RunDiagnostics, "diag:" + step.key.split(":")[1]
    if isinstance(step, Reboot):
        return VerifyRebooted, step.key
    return type(step), step.key


# --------------------------------------------------------------------------- a simulated node


@dataclass
class Sim:
    """One node and the cluster around it; executes steps the way the workflow would."""

    record: NodeRecord
    problem: NodeAssessment = field(default_factory=assess)
    now: datetime = T0
    policy: RemediationPolicy = POLICY
    broken: bool = True
    fixed_by: frozenset[type] = frozenset({ResetGpus})  # repairs that make the node healthy
    unschedulable: set[str] = field(default_factory=set)
    boot_id: str = "boot-0"
    reboot_takes_effect: list[bool] = field(default_factory=list)  # per Reboot, default True
    reboot_comes_back: bool = True
    reset_works: bool = True
    drain_works: bool = True
    diag_runs: bool = True
    relapses: int = 0  # times the node breaks again right after being readmitted
    answers: dict[ApprovalKind, StepOutcome] = field(
        default_factory=lambda: {
            ApprovalKind.REPLACE: ApprovalReceived("alice", True, "RMA it", "RMA-1"),
            ApprovalKind.INSPECT: ApprovalReceived("alice", True, "have a look", None),
            ApprovalKind.BREAKER: ApprovalReceived("bob", True, "real faults"),
        }
    )
    gpu_nodes: int = 100
    unhealthy: tuple[UnhealthyObservation, ...] = ()
    opted_out: frozenset[str] = frozenset()
    executed: list[Step] = field(default_factory=list)
    trail: list[Moment] = field(default_factory=list)
    checks: bool = True

    @property
    def latest(self) -> NodeAssessment:
        return self.problem if self.broken else HEALTHY

    def fleet(self) -> FleetView:
        return FleetView(
            gpu_nodes=self.gpu_nodes,
            records=(self.record,),
            unschedulable=frozenset(self.unschedulable),
            unhealthy=self.unhealthy,
            opted_out=self.opted_out,
        )

    def next(self) -> Step:
        return next_step(
            self.record,
            latest=self.latest,
            observed_at=self.now,
            now=self.now,
            policy=self.policy,
            fleet=self.fleet(),
        )

    def execute(self, step: Step) -> StepOutcome:
        node = self.record.node
        self.executed.append(step)
        if isinstance(step, ACTING_STEPS) and step.dry_run:
            return simulated_outcome(step)
        match step:
            case Cordon():
                self.unschedulable.add(node)
                return Succeeded()
            case Drain():
                return Succeeded() if self.drain_works else Failed("PDB blocks eviction")
            case CaptureBootId():
                return BootIdRead(self.boot_id)
            case ResetGpus():
                if not self.reset_works:
                    return Failed("GPU in use")
                if ResetGpus in self.fixed_by:
                    self.broken = False
                return Succeeded()
            case Reboot():
                takes = self.reboot_takes_effect.pop(0) if self.reboot_takes_effect else True
                if takes:
                    self.boot_id = f"boot-{int(self.boot_id.split('-')[1]) + 1}"
                    if Reboot in self.fixed_by:
                        self.broken = False
                if not self.reboot_comes_back:
                    return Failed("node not Ready after 20m")
                return Rebooted(self.boot_id) if takes else NotRebooted("boot id unchanged")
            case VerifyRebooted():
                if not self.reboot_comes_back:
                    return Failed("node not Ready after 20m")
                if self.boot_id != step.expected_old_boot_id:
                    return Rebooted(self.boot_id)
                return NotRebooted("boot id unchanged")
            case RunDiagnostics():
                if not self.diag_runs:
                    return Failed("dcgmi: no such host engine")
                return DiagnosticsResult(not self.broken, () if not self.broken else (3,), "level 2")
            case Readmit():
                if step.uncordon:
                    self.unschedulable.discard(node)
                if self.relapses:
                    self.relapses -= 1
                    self.broken = True
                return Succeeded()
            case RequestApproval():
                return self.answers[step.kind]
            case FileTicket():
                return TicketFiled("GPU-42")
            case Cancel() | CloseIncident():
                return Succeeded()
        raise AssertionError(f"not an acting step: {step}")

    def advance(self) -> Step:
        step = self.next()
        if isinstance(step, WaitForProbation):
            self.now = max(step.until, self.now + MINUTE)
            return step
        if isinstance(step, WaitForEvidence):
            self.now += MINUTE
            return step
        if not isinstance(step, ACTING_STEPS):
            return step
        assert step.key not in self.record.steps_done, "a finished step was returned again"
        before = self.record
        fleet_before = self.fleet()
        latest, now = self.latest, self.now
        begun = begin_step(before, step, now=now)
        if self.checks:
            assert begin_step(begun, step, now=now) == begun
            begun = roundtrip(begun)
        self.record = begun
        outcome = self.execute(step)
        trail, self.trail = self.trail, []
        after_execution = copy.deepcopy(self)  # the state a crash right now would leave behind
        self.trail = trail
        after = apply_outcome(begun, step, outcome, now=now)
        if self.checks:
            assert apply_outcome(after, step, outcome, now=now) == after
            after = roundtrip(after)
        self.record = after
        self.trail.append(
            Moment(before, step, outcome, begun, after, now, latest, fleet_before, after_execution)
        )
        self.now += MINUTE
        return step

    def run(self, limit: int = 80) -> list[Step]:
        steps = []
        for _ in range(limit):
            step = self.advance()
            steps.append(step)
            if isinstance(step, Done | Halt | WaitForBudget):
                return steps
        raise AssertionError(f"no end after {limit} steps: {[type(s).__name__ for s in steps[-10:]]}")

    def acted(self) -> list[type]:
        return [type(s) for s in self.executed]


@dataclass
class Moment:
    before: NodeRecord
    step: Step
    outcome: StepOutcome
    begun: NodeRecord
    after: NodeRecord
    now: datetime
    latest: NodeAssessment
    fleet: FleetView
    crash: Sim  # the world right after the step ran, before its outcome was persisted


def kinds(steps: list[Step]) -> list[str]:
    return [type(s).__name__ for s in steps if not isinstance(s, WaitForEvidence | WaitForProbation)]


# --------------------------------------------------------------------------- the transition table

ALL_PAIRS = list(product(RemediationState, RemediationState))
LEGAL = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def record_in(state: RemediationState) -> NodeRecord:
    return replace(fresh_record(), state=state)


@pytest.mark.parametrize(("from_state", "to_state"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_legal_transition_is_accepted(from_state: RemediationState, to_state: RemediationState) -> None:
    moved = transition(record_in(from_state), to_state, now=T0 + MINUTE, note="why", step="k:1")
    assert moved.state is to_state
    assert moved.history[-1] == HistoryEntry(T0 + MINUTE, from_state, to_state, "k:1", "why")
    assert moved.updated_at == T0 + MINUTE


@pytest.mark.parametrize(("from_state", "to_state"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_illegal_transition_is_refused(
    from_state: RemediationState, to_state: RemediationState
) -> None:
    with pytest.raises(IllegalTransition) as err:
        transition(record_in(from_state), to_state, now=T0, note="no")
    assert (err.value.from_state, err.value.to_state) == (from_state, to_state)


def test_transition_table_covers_every_state_and_terminal_states_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(RemediationState)
    assert {s for s in RemediationState if s.terminal} == {S.TICKETED, S.FAILED, S.CANCELLED}
    for state in RemediationState:
        assert (not TRANSITIONS[state]) == state.terminal
        assert state not in TRANSITIONS[state]


def test_every_state_is_reachable_and_every_state_can_end() -> None:
    reach = {S.IN_SERVICE}
    frontier = [S.IN_SERVICE]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reach:
                reach.add(nxt)
                frontier.append(nxt)
    assert reach == set(RemediationState)
    for state in RemediationState:
        seen, frontier = {state}, [state]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & {S.TICKETED, S.FAILED, S.CANCELLED, S.IN_SERVICE}


# --------------------------------------------------------------------------- happy and unhappy paths


def test_a_gpu_renumbered_after_another_fell_off_is_reset_by_identity_not_by_its_old_index() -> None:
    opened = assess(gpus=(5,))
    record = open_incident(opened, incident_id="inc-1", now=T0, policy=POLICY)
    assert record.gpus == (GpuTarget(5, f"GPU-{NODE}-5"),)
    # GPU 3 falls off the bus while the node drains: nvidia-smi now lists 7 GPUs and the
    # failing GPU (UUID ...-5) is index 4; index 5 is a healthy bystander (UUID ...-6).
    renumbered = tuple(
        replace(g, index=g.index - (g.index > 3)) for g in opened.gpus if g.index != 3
    )
    sim = Sim(record, problem=replace(opened, gpus=renumbered))
    reset = next(s for s in sim.run() if isinstance(s, ResetGpus))
    assert reset.gpus == (GpuTarget(4, f"GPU-{NODE}-5"),)


def test_gpu_targets_survive_the_annotations_and_old_index_only_records_still_read() -> None:
    assert GpuTarget.decode(GpuTarget(4, "GPU-8f2c-11").encode()) == GpuTarget(4, "GPU-8f2c-11")
    assert GpuTarget.decode("3") == GpuTarget(3, None)  # written before GPUs had identities
    assert str(GpuTarget(3, None)) == "GPU 3" and str(GpuTarget(4, "GPU-x")) == "GPU 4 (GPU-x)"


def test_an_approval_times_out_counted_from_when_it_was_asked_for() -> None:
    sim = Sim(fresh_record(Action.REPLACE))
    while not isinstance(step := sim.next(), RequestApproval):
        sim.advance()
    asked = sim.now + timedelta(hours=1)
    record = begin_step(sim.record, step, now=asked)
    assert approval_requested_at(record, step) == asked
    assert approval_deadline(record, step) == asked + POLICY.approval_timeout
    assert approval_deadline(record, step, timedelta(minutes=5)) == asked + timedelta(minutes=5)
    # A later run (the record touched again) does not restart the clock.
    later = replace(record, updated_at=asked + timedelta(days=1))
    assert approval_deadline(later, step) == asked + POLICY.approval_timeout


def test_reset_then_diagnostics_pass_readmits_and_probation_closes_the_incident() -> None:
    sim = Sim(fresh_record())
    steps = sim.run()
    assert kinds(steps) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    reset = next(s for s in steps if isinstance(s, ResetGpus))
    assert reset.indices == (3,)
    r = sim.record
    assert r.state is S.IN_SERVICE
    assert r.outcome is not None and r.outcome.startswith("recovered")
    assert NODE not in sim.unschedulable
    assert r.probation_until == r.readmitted_at + POLICY.probation  # type: ignore[operator]
    states = [h.to_state for h in r.history if h.from_state != h.to_state]
    assert states == [
        S.QUARANTINED,
        S.DRAINING,
        S.DRAINED,
        S.RESETTING,
        S.DIAGNOSING,
        S.READMITTED,
        S.IN_SERVICE,
    ]


def test_probation_needs_a_sweep_taken_after_readmission_and_after_the_probation_period() -> None:
    sim = Sim(fresh_record())
    while sim.record.state is not S.READMITTED or f"readmit:{sim.record.hold}" not in sim.record.steps_done:
        sim.advance()
    readmitted_at = sim.record.readmitted_at
    assert readmitted_at is not None
    step = next_step(
        sim.record,
        latest=HEALTHY,
        observed_at=readmitted_at - MINUTE,
        now=sim.now,
        policy=POLICY,
        fleet=sim.fleet(),
    )
    assert isinstance(step, WaitForEvidence)
    step = next_step(
        sim.record,
        latest=HEALTHY,
        observed_at=readmitted_at + MINUTE,
        now=sim.now + MINUTE,
        policy=POLICY,
        fleet=sim.fleet(),
    )
    assert isinstance(step, WaitForProbation)
    assert step.until == readmitted_at + POLICY.probation
    later = readmitted_at + POLICY.probation
    step = next_step(
        sim.record, latest=HEALTHY, observed_at=later, now=later, policy=POLICY, fleet=sim.fleet()
    )
    assert isinstance(step, CloseIncident)
    step = next_step(
        sim.record, latest=UNKNOWN, observed_at=later, now=later, policy=POLICY, fleet=sim.fleet()
    )
    assert isinstance(step, WaitForEvidence)


def test_reset_fails_diagnostics_then_reboot_fails_then_replace_is_approved_and_ticketed() -> None:
    sim = Sim(fresh_record(), fixed_by=frozenset())
    steps = sim.run()
    assert kinds(steps) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "RunDiagnostics",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "RequestApproval",
        "FileTicket",
        "Done",
    ]
    reboot = next(s for s in steps if isinstance(s, Reboot))
    assert reboot.expected_old_boot_id == "boot-0"
    request = next(s for s in steps if isinstance(s, RequestApproval))
    assert request.kind is ApprovalKind.REPLACE
    ticket = next(s for s in steps if isinstance(s, FileTicket))
    assert ticket.dedupe_key == "inc-1" and not ticket.awaiting_decision and ticket.rma == "RMA-1"
    r = sim.record
    assert r.state is S.TICKETED and r.ticket_key == "GPU-42"
    assert r.repair is Repair.REPLACE and r.attempt == 3
    assert r.approval is not None
    assert r.approval == Approval(
        ApprovalKind.REPLACE, Decision.APPROVE, "alice", "RMA it", r.approval.time, "RMA-1"
    )
    assert {"reset:1", "diag:1:fail", "reboot:2", "diag:2:fail", "approval:replace", "ticket"} <= r.steps_done
    assert NODE in sim.unschedulable  # left cordoned for the replacement


def test_a_reboot_that_fixes_the_node_is_proven_and_readmitted() -> None:
    sim = Sim(fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}))
    assert kinds(sim.run()) == [
        "Cordon",
        "Drain",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]


def test_loop_guard_sends_the_third_remediation_within_the_window_straight_to_replace() -> None:
    def closed(incident: str, opened: datetime, repaired: bool = True) -> NodeRecord:
        r = replace(
            fresh_record(), incident_id=incident, opened_at=opened, outcome="recovered", closed_at=opened
        )
        return replace(r, steps_intended=frozenset({"reset:1"}) if repaired else frozenset())

    first = closed("inc-a", T0 - timedelta(days=6))
    second = replace(closed("inc-b", T0 - timedelta(days=1)), past_incidents=(first.summary(),))
    third = open_incident(assess(), incident_id="inc-c", now=T0, policy=POLICY, prior=second)
    assert third.repair is Repair.REPLACE
    assert [p.incident_id for p in third.past_incidents] == ["inc-a", "inc-b"]
    assert any("loop guard" in reason for reason in third.reasons)

    sim = Sim(third)
    assert kinds(sim.run()) == ["Cordon", "Drain", "RequestApproval", "FileTicket", "Done"]
    assert sim.record.state is S.TICKETED

    old = replace(
        closed("inc-b", T0 - timedelta(days=1)),
        past_incidents=(closed("inc-a", T0 - timedelta(days=8)).summary(),),
    )
    assert (
        open_incident(assess(), incident_id="x", now=T0, policy=POLICY, prior=old).repair is Repair.RESET_GPU
    )
    unrepaired = replace(
        closed("inc-b", T0 - timedelta(days=1)), past_incidents=(closed("inc-a", T0, False).summary(),)
    )
    assert (
        open_incident(assess(), incident_id="x", now=T0, policy=POLICY, prior=unrepaired).repair
        is Repair.RESET_GPU
    )


def test_inspect_quarantines_and_drains_then_waits_for_a_human_without_any_repair() -> None:
    sim = Sim(fresh_record(Action.INSPECT), problem=assess(Action.INSPECT))
    steps = sim.run()
    assert kinds(steps) == ["Cordon", "Drain", "RequestApproval", "FileTicket", "Done"]
    assert not any(isinstance(s, ResetGpus | Reboot | RunDiagnostics) for s in steps)
    request = next(s for s in steps if isinstance(s, RequestApproval))
    assert request.kind is ApprovalKind.INSPECT
    assert any("Xid 79" in e for e in request.evidence)
    assert sim.record.state is S.TICKETED


def test_a_rejected_replacement_fails_the_incident_and_leaves_the_node_quarantined() -> None:
    sim = Sim(fresh_record(Action.REPLACE), problem=assess(Action.REPLACE))
    sim.answers[ApprovalKind.REPLACE] = ApprovalReceived("carol", False, "GPU is under a vendor fix")
    assert kinds(sim.run()) == ["Cordon", "Drain", "RequestApproval", "Done"]
    r = sim.record
    assert r.state is S.FAILED
    assert (
        r.outcome
        == "failed: replace rejected by carol: GPU is under a vendor fix; node left quarantined for a human"
    )
    assert r.approval is not None and r.approval.decision is Decision.REJECT
    assert NODE in sim.unschedulable and r.ticket_key is None
    decision = should_open_incident(
        r, assess(), observed_at=sim.now, now=sim.now, policy=POLICY, fleet=sim.fleet()
    )
    assert not decision.open


def test_an_approval_timeout_files_the_ticket_marked_awaiting_decision() -> None:
    sim = Sim(fresh_record(Action.REPLACE), problem=assess(Action.REPLACE))
    sim.answers[ApprovalKind.REPLACE] = ApprovalTimedOut()
    steps = sim.run()
    ticket = next(s for s in steps if isinstance(s, FileTicket))
    assert ticket.awaiting_decision and "awaiting decision" in ticket.summary
    r = sim.record
    assert r.state is S.TICKETED
    assert r.approval is not None and r.approval.decision is Decision.TIMEOUT
    assert r.outcome == "ticketed: GPU-42 (replace, awaiting decision)"


def test_a_relapse_during_probation_escalates_to_the_next_rung_instead_of_resetting_again() -> None:
    sim = Sim(fresh_record(), fixed_by=frozenset({ResetGpus, Reboot}), relapses=1)
    steps = sim.run()
    assert kinds(steps) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "RunDiagnostics",
        "Readmit",
        "Cordon",
        "Drain",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    cordons = [s for s in steps if isinstance(s, Cordon)]
    assert [(c.key, c.hold, c.attempt, c.repair) for c in cordons] == [
        ("cordon:1", 1, 1, Repair.RESET_GPU),
        ("cordon:2", 2, 2, Repair.REBOOT),
    ]
    assert sum(isinstance(s, ResetGpus) for s in steps) == 1
    assert sim.record.outcome is not None and sim.record.outcome.startswith("recovered")
    assert sim.record.summary().repaired


def test_a_relapse_after_a_reboot_goes_to_replace() -> None:
    sim = Sim(fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}), relapses=1)
    steps = sim.run()
    assert kinds(steps)[-5:] == ["Cordon", "Drain", "RequestApproval", "FileTicket", "Done"]
    assert sum(isinstance(s, Reboot) for s in steps) == 1


def test_stronger_fresh_evidence_raises_the_rung_before_the_repair() -> None:
    sim = Sim(fresh_record(), fixed_by=frozenset({Reboot}))
    sim.advance()  # cordon
    sim.problem = assess(Action.REBOOT)
    steps = sim.run()
    assert kinds(steps) == [
        "Drain",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    sim2 = Sim(fresh_record())
    sim2.advance()
    sim2.problem = assess(Action.REPLACE)
    assert kinds(sim2.run()) == ["Drain", "RequestApproval", "FileTicket", "Done"]


def test_a_node_found_healthy_before_any_action_closes_the_incident() -> None:
    sim = Sim(fresh_record(), broken=False)
    assert kinds(sim.run()) == ["CloseIncident", "Done"]
    assert sim.record.state is S.IN_SERVICE and sim.record.outcome is not None
    assert sim.record.outcome.startswith("resolved")
    assert not sim.unschedulable


def test_a_node_found_healthy_while_quarantined_is_readmitted_on_probation() -> None:
    sim = Sim(fresh_record())
    sim.advance()  # cordon
    sim.broken = False
    assert kinds(sim.run()) == ["Readmit", "CloseIncident", "Done"]
    assert not sim.unschedulable


def test_a_drained_node_found_healthy_is_proven_by_diagnostics_before_readmission() -> None:
    sim = Sim(fresh_record())
    sim.advance()
    sim.advance()  # cordon, drain
    sim.broken = False
    assert kinds(sim.run()) == ["RunDiagnostics", "Readmit", "CloseIncident", "Done"]


def test_conflicting_evidence_is_handed_to_a_human() -> None:
    """Diagnostics fail although the sweep says healthy: no repair on evidence we cannot see."""
    sim2 = Sim(fresh_record())
    sim2.advance()
    sim2.advance()
    # the sweep is healthy but the GPU is not: diagnostics (which see it) fail
    sim2.problem = HEALTHY
    steps = sim2.run()
    assert kinds(steps) == ["RunDiagnostics", "RequestApproval", "FileTicket", "Done"]
    request = next(s for s in steps if isinstance(s, RequestApproval))
    assert request.kind is ApprovalKind.INSPECT
    assert sim2.record.repair is Repair.INSPECT
    assert any("while the latest sweep found the node healthy" in h.note for h in sim2.record.history)


def test_a_failed_reset_climbs_to_reboot() -> None:
    sim = Sim(fresh_record(), reset_works=False, fixed_by=frozenset({Reboot}))
    assert kinds(sim.run()) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    assert "reset:1:failed" in sim.record.steps_done


def test_a_reboot_that_did_not_take_effect_is_issued_once_more_then_escalates() -> None:
    sim = Sim(fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}), reboot_takes_effect=[False])
    assert kinds(sim.run()) == [
        "Cordon",
        "Drain",
        "CaptureBootId",
        "Reboot",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    sim2 = Sim(fresh_record(Action.REBOOT), reboot_takes_effect=[False, False])
    assert kinds(sim2.run()) == [
        "Cordon",
        "Drain",
        "CaptureBootId",
        "Reboot",
        "Reboot",
        "RequestApproval",
        "FileTicket",
        "Done",
    ]
    assert "reboot:1:lost" in sim2.record.steps_done and "reboot:1:failed" in sim2.record.steps_done


def test_a_node_that_does_not_come_back_from_a_reboot_goes_to_replace() -> None:
    sim = Sim(fresh_record(Action.REBOOT), reboot_comes_back=False)
    assert kinds(sim.run()) == [
        "Cordon",
        "Drain",
        "CaptureBootId",
        "Reboot",
        "RequestApproval",
        "FileTicket",
        "Done",
    ]


def test_diagnostics_that_cannot_run_hand_the_node_to_a_human() -> None:
    sim = Sim(fresh_record(), diag_runs=False)
    steps = sim.run()
    assert kinds(steps) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "RunDiagnostics",
        "RequestApproval",
        "FileTicket",
        "Done",
    ]
    assert sim.record.repair is Repair.INSPECT


def test_a_drain_that_cannot_finish_fails_the_incident_and_files_one_ticket_for_a_human() -> None:
    sim = Sim(fresh_record(), drain_works=False)
    assert kinds(sim.run()) == ["Cordon", "Drain", "FileTicket", "Done"]
    assert sim.record.state is S.FAILED and NODE in sim.unschedulable
    assert sim.record.outcome is not None and "drain did not complete" in sim.record.outcome
    assert sim.record.ticket_key is not None and sim.record.ticket_key in sim.record.outcome
    assert failure_ticket(sim.record) is None  # filed once


def test_a_manual_uncordon_cancels_the_incident_and_quiets_new_ones() -> None:
    sim = Sim(fresh_record())
    sim.advance()
    sim.advance()  # cordoned, drained
    sim.unschedulable.discard(NODE)
    steps = sim.run()
    assert kinds(steps) == ["Cancel", "Done"]
    r = sim.record
    assert r.state is S.CANCELLED and r.closed_at is not None
    decision = should_open_incident(
        r, assess(), observed_at=sim.now, now=sim.now, policy=POLICY, fleet=sim.fleet()
    )
    assert not decision.open and "cancelled" in decision.reason
    later = sim.now + POLICY.cancel_quiet_period
    assert should_open_incident(
        r, assess(), observed_at=later, now=later, policy=POLICY, fleet=sim.fleet()
    ).open


def test_a_node_cordoned_by_someone_else_is_repaired_but_never_uncordoned_by_us() -> None:
    sim = Sim(fresh_record(), unschedulable={NODE})
    steps = sim.run()
    assert not sim.record.cordoned_by_us
    readmit = next(s for s in steps if isinstance(s, Readmit))
    assert readmit.uncordon is False
    assert NODE in sim.unschedulable


def test_an_opted_out_node_halts_without_touching_it() -> None:
    sim = Sim(fresh_record(), opted_out=frozenset({NODE}))
    steps = sim.run()
    assert isinstance(steps[-1], Halt) and "opted out" in steps[-1].reason
    assert not sim.executed


def test_a_dry_run_walks_the_whole_path_without_touching_the_node() -> None:
    sim = Sim(fresh_record(dry_run=True))
    steps = sim.run()
    acting = [s for s in steps if isinstance(s, ACTING_STEPS)]
    assert acting and all(s.dry_run for s in acting)
    assert kinds(steps) == [
        "Cordon",
        "Drain",
        "ResetGpus",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]
    assert not sim.unschedulable  # never cordoned, and never mistaken for a manual uncordon
    assert all(h.note.endswith(" (dry run)") for h in sim.record.history)
    approval = Sim(fresh_record(Action.REPLACE, dry_run=True), problem=assess(Action.REPLACE))
    approval.run()
    assert approval.record.state is S.TICKETED and approval.record.ticket_key == "DRY-RUN-inc-1"


def test_open_incident_refuses_what_needs_no_remediation_and_an_open_prior() -> None:
    with pytest.raises(ValueError, match="opens no incident"):
        open_incident(HEALTHY, incident_id="x", now=T0, policy=POLICY)
    with pytest.raises(ValueError, match="opens no incident"):
        open_incident(UNKNOWN, incident_id="x", now=T0, policy=POLICY)
    with pytest.raises(ValueError, match="already has open incident"):
        open_incident(assess(), incident_id="x", now=T0, policy=POLICY, prior=fresh_record())
    node_level = NodeAssessment(NODE, Verdict.FAILED, Action.RESET_GPU, ("Xid 79, GPU unknown",), ())
    assert open_incident(node_level, incident_id="x", now=T0, policy=POLICY).repair is Repair.REBOOT


def test_should_open_incident_needs_fresh_known_evidence_and_no_open_incident() -> None:
    fleet = FleetView(gpu_nodes=10)

    def decide(prior: NodeRecord | None, latest: NodeAssessment, observed: datetime = T0) -> bool:
        return should_open_incident(
            prior, latest, observed_at=observed, now=T0, policy=POLICY, fleet=fleet
        ).open

    assert decide(None, assess())
    assert not decide(None, HEALTHY)
    assert not decide(None, UNKNOWN)
    assert not decide(None, assess(), T0 - POLICY.max_evidence_age - MINUTE)
    assert not decide(fresh_record(), assess())
    recovered = replace(fresh_record(), outcome="recovered", closed_at=T0)
    assert decide(recovered, assess())


def test_check_evidence_refuses_missing_stale_future_and_unknown_evidence() -> None:
    def ev(latest: NodeAssessment | None, observed: datetime | None) -> tuple[bool, bool]:
        e = check_evidence(NODE, latest, observed, now=T0, policy=POLICY)
        return e.usable, e.needs

    assert ev(assess(), T0) == (True, True)
    assert ev(HEALTHY, T0) == (True, False)
    assert ev(None, T0) == (False, False)
    assert ev(assess(), None) == (False, False)
    assert ev(assess(), T0 + MINUTE) == (False, False)
    assert ev(assess(), T0 - POLICY.max_evidence_age) == (True, True)
    assert ev(assess(), T0 - POLICY.max_evidence_age - timedelta(seconds=1)) == (False, False)
    assert ev(UNKNOWN, T0) == (False, False)
    with pytest.raises(ValueError, match="given for"):
        check_evidence("other", assess(), T0, now=T0, policy=POLICY)


# --------------------------------------------------------------------------- idempotency and protocol


def test_applying_an_outcome_to_a_step_never_begun_is_refused() -> None:
    r = fresh_record()
    step = Cordon("cordon:1", 1, 1, Repair.RESET_GPU, (), "x")
    with pytest.raises(StepNotBegun):
        apply_outcome(r, step, Succeeded(), now=T0)
    with pytest.raises(ValueError, match="has no outcome"):
        apply_outcome(r, Done("x"), Succeeded(), now=T0)


def test_an_outcome_that_does_not_answer_the_step_is_refused() -> None:
    r = fresh_record()
    step = Cordon("cordon:1", 1, 1, Repair.RESET_GPU, (), "x")
    begun = begin_step(r, step, now=T0)
    with pytest.raises(ValueError, match="does not answer"):
        apply_outcome(begun, step, TicketFiled("X-1"), now=T0)


def test_waits_halts_and_done_change_nothing_when_begun() -> None:
    r = fresh_record()
    for step in (
        WaitForBudget("full", 5, 5),
        WaitForEvidence("stale"),
        Halt("no"),
        Done("x"),
        WaitForProbation("p", T0),
    ):
        assert begin_step(r, step, now=T0) is r


def test_every_step_and_outcome_of_the_paths_is_idempotent_and_never_repeated() -> None:
    """Sim.advance asserts both on every step; run every scripted path once more here."""
    scenarios = [
        Sim(fresh_record()),
        Sim(fresh_record(), fixed_by=frozenset()),
        Sim(fresh_record(), fixed_by=frozenset({ResetGpus, Reboot}), relapses=1),
        Sim(fresh_record(Action.REBOOT), reboot_takes_effect=[False, False]),
        Sim(fresh_record(Action.INSPECT), problem=assess(Action.INSPECT)),
    ]
    for sim in scenarios:
        sim.run()
        for m in sim.trail:
            assert apply_outcome(m.after, m.step, m.outcome, now=m.now + MINUTE) == m.after
            assert isinstance(m.step, ACTING_STEPS)
            if m.step.key in m.after.steps_done:
                assert begin_step(m.after, m.step, now=m.now + MINUTE) == m.after
            else:  # a reboot the cluster says never happened: the one step that is issued again
                assert isinstance(m.outcome, NotRebooted) and f"{m.step.key}:lost" in m.after.steps_done


# --------------------------------------------------------------------------- crash and resume

SCRIPTS: dict[str, Callable[[], Sim]] = {
    "reset-pass": lambda: Sim(fresh_record()),
    "reset-reboot-replace": lambda: Sim(fresh_record(), fixed_by=frozenset()),
    "relapse": lambda: Sim(fresh_record(), fixed_by=frozenset({ResetGpus, Reboot}), relapses=1),
    "reboot-lost": lambda: Sim(
        fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}), reboot_takes_effect=[False]
    ),
    "inspect": lambda: Sim(fresh_record(Action.INSPECT), problem=assess(Action.INSPECT)),
    "timeout": lambda: Sim(
        fresh_record(Action.REPLACE),
        problem=assess(Action.REPLACE),
        answers={ApprovalKind.REPLACE: ApprovalTimedOut()},
    ),
    "someone-elses-cordon": lambda: Sim(fresh_record(), unschedulable={NODE}),
}


def _crash_points() -> list[tuple[str, int]]:
    points = []
    for name, make in SCRIPTS.items():
        sim = make()
        sim.run()
        points += [(name, i) for i in range(len(sim.trail))]
    return points


CRASH_POINTS = _crash_points()


@pytest.mark.parametrize(("script", "index"), CRASH_POINTS, ids=[f"{s}-{i}" for s, i in CRASH_POINTS])
def test_resuming_after_a_crash_never_repeats_a_step_that_took_effect(script: str, index: int) -> None:
    live = SCRIPTS[script]()
    live.run()
    m = live.trail[index]
    assert isinstance(m.step, ACTING_STEPS)

    # Outcome persisted: the finished step is never offered again.
    after = roundtrip(m.after)
    world = m.crash
    resumed = next_step(
        after,
        latest=world.latest,
        observed_at=m.now,
        now=m.now,
        policy=POLICY,
        fleet=replace(world.fleet(), records=(after,)),
    )
    assert not (isinstance(resumed, ACTING_STEPS) and resumed.key in after.steps_done)

    # The step ran, the process died before its outcome was persisted.
    crashed = NodeRecord.from_annotations(m.begun.to_annotations())
    assert crashed is not None
    world.record = crashed
    before_crash = list(world.executed)
    world.trail, world.executed = [], []
    step = world.next()
    assert (type(step), step.key if isinstance(step, ACTING_STEPS) else None) == expected_resume(m.step)
    if isinstance(step, VerifyRebooted):
        assert step.expected_old_boot_id == m.step.expected_old_boot_id  # type: ignore[union-attr]

    # ... and the resumed incident ends as the uninterrupted one did, without repeating
    # a reset or a reboot that took effect.
    world.run()
    assert world.record.state is live.record.state
    assert (world.record.outcome or "").split(":")[0] == (live.record.outcome or "").split(":")[0]
    destructive = [s.key for s in before_crash + world.executed if isinstance(s, ResetGpus | Reboot)]
    repeats = {k for k in destructive if destructive.count(k) > 1}
    # Only a reboot that the cluster says never happened ("reboot-lost") is issued again.
    assert repeats <= ({"reboot:1"} if script == "reboot-lost" else set())


def test_a_reboot_issued_but_not_recorded_is_verified_not_repeated() -> None:
    sim = Sim(fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}))
    while not isinstance(sim.next(), Reboot):
        sim.advance()
    step = sim.next()
    assert isinstance(step, Reboot)
    begun = roundtrip(begin_step(sim.record, step, now=sim.now))
    sim.execute(step)  # the node reboots; the orchestrator dies before recording it
    sim.record = begun
    resumed = sim.next()
    assert resumed == VerifyRebooted("reboot:1", "boot-0", POLICY.reboot_timeout)
    rest = sim.run()
    assert not any(isinstance(s, Reboot) for s in rest)
    assert sim.record.outcome is not None and sim.record.outcome.startswith("recovered")


def test_a_reboot_recorded_as_intended_that_never_ran_is_issued_again() -> None:
    sim = Sim(fresh_record(Action.REBOOT), fixed_by=frozenset({Reboot}))
    while not isinstance(sim.next(), Reboot):
        sim.advance()
    step = sim.next()
    sim.record = roundtrip(begin_step(sim.record, step, now=sim.now))  # died before issuing it
    rest = sim.run()
    assert kinds(rest)[:3] == ["VerifyRebooted", "Reboot", "RunDiagnostics"]


def test_an_interrupted_reset_is_measured_not_repeated_and_a_failure_climbs() -> None:
    sim = Sim(fresh_record(), fixed_by=frozenset({Reboot}))
    while not isinstance(sim.next(), ResetGpus):
        sim.advance()
    step = sim.next()
    sim.record = roundtrip(begin_step(sim.record, step, now=sim.now))  # reset never ran
    rest = sim.run()
    assert kinds(rest) == [
        "RunDiagnostics",
        "CaptureBootId",
        "Reboot",
        "RunDiagnostics",
        "Readmit",
        "CloseIncident",
        "Done",
    ]


# --------------------------------------------------------------------------- safety (hypothesis)

EVIDENCE_ACTIONS = [
    Action.RESET_GPU,
    Action.REBOOT,
    Action.INSPECT,
    Action.REPLACE,
    Action.NONE,
    Action.MONITOR,
]


def _outcome_choices(step: Step, record: NodeRecord, counter: int) -> list[StepOutcome]:
    match step:
        case Cordon():
            return [Succeeded(), Failed("api")]
        case Drain() | ResetGpus() | Readmit() | Cancel():
            return [Succeeded(), Failed("x")]
        case CaptureBootId():
            return [BootIdRead(f"boot-{counter}"), Failed("x")]
        case Reboot() | VerifyRebooted():
            return [
                Rebooted(f"boot-new-{counter}"),
                NotRebooted(),
                Failed("x"),
                Rebooted(record.boot_id_before or ""),
            ]
        case RunDiagnostics():
            return [DiagnosticsResult(True), DiagnosticsResult(False, (1,)), Failed("x")]
        case RequestApproval():
            return [
                ApprovalReceived("a", True, "ok", "RMA"),
                ApprovalReceived("a", False, "no"),
                ApprovalTimedOut(),
            ]
        case FileTicket():
            return [TicketFiled("T-1"), Failed("jira")]
        case CloseIncident():
            return [Succeeded()]
    raise AssertionError(step)


BAD_EVIDENCE = st.sampled_from(["none", "stale", "unknown", "future", "untimed"])


def _bad(kind: str, now: datetime, action: Action) -> tuple[NodeAssessment | None, datetime | None]:
    match kind:
        case "none":
            return None, now
        case "stale":
            return assess(action), now - POLICY.max_evidence_age - timedelta(seconds=1)
        case "unknown":
            return UNKNOWN, now
        case "future":
            return assess(action), now + timedelta(seconds=1)
    return assess(action), None


@st.composite
def walks(draw: st.DrawFn) -> list[tuple[NodeRecord, FleetView, datetime]]:
    """Reachable records: random evidence, random outcomes, random cluster changes."""
    action = draw(
        st.sampled_from([Action.RESET_GPU] * 3 + [Action.REBOOT] * 2 + [Action.INSPECT, Action.REPLACE])
    )
    record = fresh_record(action, dry_run=draw(st.booleans()))
    now = T0
    unschedulable: set[str] = set(draw(st.sampled_from([(), (NODE,)])))
    seen = []
    for i in range(draw(st.integers(8, 40))):
        if draw(st.integers(0, 9)) == 0:
            unschedulable ^= {NODE}  # someone cordons or uncordons by hand
        storm = draw(st.integers(0, 9)) == 0
        unhealthy = tuple(UnhealthyObservation(f"n{j}", now) for j in range(30)) if storm else ()
        fleet = FleetView(
            gpu_nodes=100, records=(record,), unschedulable=frozenset(unschedulable), unhealthy=unhealthy
        )
        seen.append((record, fleet, now))
        kind = draw(st.sampled_from(["needs"] * 6 + ["healthy", "bad", "bad"]))
        if kind == "needs":
            latest: NodeAssessment | None = assess(draw(st.sampled_from([action] * 6 + EVIDENCE_ACTIONS[:4])))
            observed: datetime | None = now - draw(st.sampled_from([timedelta(0), POLICY.max_evidence_age]))
        elif kind == "healthy":
            latest, observed = HEALTHY, now
        else:
            latest, observed = _bad(draw(BAD_EVIDENCE), now, Action.RESET_GPU)
        step = next_step(record, latest=latest, observed_at=observed, now=now, policy=POLICY, fleet=fleet)
        if isinstance(step, WaitForProbation):
            now = max(now, step.until)
        if not isinstance(step, ACTING_STEPS):
            now += timedelta(minutes=draw(st.integers(1, 30)))
            if isinstance(step, Halt):
                break
            if isinstance(step, Done):  # the next incident of the same node (feeds the loop guard)
                record = open_incident(
                    assess(action),
                    incident_id=f"inc-{i}",
                    now=now,
                    policy=POLICY,
                    prior=record,
                    dry_run=record.dry_run,
                )
            continue
        record = begin_step(record, step, now=now)
        if isinstance(step, Cordon) and not record.dry_run:
            unschedulable.add(NODE)
        if isinstance(step, Readmit) and step.uncordon and not record.dry_run:
            unschedulable.discard(NODE)
        if draw(st.integers(0, 7)) == 0:
            continue  # crash: the outcome is never recorded
        choices = _outcome_choices(step, record, i)  # mostly the first (success), sometimes any
        outcome = choices[0] if draw(st.integers(0, 9)) < 6 else draw(st.sampled_from(choices))
        record = apply_outcome(record, step, outcome, now=now)
        now += timedelta(minutes=draw(st.integers(0, 30)))
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(), BAD_EVIDENCE, st.sampled_from(EVIDENCE_ACTIONS))
def test_unknown_or_stale_evidence_never_yields_a_destructive_step(
    seen: list[tuple[NodeRecord, FleetView, datetime]], bad: str, action: Action
) -> None:
    for record, fleet, now in seen:
        latest, observed = _bad(bad, now, action)
        step = next_step(record, latest=latest, observed_at=observed, now=now, policy=POLICY, fleet=fleet)
        assert not isinstance(step, DESTRUCTIVE_STEPS), (record.state, step)
        # A new cordon needs fresh evidence too; only finishing a decided one is allowed.
        if isinstance(step, Cordon):
            assert step.key in record.steps_intended


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks())
def test_evidence_that_needs_no_remediation_never_yields_a_destructive_step(
    seen: list[tuple[NodeRecord, FleetView, datetime]],
) -> None:
    for record, fleet, now in seen:
        step = next_step(record, latest=HEALTHY, observed_at=now, now=now, policy=POLICY, fleet=fleet)
        assert not isinstance(step, DESTRUCTIVE_STEPS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(), st.sampled_from(EVIDENCE_ACTIONS))
def test_reachable_records_are_consistent_persistable_and_never_redo_a_finished_step(
    seen: list[tuple[NodeRecord, FleetView, datetime]], action: Action
) -> None:
    for record, fleet, now in seen:
        assert roundtrip(record) == record
        for entry in record.history:
            assert entry.from_state == entry.to_state or entry.to_state in TRANSITIONS[entry.from_state]
        if record.history and record.history[-1].to_state is not record.state:
            raise AssertionError("history does not end in the record's state")
        step = next_step(record, latest=assess(action), observed_at=now, now=now, policy=POLICY, fleet=fleet)
        if isinstance(step, ACTING_STEPS):
            assert step.key not in record.steps_done
            begun = begin_step(record, step, now=now)
            assert begin_step(begun, step, now=now) == begun
        # A closed record asks for nothing but, once, the ticket that hands a failure to a human.
        if (record.state.terminal or record.closed) and not isinstance(step, Done):
            assert step == failure_ticket(record), f"closed record asked for {step}"
            assert record.state is S.FAILED


@settings(max_examples=200, deadline=None)
@given(walks(), st.sampled_from(["healthy", "needs", "none"]))
def test_a_breaker_storm_never_yields_a_cordon_drain_reset_or_reboot_without_an_override(
    seen: list[tuple[NodeRecord, FleetView, datetime]], kind: str
) -> None:
    for record, fleet, now in seen:
        storm = replace(fleet, unhealthy=tuple(UnhealthyObservation(f"n{j}", now) for j in range(50)))
        latest = {"healthy": HEALTHY, "needs": assess(Action.REBOOT), "none": None}[kind]
        step = next_step(record, latest=latest, observed_at=now, now=now, policy=POLICY, fleet=storm)
        approved = (
            record.breaker_approval is not None and record.breaker_approval.decision is Decision.APPROVE
        )
        if not approved:
            assert not isinstance(step, DESTRUCTIVE_STEPS)
            if isinstance(step, Cordon):
                assert step.key in record.steps_intended


# --------------------------------------------------------------------------- annotations

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
NONEMPTY = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]
    ),
)
APPROVALS = st.none() | st.builds(
    Approval,
    st.sampled_from(ApprovalKind),
    st.sampled_from(Decision),
    TEXT,
    TEXT,
    TIMES,
    st.none() | NONEMPTY,
)
RECORDS = st.builds(
    NodeRecord,
    node=NONEMPTY,
    incident_id=NONEMPTY,
    state=st.sampled_from(RemediationState),
    requested=st.sampled_from(Action),
    repair=st.sampled_from(Repair),
    reasons=st.lists(TEXT, max_size=5).map(tuple),
    opened_at=TIMES,
    updated_at=TIMES,
    attempt=st.integers(0, 9),
    hold=st.integers(0, 9),
    history=st.lists(
        st.builds(
            HistoryEntry,
            TIMES,
            st.sampled_from(RemediationState),
            st.sampled_from(RemediationState),
            TEXT,
            TEXT,
        ),
        max_size=HISTORY_LIMIT,
    ).map(tuple),
    steps_intended=st.frozensets(NONEMPTY, max_size=6),
    steps_done=st.frozensets(NONEMPTY, max_size=6),
    approval=APPROVALS,
    breaker_approval=APPROVALS,
    ticket_key=st.none() | NONEMPTY,
    cordoned_by_us=st.booleans(),
    readmitted_at=st.none() | TIMES,
    probation_until=st.none() | TIMES,
    gpus=st.lists(st.builds(GpuTarget, st.integers(0, 15), st.none() | UUIDS), max_size=8).map(tuple),
    dry_run=st.booleans(),
    boot_id_before=st.none() | NONEMPTY,
    outcome=st.none() | NONEMPTY,
    closed_at=st.none() | TIMES,
    past_incidents=st.lists(
        st.builds(IncidentSummary, NONEMPTY, TIMES, st.none() | TIMES, TEXT, st.booleans()), max_size=5
    ).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(RECORDS)
def test_annotations_round_trip_any_record(record: NodeRecord) -> None:
    annotations = record.to_annotations()
    assert set(annotations) == set(ANNOTATION_KEYS)
    assert all(k.startswith(ANNOTATION_PREFIX) and isinstance(v, str) for k, v in annotations.items())
    assert NodeRecord.from_annotations(json.loads(json.dumps(annotations))) == record


@settings(max_examples=100, deadline=None)
@given(RECORDS, st.sampled_from(EVIDENCE_ACTIONS), BAD_EVIDENCE)
def test_next_step_on_any_record_with_bad_evidence_is_never_destructive(
    record: NodeRecord, action: Action, bad: str
) -> None:
    record = replace(record, node=NODE)
    latest, observed = _bad(bad, T0, action)
    step = next_step(
        record, latest=latest, observed_at=observed, now=T0, policy=POLICY, fleet=FleetView(gpu_nodes=10)
    )
    assert not isinstance(step, DESTRUCTIVE_STEPS)


def test_no_annotations_means_no_record_and_other_annotations_are_ignored() -> None:
    assert NodeRecord.from_annotations({}) is None
    assert NodeRecord.from_annotations({"kubectl.kubernetes.io/last-applied": "{}"}) is None
    annotations = fresh_record().to_annotations() | {"gpumedic.io/opt-out": "true"}
    assert NodeRecord.from_annotations(annotations) == fresh_record()


def test_the_step_annotation_shows_the_step_in_flight() -> None:
    r = fresh_record()
    step = Cordon("cordon:1", 1, 1, Repair.RESET_GPU, (), "x")
    assert r.to_annotations()["gpumedic.io/step"] == ""
    assert begin_step(r, step, now=T0).to_annotations()["gpumedic.io/step"] == "cordon:1"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gpumedic.io/version", "0", "reads version"),
        ("gpumedic.io/state", "on_fire", "unreadable"),
        ("gpumedic.io/history", "[{", "not JSON"),
        ("gpumedic.io/opened-at", "2025-03-01T12:00:00", "no time zone"),
        ("gpumedic.io/opened-at", "yesterday", "ISO 8601"),
        ("gpumedic.io/attempt", "-1", "not a count"),
        ("gpumedic.io/dry-run", "yes", "true/false"),
        ("gpumedic.io/steps-done", '{"a": 1}', "list of strings"),
        ("gpumedic.io/approval", '{"kind": "breaker"}', "not an approval"),
        ("gpumedic.io/gpus", "0,x", "unreadable"),
    ],
)
def test_corrupt_annotations_raise_instead_of_starting_afresh(key: str, value: str, message: str) -> None:
    annotations = fresh_record().to_annotations() | {key: value}
    with pytest.raises(CorruptRecord, match=message):
        NodeRecord.from_annotations(annotations)
    del annotations[key]
    if key != "gpumedic.io/state":
        with pytest.raises(CorruptRecord, match="missing"):
            NodeRecord.from_annotations(annotations)


def test_history_is_capped_so_a_long_incident_stays_small() -> None:
    r = transition(fresh_record(), S.QUARANTINED, now=T0, note="first")
    for i in range(3 * HISTORY_LIMIT):
        r = transition(r, S.READMITTED, now=T0, note=str(i))
        r = transition(r, S.QUARANTINED, now=T0, note=str(i))
    assert len(r.history) == HISTORY_LIMIT
    assert r.history[-1].note == str(3 * HISTORY_LIMIT - 1)
    assert roundtrip(r) == r


def test_annotations_of_a_worst_case_record_stay_far_below_the_kubernetes_limit() -> None:
    huge = "𝄞" * 5000  # four bytes in UTF-8; every free text is clipped on the way in
    assessment = NodeAssessment(
        NODE, Verdict.FAILED, Action.RESET_GPU, tuple(huge for _ in range(50)), assess().gpus
    )
    prior: NodeRecord | None = None
    for i in range(30):
        r = open_incident(
            assessment,
            incident_id=f"inc-{i:04d}",
            now=T0 + timedelta(days=30 * i),
            policy=POLICY,
            prior=prior,
        )
        prior = replace(r, outcome=huge[:300], closed_at=r.opened_at)
    sim = Sim(
        open_incident(assessment, incident_id="last", now=T0, policy=POLICY, prior=prior),
        problem=assessment,
        fixed_by=frozenset(),
        checks=False,
    )
    sim.answers[ApprovalKind.REPLACE] = ApprovalReceived(huge, True, huge, huge)
    sim.run()
    record = sim.record
    for _ in range(2 * HISTORY_LIMIT):
        record = transition(replace(record, state=S.IN_SERVICE), S.QUARANTINED, now=T0, note=huge, step=huge)
    sizes = {k: len(k.encode()) + len(v.encode()) for k, v in record.to_annotations().items()}
    size = sum(sizes.values())
    assert size < 128 * 1024  # the API server allows 256 KiB for all of a Node's annotations


def test_incident_reasons_name_each_gpu_once() -> None:
    from gpumedic.domain.remediation import _reasons_of
    from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

    assessment = NodeAssessment(
        node="n", verdict=Verdict.FAILED, action=Action.RESET_GPU, reasons=(),
        gpus=(GpuAssessment(3, Verdict.FAILED, Action.RESET_GPU, ("GPU 3: 2 volatile DBE errors",)),
              GpuAssessment(4, Verdict.WATCH, Action.MONITOR, ("high SBE rate",))),
    )
    assert _reasons_of(assessment) == ("GPU 3: 2 volatile DBE errors", "GPU 4: high SBE rate")
