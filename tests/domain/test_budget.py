"""The disruption budget, the circuit breaker, and what they do to a storm of unhealthy nodes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gpumedic.domain.budget import (
    BreakerOverride,
    FleetView,
    RemediationPolicy,
    UnhealthyObservation,
    budget_allows,
    budget_limit,
    circuit_breaker,
    out_of_service_by_us,
)
from gpumedic.domain.remediation import (
    ACTING_STEPS,
    DESTRUCTIVE_STEPS,
    HELD_STATES,
    ActingStep,
    ApprovalKind,
    ApprovalReceived,
    ApprovalTimedOut,
    CloseIncident,
    Cordon,
    DiagnosticsResult,
    Done,
    Drain,
    Halt,
    NodeRecord,
    Readmit,
    RemediationState,
    Repair,
    RequestApproval,
    ResetGpus,
    RunDiagnostics,
    StepOutcome,
    Succeeded,
    WaitForBudget,
    WaitForEvidence,
    WaitForProbation,
    apply_outcome,
    begin_step,
    next_step,
    open_incident,
)
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

S = RemediationState
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
NO_BREAKER = RemediationPolicy(max_nodes_out=5, breaker_fraction=1.0)


def assess(node: str, action: Action = Action.RESET_GPU) -> NodeAssessment:
    if action is Action.NONE:
        return NodeAssessment(node, Verdict.HEALTHY, Action.NONE, (), ())
    gpu = GpuAssessment(0, Verdict.FAILED, action, ("Xid 79: fallen off the bus",))
    return NodeAssessment(node, Verdict.FAILED, action, (), (gpu,))


def record(node: str, *, dry_run: bool = False) -> NodeRecord:
    return open_incident(assess(node), incident_id=f"inc-{node}", now=T0, policy=NO_BREAKER, dry_run=dry_run)


def cordoned(node: str, *, confirmed: bool = True, by_us: bool = True, dry_run: bool = False) -> NodeRecord:
    """A record whose cordon was decided (and, if `confirmed`, took effect)."""
    r = record(node, dry_run=dry_run)
    step = Cordon("cordon:1", 1, 1, Repair.RESET_GPU, (), "test", already_cordoned=not by_us, dry_run=dry_run)
    r = begin_step(r, step, now=T0)
    return apply_outcome(r, step, Succeeded(), now=T0) if confirmed else r


def fleet(*records: NodeRecord, nodes: int = 100, unschedulable: set[str] | None = None) -> FleetView:
    if unschedulable is None:  # by default the cluster agrees with every confirmed cordon
        unschedulable = {r.node for r in records if r.cordon_confirmed and not r.dry_run}
    return FleetView(gpu_nodes=nodes, records=records, unschedulable=frozenset(unschedulable))


# --------------------------------------------------------------------------- the policy


def test_policy_defaults_are_documented_and_the_model_is_frozen_and_strict() -> None:
    policy = RemediationPolicy()
    assert (policy.max_nodes_out, policy.max_fraction_out, policy.max_remediations_per_window) == (5, 0.1, 3)
    assert policy.remediation_window == timedelta(days=7)
    assert (policy.diag_level, policy.breaker_fraction, policy.breaker_window) == (2, 0.2, timedelta(hours=1))
    for name, info in RemediationPolicy.model_fields.items():
        assert info.description, f"{name} is undocumented"
    with pytest.raises(ValidationError):
        policy.max_nodes_out = 7
    with pytest.raises(ValidationError, match="extra"):
        RemediationPolicy.model_validate({"max_nodes_in": 3})


def test_policy_reads_yaml_style_values_and_refuses_nonsense() -> None:
    policy = RemediationPolicy.model_validate(
        {"probation": "PT30M", "approval_timeout": 3600, "max_fraction_out": 0.25}
    )
    assert policy.probation == timedelta(minutes=30) and policy.approval_timeout == timedelta(hours=1)
    for bad in (
        {"max_evidence_age": 0},
        {"drain_timeout": -5},
        {"max_fraction_out": 1.5},
        {"breaker_fraction": 0},
        {"diag_level": 5},
        {"max_nodes_out": -1},
    ):
        with pytest.raises(ValidationError):
            RemediationPolicy.model_validate(bad)


# --------------------------------------------------------------------------- the budget


@pytest.mark.parametrize(
    ("nodes", "count", "fraction", "limit"),
    [
        (100, 5, 0.1, 5),  # the count binds
        (30, 5, 0.1, 3),  # the fraction binds
        (5, 5, 0.1, 1),  # a small fleet still tolerates one node out
        (100, 0, 0.1, 0),  # max_nodes_out=0 disables automation
        (100, 5, 0.0, 0),  # so does max_fraction_out=0
        (100, 50, 0.29, 29),  # no float surprise (0.29 * 100 = 28.999...)
        (0, 5, 0.1, 1),
    ],
)
def test_budget_limit_is_the_smaller_of_the_count_and_the_fraction_of_nodes(
    nodes: int, count: int, fraction: float, limit: int
) -> None:
    policy = RemediationPolicy(max_nodes_out=count, max_fraction_out=fraction)
    assert budget_limit(FleetView(gpu_nodes=nodes), policy) == limit


def test_out_of_service_counts_decided_and_effective_cordons_of_ours_only() -> None:
    in_flight = cordoned("a", confirmed=False)
    ours = cordoned("b")
    uncordoned_by_hand = cordoned("c")
    someone_elses = cordoned("d", by_us=False)
    not_started = record("e")
    dry = cordoned("f", dry_run=True)
    view = fleet(
        in_flight, ours, uncordoned_by_hand, someone_elses, not_started, dry, unschedulable={"b", "d"}
    )
    assert out_of_service_by_us(view) == {"a", "b"}
    assert out_of_service_by_us(view, include_dry_run=True) == {"a", "b", "f"}


def test_terminal_records_count_while_the_cluster_keeps_the_node_cordoned() -> None:
    ticketed = replace(cordoned("a"), state=S.TICKETED, outcome="ticketed: X-1")
    failed_before_cordon = replace(cordoned("b", confirmed=False), state=S.FAILED, outcome="failed")
    assert out_of_service_by_us(fleet(ticketed, failed_before_cordon, unschedulable={"a", "b"})) == {"a"}
    # After the replacement the technician uncordons the node: it no longer counts.
    assert out_of_service_by_us(fleet(ticketed, unschedulable=set())) == frozenset()


def test_a_node_on_probation_does_not_count_once_its_uncordon_is_confirmed() -> None:
    r = cordoned("a")
    step = Readmit("readmit:1", True, timedelta(minutes=15))
    r = begin_step(replace(r, state=S.DIAGNOSING), step, now=T0)
    assert out_of_service_by_us(fleet(r, unschedulable={"a"})) == {"a"}  # uncordon in flight
    r = apply_outcome(r, step, Succeeded(), now=T0)
    assert out_of_service_by_us(fleet(r, unschedulable=set())) == frozenset()


def test_budget_allows_until_the_limit_and_never_counts_a_node_twice() -> None:
    policy = RemediationPolicy(max_nodes_out=2)
    full = fleet(cordoned("a"), cordoned("b"), record("c"))
    decision = budget_allows(full, "c", policy)
    assert not decision.allowed
    assert (decision.out_now, decision.limit) == (2, 2)
    assert "exhausted" in decision.reason
    again = budget_allows(full, "a", policy)  # already out for this same incident
    assert again.allowed and again.out_now == 2
    assert budget_allows(fleet(cordoned("a"), record("c")), "c", policy).allowed


def test_a_node_someone_else_cordoned_needs_no_slot_and_takes_none() -> None:
    policy = RemediationPolicy(max_nodes_out=1)
    view = fleet(cordoned("a"), record("b"), unschedulable={"a", "b"})
    decision = budget_allows(view, "b", policy)
    assert decision.allowed and "someone else" in decision.reason
    taken = fleet(cordoned("a"), cordoned("b", by_us=False), record("c"), unschedulable={"a", "b"})
    assert out_of_service_by_us(taken) == {"a"}


def test_dry_runs_never_block_real_remediation_but_see_each_other() -> None:
    policy = RemediationPolicy(max_nodes_out=1)
    view = fleet(cordoned("a", dry_run=True), record("b"), record("c", dry_run=True))
    assert budget_allows(view, "b", policy).allowed
    assert not budget_allows(view, "c", policy, dry_run=True).allowed


def test_fleet_view_refuses_two_records_for_one_node_and_a_negative_size() -> None:
    with pytest.raises(ValueError, match="at most one"):
        FleetView(gpu_nodes=3, records=(record("a"), record("a")))
    with pytest.raises(ValueError, match="negative"):
        FleetView(gpu_nodes=-1)
    assert FleetView(gpu_nodes=3, records=(record("a"),)).record_for("a") == record("a")
    assert FleetView(gpu_nodes=3).record_for("a") is None


# --------------------------------------------------------------------------- the breaker


def observations(count: int, at: datetime, prefix: str = "n") -> tuple[UnhealthyObservation, ...]:
    return tuple(UnhealthyObservation(f"{prefix}{i}", at) for i in range(count))


def override(until: datetime) -> BreakerOverride:
    return BreakerOverride(until, "alice", "driver rollout on rack 7", set_at=min(until - MINUTE, T0))


def test_breaker_opens_above_the_fraction_within_the_window() -> None:
    policy = RemediationPolicy()
    below = circuit_breaker(FleetView(gpu_nodes=100, unhealthy=observations(20, T0)), T0, policy)
    assert not below.open and below.unhealthy_nodes == 20 and below.unhealthy_share == pytest.approx(0.2)
    above = circuit_breaker(FleetView(gpu_nodes=100, unhealthy=observations(21, T0)), T0, policy)
    assert above.open and "21 of 100" in above.reason


def test_breaker_counts_distinct_nodes_inside_the_window_only() -> None:
    policy = RemediationPolicy()
    old = observations(30, T0 - timedelta(hours=1, seconds=1))
    future = observations(30, T0 + MINUTE, prefix="f")
    repeated = observations(5, T0) * 10
    state = circuit_breaker(FleetView(gpu_nodes=100, unhealthy=old + future + repeated), T0, policy)
    assert not state.open and state.unhealthy_nodes == 5
    edge = circuit_breaker(
        FleetView(gpu_nodes=100, unhealthy=observations(30, T0 - timedelta(hours=1))), T0, policy
    )
    assert edge.open


def test_breaker_needs_a_minimum_number_of_nodes_so_a_small_fleet_can_repair_one() -> None:
    policy = RemediationPolicy()
    assert not circuit_breaker(FleetView(gpu_nodes=4, unhealthy=observations(2, T0)), T0, policy).open
    assert circuit_breaker(FleetView(gpu_nodes=4, unhealthy=observations(3, T0)), T0, policy).open
    assert not circuit_breaker(FleetView(gpu_nodes=0), T0, policy).open


def test_a_fleet_wide_override_keeps_the_breaker_closed_until_it_expires() -> None:
    policy = RemediationPolicy()
    view = FleetView(gpu_nodes=10, unhealthy=observations(5, T0), breaker_override=override(T0 + MINUTE))
    state = circuit_breaker(view, T0, policy)
    assert not state.open
    assert state.reason.endswith(f"overridden by alice until {(T0 + MINUTE).isoformat()}: driver rollout on rack 7")
    assert circuit_breaker(view, T0 + MINUTE, policy).open


def test_a_breaker_override_is_bounded_signed_and_read_back_exactly() -> None:
    good = BreakerOverride(T0 + timedelta(hours=2), "alice", "driver rollout", set_at=T0)
    assert BreakerOverride.from_json(good.to_json()) == good
    assert good.active(T0) and not good.active(T0 - MINUTE) and not good.active(T0 + timedelta(hours=2))
    with pytest.raises(ValueError, match="at most 1d"):
        BreakerOverride(T0 + timedelta(hours=25), "alice", "a long weekend", set_at=T0)
    with pytest.raises(ValueError, match="more than 0"):
        BreakerOverride(T0, "alice", "already over", set_at=T0)
    with pytest.raises(ValueError, match="who set it and why"):
        BreakerOverride(T0 + MINUTE, "alice", " ", set_at=T0)
    with pytest.raises(ValueError, match="timezone"):
        BreakerOverride(datetime(2026, 11, 22, 12), "alice", "x", set_at=datetime(2026, 11, 22, 11))
    for bad in ("2026-11-22", {"until": "2026-11-22T12:00:00+00:00"}):
        with pytest.raises(ValueError, match="expected {until, by, reason, set_at}"):
            BreakerOverride.from_json(bad)
    with pytest.raises(ValueError, match="until: 'noon' is not an ISO-8601 time"):
        BreakerOverride.from_json({**good.to_json(), "until": "noon"})


# --------------------------------------------------------------------------- the breaker in next_step


def ask(
    r: NodeRecord,
    view: FleetView,
    policy: RemediationPolicy,
    now: datetime = T0,
    latest: NodeAssessment | None = None,
) -> object:
    return next_step(r, latest=latest or assess(r.node), observed_at=now, now=now, policy=policy, fleet=view)


def answer(r: NodeRecord, step: object, outcome: StepOutcome) -> NodeRecord:
    assert isinstance(step, ACTING_STEPS)
    return apply_outcome(begin_step(r, step, now=T0), step, outcome, now=T0)


def storm_view(r: NodeRecord, *others: NodeRecord) -> FleetView:
    return replace(fleet(r, *others), unhealthy=observations(30, T0))


def test_an_open_breaker_asks_for_an_override_before_the_first_cordon() -> None:
    policy = RemediationPolicy()
    r = record("a")
    step = ask(r, storm_view(r), policy)
    assert isinstance(step, RequestApproval) and step.kind is ApprovalKind.BREAKER
    assert "30 of 100" in step.evidence[0]
    r = answer(r, step, ApprovalReceived("bob", True, "real faults"))
    assert isinstance(ask(r, storm_view(r), policy), Cordon)  # the budget still applies after this


def test_a_rejected_override_cancels_an_incident_that_held_nothing() -> None:
    policy = RemediationPolicy()
    r = record("a")
    r = answer(r, ask(r, storm_view(r), policy), ApprovalReceived("bob", False, "it is the switch"))
    assert r.state is S.CANCELLED
    assert r.outcome == "cancelled: breaker override rejected by bob: it is the switch"
    assert isinstance(ask(r, storm_view(r), policy), Done)


def test_a_rejected_override_fails_an_incident_that_holds_the_node_and_leaves_it_cordoned() -> None:
    policy = RemediationPolicy()
    r = cordoned("a")
    step = ask(r, storm_view(r), policy)  # would drain
    assert isinstance(step, RequestApproval) and step.kind is ApprovalKind.BREAKER
    r = answer(r, step, ApprovalReceived("bob", False, "wait"))
    assert r.state is S.FAILED and r.outcome is not None and "node left quarantined" in r.outcome


def test_an_override_that_times_out_halts_until_the_breaker_closes() -> None:
    policy = RemediationPolicy()
    r = record("a")
    r = answer(r, ask(r, storm_view(r), policy), ApprovalTimedOut())
    step = ask(r, storm_view(r), policy)
    assert isinstance(step, Halt) and "circuit breaker open" in step.reason
    assert isinstance(ask(r, fleet(r), policy), Cordon)  # the storm has passed
    overridden = replace(storm_view(r), breaker_override=override(T0 + timedelta(hours=1)))
    assert isinstance(ask(r, overridden, policy), Cordon)


def test_an_open_breaker_lets_non_destructive_steps_go_on() -> None:
    policy = RemediationPolicy()
    r = cordoned("a")
    r = replace(
        r,
        state=S.RESETTING,
        steps_intended=r.steps_intended | {"drain:1", "reset:1"},
        steps_done=r.steps_done | {"drain:1", "reset:1"},
    )
    step = ask(r, storm_view(r), policy)
    assert isinstance(step, RunDiagnostics)
    r = answer(r, step, DiagnosticsResult(True))
    assert isinstance(ask(r, storm_view(r), policy), Readmit)


# --------------------------------------------------------------------------- a storm, step by step


@dataclass
class Storm:
    """50 of 100 nodes need a GPU reset at once. Every flow shares only the cluster."""

    policy: RemediationPolicy
    broken: set[str] = field(default_factory=lambda: {f"gpu-{i:03d}" for i in range(50)})
    records: dict[str, NodeRecord] = field(default_factory=dict)
    unschedulable: set[str] = field(default_factory=set)
    pending: dict[str, ActingStep] = field(default_factory=dict)  # begun, not yet answered
    now: datetime = T0
    override_until: datetime | None = None
    answers: dict[ApprovalKind, StepOutcome] = field(default_factory=dict)
    steps: list[tuple[str, object]] = field(default_factory=list)
    peak: int = 0

    def __post_init__(self) -> None:
        for node in sorted(self.broken):
            self.records[node] = open_incident(
                assess(node), incident_id=f"inc-{node}", now=self.now, policy=self.policy
            )

    def view(self) -> FleetView:
        """Rebuilt from the cluster's state every time, never from counters."""
        return FleetView(
            gpu_nodes=100,
            records=tuple(self.records.values()),
            unschedulable=frozenset(self.unschedulable),
            unhealthy=tuple(UnhealthyObservation(n, T0) for n in sorted(self.records)),
            breaker_override=None if self.override_until is None else override(self.override_until),
        )

    def check(self) -> None:
        view = self.view()
        out = out_of_service_by_us(view)
        held = {r.node for r in self.records.values() if r.state in HELD_STATES}
        limit = budget_limit(view, self.policy)
        assert len(out) <= limit and len(held) <= limit and len(self.unschedulable) <= limit
        self.peak = max(self.peak, len(out))

    def latest(self, node: str) -> NodeAssessment:
        return assess(node, Action.RESET_GPU if node in self.broken else Action.NONE)

    def execute(self, node: str, step: ActingStep) -> StepOutcome:
        match step:
            case Cordon():
                self.unschedulable.add(node)
            case ResetGpus():
                self.broken.discard(node)
            case RunDiagnostics():
                return DiagnosticsResult(node not in self.broken)
            case Readmit():
                self.unschedulable.discard(node)
            case RequestApproval():
                return self.answers[step.kind]
        return Succeeded()

    def turn(self, node: str) -> None:
        """One flow's next move: either decide and record a step, or finish the one in flight."""
        r = self.records[node]
        if node in self.pending:
            begun = self.pending.pop(node)
            outcome = self.execute(node, begun)
            self.records[node] = (
                NodeRecord.from_annotations(apply_outcome(r, begun, outcome, now=self.now).to_annotations())
                or r
            )
            self.check()
            return
        step = next_step(
            r,
            latest=self.latest(node),
            observed_at=self.now,
            now=self.now,
            policy=self.policy,
            fleet=self.view(),
        )
        self.steps.append((node, step))
        if isinstance(step, ACTING_STEPS):
            assert not isinstance(step, DESTRUCTIVE_STEPS) or node in self.unschedulable or step.dry_run
            self.records[node] = begin_step(r, step, now=self.now)
            self.pending[node] = step
            self.check()

    def run(self, order: random.Random | None = None, ticks: int = 400) -> None:
        for _ in range(ticks):
            nodes = sorted(self.records)
            if order is not None:
                order.shuffle(nodes)
            for node in nodes:
                if not self.records[node].closed:
                    self.turn(node)
            if all(r.closed for r in self.records.values()) or self.halted():
                return
            self.now += MINUTE

    def halted(self) -> bool:
        last = {node: step for node, step in self.steps}
        return bool(last) and all(isinstance(s, Halt) for n, s in last.items() if not self.records[n].closed)

    def count(self, kind: type) -> int:
        return sum(isinstance(s, kind) for _, s in self.steps)


def test_a_storm_of_fifty_unhealthy_nodes_never_has_more_than_five_out_at_once() -> None:
    storm = Storm(NO_BREAKER)
    storm.run()
    assert storm.peak == 5  # the budget is used, never exceeded (checked after every move)
    assert storm.count(WaitForBudget) > 0
    assert storm.count(Cordon) == 50
    assert all(
        r.state is S.IN_SERVICE and (r.outcome or "").startswith("recovered") for r in storm.records.values()
    )
    assert not storm.unschedulable


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 8))
def test_the_budget_holds_whatever_order_the_flows_run_in(seed: int, limit: int) -> None:
    storm = Storm(RemediationPolicy(max_nodes_out=limit, breaker_fraction=1.0))
    storm.run(random.Random(seed), ticks=1000)
    assert storm.peak == limit
    assert all(r.closed for r in storm.records.values())


def test_the_same_storm_trips_the_breaker_and_nothing_is_cordoned_without_an_override() -> None:
    storm = Storm(RemediationPolicy(max_nodes_out=5), answers={ApprovalKind.BREAKER: ApprovalTimedOut()})
    storm.run()
    assert storm.count(Cordon) == 0 and storm.count(Drain) == 0
    assert storm.count(RequestApproval) == 50
    assert storm.halted()
    assert not storm.unschedulable


def test_with_the_breaker_overridden_the_budget_still_limits_the_storm() -> None:
    storm = Storm(RemediationPolicy(max_nodes_out=5), override_until=T0 + timedelta(days=1))
    storm.run()
    assert storm.peak == 5 and storm.count(RequestApproval) == 0
    assert all((r.outcome or "").startswith("recovered") for r in storm.records.values())


def test_per_incident_overrides_still_leave_the_budget_in_charge() -> None:
    storm = Storm(
        RemediationPolicy(max_nodes_out=3),
        answers={ApprovalKind.BREAKER: ApprovalReceived("bob", True, "go")},
    )
    storm.run()
    assert storm.peak == 3
    assert all((r.outcome or "").startswith("recovered") for r in storm.records.values())


def test_waits_are_the_only_answer_for_a_node_that_does_not_fit() -> None:
    policy = RemediationPolicy(max_nodes_out=1, breaker_fraction=1.0)
    waiting = record("b")
    step = next_step(
        waiting,
        latest=assess("b"),
        observed_at=T0,
        now=T0,
        policy=policy,
        fleet=fleet(cordoned("a"), waiting),
    )
    assert step == WaitForBudget("disruption budget exhausted: 1 of 1 nodes already out of service", 1, 1)
    # And an unusable assessment waits for evidence before the budget is even asked.
    step = next_step(waiting, latest=None, observed_at=T0, now=T0, policy=policy, fleet=fleet(waiting))
    assert isinstance(step, WaitForEvidence)
    assert not isinstance(step, WaitForProbation | CloseIncident)
