"""The ticket outbox as an SRE reads it: which tickets wait for Jira, which Jira refused, which were filed.

Every ticket is written to the outbox in the telemetry store before Jira is called, so nothing is
lost while Jira is down. This makes that promise visible: `gpumedic tickets status` prints what this
module renders, and the `file-pending-tickets` flow's artifact is the same table. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gpumedic.reporting import age_text

if TYPE_CHECKING:
    from gpumedic.adapters.ticket_outbox import OutboxEntry

# Filed tickets older than this are history, not news: they are counted, not listed.
RECENTLY_FILED = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class TicketQueue:
    now: datetime
    waiting: tuple[OutboxEntry, ...]  # not filed yet: Jira was unreachable or busy; the next flush files them
    refused: tuple[OutboxEntry, ...]  # Jira refused them (bad project, issue type, ...): parked until retried
    filed_recently: tuple[OutboxEntry, ...]
    filed_before: int  # filed longer ago than RECENTLY_FILED

    @property
    def needs_a_human(self) -> bool:
        return bool(self.refused)


def ticket_queue(entries: Sequence[OutboxEntry], now: datetime) -> TicketQueue:
    since = (now - RECENTLY_FILED).timestamp()
    filed = [e for e in entries if e.status == "filed"]
    return TicketQueue(
        now=now,
        waiting=tuple(e for e in entries if e.status == "pending"),
        refused=tuple(e for e in entries if e.status == "failed"),
        filed_recently=tuple(e for e in filed if (e.filed_at or 0.0) >= since),
        filed_before=sum((e.filed_at or 0.0) < since for e in filed),
    )


def headline(queue: TicketQueue) -> str:
    if not (queue.waiting or queue.refused):
        return "no ticket waits: every ticket gpumedic raised was filed in Jira"
    parts = []
    if queue.waiting:
        oldest = min(e.enqueued_at for e in queue.waiting)
        parts.append(f"{len(queue.waiting)} waiting for Jira (the oldest for {_age(queue, oldest)})")
    if queue.refused:
        parts.append(f"{len(queue.refused)} refused by Jira, parked until a human retries them")
    return "tickets: " + ", ".join(parts)


def render(queue: TicketQueue, retry_command: str = "gpumedic tickets retry --fleet FLEET") -> list[str]:
    """The lines `gpumedic tickets status` prints."""
    lines = [headline(queue)]
    for e in queue.waiting:
        lines.append(
            f"  #{e.id} waiting: {_what(e)}; queued {_age(queue, e.enqueued_at)} ago, {e.attempts} attempt(s)"
            + (f", last error: {e.last_error}" if e.last_error else "")
        )
    for e in queue.refused:
        lines.append(
            f"  #{e.id} refused: {_what(e)}; Jira said: {e.last_error or 'nothing recorded'}. Fix the cause, "
            f"then `{retry_command} {e.id}`"
        )
    for e in queue.filed_recently:
        lines.append(f"  #{e.id} filed as {e.issue_key} ({e.outcome or 'created'}): {_what(e)}")
    if queue.filed_before:
        lines.append(f"  ({queue.filed_before} filed more than {age_text(RECENTLY_FILED)} ago)")
    return lines


def table_rows(queue: TicketQueue) -> list[dict[str, str]]:
    """One row per ticket not filed, then those filed recently (the flow's artifact)."""
    rows = []
    for state, entries in (("waiting for Jira", queue.waiting), ("refused by Jira", queue.refused),
                           ("filed", queue.filed_recently)):
        for e in entries:
            rows.append({
                "id": str(e.id), "state": state, "node": e.request.node, "gpu": _gpu(e),
                "ticket": e.request.issue_type, "incident": e.request.incident_id,
                "queued": f"{_age(queue, e.enqueued_at)} ago", "attempts": str(e.attempts),
                "jira": e.issue_key or (e.last_error or "-")[:300],
            })
    return rows


def to_json(queue: TicketQueue) -> dict[str, Any]:
    def entry(e: OutboxEntry) -> dict[str, Any]:
        return {
            "id": e.id, "status": e.status, "node": e.request.node, "gpu": e.request.gpu_index,
            "issue_type": e.request.issue_type, "summary": e.request.summary, "incident": e.request.incident_id,
            "attempts": e.attempts, "last_error": e.last_error, "issue_key": e.issue_key,
            "queued_at": datetime.fromtimestamp(e.enqueued_at, UTC).isoformat(),
        }

    return {
        "now": queue.now.isoformat(),
        "waiting": [entry(e) for e in queue.waiting],
        "refused": [entry(e) for e in queue.refused],
        "filed_recently": [entry(e) for e in queue.filed_recently],
        "filed_before": queue.filed_before,
    }


def _what(e: OutboxEntry) -> str:
    return f"{e.request.issue_type} for {e.request.node} {_gpu(e)} (incident {e.request.incident_id})"


def _gpu(e: OutboxEntry) -> str:
    return "node" if e.request.gpu_index is None else f"GPU {e.request.gpu_index}"


def _age(queue: TicketQueue, epoch: float) -> str:
    return age_text(queue.now - datetime.fromtimestamp(epoch, UTC))
