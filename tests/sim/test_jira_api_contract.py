"""Contract tests: the Jira emulator, driven only through the real `jira` client.

Each test pins one behaviour of the Jira Server REST API v2 that gpumedic's ticket adapter
relies on: authentication, issue creation and its validation errors, the JQL subset, comments,
workflow transitions chosen by status category, and what outages look like to the client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from jira import JIRA, JIRAError

from gpumedic.sim.jira_api import RENAMED_WORKFLOW, JiraEmulator

HW = "Hardware Replacement"


@pytest.fixture
def jira_server() -> Iterator[JiraEmulator]:
    with JiraEmulator() as emulator:
        yield emulator


def connect(emulator: JiraEmulator, **kwargs: object) -> JIRA:
    # max_retries=0: the client would otherwise sleep 10-60 s before each retry of a dropped connection.
    return JIRA(server=emulator.url, basic_auth=(emulator.username, emulator.password), max_retries=0,
                **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def jira(jira_server: JiraEmulator) -> Iterator[JIRA]:
    client = connect(jira_server)
    yield client
    client.close()


def file_ticket(jira: JIRA, summary: str, labels: list[str], issue_type: str = HW, project: str = "GPU") -> str:
    issue = jira.create_issue(fields={
        "project": {"key": project}, "summary": summary, "description": f"{summary}, filed by gpumedic",
        "issuetype": {"name": issue_type}, "labels": labels,
    })
    return str(issue.key)


def error_body(error: JIRAError) -> dict[str, object]:
    assert error.response is not None
    body: dict[str, object] = json.loads(error.response.text)
    return body


def keys(issues: object) -> list[str]:
    return [issue.key for issue in issues]  # type: ignore[attr-defined]


# -- connecting and authenticating --------------------------------------------------------------


def test_the_real_client_connects_and_reads_server_info_and_myself(jira_server: JiraEmulator, jira: JIRA) -> None:
    info = jira.server_info()
    assert info["versionNumbers"] == [9, 12, 15] and info["deploymentType"] == "Server"
    assert info["baseUrl"] == jira_server.url
    assert jira.myself()["name"] == jira_server.username
    assert [p.key for p in jira.projects()] == ["GPU"]


def test_wrong_credentials_are_refused_when_the_client_is_built(jira_server: JiraEmulator) -> None:
    with pytest.raises(JIRAError) as caught:
        JIRA(server=jira_server.url, basic_auth=(jira_server.username, "wrong"), max_retries=0)
    assert caught.value.status_code == 401
    assert caught.value.response is not None
    assert caught.value.response.headers["X-Seraph-LoginReason"] == "AUTHENTICATED_FAILED"
    assert "You are not authenticated" in (caught.value.text or "")


def test_without_credentials_only_server_info_is_served(jira_server: JiraEmulator) -> None:
    anonymous = JIRA(server=jira_server.url, max_retries=0)  # serverInfo is public, so this works
    with pytest.raises(JIRAError) as caught:
        anonymous.issue("GPU-1")
    assert caught.value.status_code == 401
    assert error_body(caught.value) == {
        "errorMessages": ["You are not authenticated. Authentication required to perform this operation."],
        "errors": {},
    }


def test_a_personal_access_token_authenticates(jira_server: JiraEmulator) -> None:
    client = JIRA(server=jira_server.url, token_auth=jira_server.personal_access_token, max_retries=0)
    assert client.myself()["name"] == jira_server.username


def test_the_field_list_maps_jql_clause_names_to_field_ids(jira: JIRA) -> None:
    fields = {f["id"]: f for f in jira.fields()}
    assert {"summary", "labels", "status", "resolution", "issuetype", "project"} <= fields.keys()
    assert "type" in fields["issuetype"]["clauseNames"]


# -- creating and reading issues ------------------------------------------------------------------


def test_create_issue_returns_the_key_and_the_issue_reads_back(jira_server: JiraEmulator, jira: JIRA) -> None:
    key = file_ticket(jira, "Replace GPU 3 on gpu-node-05", ["gpumedic", "node-gpu-node-05"])
    assert key == "GPU-1"
    issue = jira.issue(key)
    assert issue.fields.summary == "Replace GPU 3 on gpu-node-05"
    assert issue.fields.issuetype.name == HW and issue.fields.project.key == "GPU"
    assert issue.fields.labels == ["gpumedic", "node-gpu-node-05"]
    assert issue.fields.status.statusCategory.key == "new" and issue.fields.resolution is None
    assert issue.fields.reporter.name == jira_server.username
    raw = jira_server.issue(key)
    assert raw["self"] == f"{jira_server.url}/rest/api/2/issue/{raw['id']}"


def test_create_issue_with_names_resolves_the_project_and_issue_type_through_the_api(jira: JIRA) -> None:
    issue = jira.create_issue(project="GPU", summary="Order a spare H100", issuetype="Order Replacement")
    assert issue.fields.issuetype.name == "Order Replacement"


def test_missing_or_unknown_fields_are_400_with_an_error_per_field(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as caught:
        jira.create_issue(fields={"project": {"key": "NOPE"}, "summary": " ", "issuetype": {"name": HW}})
    assert caught.value.status_code == 400
    assert error_body(caught.value) == {
        "errorMessages": [],
        "errors": {"project": "valid project is required", "summary": "You must specify a summary of the issue."},
    }
    with pytest.raises(JIRAError) as caught:
        jira.create_issue(fields={"project": {"key": "GPU"}, "summary": "x", "issuetype": {"name": "Bug"},
                                  "customfield_10010": "x"})
    errors = error_body(caught.value)["errors"]
    assert isinstance(errors, dict)
    assert errors["issuetype"] == "valid issue type is required"
    assert "customfield_10010" in errors


def test_labels_with_spaces_are_refused(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as caught:
        file_ticket(jira, "x", ["gpu node 5"])
    assert caught.value.status_code == 400
    assert "contains spaces" in str(error_body(caught.value)["errors"])


def test_a_missing_issue_is_404_issue_does_not_exist(jira: JIRA) -> None:
    with pytest.raises(JIRAError) as caught:
        jira.issue("GPU-404")
    assert caught.value.status_code == 404 and caught.value.text == "Issue Does Not Exist"


def test_update_adds_and_removes_labels(jira: JIRA) -> None:
    issue = jira.issue(file_ticket(jira, "x", ["gpumedic", "stale"]))
    issue.update(update={"labels": [{"add": "incident-7"}, {"remove": "stale"}]})
    assert jira.issue(issue.key).fields.labels == ["gpumedic", "incident-7"]


# -- searching --------------------------------------------------------------------------------------


def test_search_by_project_and_labels(jira: JIRA) -> None:
    a = file_ticket(jira, "a", ["gpumedic", "node-a"])
    b = file_ticket(jira, "b", ["gpumedic", "node-b"])
    file_ticket(jira, "c", ["other"])
    assert keys(jira.search_issues("project = GPU AND labels = node-a")) == [a]
    assert keys(jira.search_issues('project = "GPU" AND labels in (node-a, "node-b") ORDER BY created DESC')) == [b, a]
    assert keys(jira.search_issues("labels = gpumedic ORDER BY key ASC")) == [a, b]


def test_search_for_open_tickets_by_status_category_and_resolution(jira_server: JiraEmulator, jira: JIRA) -> None:
    open_key = file_ticket(jira, "open", ["gpumedic"])
    done_key = file_ticket(jira, "done", ["gpumedic"])
    jira_server.set_status(done_key, "Done")
    for jql in ("project = GPU AND statusCategory != Done", 'statusCategory = "To Do"',
                "resolution = Unresolved", "resolution is EMPTY", "status != Done AND labels = gpumedic"):
        assert keys(jira.search_issues(jql)) == [open_key], jql
    assert keys(jira.search_issues("statusCategory = Done AND resolution = Done")) == [done_key]


def test_negative_operators_never_match_an_empty_field(jira: JIRA) -> None:
    labelled = file_ticket(jira, "labelled", ["gpumedic"])
    file_ticket(jira, "unlabelled", [])
    assert keys(jira.search_issues("labels != other")) == [labelled]
    assert keys(jira.search_issues("labels not in (other)")) == [labelled]
    assert len(jira.search_issues("labels is EMPTY")) == 1


def test_search_pages_with_start_at_max_results_and_total(jira: JIRA) -> None:
    for i in range(5):
        file_ticket(jira, f"t{i}", ["batch"])
    page = jira.search_issues("labels = batch ORDER BY key ASC", startAt=1, maxResults=2, json_result=True)
    assert (page["startAt"], page["maxResults"], page["total"]) == (1, 2, 5)
    assert [i["key"] for i in page["issues"]] == ["GPU-2", "GPU-3"]
    assert len(jira.search_issues("labels = batch", maxResults=0)) == 5  # the client pages through all


def test_post_search_answers_like_get_search(jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    assert keys(jira.search_issues("labels = gpumedic", use_post=True)) == [key]


def test_search_results_can_be_limited_to_some_fields(jira: JIRA) -> None:
    file_ticket(jira, "x", ["gpumedic"])
    (issue,) = jira.search_issues("labels = gpumedic", fields="summary,labels")
    assert set(issue.raw["fields"]) == {"summary", "labels"}


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("project = GPU OR labels = x", "Error in the JQL Query: 'OR' is not supported"),
        ("summary ~ 'gpu'", "Error in the JQL Query: The field 'summary' is not supported"),
        ("(project = GPU)", "Error in the JQL Query: '(' is not supported"),
        ("project = GPU AND", "Error in the JQL Query: Expecting a field name but got end of query."),
        ("labels = ", "Error in the JQL Query: Expecting either a value, list or function but got end of query."),
        ("assignee = currentUser()", "Error in the JQL Query: The field 'assignee' is not supported"),
        ("status WAS Done", "Error in the JQL Query: The operator 'WAS' is not supported"),
        ("labels = gpumedic labels = x", "Error in the JQL Query: Expecting either 'OR' or 'AND' but got 'labels'."),
        ("nosuchfield = 1", "Field 'nosuchfield' does not exist or you do not have permission to view it."),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("status = Finished", "The value 'Finished' does not exist for the field 'status'."),
        ("labels > x", "The operator '>' is not supported by the 'labels' field."),
        ("project = GPU ORDER BY colour", "Not able to sort using field 'colour'."),
    ],
)
def test_jql_outside_the_subset_or_invalid_is_400_with_jiras_error_shape(
    jira_server: JiraEmulator, jira: JIRA, jql: str, message: str
) -> None:
    with pytest.raises(JIRAError) as caught:
        jira.search_issues(jql)
    assert caught.value.status_code == 400
    body = error_body(caught.value)
    assert body["errors"] == {}
    messages = body["errorMessages"]
    assert isinstance(messages, list) and len(messages) == 1
    assert messages[0].startswith(message)


# -- comments and transitions ---------------------------------------------------------------------


def test_comments_are_added_and_listed_in_order(jira_server: JiraEmulator, jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    first = jira.add_comment(key, "Drained; GPU 3 shows Xid 79.")
    jira_server.add_comment(key, "Vendor RMA opened.", author="dc-tech")
    assert first.author.name == jira_server.username and first.id
    assert [(c.author.name, c.body) for c in jira.comments(key)] == [
        (jira_server.username, "Drained; GPU 3 shows Xid 79."), ("dc-tech", "Vendor RMA opened."),
    ]
    assert jira.comment(key, first.id).body == "Drained; GPU 3 shows Xid 79."
    with pytest.raises(JIRAError) as caught:
        jira.add_comment(key, "  ")
    assert caught.value.status_code == 400


def test_transitions_are_offered_from_the_current_status_with_their_target_category(jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    offered = {t["name"]: t["to"]["statusCategory"]["key"] for t in jira.transitions(key)}
    assert offered == {"Start Progress": "indeterminate", "Done": "done"}


def test_in_a_renamed_workflow_the_done_transition_is_found_by_status_category(jira_server: JiraEmulator) -> None:
    jira_server.create_project("OPS", "Fleet operations", workflow=RENAMED_WORKFLOW)
    jira = connect(jira_server)
    key = file_ticket(jira, "x", ["gpumedic"], project="OPS")
    transitions = jira.transitions(key)
    assert not {"Done", "Close", "Resolve", "Closed", "Resolved"} & {t["name"] for t in transitions}
    with pytest.raises(JIRAError, match="Invalid transition name"):
        jira.transition_issue(key, "Done")

    to_progress = next(t for t in transitions if t["to"]["statusCategory"]["key"] == "indeterminate")
    jira.transition_issue(key, to_progress["id"])
    to_done = next(t for t in jira.transitions(key) if t["to"]["statusCategory"]["key"] == "done")
    jira.transition_issue(key, to_done["id"], comment="GPU replaced and burn-in passed.")
    issue = jira.issue(key)
    assert (issue.fields.status.name, issue.fields.status.statusCategory.key) == ("Closed Out", "done")
    assert issue.fields.resolution is not None
    assert issue.fields.resolution.name == "Done" and issue.fields.resolutiondate
    assert jira.comments(key)[-1].body == "GPU replaced and burn-in passed."
    assert keys(jira.search_issues("project = OPS AND statusCategory = Done")) == [key]


def test_reopening_clears_the_resolution(jira_server: JiraEmulator, jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    jira.transition_issue(key, "21")
    reopen = next(t for t in jira.transitions(key) if t["to"]["statusCategory"]["key"] == "new")
    jira.transition_issue(key, reopen["id"])
    issue = jira.issue(key)
    assert issue.fields.resolution is None and issue.fields.resolutiondate is None


def test_a_transition_not_offered_from_the_current_status_is_400(jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    with pytest.raises(JIRAError) as caught:
        jira.transition_issue(key, "41")  # "Reopen" is only offered from Done
    assert caught.value.status_code == 400
    assert caught.value.text == "Transition id '41' is not valid for this issue."


# -- outages ----------------------------------------------------------------------------------------


def test_a_503_outage_is_a_jira_error_503_and_service_resumes(jira_server: JiraEmulator, jira: JIRA) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    jira_server.set_down(True)
    with pytest.raises(JIRAError) as caught:
        jira.issue(key)
    assert caught.value.status_code == 503
    with pytest.raises(JIRAError):
        connect(jira_server)
    jira_server.set_down(False)
    assert jira.issue(key).key == key
    assert [r.status for r in jira_server.request_log if r.fault == "outage"] == [503, 503]


def test_a_refused_connection_outage_is_a_requests_connection_error_and_service_resumes(
    jira_server: JiraEmulator, jira: JIRA
) -> None:
    key = file_ticket(jira, "x", ["gpumedic"])
    port = jira_server.port
    jira_server.outage("refuse")
    with pytest.raises(requests.exceptions.ConnectionError):
        jira.issue(key)  # the pooled keep-alive connection is gone too
    jira_server.outage(None)
    assert jira_server.port == port
    assert jira.issue(key).key == key


def test_an_injected_server_error_on_create_is_a_jira_error_and_creates_nothing(
    jira_server: JiraEmulator, jira: JIRA
) -> None:
    fault = jira_server.fault("/rest/api/2/issue", 1, status=500, method="POST")
    with pytest.raises(JIRAError) as caught:
        file_ticket(jira, "x", ["gpumedic"])
    assert caught.value.status_code == 500 and fault.hits == 1
    assert jira_server.issues() == []
    assert file_ticket(jira, "x", ["gpumedic"]) == "GPU-1"
