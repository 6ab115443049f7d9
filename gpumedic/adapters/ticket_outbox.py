"""A durable outbox for Jira tickets: nothing is lost while Jira is down, nothing is filed twice.

A ticket is first written here (`enqueue`, in the telemetry store's database, table
`ticket_outbox`), then filed by `flush`, now or on any later run. The row is the promise;
Jira is told about it at least once, and the ticket adapter makes "at least once" come out as
"exactly once":

- `enqueue` is idempotent by (dedup_key, incident id): a workflow step that re-runs after a
  crash keeps one row.
- `flush` claims a row (a lease in the row itself, so two flushes running side by side do not
  both file it), files it, then records the issue key. **One GPU's tickets are filed one at a
  time**: a row is not claimed while another row with its dedup label is being filed. Jira's
  search-then-create is not atomic, so two incidents of one GPU filed at once (a forecast's order
  and a remediation's replacement, say) would otherwise both find no open ticket and both create
  one. The row left behind stays pending ("waiting behind ..."), and the next flush (the task's
  retry, seconds later) finds the ticket just filed and comments on it. On a `TransientError` the row stays
  pending with `attempts + 1` and the error; on a `PermanentError` it is parked as `failed`
  (visible, never dropped; `retry_failed` puts it back once the cause is fixed).
- **A crash after Jira created the issue but before `mark_filed`** leaves the row pending with
  a lease that expires. The next flush files it again, and `JiraTickets.file_replacement` first
  searches for an open issue with the GPU's dedup label: it finds the issue created by the
  crashed attempt, sees this incident's label (or comment marker) on it and adopts its key
  without writing anything. One issue, no duplicate comment.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import IntegrityError

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.jira_tickets import JiraSettings, JiraTickets, TicketOutcome, TicketRequest

log = logging.getLogger(__name__)

OutboxStatus = Literal["pending", "filed", "failed"]

metadata = MetaData()

ticket_outbox = Table(
    "ticket_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(255), nullable=False),
    Column("incident_id", String(255), nullable=False),
    Column("request", Text, nullable=False),  # TicketRequest.to_json()
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("issue_key", String(64), nullable=True),
    Column("outcome", String(16), nullable=True),  # created | commented | adopted
    Column("enqueued_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("filed_at", Float, nullable=True),
    Column("claimed_until", Float, nullable=True),
    UniqueConstraint("dedup_key", "incident_id", name="uq_ticket_outbox_dedup_incident"),
)


class TicketFiler(Protocol):
    def file_replacement(self, ticket: TicketRequest) -> TicketOutcome: ...


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    request: TicketRequest
    status: OutboxStatus
    attempts: int
    last_error: str | None
    issue_key: str | None
    outcome: str | None
    enqueued_at: float
    filed_at: float | None


@dataclass(slots=True)
class FlushReport:
    filed: dict[int, TicketOutcome] = field(default_factory=dict)
    pending: dict[int, str] = field(default_factory=dict)  # transient failure this time: id -> error
    failed: dict[int, str] = field(default_factory=dict)  # permanent failure, parked: id -> error
    not_attempted: list[int] = field(default_factory=list)  # claimed elsewhere, or flush stopped early

    @property
    def all_filed(self) -> bool:
        return not (self.pending or self.failed or self.not_attempted)


def _outcome_name(outcome: TicketOutcome) -> str:
    return "created" if outcome.created else "commented" if outcome.commented else "adopted"


def _entry(row: RowMapping) -> OutboxEntry:
    return OutboxEntry(
        id=int(row["id"]),
        request=TicketRequest.from_json(json.loads(row["request"])),
        status=row["status"],
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        issue_key=row["issue_key"],
        outcome=row["outcome"],
        enqueued_at=float(row["enqueued_at"]),
        filed_at=row["filed_at"],
    )


class TicketOutbox:
    """The outbox table in the telemetry store's database (SQLite by default, PostgreSQL in production)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        lease_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if engine is None:
            from gpumedic.adapters.store import default_store_url, store_engine

            engine = store_engine(url or default_store_url())
        from gpumedic.adapters.store import prepare_schema

        self.engine = engine
        self.lease_s = lease_s
        self.clock = clock
        prepare_schema(self.engine, metadata)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows ------------------------------------------------------------------------------

    def enqueue(self, request: TicketRequest) -> int:
        """Store the ticket to be filed; the existing row's id if this (GPU, incident) is already in."""
        now = self.clock()
        row = {
            "dedup_key": request.dedup_key, "incident_id": request.incident_id,
            "request": json.dumps(request.to_json(), sort_keys=True), "status": "pending", "attempts": 0,
            "enqueued_at": now, "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(ticket_outbox.insert().values(**row)).inserted_primary_key
            assert new_id is not None
            log.info("incident=%s node=%s action=outbox-enqueue dedup=%s id=%s",
                     request.incident_id, request.node, request.dedup_key, new_id[0])
            return int(new_id[0])
        except IntegrityError:
            existing = self._find(request.dedup_key, request.incident_id)
            if existing is None:  # pragma: no cover - the unique constraint is the only integrity rule
                raise
            return existing

    def _find(self, dedup_key: str, incident_id: str) -> int | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(ticket_outbox.c.id).where(
                    ticket_outbox.c.dedup_key == dedup_key, ticket_outbox.c.incident_id == incident_id
                )
            ).scalar()
        return int(found) if found is not None else None

    def get(self, entry_id: int) -> OutboxEntry:
        with self.engine.connect() as conn:
            row = conn.execute(select(ticket_outbox).where(ticket_outbox.c.id == entry_id)).mappings().first()
        if row is None:
            raise KeyError(entry_id)
        return _entry(row)

    def entries(self, status: OutboxStatus | None = None) -> list[OutboxEntry]:
        query = select(ticket_outbox).order_by(ticket_outbox.c.id)
        if status is not None:
            query = query.where(ticket_outbox.c.status == status)
        with self.engine.connect() as conn:
            return [_entry(row) for row in conn.execute(query).mappings()]

    def pending(self) -> list[OutboxEntry]:
        return self.entries("pending")

    def mark_filed(self, entry_id: int, key: str, *, outcome: str | None = None) -> None:
        """Record the issue key. Idempotent; a row already filed keeps its first key."""
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(ticket_outbox)
                .where(ticket_outbox.c.id == entry_id, ticket_outbox.c.status != "filed")
                .values(status="filed", issue_key=key, outcome=outcome, filed_at=now, updated_at=now,
                        claimed_until=None, last_error=None)
            ).rowcount
        if not done:
            current = self.get(entry_id)
            if current.issue_key != key:
                log.warning("outbox id=%s already filed as %s, not %s", entry_id, current.issue_key, key)

    def mark_failed_attempt(self, entry_id: int, error: str, *, permanent: bool = False) -> None:
        """Count a failed attempt; a permanent failure parks the row as `failed`."""
        now = self.clock()
        values: dict[str, Any] = {
            "attempts": ticket_outbox.c.attempts + 1, "last_error": error[:4000], "updated_at": now,
            "claimed_until": None,
        }
        if permanent:
            values["status"] = "failed"
        with self.engine.begin() as conn:
            conn.execute(
                update(ticket_outbox)
                .where(ticket_outbox.c.id == entry_id, ticket_outbox.c.status != "filed")
                .values(**values)
            )

    def retry_failed(self, ids: list[int] | None = None) -> int:
        """Put parked rows back to pending (after fixing what made Jira refuse them)."""
        query = update(ticket_outbox).where(ticket_outbox.c.status == "failed")
        if ids is not None:
            query = query.where(ticket_outbox.c.id.in_(ids))
        with self.engine.begin() as conn:
            return int(conn.execute(query.values(status="pending", updated_at=self.clock())).rowcount)

    def _claim(self, entry: OutboxEntry) -> bool:
        """Lease `entry` for filing, unless its lease is held or another row of its GPU is being filed."""
        now = self.clock()
        same_gpu = ticket_outbox.alias("same_gpu")
        gpu_busy = (
            select(same_gpu.c.id)
            .where(
                same_gpu.c.dedup_key == entry.request.dedup_key,
                same_gpu.c.id != entry.id,
                same_gpu.c.status == "pending",
                same_gpu.c.claimed_until > now,
            )
            .exists()
        )
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Under READ COMMITTED two claims on two rows of one GPU would each miss the other's
                # uncommitted lease: lock the GPU's rows first, so the second claim is decided after the
                # first commits (its UPDATE then reads the lease). SQLite takes its write lock at the
                # UPDATE, which serialises the claims already.
                conn.execute(
                    select(ticket_outbox.c.id)
                    .where(ticket_outbox.c.dedup_key == entry.request.dedup_key)
                    .order_by(ticket_outbox.c.id)
                    .with_for_update()
                )
            claimed = conn.execute(
                update(ticket_outbox)
                .where(
                    ticket_outbox.c.id == entry.id,
                    ticket_outbox.c.status == "pending",
                    or_(ticket_outbox.c.claimed_until.is_(None), ticket_outbox.c.claimed_until <= now),
                    ~gpu_busy,
                )
                .values(claimed_until=now + self.lease_s, updated_at=now)
            ).rowcount
        return claimed == 1

    # -- filing ----------------------------------------------------------------------------

    def flush(self, tickets: TicketFiler, *, stop_on_transient: bool = True) -> FlushReport:
        """File every pending ticket, oldest first.

        With `stop_on_transient` (the default) the first transient failure ends the flush: Jira
        is most likely down, and the rest would each wait out a timeout. They stay pending.
        """
        report = FlushReport()
        queue = self.pending()
        for position, entry in enumerate(queue):
            if not self._claim(entry):
                report.not_attempted.append(entry.id)
                continue
            try:
                outcome = tickets.file_replacement(entry.request)
            except TransientError as err:
                self.mark_failed_attempt(entry.id, str(err))
                report.pending[entry.id] = str(err)
                log.warning("incident=%s action=outbox-file id=%s transient=%s", entry.request.incident_id,
                            entry.id, err)
                if stop_on_transient:
                    report.not_attempted += [e.id for e in queue[position + 1 :]]
                    break
                continue
            except PermanentError as err:
                self.mark_failed_attempt(entry.id, str(err), permanent=True)
                report.failed[entry.id] = str(err)
                log.error("incident=%s action=outbox-file id=%s permanent=%s", entry.request.incident_id,
                          entry.id, err)
                continue
            self.mark_filed(entry.id, outcome.key, outcome=_outcome_name(outcome))
            report.filed[entry.id] = outcome
            log.info("incident=%s node=%s action=outbox-file id=%s key=%s outcome=%s", entry.request.incident_id,
                     entry.request.node, entry.id, outcome.key, _outcome_name(outcome))
        return report


class OutboxDesk:
    """File one ticket through the outbox: durable first, then Jira; the issue key or an error.

    `file` enqueues (idempotent per GPU and incident) and flushes. When the ticket could not be
    filed yet it raises `TransientError` (Jira down: the row stays queued, and retrying `file`
    or any later flush files it) or `PermanentError` (Jira refused it: the row is parked as
    failed). Calling `file` again for a filed ticket returns its key without touching Jira.
    """

    def __init__(self, outbox: TicketOutbox, tickets: TicketFiler) -> None:
        self.outbox = outbox
        self.tickets = tickets

    def file(self, request: TicketRequest) -> str:
        entry_id = self.outbox.enqueue(request)
        entry = self.outbox.get(entry_id)
        if entry.status == "pending":
            self.outbox.flush(self.tickets)
            entry = self.outbox.get(entry_id)
        if entry.status == "filed" and entry.issue_key:
            return entry.issue_key
        what = f"ticket for incident {request.incident_id} ({request.dedup_key})"
        if entry.status == "failed":
            raise PermanentError(f"{what}: Jira refused it: {entry.last_error}; parked in the outbox as failed")
        reason = entry.last_error or "waiting behind older tickets, or another ticket for this GPU being filed"
        raise TransientError(f"{what}: queued in the outbox after {entry.attempts} attempt(s): {reason}")


def file_through_outbox(
    store_url: str | None, settings: JiraSettings, request: TicketRequest
) -> tuple[str, TicketRequest]:
    """File `request` through the outbox in `store_url`, then Jira; the issue key and the request filed.

    The first request stored for an incident is the one filed: a re-run whose evidence names
    another GPU never files a second ticket under a different label. Errors as `OutboxDesk.file`.
    """
    with TicketOutbox(store_url) as outbox, JiraTickets(settings) as client:
        filed = next((e.request for e in outbox.entries() if e.request.incident_id == request.incident_id), request)
        return OutboxDesk(outbox, client).file(filed), filed


def flush_pending(store_url: str | None, settings: JiraSettings) -> FlushReport:
    """File every ticket waiting in the outbox in `store_url`, oldest first (`TicketOutbox.flush`)."""
    with TicketOutbox(store_url) as outbox, JiraTickets(settings) as client:
        return outbox.flush(client)
