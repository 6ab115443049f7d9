"""The durable ticket outbox against the Jira emulator and a real SQLite file (no mocks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from gpumedic.adapters.jira_tickets import (
    Approval,
    JiraSettings,
    JiraTickets,
    TicketOutcome,
    TicketRequest,
    gpu_dedup_key,
)
from gpumedic.adapters.ticket_outbox import FlushReport, TicketOutbox
from gpumedic.sim.jira_api import JiraEmulator

UUID = "GPU-8D1C2B3A-0000-4E2A-9C1E-7B4D4E2A9C1E"


def request(incident: str = "inc-1", **changes: object) -> TicketRequest:
    base = TicketRequest(
        dedup_key=gpu_dedup_key(uuid=UUID),
        incident_id=incident,
        project="GPU",
        issue_type="Order Replacement",
        summary="Replace GPU 5 on gpu-node-11",
        description="- row remap failure\n- dcgmi diag -r 2 failed: memory",
        node="gpu-node-11",
        gpu_index=5,
        gpu_uuid=UUID,
        approval=Approval(approver="bob", reason="remap failed"),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class SimulatedCrash(BaseException):
    """The orchestrating process dies: nothing in the outbox gets to catch this."""


class CrashAfterJiraAnswers:
    """The real adapter, but the process dies right after Jira did the work."""

    def __init__(self, tickets: JiraTickets) -> None:
        self.tickets = tickets

    def file_replacement(self, ticket: TicketRequest) -> TicketOutcome:
        self.tickets.file_replacement(ticket)
        raise SimulatedCrash


@pytest.fixture
def jira() -> Iterator[JiraEmulator]:
    with JiraEmulator() as emu:
        yield emu


@pytest.fixture
def tickets(jira: JiraEmulator) -> Iterator[JiraTickets]:
    settings = JiraSettings(server=jira.url, user=jira.username, api_token=jira.password, timeout_s=5)
    with JiraTickets(settings) as t:
        yield t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(db_url: str, clock: Clock) -> Iterator[TicketOutbox]:
    box = TicketOutbox(db_url, clock=clock, lease_s=300)
    yield box
    box.close()


def test_enqueue_is_idempotent_per_gpu_and_incident(outbox: TicketOutbox) -> None:
    first = outbox.enqueue(request("inc-1"))
    assert outbox.enqueue(request("inc-1")) == first
    second = outbox.enqueue(request("inc-2"))
    assert second != first
    entries = outbox.pending()
    assert [e.id for e in entries] == [first, second]
    assert entries[0].request == request("inc-1")
    assert entries[0].attempts == 0 and entries[0].status == "pending"


def test_the_outbox_lives_beside_the_telemetry_tables(db_url: str, outbox: TicketOutbox) -> None:
    from sqlalchemy import inspect

    from gpumedic.adapters.store import TelemetryStore

    store = TelemetryStore(db_url)
    outbox.enqueue(request())
    tables = set(inspect(store.engine).get_table_names())
    assert {"ticket_outbox", "samples", "snapshots"} <= tables


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_jira_down_keeps_tickets_pending_and_recovery_files_each_exactly_once(
    jira: JiraEmulator, tickets: JiraTickets, outbox: TicketOutbox, mode: str
) -> None:
    a = outbox.enqueue(request("inc-1"))
    b = outbox.enqueue(request("inc-2", dedup_key=gpu_dedup_key(uuid="GPU-OTHER"), gpu_uuid="GPU-OTHER"))
    jira.outage(mode)  # type: ignore[arg-type]
    for _ in range(2):
        report = outbox.flush(tickets, stop_on_transient=False)
        assert report.filed == {} and set(report.pending) == {a, b}
    down = {e.id: e for e in outbox.pending()}
    assert down[a].attempts == 2 and down[b].attempts == 2
    assert "503" in (down[a].last_error or "") or "cannot reach" in (down[a].last_error or "")

    jira.outage(None)
    report = outbox.flush(tickets)
    assert report.all_filed and set(report.filed) == {a, b}
    assert outbox.pending() == []
    assert outbox.flush(tickets).filed == {}  # nothing left, nothing filed twice
    issues = jira.issues("GPU")
    assert len(issues) == 2
    assert {outbox.get(a).issue_key, outbox.get(b).issue_key} == {i["key"] for i in issues}
    assert outbox.get(a).outcome == "created" and outbox.get(a).last_error is None


def test_a_transient_failure_stops_the_flush_and_leaves_the_rest_untouched(
    jira: JiraEmulator, tickets: JiraTickets, outbox: TicketOutbox
) -> None:
    a = outbox.enqueue(request("inc-1"))
    b = outbox.enqueue(request("inc-2"))
    jira.outage("503")
    report = outbox.flush(tickets)
    assert list(report.pending) == [a] and report.not_attempted == [b]
    assert outbox.get(b).attempts == 0


def test_two_incidents_of_one_gpu_queued_during_an_outage_become_one_ticket_and_a_comment(
    jira: JiraEmulator, tickets: JiraTickets, outbox: TicketOutbox
) -> None:
    jira.outage("refuse")
    outbox.enqueue(request("inc-1"))
    outbox.enqueue(request("inc-2"))
    outbox.flush(tickets)
    jira.outage(None)
    report = outbox.flush(tickets)
    outcomes = sorted((o.created, o.commented) for o in report.filed.values())
    assert outcomes == [(False, True), (True, False)]
    [issue] = jira.issues("GPU")
    assert len(issue["fields"]["comment"]["comments"]) == 1


@pytest.mark.parametrize("crash_on", ["create", "comment"])
def test_a_crash_between_jira_and_mark_filed_still_gives_exactly_one_issue(
    jira: JiraEmulator, tickets: JiraTickets, db_url: str, clock: Clock, crash_on: str
) -> None:
    box = TicketOutbox(db_url, clock=clock, lease_s=300)
    if crash_on == "comment":
        box.enqueue(request("inc-0"))
        box.flush(tickets)
    entry_id = box.enqueue(request("inc-1"))
    with pytest.raises(SimulatedCrash):
        box.flush(CrashAfterJiraAnswers(tickets))
    box.close()
    [issue] = jira.issues("GPU")
    comments_before = len(issue["fields"]["comment"]["comments"])
    assert comments_before == (1 if crash_on == "comment" else 0)

    # A new process: while the crashed attempt's lease runs, the row is left alone...
    restarted = TicketOutbox(db_url, clock=clock, lease_s=300)
    assert restarted.get(entry_id).status == "pending"
    assert restarted.flush(tickets).not_attempted == [entry_id]
    # ...and once it expired, the retry finds the issue the crashed attempt wrote to and adopts it.
    clock.now += 301
    report = restarted.flush(tickets)
    outcome = report.filed[entry_id]
    assert (outcome.key, outcome.created, outcome.commented) == (issue["key"], False, False)
    assert restarted.get(entry_id).outcome == "adopted"
    [after] = jira.issues("GPU")
    assert len(after["fields"]["comment"]["comments"]) == comments_before
    restarted.close()


def test_a_permanent_refusal_is_parked_visible_and_can_be_retried(
    jira: JiraEmulator, tickets: JiraTickets, outbox: TicketOutbox
) -> None:
    entry_id = outbox.enqueue(request(project="HW"))
    report = outbox.flush(tickets)
    assert entry_id in report.failed and not report.all_filed
    parked = outbox.get(entry_id)
    assert parked.status == "failed" and parked.attempts == 1 and parked.last_error
    assert outbox.pending() == []
    assert outbox.flush(tickets).filed == {}

    jira.create_project("HW", "Hardware")  # an admin fixes the configuration
    assert outbox.retry_failed() == 1
    report = outbox.flush(tickets)
    assert report.all_filed and report.filed[entry_id].created
    assert len(jira.issues("HW")) == 1


def test_mark_filed_is_idempotent_and_keeps_the_first_key(outbox: TicketOutbox) -> None:
    entry_id = outbox.enqueue(request())
    outbox.mark_filed(entry_id, "GPU-1", outcome="created")
    outbox.mark_filed(entry_id, "GPU-2")
    outbox.mark_failed_attempt(entry_id, "late error")
    entry = outbox.get(entry_id)
    assert (entry.status, entry.issue_key, entry.attempts) == ("filed", "GPU-1", 0)


def test_the_desk_queues_while_jira_is_down_and_returns_the_key_once_filed(
    jira: JiraEmulator, tickets: JiraTickets, outbox: TicketOutbox
) -> None:
    from gpumedic.adapters.errors import PermanentError, TransientError
    from gpumedic.adapters.ticket_outbox import OutboxDesk

    desk = OutboxDesk(outbox, tickets)
    jira.outage("503")
    with pytest.raises(TransientError, match="queued in the outbox after 1 attempt"):
        desk.file(request())
    jira.outage(None)
    key = desk.file(request())
    jira.clear_logs()
    assert desk.file(request()) == key
    assert jira.request_log == [] and len(jira.issues("GPU")) == 1
    with pytest.raises(PermanentError, match="parked in the outbox"):
        desk.file(request("inc-7", project="NOPE"))


class SearchThenPause(JiraTickets):
    """The real adapter, and another worker that runs once between this one's search and its create."""

    def __init__(self, settings: JiraSettings, meanwhile: Callable[[], object]) -> None:
        super().__init__(settings)
        self.meanwhile: Callable[[], object] | None = meanwhile

    def find_open(self, project: str, dedup_key: str) -> list[dict[str, Any]]:
        found = super().find_open(project, dedup_key)
        if self.meanwhile is not None:
            other, self.meanwhile = self.meanwhile, None
            other()
        return found


def test_two_incidents_of_one_gpu_filed_at_once_by_two_workers_give_one_ticket_and_a_comment(
    jira: JiraEmulator, tickets: JiraTickets, db_url: str
) -> None:
    """A forecast's order and a remediation's replacement for one GPU, filed at the same moment by two
    workers: Jira's search-then-create is not atomic, so the outbox files one GPU's tickets one at a time."""
    settings = JiraSettings(server=jira.url, user=jira.username, api_token=jira.password, timeout_s=5)
    with TicketOutbox(db_url) as first_worker, TicketOutbox(db_url) as second_worker:
        first_worker.enqueue(request("forecast-1"))
        second = second_worker.enqueue(request("sweep-1"))
        meanwhile: list[FlushReport] = []
        with SearchThenPause(settings, lambda: meanwhile.append(second_worker.flush(tickets))) as pausing:
            first = first_worker.flush(pausing)

        # The second worker found the GPU's first ticket being filed and left its own waiting; the first
        # worker's flush then took it up too, and found the ticket it had just created.
        [during] = meanwhile
        assert during.filed == {} and second in during.not_attempted
        outcomes = {first_worker.get(i).request.incident_id: (o.created, o.commented) for i, o in first.filed.items()}
        assert outcomes == {"forecast-1": (True, False), "sweep-1": (False, True)}
    [issue] = jira.issues("GPU")
    assert len(issue["fields"]["comment"]["comments"]) == 1
