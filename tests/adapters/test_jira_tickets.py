"""JiraTickets against the Jira emulator, through the real `jira` client (no mocks)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.jira_tickets import (
    Approval,
    JiraSettings,
    JiraTickets,
    TicketRequest,
    gpu_dedup_key,
    incident_label,
)
from gpumedic.sim.jira_api import RENAMED_WORKFLOW, JiraEmulator

UUID = "GPU-3F2A9C1E-7B4D-4E2A-9C1E-7B4D4E2A9C1E"


def request(incident: str = "inc-1", **changes: object) -> TicketRequest:
    base = TicketRequest(
        dedup_key=gpu_dedup_key(uuid=UUID, serial="1650921012345"),
        incident_id=incident,
        project="GPU",
        issue_type="Hardware Replacement",
        summary="Replace GPU 3 on gpu-node-05 (Xid 79: fell off the bus)",
        description="- Xid 79 at 02:13 UTC\n- dcgmi diag -r 2: PCIe test failed",
        node="gpu-node-05",
        labels=("h100",),
        gpu_index=3,
        gpu_uuid=UUID,
        gpu_serial="1650921012345",
        approval=Approval(approver="alice", reason="diag failed after reboot", rma="RMA-4711"),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def jira() -> Iterator[JiraEmulator]:
    with JiraEmulator() as emu:
        emu.create_project("OPS", "Fleet Ops", workflow=RENAMED_WORKFLOW)
        yield emu


@pytest.fixture
def settings(jira: JiraEmulator) -> JiraSettings:
    return JiraSettings(server=jira.url, user=jira.username, api_token=jira.password, timeout_s=5)


@pytest.fixture
def tickets(settings: JiraSettings) -> Iterator[JiraTickets]:
    with JiraTickets(settings) as t:
        yield t


def comments(jira: JiraEmulator, key: str) -> list[str]:
    return [c["body"] for c in jira.issue(key)["fields"]["comment"]["comments"]]


def test_dedup_key_is_a_lower_case_label_from_the_uuid_or_the_serial() -> None:
    assert gpu_dedup_key(uuid=UUID) == "gpumedic-gpu-" + UUID.lower()
    assert gpu_dedup_key(uuid=None, serial="1650921012345") == "gpumedic-gpu-1650921012345"
    assert gpu_dedup_key(uuid="N/A", serial="SN 42") == "gpumedic-gpu-sn-42"
    with pytest.raises(ValueError, match="UUID or a serial"):
        gpu_dedup_key()
    with pytest.raises(ValueError, match="dedup_key"):
        request(dedup_key="Has Spaces")


def test_a_ticket_request_round_trips_through_json() -> None:
    import json

    original = request()
    assert TicketRequest.from_json(json.loads(json.dumps(original.to_json()))) == original
    bare = request(approval=None, labels=())
    assert TicketRequest.from_json(json.loads(json.dumps(bare.to_json()))) == bare


def test_filing_creates_a_labelled_ticket_with_the_evidence(jira: JiraEmulator, tickets: JiraTickets) -> None:
    outcome = tickets.file_replacement(request())
    assert outcome.created and not outcome.commented
    [issue] = jira.issues("GPU")
    assert issue["key"] == outcome.key
    fields = issue["fields"]
    assert fields["issuetype"]["name"] == "Hardware Replacement"
    assert set(fields["labels"]) == {"gpumedic", request().dedup_key, "gpumedic-incident-inc-1", "h100"}
    for fact in ("gpu-node-05", UUID, "1650921012345", "index 3", "alice", "RMA-4711", "Xid 79"):
        assert fact in fields["description"]


def test_a_second_incident_on_the_same_gpu_comments_instead_of_filing_again(
    jira: JiraEmulator, tickets: JiraTickets
) -> None:
    first = tickets.file_replacement(request("inc-1"))
    second = tickets.file_replacement(request("inc-2", description="- Xid 79 again, 3 days later"))
    assert second.key == first.key
    assert not second.created and second.commented
    assert len(jira.issues("GPU")) == 1
    [comment] = comments(jira, first.key)
    assert "Xid 79 again" in comment and "[gpumedic incident inc-2]" in comment


def test_filing_the_same_incident_again_adopts_its_ticket_and_writes_nothing(
    jira: JiraEmulator, tickets: JiraTickets
) -> None:
    created = tickets.file_replacement(request("inc-1"))
    tickets.file_replacement(request("inc-2"))
    jira.clear_logs()
    for incident in ("inc-1", "inc-2"):
        again = tickets.file_replacement(request(incident))
        assert (again.key, again.created, again.commented) == (created.key, False, False)
    assert len(jira.issues("GPU")) == 1 and len(comments(jira, created.key)) == 1
    assert not [r for r in jira.request_log if r.method in ("POST", "PUT")]


def test_a_closed_ticket_does_not_swallow_a_new_failure(jira: JiraEmulator, tickets: JiraTickets) -> None:
    first = tickets.file_replacement(request("inc-1"))
    jira.set_status(first.key, "Done")
    second = tickets.file_replacement(request("inc-2"))
    assert second.created and second.key != first.key


def test_an_open_ticket_filed_by_a_person_with_the_label_gets_the_comment(
    jira: JiraEmulator, tickets: JiraTickets
) -> None:
    human = jira.create_issue("GPU", "GPU 3 flaky", issue_type="Task", labels=[request().dedup_key])
    outcome = tickets.file_replacement(request("inc-9"))
    assert outcome.key == human["key"] and outcome.commented
    assert len(jira.issues("GPU")) == 1


def test_transitions_are_chosen_by_status_category_not_name(jira: JiraEmulator, tickets: JiraTickets) -> None:
    key = tickets.file_replacement(request(project="OPS")).key
    assert jira.issue(key)["fields"]["status"]["name"] == "Awaiting Triage"
    assert tickets.transition_to_category(key, "indeterminate") is True
    assert jira.issue(key)["fields"]["status"]["name"] == "With Vendor"
    assert tickets.transition_to_category(key, "indeterminate") is False
    assert tickets.transition_to_category(key, "done") is True
    status = jira.issue(key)["fields"]["status"]
    assert status["statusCategory"]["key"] == "done"
    with pytest.raises(PermanentError, match="no transition leads to status category 'indeterminate'"):
        tickets.transition_to_category(key, "indeterminate")
    assert tickets.transition_to_category(key, "new") is True  # "Revive"
    assert tickets.status_category(key) == "new"


def test_standard_workflow_transitions_by_category_too(jira: JiraEmulator, tickets: JiraTickets) -> None:
    key = tickets.file_replacement(request()).key
    assert tickets.transition_to_category(key, "done")
    assert jira.issue(key)["fields"]["resolution"]["name"] == "Done"


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_an_outage_is_transient(jira: JiraEmulator, tickets: JiraTickets, mode: str) -> None:
    jira.outage(mode)  # type: ignore[arg-type]
    with pytest.raises(TransientError, match="503|cannot reach"):
        tickets.file_replacement(request())
    jira.outage(None)
    assert tickets.file_replacement(request()).created


def test_a_server_error_on_create_is_transient_and_the_retry_files_once(
    jira: JiraEmulator, tickets: JiraTickets
) -> None:
    jira.fault("/rest/api/2/issue", 1, status=502, method="POST")
    with pytest.raises(TransientError, match="502"):
        tickets.file_replacement(request())
    assert tickets.file_replacement(request()).created
    assert len(jira.issues("GPU")) == 1


def test_bad_credentials_are_permanent_and_the_token_never_shows(
    jira: JiraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-token-value"
    settings = JiraSettings(server=jira.url, user=jira.username, api_token=secret, timeout_s=5)
    assert secret not in repr(settings)
    with JiraTickets(settings) as t, pytest.raises(PermanentError, match="401") as caught:
        t.file_replacement(request())
    assert secret not in str(caught.value) and caught.value.__cause__ is None
    assert secret not in caplog.text and jira.password not in caplog.text


def test_unknown_project_or_issue_type_is_permanent(tickets: JiraTickets) -> None:
    with pytest.raises(PermanentError, match="400"):
        tickets.file_replacement(request(issue_type="Spaceship"))
    with pytest.raises(PermanentError, match="400|404"):
        tickets.file_replacement(request(project="NOPE"))


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"GPUMEDIC_JIRA_URL": "https://jira.example", "GPUMEDIC_JIRA_USER": "bot",
           "GPUMEDIC_JIRA_TOKEN_FILE": str(token_file)}
    settings = JiraSettings.from_env(env)
    assert (settings.server, settings.user, settings.api_token) == ("https://jira.example", "bot", "from-file")
    with pytest.raises(PermanentError, match="GPUMEDIC_JIRA_TOKEN"):
        JiraSettings.from_env({"GPUMEDIC_JIRA_URL": "x", "GPUMEDIC_JIRA_USER": "y"})


def test_incident_labels_are_valid_jira_labels() -> None:
    assert incident_label("Inc 2024/01 #7") == "gpumedic-incident-inc-2024-01-7"
