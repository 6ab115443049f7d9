"""File the tickets that wait in the outbox, as the runbook reads: look, file, report.

Every ticket gpumedic raises (a replacement, an inspection, a forecast's order) is written to the
outbox in the telemetry store before Jira is called. When Jira is down, the run that raised it
fails and the ticket waits. A remediation is resumed and files its own ticket again; an approved
order has no run that comes back. This flow, every 15 minutes, files whatever waits, so a ticket a
human approved reaches Jira without anyone re-running anything, and it lists the tickets Jira
refused (a wrong project or issue type), which wait for a human: `gpumedic tickets retry`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from gpumedic.adapters.errors import TransientError
from gpumedic.config import load_fleet_settings
from gpumedic.run_names import flow_run_named
from gpumedic.ticket_queue import headline, table_rows, ticket_queue
from tasks.tickets import flush_ticket_outbox, read_ticket_outbox


@flow(
    name="file-pending-tickets",
    flow_run_name=flow_run_named("file-pending-tickets"),
    log_prints=True,
    description="File every ticket still waiting in the outbox (Jira was down when it was raised) and list the "
    "ones Jira refused. Fails while Jira stays unreachable, so the outage is seen.",
)
def file_pending_tickets(fleet_file: str, dry_run: bool = False) -> dict[str, Any]:
    """Returns `{filed: [{id, node, key}], waiting, refused, dry_run}` (counts after this run).

    Args:
        fleet_file: Path of the fleet YAML file on the worker: its `fleet.jira` block and the telemetry
            store that holds the outbox.
        dry_run: List what waits and what Jira refused; file nothing.
    """
    logger = get_run_logger()
    fleet = load_fleet_settings(fleet_file)
    if fleet.jira is None:
        logger.info("%s has no fleet.jira block: gpumedic files no tickets, so none can wait", fleet_file)
        return {"filed": [], "waiting": 0, "refused": 0, "dry_run": dry_run}
    waiting = [e for e in read_ticket_outbox(fleet.store_url) if e.status == "pending"]
    filed: list[dict[str, Any]] = []
    unreachable: dict[int, str] = {}
    if waiting and not dry_run:
        report = flush_ticket_outbox(fleet_file)
        nodes = {e.id: e.request.node for e in waiting}
        filed = [{"id": i, "node": nodes.get(i), "key": outcome.key} for i, outcome in report.filed.items()]
        unreachable = report.pending
        for entry in filed:
            logger.info("ticket #%s for %s filed as %s", entry["id"], entry["node"], entry["key"])
    queue = ticket_queue(read_ticket_outbox(fleet.store_url), datetime.now(UTC))
    for e in queue.refused:
        logger.error("ticket #%s for %s was refused by Jira: %s; fix the cause, then `gpumedic tickets retry "
                     "--fleet %s %s`", e.id, e.request.node, e.last_error, fleet_file, e.id)
    create_table_artifact(
        key="ticket-outbox",
        table=table_rows(queue) or [{"id": "-", "state": "every ticket filed", "node": "-", "gpu": "-",
                                     "ticket": "-", "incident": "-", "queued": "-", "attempts": "-", "jira": "-"}],
        description=headline(queue) + (" (dry run: nothing filed)" if dry_run else ""),
    )
    if unreachable:
        raise TransientError(
            f"{len(queue.waiting)} ticket(s) still wait for Jira ({next(iter(unreachable.values()))}); they stay "
            "in the outbox and the next run files them"
        )
    return {"filed": filed, "waiting": len(queue.waiting), "refused": len(queue.refused), "dry_run": dry_run}
