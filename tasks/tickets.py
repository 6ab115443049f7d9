"""Prefect tasks of the ticket outbox: read it, and file what waits in it."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from gpumedic.adapters.ticket_outbox import FlushReport, OutboxEntry, TicketOutbox, flush_pending
from tasks.remediation import jira_for_fleet


@task(name="read-ticket-outbox", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def read_ticket_outbox(store_url: str | None) -> list[OutboxEntry]:
    with TicketOutbox(store_url) as outbox:
        return outbox.entries()


@task(name="flush-ticket-outbox", cache_policy=NO_CACHE, timeout_seconds=600)
def flush_ticket_outbox(fleet_file: str) -> FlushReport:
    """File every waiting ticket, oldest first; the first transient failure (Jira down) ends it.

    Each ticket is claimed before it is filed, so a remediation run filing its own ticket at the
    same moment never files it twice, and Jira is searched for the ticket's dedup label first.
    """
    _, settings, store_url = jira_for_fleet(fleet_file)
    return flush_pending(store_url, settings)
