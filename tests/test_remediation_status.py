"""`gpumedic remediation status` as an SRE reads it: records driven through the real state machine."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gpumedic.domain.budget import FleetView, RemediationPolicy, UnhealthyObservation
from gpumedic.domain.remediation import NodeRecord, RemediationState, failure_ticket
from gpumedic.domain.verdict import Action
from gpumedic.remediation_status import (
    due_for_resumption,
    fleet_status,
    render,
    stalled_after,
    sweep_requests,
    to_json,
    why_a_run_would_stop,
)
from tests.remediation_walk import refuse_breaker_override, storm_at, walk

S = RemediationState
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
POLICY = RemediationPolicy(max_nodes_out=5, max_fraction_out=0.5, probation=timedelta(hours=4))
MINUTE = timedelta(minutes=1)


def _fleet(records: list[NodeRecord], *, cordoned: set[str], opted_out: frozenset[str] = frozenset()) -> FleetView:
    return FleetView(
        gpu_nodes=10,
        records=tuple(records),
        unschedulable=frozenset(cordoned),
        unhealthy=tuple(UnhealthyObservation(r.node, r.opened_at) for r in records),
        opted_out=opted_out,
    )


def _fleet_in_every_situation() -> tuple[FleetView, dict[str, NodeRecord]]:
    records = {
        "gpu-a": walk("gpu-a", Action.RESET_GPU, policy=POLICY, until=S.DRAINING, at=NOW - 10 * MINUTE),
        "gpu-b": walk("gpu-b", Action.REPLACE, policy=POLICY, until=S.AWAITING_APPROVAL, at=T0),
        "gpu-c": walk("gpu-c", Action.REPLACE, policy=POLICY, until=None, at=T0),
        "gpu-d": walk(
            "gpu-d", Action.RESET_GPU, policy=POLICY, until=S.READMITTED, at=NOW - 2 * 60 * MINUTE, settled=True
        ),
        "gpu-e": walk("gpu-e", Action.RESET_GPU, policy=POLICY, until=S.DRAINING, at=T0),  # and nothing since
        "gpu-f": walk("gpu-f", Action.RESET_GPU, policy=POLICY, until=None, at=T0 - timedelta(days=2)),
        "gpu-g": walk("gpu-g", Action.REBOOT, policy=POLICY, until=S.DRAINING, at=NOW - 5 * MINUTE, dry_run=True),
    }
    cordoned = {"gpu-a", "gpu-b", "gpu-c", "gpu-e"}  # as the cluster has it: gpu-d was uncordoned on readmission
    return _fleet(list(records.values()), cordoned=cordoned, opted_out=frozenset({"gpu-x"})), records


def test_the_walk_reaches_the_states_the_status_is_read_from() -> None:
    _, records = _fleet_in_every_situation()
    assert {n: r.state for n, r in records.items()} == {
        "gpu-a": S.DRAINING,
        "gpu-b": S.AWAITING_APPROVAL,
        "gpu-c": S.TICKETED,
        "gpu-d": S.READMITTED,
        "gpu-e": S.DRAINING,
        "gpu-f": S.IN_SERVICE,
        "gpu-g": S.DRAINING,
    }
    assert records["gpu-f"].closed and records["gpu-c"].holds_node


def test_each_node_says_what_it_waits_for() -> None:
    fleet, records = _fleet_in_every_situation()
    status = fleet_status(fleet, POLICY, NOW)
    by_node = {n.node: n for n in status.nodes}

    assert set(by_node) == {"gpu-a", "gpu-b", "gpu-c", "gpu-d", "gpu-e", "gpu-g"}  # gpu-f is closed
    assert status.closed_hidden == 1
    assert by_node["gpu-a"].needs == "" and not by_node["gpu-a"].stalled  # its drain is under way
    assert by_node["gpu-a"].last == "drain: under way"
    assert by_node["gpu-b"].needs == "a human: approve or reject the replacement in the Prefect UI"
    assert by_node["gpu-c"].needs == "the replacement: GPU-9"
    assert by_node["gpu-d"].needs == f"probation until {records['gpu-d'].probation_until:%Y-%m-%d %H:%M} UTC"
    assert by_node["gpu-e"].stalled and by_node["gpu-e"].needs.startswith("a new run: no progress for 3.0 h")
    assert by_node["gpu-g"].dry_run and not by_node["gpu-g"].out_of_service

    assert [n.node for n in status.needs_a_human] == ["gpu-b"]
    assert [n.node for n in status.stalled] == ["gpu-e"]


def test_the_budget_counts_what_gpumedic_holds_out_of_service_and_the_breaker_is_stated() -> None:
    fleet, _ = _fleet_in_every_situation()
    status = fleet_status(fleet, POLICY, NOW)
    out = {n.node for n in status.nodes if n.out_of_service}
    assert out == {"gpu-a", "gpu-b", "gpu-c", "gpu-e"}  # not the readmitted node, not the dry run
    assert (status.out_of_service, status.limit) == (4, 5)
    assert not status.breaker.open
    lines = render(status)
    assert "out of service by gpumedic: 4 of at most 5 nodes (max_nodes_out 5, max_fraction_out 50%)" in lines
    assert any(line.startswith("circuit breaker closed: ") for line in lines)
    assert "waiting for a human: gpu-b" in lines
    assert "stalled (no progress for twice the longest step's deadline): gpu-e" in lines
    assert any("gpu-x" in line and "opted out" in line for line in lines)


def test_an_acting_state_is_stalled_only_past_twice_the_longest_step_deadline() -> None:
    fleet, records = _fleet_in_every_situation()
    began = records["gpu-e"].updated_at
    assert stalled_after(POLICY) == timedelta(minutes=90)  # the 45-minute diagnostics deadline, twice
    just_before = fleet_status(fleet, POLICY, began + timedelta(minutes=89))
    just_after = fleet_status(fleet, POLICY, began + timedelta(minutes=91))
    assert "gpu-e" not in {n.node for n in just_before.stalled}
    assert "gpu-e" in {n.node for n in just_after.stalled}
    # A node waiting for a human is never "stalled": it waits by design.
    assert "gpu-b" not in {n.node for n in fleet_status(fleet, POLICY, NOW + timedelta(days=3)).stalled}


def test_the_table_lists_every_open_incident_and_all_adds_the_closed_ones() -> None:
    fleet, _ = _fleet_in_every_situation()
    lines = render(fleet_status(fleet, POLICY, NOW))
    header = next(i for i, line in enumerate(lines) if line.startswith("node "))
    rows = lines[header + 1 : header + 7]
    assert [row.split()[0] for row in rows] == ["gpu-a", "gpu-b", "gpu-c", "gpu-d", "gpu-e", "gpu-g"]
    assert "draining (dry run)" in rows[-1]
    assert lines[-1] == "(1 closed incidents not shown; --all shows them)"
    every = fleet_status(fleet, POLICY, NOW, include_closed=True)
    assert every.closed_hidden == 0
    (closed,) = [n for n in every.nodes if n.node == "gpu-f"]
    assert closed.state == "in_service (closed)" and closed.last == "recovered: healthy after probation (reset_gpu)"


def test_an_unreadable_record_is_named_and_a_quiet_fleet_says_so() -> None:
    status = fleet_status(FleetView(gpu_nodes=4), POLICY, NOW, unreadable=[("gpu-z", "bad JSON in history")])
    lines = render(status)
    assert any(line.startswith("gpu-z: its remediation record cannot be read (bad JSON in history)") for line in lines)
    assert lines[-1] == "no open incidents"
    assert to_json(status)["unreadable"] == [{"node": "gpu-z", "error": "bad JSON in history"}]


def test_a_storm_opens_the_breaker_and_the_status_says_so() -> None:
    records = [
        walk(f"gpu-{i}", Action.RESET_GPU, policy=POLICY, until=S.QUARANTINED, at=NOW - 10 * MINUTE) for i in range(4)
    ]
    status = fleet_status(_fleet(records, cordoned={r.node for r in records}), POLICY, NOW)
    assert status.breaker.open
    assert any(line.startswith("circuit breaker OPEN: 4 of 10 nodes (40%) turned unhealthy") for line in render(status))


def test_the_json_has_one_entry_per_listed_node() -> None:
    fleet, _ = _fleet_in_every_situation()
    document = to_json(fleet_status(fleet, POLICY, NOW))
    assert [n["node"] for n in document["nodes"]] == ["gpu-a", "gpu-b", "gpu-c", "gpu-d", "gpu-e", "gpu-g"]
    assert document["out_of_service"] == 4 and document["budget_limit"] == 5
    assert document["nodes"][4]["stalled"] is True


def test_a_ticket_filed_without_a_decision_still_needs_a_human_and_an_inspection_is_not_a_replacement() -> None:
    undecided = walk("gpu-u", Action.REPLACE, policy=POLICY, until=None, at=T0, decided=False)
    inspected = walk("gpu-i", Action.INSPECT, policy=POLICY, until=None, at=T0)
    assert undecided.state is inspected.state is S.TICKETED
    status = fleet_status(_fleet([undecided, inspected], cordoned={"gpu-u", "gpu-i"}), POLICY, NOW)
    by_node = {n.node: n for n in status.nodes}
    assert by_node["gpu-u"].needs == (
        "a human: nobody decided in time; the replacement ticket was filed awaiting a decision: GPU-9"
    )
    assert by_node["gpu-i"].needs == "the inspection: GPU-9"
    assert [n.node for n in status.needs_a_human] == ["gpu-u"]


def test_only_incidents_no_run_will_come_back_to_are_due_for_resumption() -> None:
    fleet, records = _fleet_in_every_situation()
    due = {r.node: r for r in due_for_resumption(fleet, POLICY, NOW)}
    # gpu-e's drain stopped 3 h ago: its run died. Everything else is under way, waits for a human
    # (gpu-b's request is recent), is closed (gpu-c ticketed, gpu-f), or is on probation still (gpu-d).
    assert set(due) == {"gpu-e"}
    assert due["gpu-e"].incident == records["gpu-e"].incident_id and due["gpu-e"].why.startswith("no progress for")
    later = {r.node: r.why for r in due_for_resumption(fleet, POLICY, NOW + timedelta(hours=5))}
    # Probation is over: a run must read fresh evidence and close it (or climb the ladder).
    assert later["gpu-d"].startswith("its probation ended")
    # Every acting state is stalled by then (the dry run too: it holds nothing, but its record is open).
    assert {"gpu-a", "gpu-e", "gpu-g"} <= set(later)
    assert "gpu-b" not in later  # its approval times out after 24 h, by its own suspended run
    opted_out = replace(fleet, opted_out=frozenset({"gpu-e"}))
    assert "gpu-e" not in {r.node for r in due_for_resumption(opted_out, POLICY, NOW)}  # a run would only halt


def test_an_approval_the_server_never_timed_out_and_a_long_wait_are_resumed() -> None:
    asked = walk("gpu-b", Action.REPLACE, policy=POLICY, until=S.AWAITING_APPROVAL, at=T0)
    waiting = walk("gpu-w", Action.RESET_GPU, policy=POLICY, until=S.IN_SERVICE, at=T0)  # opened, no budget yet
    fleet = _fleet([asked, waiting], cordoned={"gpu-b"})
    deadline = T0 + POLICY.approval_timeout
    on_time = {r.node for r in due_for_resumption(fleet, POLICY, deadline + timedelta(minutes=10))}
    late = {r.node: r.why for r in due_for_resumption(fleet, POLICY, deadline + timedelta(minutes=20))}
    assert "gpu-b" not in on_time and late["gpu-b"].startswith("its approval request is")
    assert waiting.state is S.IN_SERVICE and not waiting.closed
    assert {r.node for r in due_for_resumption(fleet, POLICY, T0 + timedelta(minutes=10))} == set()
    assert late["gpu-w"].startswith("waiting for")


def test_the_sweep_holds_back_events_only_where_a_run_would_stop_at_once() -> None:
    fleet, records = _fleet_in_every_situation()
    held = why_a_run_would_stop(fleet, POLICY, NOW)
    # gpu-b asked for approval and nobody answered yet; gpu-c waits, cordoned, for the replacement it
    # ticketed; gpu-x is opted out. The others are at work, on probation (a node failing on probation
    # must raise its event), stalled (the event resumes them) or closed and done (gpu-f: a new incident).
    assert held == {
        "gpu-b": f"incident {records['gpu-b'].incident_id} awaits a human's decision (replace)",
        "gpu-c": f"gpu-c is still out of service after incident {records['gpu-c'].incident_id} "
                 f"({records['gpu-c'].outcome})",
        "gpu-x": "gpu-x is opted out of automated remediation",
    }
    # Uncordoned by hand (the new board is in): the next sweep's event opens a new incident if it needs one.
    assert "gpu-c" not in why_a_run_would_stop(replace(fleet, unschedulable=frozenset({"gpu-a", "gpu-b"})),
                                               POLICY, NOW)
    # A failed incident still holding the node owes a ticket that says a human must take over: a run files it.
    owed = replace(records["gpu-c"], state=S.FAILED,
                   steps_done=frozenset(k for k in records["gpu-c"].steps_done if not k.startswith("ticket")))
    assert failure_ticket(owed) is not None
    assert "gpu-c" not in why_a_run_would_stop(replace(fleet, records=(owed,)), POLICY, NOW)
    deadline = T0 + POLICY.approval_timeout
    asked = _fleet([records["gpu-b"]], cordoned={"gpu-b"})
    assert "gpu-b" in why_a_run_would_stop(asked, POLICY, deadline + timedelta(minutes=10))
    # Past its timeout by more than a re-check: the suspended run did not apply the timeout, a new one must.
    assert why_a_run_would_stop(asked, POLICY, deadline + timedelta(minutes=20)) == {}


def test_the_sweep_says_for_each_node_needing_remediation_whether_a_run_was_requested_and_why_not() -> None:
    fleet, records = _fleet_in_every_situation()
    needing = ["gpu-a", "gpu-b", "gpu-c", "gpu-f", "gpu-x", "gpu-new"]
    requests = sweep_requests(needing, fleet, POLICY, NOW, events=True)
    assert set(requests) == set(needing)
    assert {n for n, r in requests.items() if r.raised} == {"gpu-a", "gpu-f", "gpu-new"}
    assert requests["gpu-a"].note == f"run requested: resumes incident {records['gpu-a'].incident_id} (draining)"
    # Closed (gpu-f: a new incident) or never remediated: the run opens one.
    assert requests["gpu-f"].note == requests["gpu-new"].note == "run requested"
    held = why_a_run_would_stop(fleet, POLICY, NOW)
    assert {n: r.why for n, r in requests.items() if not r.raised} == {n: held[n] for n in ("gpu-b", "gpu-c", "gpu-x")}
    assert requests["gpu-b"].note.startswith("no run requested: incident ")
    # No cluster named, or it could not be read: every event is raised, and each run reads the records itself.
    assert all(r.raised and r.note == "run requested" for r in sweep_requests(needing, None, POLICY, NOW,
                                                                             events=True).values())
    # A report-only sweep raises nothing and says what a sweep with events would have done: its dry run.
    quiet = sweep_requests(needing, fleet, POLICY, NOW, events=False)
    assert not any(r.raised for r in quiet.values())
    assert quiet["gpu-a"].note == ("no run requested: this sweep only reports (events off); with events, a run "
                                   f"would be requested: it resumes incident {records['gpu-a'].incident_id} (draining)")
    assert quiet["gpu-new"].note == ("no run requested: this sweep only reports (events off); with events, a run "
                                     "would be requested")
    assert quiet["gpu-b"].note == ("no run requested: this sweep only reports (events off), and a run would only "
                                   f"stop: {held['gpu-b']}")


def test_an_incident_held_by_the_open_breaker_waits_for_it_and_is_looked_at_again() -> None:
    held = walk("gpu-h", Action.RESET_GPU, policy=POLICY, until=S.QUARANTINED, at=T0, settled=True)
    held = refuse_breaker_override(held, Action.RESET_GPU, at=T0 + MINUTE, policy=POLICY)
    assert held.state is S.QUARANTINED and not held.closed  # cordoned; every run halts before the drain
    fleet = replace(_fleet([held], cordoned={"gpu-h"}), unhealthy=storm_at("gpu-h", NOW - 10 * MINUTE))

    status = fleet_status(fleet, POLICY, NOW)
    assert status.breaker.open
    assert status.nodes[0].needs.startswith("the circuit breaker to close (no override was given")
    assert not status.nodes[0].stalled  # 3 h without progress, but not because its run died
    # A run first readmits a node that looks healthy now (capacity back in a storm); else it halts again.
    (due,) = due_for_resumption(fleet, POLICY, NOW)
    assert due.why.startswith("held by the open circuit breaker for 3.0 h: a run readmits the node")

    calm = NOW + POLICY.breaker_window + MINUTE
    assert not fleet_status(fleet, POLICY, calm).breaker.open
    assert fleet_status(fleet, POLICY, calm).nodes[0].stalled  # no breaker to blame any more


def test_a_wait_that_changes_nothing_is_looked_at_again_every_quarter_hour() -> None:
    waiting = walk("gpu-w", Action.RESET_GPU, policy=POLICY, until=S.IN_SERVICE, at=T0)  # no budget yet
    fleet = _fleet([waiting], cordoned=set())

    def key(at: datetime) -> str:
        (due,) = due_for_resumption(fleet, POLICY, at)
        return due.key

    # A resumed run that waits again leaves the record as it was; a key per record version alone would
    # make Prefect answer every later re-check with that first run, and the incident would never move.
    first = key(T0 + 16 * MINUTE)
    assert key(T0 + 29 * MINUTE) == first  # two resumers in one quarter hour start one run
    assert len({first, key(T0 + 31 * MINUTE), key(T0 + 46 * MINUTE)}) == 3


def test_an_override_given_in_a_storm_lets_the_incident_go_on() -> None:
    overridden = walk("gpu-o", Action.RESET_GPU, policy=POLICY, until=S.DRAINING, at=NOW - 5 * MINUTE, storm=True)
    fleet = replace(_fleet([overridden], cordoned={"gpu-o"}), unhealthy=storm_at("gpu-o", NOW - 10 * MINUTE))
    status = fleet_status(fleet, POLICY, NOW)
    assert status.breaker.open and status.nodes[0].needs == ""  # its drain is under way
    assert "breaker" not in status.nodes[0].waiting_for
