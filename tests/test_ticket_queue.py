"""The ticket outbox as `gpumedic tickets status` and the file-pending-tickets artifact show it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gpumedic.adapters.ticket_outbox import OutboxEntry, OutboxStatus
from gpumedic.ticket_queue import headline, render, table_rows, ticket_queue, to_json
from tests.adapters.test_ticket_outbox import request

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _entry(i: int, status: OutboxStatus, *, queued_ago: timedelta, filed_ago: timedelta | None = None,
           error: str | None = None, attempts: int = 0) -> OutboxEntry:
    return OutboxEntry(
        id=i, request=request(f"inc-{i}", node=f"gpu-node-{i}"), status=status, attempts=attempts,
        last_error=error, issue_key=None if filed_ago is None else f"GPU-{i}",
        outcome=None if filed_ago is None else "created", enqueued_at=(NOW - queued_ago).timestamp(),
        filed_at=None if filed_ago is None else (NOW - filed_ago).timestamp(),
    )


def _outbox() -> list[OutboxEntry]:
    return [
        _entry(1, "filed", queued_ago=timedelta(days=3), filed_ago=timedelta(days=3)),
        _entry(2, "filed", queued_ago=timedelta(hours=5), filed_ago=timedelta(hours=2)),
        _entry(3, "pending", queued_ago=timedelta(hours=3), error="Jira answered 503", attempts=4),
        _entry(4, "pending", queued_ago=timedelta(minutes=20), error="Jira answered 503", attempts=1),
        _entry(5, "failed", queued_ago=timedelta(hours=1), error="project: valid project is required", attempts=1),
    ]


def test_waiting_refused_and_recently_filed_tickets_are_told_apart() -> None:
    queue = ticket_queue(_outbox(), NOW)
    assert [e.id for e in queue.waiting] == [3, 4]
    assert [e.id for e in queue.refused] == [5]
    assert [e.id for e in queue.filed_recently] == [2] and queue.filed_before == 1
    assert queue.needs_a_human
    assert headline(queue) == (
        "tickets: 2 waiting for Jira (the oldest for 3.0 h), 1 refused by Jira, parked until a human retries them"
    )


def test_each_ticket_says_what_it_is_and_what_to_do() -> None:
    lines = render(ticket_queue(_outbox(), NOW), retry_command="gpumedic tickets retry --fleet f.yaml")
    assert lines[1] == (
        "  #3 waiting: Order Replacement for gpu-node-3 GPU 5 (incident inc-3); queued 3.0 h ago, 4 attempt(s), "
        "last error: Jira answered 503"
    )
    assert lines[2].startswith("  #4 waiting: ") and "queued 20 min ago, 1 attempt(s)" in lines[2]
    assert lines[3] == (
        "  #5 refused: Order Replacement for gpu-node-5 GPU 5 (incident inc-5); Jira said: project: valid project "
        "is required. Fix the cause, then `gpumedic tickets retry --fleet f.yaml 5`"
    )
    assert lines[4] == "  #2 filed as GPU-2 (created): Order Replacement for gpu-node-2 GPU 5 (incident inc-2)"
    assert lines[5] == "  (1 filed more than 24.0 h ago)"


def test_an_outbox_with_nothing_waiting_says_so() -> None:
    queue = ticket_queue(_outbox()[:2], NOW)
    assert not queue.needs_a_human and table_rows(queue)[0]["state"] == "filed"
    assert render(queue)[0] == "no ticket waits: every ticket gpumedic raised was filed in Jira"
    assert ticket_queue([], NOW).filed_before == 0


def test_the_table_and_the_json_carry_the_same_tickets() -> None:
    queue = ticket_queue(_outbox(), NOW)
    rows = table_rows(queue)
    assert [(r["id"], r["state"]) for r in rows] == [
        ("3", "waiting for Jira"), ("4", "waiting for Jira"), ("5", "refused by Jira"), ("2", "filed"),
    ]
    assert rows[2]["jira"] == "project: valid project is required" and rows[3]["jira"] == "GPU-2"
    document = to_json(queue)
    assert [e["id"] for e in document["waiting"]] == [3, 4]
    assert document["refused"][0]["last_error"] == "project: valid project is required"
    assert document["filed_recently"][0]["issue_key"] == "GPU-2" and document["filed_before"] == 1
