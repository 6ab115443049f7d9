"""file-pending-tickets and `gpumedic tickets`: a ticket raised while Jira was down reaches Jira with nobody
re-running anything, and a ticket Jira refused waits visibly for a human (real jira client, emulator)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.ticket_outbox import TicketOutbox, file_through_outbox
from gpumedic.sim.jira_api import JiraEmulator
from tasks.remediation import jira_for_fleet
from tests.adapters.test_ticket_outbox import request
from tests.flows.test_remediation_flow import _latest_table_artifact


def _fleet(tmp_path: Path, jira: JiraEmulator, *, with_jira: bool = True) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"fleet:\n  source: exporter\n  nodes: [{{name: gpu-node-11}}]\n  store_url: sqlite:///{tmp_path / 's.db'}\n"
        + (f"  jira: {{url: '{jira.url}', user: {jira.username}, project: GPU}}\n" if with_jira else "")
    )
    return str(path)


def _raise_while_jira_is_down(fleet: str, jira: JiraEmulator) -> None:
    """An approved order whose run gave up: Jira answered 503 to every try."""
    _, settings, store_url = jira_for_fleet(fleet)
    jira.outage("503")
    with pytest.raises(TransientError):
        file_through_outbox(store_url, settings, request("forecast-order-1"))
    jira.outage(None)


@pytest.mark.usefixtures("prefect_harness")
def test_a_ticket_raised_while_jira_was_down_is_filed_by_the_next_run_once(tmp_path: Path, jira: JiraEmulator
                                                                           ) -> None:
    from flows.tickets import file_pending_tickets

    fleet = _fleet(tmp_path, jira)
    _raise_while_jira_is_down(fleet, jira)
    assert jira.issues() == []

    jira.outage("503")  # still down: the run fails, so the outage is seen, and the ticket stays in line.
    state = file_pending_tickets(fleet_file=fleet, return_state=True)
    assert state.is_failed() and "1 ticket(s) still wait for Jira" in str(state.message)
    table, description = _latest_table_artifact("ticket-outbox")
    assert description.startswith("tickets: 1 waiting for Jira")
    assert [(row["state"], row["attempts"]) for row in table] == [("waiting for Jira", "2")]

    assert file_pending_tickets(fleet_file=fleet, dry_run=True)["filed"] == []  # a dry run files nothing
    jira.outage(None)
    assert jira.issues() == []
    result = file_pending_tickets(fleet_file=fleet)
    (issue,) = jira.issues()
    assert result["filed"] == [{"id": 1, "node": "gpu-node-11", "key": issue["key"]}]
    assert (result["waiting"], result["refused"]) == (0, 0)
    assert file_pending_tickets(fleet_file=fleet)["filed"] == []
    assert len(jira.issues()) == 1
    table, description = _latest_table_artifact("ticket-outbox")
    assert description == "no ticket waits: every ticket gpumedic raised was filed in Jira"
    assert table[0]["jira"] == issue["key"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_refused_ticket_waits_for_a_human_and_is_filed_once_retried(
    tmp_path: Path, jira: JiraEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.tickets import file_pending_tickets
    from gpumedic.cli import main

    fleet = _fleet(tmp_path, jira)
    _, settings, store_url = jira_for_fleet(fleet)
    with pytest.raises(PermanentError):
        file_through_outbox(store_url, settings, replace(request("inc-hw"), project="HW"))

    result = file_pending_tickets(fleet_file=fleet)  # nothing it can do: it completes and says so
    assert (result["filed"], result["refused"]) == ([], 1)
    assert main(["tickets", "status", "--fleet", fleet]) == 1
    out = capsys.readouterr().out
    assert "1 refused by Jira" in out and f"then `gpumedic tickets retry --fleet {fleet} 1`" in out

    assert main(["tickets", "retry", "--fleet", fleet, "7"]) == 2  # not a refused ticket
    assert "#7" in capsys.readouterr().err
    jira.create_project("HW", "Hardware")  # an admin fixes the cause
    assert main(["tickets", "retry", "--fleet", fleet]) == 0
    assert "1 ticket(s) back in line" in capsys.readouterr().out
    assert [f["id"] for f in file_pending_tickets(fleet_file=fleet)["filed"]] == [1]
    assert len(jira.issues("HW")) == 1
    assert main(["tickets", "status", "--fleet", fleet, "--json", str(tmp_path / "t.json")]) == 0
    assert "every ticket gpumedic raised was filed" in capsys.readouterr().out
    assert '"filed_recently"' in (tmp_path / "t.json").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_a_fleet_without_jira_has_nothing_to_file(tmp_path: Path, jira: JiraEmulator) -> None:
    from flows.tickets import file_pending_tickets

    fleet = _fleet(tmp_path, jira, with_jira=False)
    assert file_pending_tickets(fleet_file=fleet) == {"filed": [], "waiting": 0, "refused": 0, "dry_run": False}
    with TicketOutbox(f"sqlite:///{tmp_path / 's.db'}") as outbox:
        assert outbox.entries() == []


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpumedic.cli import main

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("fleet:\n  source: exporter\n  nodes: [{name: n1}]\n"
                     f"  store_url: sqlite:///{tmp_path / 'no-such-dir' / 's.db'}\n")
    assert main(["tickets", "status", "--fleet", str(fleet)]) == 1
    err = capsys.readouterr().err
    assert err == ("gpumedic: the telemetry store (the fleet file's store_url) cannot be used: unable to open "
                   "database file\n")
