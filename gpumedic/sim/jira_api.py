"""An emulated Jira (Server / Data Center, REST API v2) that the real ``jira`` client talks to.

gpumedic files hardware tickets through the real ``jira.JIRA`` client; here it talks to this
emulator on loopback instead of a Jira server. The wire shapes, status codes and error bodies
follow the Jira Server REST v2 documentation, so the adapter code is the one that would run
against a real instance.

What is emulated
----------------
* Authentication: HTTP Basic (``basic_auth=(user, password_or_token)``) or a personal access
  token (``token_auth=...``). Wrong credentials get 401 on every resource with
  ``X-Seraph-LoginReason: AUTHENTICATED_FAILED``; no credentials get 401 everywhere except
  ``serverInfo``, which Jira serves anonymously. The body is Jira's
  ``{"errorMessages": [...], "errors": {}}`` shape.
* ``GET serverInfo`` (``deploymentType: "Server"``, so the client uses ``/rest/api/2/search``
  and not Cloud's enhanced search), ``GET myself``, ``GET field``, ``GET project``,
  ``GET project/{idOrKey}`` (with ``issueTypes``), ``GET project/{idOrKey}/statuses``,
  ``GET issuetype``, ``GET status``, ``GET statuscategory``, ``GET priority``,
  ``GET resolution``.
* ``POST issue`` (fields ``project``, ``issuetype``, ``summary``, ``description``, ``labels``,
  ``priority``; 400 with per-field ``errors`` for a missing or unknown project, issue type,
  summary, for labels with spaces and for fields Jira would not accept), ``GET issue/{key}``
  (``fields`` filter), ``PUT issue/{key}`` (``fields`` and ``update`` with labels
  add/remove/set and comment add), ``GET/POST issue/{key}/comment``,
  ``GET issue/{key}/comment/{id}``, ``GET/POST issue/{key}/transitions``.
* ``GET`` and ``POST search`` with a JQL subset: clauses joined by ``AND`` on ``project``,
  ``labels``, ``status``, ``statusCategory``, ``resolution``, ``issuetype`` (``type``) and
  ``key`` with ``=``, ``!=``, ``in``, ``not in``, ``is [not] EMPTY``; values quoted or bare;
  ``resolution = Unresolved``; ``ORDER BY created|updated|key|id [ASC|DESC]``. As in Jira,
  ``!=`` and ``not in`` never match an empty field. An unknown field, value or sort field
  gets Jira's own 400 message; syntax the emulator does not implement (``OR``, ``NOT``,
  parentheses, ``~``, comparisons, functions) gets 400 "Error in the JQL Query: ...".
* Workflows: each project has one. Transitions are offered from the issue's current status
  and carry ``to.statusCategory.key`` (``new``, ``indeterminate``, ``done``).
  ``RENAMED_WORKFLOW`` uses names no caller could guess ("Accept", "Ship It", "Won't Fix",
  "Revive"), to prove that callers pick a transition by the status category it leads to.
  Entering a ``done`` status sets the resolution (and ``resolutiondate``), leaving it clears
  them, as Jira's default workflows do with their post functions.
* Operations: :meth:`JiraEmulator.outage` answers every request with 503 (``"503"``) or closes
  the listener and drops open connections so that clients get "connection refused"
  (``"refuse"``); :meth:`JiraEmulator.fault` arms finer faults. ``request_log`` records every
  request.

Not emulated: Jira Cloud's ``/rest/api/3``, attachments, watchers, worklogs, custom fields,
permissions and screens beyond the checks above.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from gpumedic.sim._http import EmulatorHandler, Fault, LoopbackServer

__all__ = [
    "DEFAULT_ISSUE_TYPES",
    "RENAMED_WORKFLOW",
    "STANDARD_WORKFLOW",
    "JiraEmulator",
    "JiraFault",
    "JiraRequestRecord",
    "JiraStatus",
    "JiraTransition",
    "JiraWorkflow",
]

log = logging.getLogger(__name__)

JsonObj = dict[str, Any]
StatusCategoryKey = Literal["new", "indeterminate", "done"]

DEFAULT_ISSUE_TYPES = ("Hardware Replacement", "Order Replacement", "Task")

# Jira's fixed status categories: id, key, colour, name.
_CATEGORIES: dict[str, tuple[int, str, str]] = {
    "new": (2, "blue-gray", "To Do"),
    "indeterminate": (4, "yellow", "In Progress"),
    "done": (3, "green", "Done"),
}
_PRIORITIES = (("1", "Highest"), ("2", "High"), ("3", "Medium"), ("4", "Low"), ("5", "Lowest"))
_RESOLUTIONS = (("10000", "Done"), ("10001", "Won't Do"), ("10002", "Duplicate"), ("10003", "Cannot Reproduce"))


@dataclass(frozen=True)
class JiraStatus:
    id: str
    name: str
    category: StatusCategoryKey


@dataclass(frozen=True)
class JiraTransition:
    """``sources``: the statuses it is offered from; empty means from every status (global)."""

    id: str
    name: str
    to: str
    sources: tuple[str, ...] = ()
    resolution: str = "Done"


@dataclass(frozen=True)
class JiraWorkflow:
    name: str
    statuses: tuple[JiraStatus, ...]
    transitions: tuple[JiraTransition, ...]

    @property
    def initial(self) -> JiraStatus:
        return self.statuses[0]

    def status(self, name: str) -> JiraStatus:
        for status in self.statuses:
            if status.name == name:
                return status
        raise KeyError(name)


STANDARD_WORKFLOW = JiraWorkflow(
    "jira",
    (JiraStatus("1", "Open", "new"), JiraStatus("3", "In Progress", "indeterminate"),
     JiraStatus("10001", "Done", "done")),
    (
        JiraTransition("11", "Start Progress", "In Progress", ("Open",)),
        JiraTransition("21", "Done", "Done", ("Open", "In Progress")),
        JiraTransition("31", "Stop Progress", "Open", ("In Progress",)),
        JiraTransition("41", "Reopen", "Open", ("Done",)),
    ),
)

# Deliberately unusual names: a caller that looks for "Done" or "Close" finds nothing here.
RENAMED_WORKFLOW = JiraWorkflow(
    "fleet-ops",
    (JiraStatus("10100", "Awaiting Triage", "new"), JiraStatus("10101", "With Vendor", "indeterminate"),
     JiraStatus("10102", "Closed Out", "done")),
    (
        JiraTransition("111", "Accept", "With Vendor", ("Awaiting Triage",)),
        JiraTransition("121", "Ship It", "Closed Out", ("With Vendor",)),
        JiraTransition("131", "Won't Fix", "Closed Out", ("Awaiting Triage", "With Vendor"), "Won't Do"),
        JiraTransition("141", "Revive", "Awaiting Triage", ("Closed Out",)),
    ),
)

# Fields the create and edit screens accept, and what GET field lists.
_SYSTEM_FIELDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("summary", "Summary", "string", ("summary",)),
    ("description", "Description", "string", ("description",)),
    ("issuetype", "Issue Type", "issuetype", ("issuetype", "type")),
    ("project", "Project", "project", ("project",)),
    ("labels", "Labels", "array", ("labels",)),
    ("status", "Status", "status", ("status",)),
    ("resolution", "Resolution", "resolution", ("resolution",)),
    ("resolutiondate", "Resolved", "datetime", ("resolutiondate", "resolved")),
    ("created", "Created", "datetime", ("created", "createdDate")),
    ("updated", "Updated", "datetime", ("updated", "updatedDate")),
    ("priority", "Priority", "priority", ("priority",)),
    ("reporter", "Reporter", "user", ("reporter",)),
    ("creator", "Creator", "user", ("creator",)),
    ("assignee", "Assignee", "user", ("assignee",)),
    ("comment", "Comment", "comments-page", ("comment",)),
)
_SETTABLE_ON_CREATE = frozenset({"project", "issuetype", "summary", "description", "labels", "priority", "assignee"})
_SETTABLE_ON_EDIT = frozenset({"summary", "description", "labels", "priority", "assignee"})


class _JiraError(Exception):
    def __init__(
        self, code: int, messages: Iterable[str] = (), errors: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(", ".join(messages) or json.dumps(errors))
        self.code = code
        self.body = {"errorMessages": list(messages), "errors": dict(errors or {})}
        self.headers = headers or {}


class _JqlError(Exception):
    """A JQL query Jira would refuse (its 400 message)."""


def _jql_syntax(detail: str, query: str) -> _JqlError:
    return _JqlError(f"Error in the JQL Query: {detail} The query was: {query}")


# --------------------------------------------------------------------------------------------
# JQL subset
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|!~|>=|<=|=|~|>|<)
      | (?P<punct>[(),])
      | (?P<word>[^\s"'(),=!~<>]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc"})


@dataclass(frozen=True)
class _Tok:
    kind: Literal["string", "op", "punct", "word"]
    text: str

    @property
    def keyword(self) -> str | None:
        lowered = self.text.lower()
        return lowered if self.kind == "word" and lowered in _KEYWORDS else None

    @property
    def value(self) -> str:
        if self.kind == "string":
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        return self.text


def _tokenize(query: str) -> list[_Tok]:
    tokens, position = [], 0
    while position < len(query):
        if query[position:].strip() == "":
            break
        m = _TOKEN.match(query, position)
        if m is None or m.end() == position:
            raise _jql_syntax(f"The character '{query[position:].strip()[0]}' is a reserved JQL character.", query)
        kind = m.lastgroup
        assert kind is not None
        tokens.append(_Tok(kind, m.group(kind)))  # type: ignore[arg-type]
        position = m.end()
    return tokens


@dataclass(frozen=True)
class _Clause:
    field: str
    op: Literal["=", "!=", "in", "not in", "is", "is not"]
    values: tuple[str | None, ...]  # None stands for EMPTY


@dataclass(frozen=True)
class _Query:
    clauses: tuple[_Clause, ...]
    order: tuple[tuple[str, bool], ...]  # (field, descending)


_FIELD_ALIASES = {
    "project": "project", "labels": "labels", "label": "labels", "status": "status",
    "statuscategory": "statusCategory", "resolution": "resolution", "issuetype": "issuetype",
    "type": "issuetype", "key": "key", "issuekey": "key", "id": "key",
}
_KNOWN_OTHER_FIELDS = frozenset({
    "summary", "description", "text", "created", "createddate", "updated", "updateddate", "resolved",
    "resolutiondate", "priority", "reporter", "creator", "assignee", "comment", "duedate", "due",
})
_SORT_FIELDS = {"created": "created", "createddate": "created", "updated": "updated", "updateddate": "updated",
                "key": "key", "issuekey": "key", "id": "key"}


def _parse_jql(query: str) -> _Query:
    tokens = _tokenize(query)
    clauses: list[_Clause] = []
    order: list[tuple[str, bool]] = []
    i = 0

    def peek(offset: int = 0) -> _Tok | None:
        return tokens[i + offset] if i + offset < len(tokens) else None

    def unsupported(what: str) -> _JqlError:
        return _jql_syntax(
            f"{what} is not supported by the gpumedic Jira emulator (it implements clauses joined by AND on "
            "project, labels, status, statusCategory, resolution, issuetype and key, with =, !=, in, not in, "
            "is [not] EMPTY, and ORDER BY created, updated or key).", query,
        )

    def value_token(tok: _Tok | None) -> str | None:
        if tok is None:
            raise _jql_syntax("Expecting either a value, list or function but got end of query.", query)
        if tok.keyword in ("empty", "null"):
            return None
        if tok.kind in ("string", "word") and tok.keyword is None:
            return tok.value
        if tok.kind == "word":
            raise _jql_syntax(f"Expecting either a value, list or function but got '{tok.text}'.", query)
        raise _jql_syntax(f"Expecting either a value, list or function but got '{tok.text}'.", query)

    while i < len(tokens):
        tok = tokens[i]
        if tok.keyword == "order":
            break
        if clauses:
            if tok.keyword == "and":
                i += 1
                tok = peek() or _Tok("word", "")
                if not tok.text:
                    raise _jql_syntax("Expecting a field name but got end of query.", query)
            elif tok.keyword == "or":
                raise unsupported("'OR'")
            else:
                raise _jql_syntax(f"Expecting either 'OR' or 'AND' but got '{tok.text}'.", query)
        if tok.keyword == "not" or tok.text == "(":
            raise unsupported(f"'{tok.text}'")
        if tok.kind not in ("word", "string") or tok.keyword is not None:
            raise _jql_syntax(f"Expecting a field name but got '{tok.text}'.", query)
        field_text = tok.value
        canonical = _FIELD_ALIASES.get(field_text.lower())
        if canonical is None:
            if field_text.lower() in _KNOWN_OTHER_FIELDS or field_text.lower().startswith("cf["):
                raise unsupported(f"The field '{field_text}'")
            raise _JqlError(f"Field '{field_text}' does not exist or you do not have permission to view it.")
        i += 1
        op_tok = peek()
        if op_tok is None:
            raise _jql_syntax(f"Expecting operator but got end of query after '{field_text}'.", query)
        op: str
        if op_tok.kind == "op":
            if op_tok.text not in ("=", "!="):
                raise _JqlError(f"The operator '{op_tok.text}' is not supported by the '{field_text}' field.")
            op = op_tok.text
            i += 1
        elif op_tok.keyword == "in":
            op = "in"
            i += 1
        elif op_tok.keyword == "not" and (nxt := peek(1)) is not None and nxt.keyword == "in":
            op = "not in"
            i += 2
        elif op_tok.keyword == "is":
            if (nxt := peek(1)) is not None and nxt.keyword == "not":
                op = "is not"
                i += 2
            else:
                op = "is"
                i += 1
        elif op_tok.text.lower() in ("was", "changed"):
            raise unsupported(f"The operator '{op_tok.text.upper()}'")
        else:
            raise _jql_syntax(f"Expecting operator but got '{op_tok.text}'.", query)
        values: list[str | None] = []
        if op in ("in", "not in"):
            if (opening := peek()) is None or opening.text != "(":
                raise _jql_syntax(f"Expecting '(' but got '{opening.text if opening else 'end of query'}'.", query)
            i += 1
            while True:
                values.append(value_token(peek()))
                i += 1
                sep = peek()
                if sep is not None and sep.text == ",":
                    i += 1
                    continue
                if sep is not None and sep.text == ")":
                    i += 1
                    break
                raise _jql_syntax("Expecting ')' or ',' but got "
                                  f"'{sep.text if sep else 'end of query'}'.", query)
        else:
            nxt = peek()
            if nxt is not None and nxt.kind == "word" and (after := peek(1)) is not None and after.text == "(":
                raise unsupported(f"The function '{nxt.text}()'")
            values.append(value_token(nxt))
            i += 1
            if op in ("is", "is not") and values[0] is not None:
                raise _jql_syntax(f"The operator '{op.upper()}' only supports EMPTY or NULL.", query)
        clauses.append(_Clause(canonical, op, tuple(values)))  # type: ignore[arg-type]

    if i < len(tokens):
        # ORDER BY field [ASC|DESC] (, field [ASC|DESC])*
        i += 1
        if (by := peek()) is None or by.keyword != "by":
            raise _jql_syntax("Expecting 'by' after 'order'.", query)
        i += 1
        while True:
            tok_field = peek()
            if tok_field is None:
                raise _jql_syntax("Expecting a field name after 'order by'.", query)
            sort_field = _SORT_FIELDS.get(tok_field.value.lower())
            if sort_field is None:
                if _FIELD_ALIASES.get(tok_field.value.lower()) or tok_field.value.lower() in _KNOWN_OTHER_FIELDS:
                    raise unsupported(f"Sorting by '{tok_field.value}'")
                raise _JqlError(f"Not able to sort using field '{tok_field.value}'.")
            i += 1
            descending = False
            direction = peek()
            if direction is not None and direction.keyword in ("asc", "desc"):
                descending = direction.keyword == "desc"
                i += 1
            order.append((sort_field, descending))
            sep = peek()
            if sep is None:
                break
            if sep.text != ",":
                raise _jql_syntax(f"Expecting ',' or end of query but got '{sep.text}'.", query)
            i += 1
    return _Query(tuple(clauses), tuple(order))


# --------------------------------------------------------------------------------------------
# Records and faults
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JiraRequestRecord:
    method: str
    path: str
    query: str
    status: int | None
    user: str | None
    fault: str | None = None


JiraFault = Fault  # the same fault model as the Kubernetes emulator's


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Handler(EmulatorHandler):
    server_version = "gpumedic-jira-emulator"
    emulator_name = "jira emulator"

    def send_body(
        self, code: int, body: Any = None, *, headers: dict[str, str] | None = None,
        content_type: str = "application/json;charset=UTF-8",
    ) -> None:
        if body is None:
            data = b""
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, no-store, no-transform")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def reset_connection(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()


def _jira_time(epoch: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


@dataclass
class _Project:
    id: str
    key: str
    name: str
    issue_types: tuple[str, ...]
    workflow: JiraWorkflow
    lead: str
    next_number: int = 1


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class JiraEmulator:
    """An in-memory Jira Server on ``http://127.0.0.1:<ephemeral port>``.

    ``username`` / ``password`` (an API token stands in for the password) are what
    ``jira.JIRA(server=emulator.url, basic_auth=(username, password))`` must send;
    ``personal_access_token`` works with ``token_auth=``. A project ``GPU`` with the issue
    types of :data:`DEFAULT_ISSUE_TYPES` exists from the start, with ``workflow``.
    """

    def __init__(
        self,
        *,
        username: str = "gpumedic-bot",
        password: str | None = None,
        default_project: str | None = "GPU",
        workflow: JiraWorkflow = STANDARD_WORKFLOW,
        version: tuple[int, int, int] = (9, 12, 15),
    ) -> None:
        self.username = username
        self.password = password or secrets.token_urlsafe(24)
        self.personal_access_token = secrets.token_urlsafe(32)
        self.version = version
        self._lock = threading.RLock()
        self._projects: dict[str, _Project] = {}
        self._issues: dict[str, JsonObj] = {}  # by key; internal representation
        self._next_issue_id = 10000
        self._next_comment_id = 10000
        self._next_project_id = 10000
        self._issue_type_ids: dict[str, str] = {}
        self._statuses: dict[str, JiraStatus] = {}
        self._faults: list[JiraFault] = []
        self._outage: Literal["503", "refuse"] | None = None
        self._outage_retry_after: int | None = None
        self.request_log: list[JiraRequestRecord] = []
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        if default_project:
            self.create_project(default_project, "GPU Fleet Hardware", workflow=workflow)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> JiraEmulator:
        if self._server is None:
            self._listen()
        return self

    def _listen(self) -> None:
        self._server = LoopbackServer(_Handler, self, None, self._port, name="jira emulator")
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="jira-emulator", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stop(self) -> None:
        """Stop serving; a later :meth:`start` serves the same state on the same port."""
        self._close_listener()
        self._outage = None

    def __enter__(self) -> JiraEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def _base(self) -> str:
        # Self links use the port the emulator has (or will keep after an outage).
        return f"http://127.0.0.1:{self._port}"

    # ---------------------------------------------------------------- operations: outages and faults

    def outage(self, mode: Literal["503", "refuse"] | None = "503", *, retry_after: int | None = None) -> None:
        """Take Jira down (``"503"``: every request answered 503; ``"refuse"``: nothing listens)
        or bring it back (``None``). ``retry_after`` adds that header to the 503s (the ``jira``
        client then sleeps and retries)."""
        with self._lock:
            previous, self._outage, self._outage_retry_after = self._outage, mode, retry_after
        if mode == "refuse" and previous != "refuse":
            self._close_listener()
        elif mode != "refuse" and previous == "refuse" and self._port:
            self._listen()

    def set_down(self, down: bool) -> None:
        """``outage("503")`` or back up."""
        self.outage("503" if down else None)

    def fault(
        self,
        pattern: str,
        count: int | None = 1,
        *,
        mode: Literal["status", "reset", "delay"] = "status",
        status: int = 503,
        method: str | None = None,
        delay_s: float = 0.0,
        retry_after: int | None = None,
    ) -> JiraFault:
        """Arm a fault on the next ``count`` requests whose path matches the glob ``pattern``."""
        armed = JiraFault(pattern, mode, count, status, method, delay_s, retry_after)
        with self._lock:
            self._faults.append(armed)
        return armed

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_logs(self) -> None:
        with self._lock:
            self.request_log.clear()

    # ---------------------------------------------------------------- Python-side API

    def create_project(
        self,
        key: str,
        name: str | None = None,
        *,
        issue_types: Iterable[str] = DEFAULT_ISSUE_TYPES,
        workflow: JiraWorkflow = STANDARD_WORKFLOW,
        lead: str | None = None,
    ) -> JsonObj:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]{1,9}", key):
            raise ValueError(f"invalid project key {key!r}")
        with self._lock:
            if key in self._projects:
                raise ValueError(f"project {key} already exists")
            for status in workflow.statuses:
                known = self._statuses.get(status.name)
                if known is not None and known != status:
                    raise ValueError(f"status {status.name!r} is already defined differently")
                self._statuses[status.name] = status
            types = tuple(issue_types)
            for type_name in types:
                self._issue_type_ids.setdefault(type_name, str(10000 + len(self._issue_type_ids)))
            project = _Project(str(self._next_project_id), key, name or key, types, workflow, lead or self.username)
            self._next_project_id += 1
            self._projects[key] = project
            return self._project_json(project, detail=True)

    def create_issue(
        self,
        project: str,
        summary: str,
        *,
        issue_type: str = "Task",
        labels: Iterable[str] = (),
        description: str | None = None,
        reporter: str | None = None,
    ) -> JsonObj:
        """File an issue as a person would (outside the API under test)."""
        with self._lock:
            fields: JsonObj = {"project": {"key": project}, "summary": summary, "issuetype": {"name": issue_type},
                               "labels": list(labels)}
            if description is not None:
                fields["description"] = description
            key = self._create_issue(fields, reporter or "fleet-admin")
            return self._issue_json(self._issues[key])

    def issues(self, project: str | None = None) -> list[JsonObj]:
        """Every issue as ``GET issue/{key}`` returns it, oldest first."""
        with self._lock:
            return [
                self._issue_json(issue) for issue in sorted(self._issues.values(), key=lambda i: int(i["id"]))
                if project is None or issue["project"] == project
            ]

    def issue(self, key: str) -> JsonObj:
        with self._lock:
            return self._issue_json(self._issues[key])

    def set_status(self, key: str, status: str, *, resolution: str = "Done") -> None:
        """Move an issue to ``status`` directly, as an administrator (or a person) would."""
        with self._lock:
            issue = self._issues[key]
            target = self._projects[issue["project"]].workflow.status(status)
            self._enter_status(issue, target, resolution)

    def add_comment(self, key: str, body: str, *, author: str = "fleet-admin") -> JsonObj:
        with self._lock:
            issue = self._issues[key]
            return self._comment_json(issue, self._append_comment(issue, body, author))

    # ---------------------------------------------------------------- internals

    def _user(self, name: str) -> JsonObj:
        return {
            "self": f"{self._base}/rest/api/2/user?username={name}", "name": name, "key": name,
            "emailAddress": f"{name}@example.invalid", "displayName": name, "active": True,
            "timeZone": "Etc/UTC",
            "avatarUrls": {"48x48": f"{self._base}/secure/useravatar?avatarId=10122"},
        }

    def _category_json(self, key: str) -> JsonObj:
        category_id, colour, name = _CATEGORIES[key]
        return {"self": f"{self._base}/rest/api/2/statuscategory/{category_id}", "id": category_id, "key": key,
                "colorName": colour, "name": name}

    def _status_json(self, status: JiraStatus) -> JsonObj:
        return {
            "self": f"{self._base}/rest/api/2/status/{status.id}", "description": "",
            "iconUrl": f"{self._base}/images/icons/statuses/generic.png", "name": status.name, "id": status.id,
            "statusCategory": self._category_json(status.category),
        }

    def _issue_type_json(self, name: str) -> JsonObj:
        type_id = self._issue_type_ids[name]
        return {"self": f"{self._base}/rest/api/2/issuetype/{type_id}", "id": type_id, "description": "",
                "iconUrl": f"{self._base}/secure/viewavatar?size=xsmall&avatarId=10318&avatarType=issuetype",
                "name": name, "subtask": False, "avatarId": 10318}

    def _project_json(self, project: _Project, *, detail: bool) -> JsonObj:
        body: JsonObj = {
            "expand": "description,lead,url,projectKeys", "self": f"{self._base}/rest/api/2/project/{project.id}",
            "id": project.id, "key": project.key, "name": project.name, "projectTypeKey": "software",
            "archived": False,
            "avatarUrls": {"48x48": f"{self._base}/secure/projectavatar?avatarId=10324"},
        }
        if detail:
            body.update({
                "description": "", "lead": self._user(project.lead), "components": [], "versions": [],
                "issueTypes": [self._issue_type_json(t) for t in project.issue_types],
                "assigneeType": "UNASSIGNED", "roles": {}, "projectKeys": [project.key],
            })
        return body

    def _find_project(self, ref: Any) -> _Project | None:
        if isinstance(ref, dict):
            ref = ref.get("key") or ref.get("id")
        if ref is None:
            return None
        ref = str(ref)
        for project in self._projects.values():
            if ref.upper() == project.key or ref == project.id or ref.lower() == project.name.lower():
                return project
        return None

    def _find_issue(self, ref: str) -> JsonObj:
        issue = self._issues.get(ref.upper())
        if issue is None:
            issue = next((i for i in self._issues.values() if i["id"] == ref), None)
        if issue is None:
            raise _JiraError(404, ["Issue Does Not Exist"])
        return issue

    def _validate_fields(self, fields: JsonObj, allowed: frozenset[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for name in fields:
            if name not in allowed:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        if "summary" in fields:
            summary = fields["summary"]
            if not isinstance(summary, str) or not summary.strip():
                errors["summary"] = "You must specify a summary of the issue."
            elif len(summary) > 255:
                errors["summary"] = "Summary must be less than 255 characters."
        if "description" in fields and fields["description"] is not None and not isinstance(fields["description"], str):
            errors["description"] = "Operation value must be a string"
        if "labels" in fields:
            labels = fields["labels"]
            if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                errors["labels"] = "Operation value must be an array of strings"
            else:
                for label in labels:
                    if " " in label or not label:
                        errors["labels"] = f"The label '{label}' contains spaces which is invalid."
                    elif len(label) > 255:
                        errors["labels"] = "The label must not exceed 255 characters in length."
        if "priority" in fields:
            priority = fields["priority"] or {}
            names = {n for _, n in _PRIORITIES} | {i for i, _ in _PRIORITIES}
            if not isinstance(priority, dict) or (priority.get("name") or priority.get("id")) not in names:
                errors["priority"] = "The priority selected is invalid."
        return errors

    def _create_issue(self, fields: Any, reporter: str) -> str:
        if not isinstance(fields, dict):
            raise _JiraError(400, ["Can not deserialize instance of com.atlassian.jira.rest.v2.issue.IssueFields"])
        errors: dict[str, str] = {}
        project = self._find_project(fields.get("project"))
        if fields.get("project") in (None, {}, ""):
            errors["project"] = "project is required"
        elif project is None:
            errors["project"] = "valid project is required"
        issue_type_ref = fields.get("issuetype")
        issue_type: str | None = None
        if issue_type_ref in (None, {}, ""):
            errors["issuetype"] = "issue type is required"
        elif project is not None:
            wanted = None
            if isinstance(issue_type_ref, dict):
                wanted = issue_type_ref.get("name") or issue_type_ref.get("id")
            for name in project.issue_types:
                if wanted in (name, self._issue_type_ids[name]):
                    issue_type = name
            if issue_type is None:
                errors["issuetype"] = "valid issue type is required"
        if "summary" not in fields:
            errors["summary"] = "You must specify a summary of the issue."
        errors.update(self._validate_fields(fields, _SETTABLE_ON_CREATE))
        if errors:
            raise _JiraError(400, [], errors)
        assert project is not None and issue_type is not None
        now = time.time()
        issue_id = str(self._next_issue_id)
        self._next_issue_id += 1
        key = f"{project.key}-{project.next_number}"
        project.next_number += 1
        priority_ref = fields.get("priority") or {"name": "Medium"}
        priority = next(n for i, n in _PRIORITIES if priority_ref.get("name") in (n, i) or priority_ref.get("id") == i)
        self._issues[key] = {
            "id": issue_id, "key": key, "project": project.key, "issuetype": issue_type,
            "summary": fields["summary"], "description": fields.get("description"),
            "labels": list(dict.fromkeys(fields.get("labels") or [])), "status": project.workflow.initial.name,
            "resolution": None, "resolutiondate": None, "created": now, "updated": now,
            "reporter": reporter, "priority": priority, "assignee": (fields.get("assignee") or {}).get("name"),
            "comments": [],
        }
        return key

    def _append_comment(self, issue: JsonObj, body: str, author: str) -> JsonObj:
        now = time.time()
        comment = {"id": str(self._next_comment_id), "body": body, "author": author, "created": now, "updated": now}
        self._next_comment_id += 1
        issue["comments"].append(comment)
        issue["updated"] = now
        return comment

    def _comment_json(self, issue: JsonObj, comment: JsonObj) -> JsonObj:
        return {
            "self": f"{self._base}/rest/api/2/issue/{issue['id']}/comment/{comment['id']}", "id": comment["id"],
            "author": self._user(comment["author"]), "body": comment["body"],
            "updateAuthor": self._user(comment["author"]), "created": _jira_time(comment["created"]),
            "updated": _jira_time(comment["updated"]),
        }

    def _enter_status(self, issue: JsonObj, target: JiraStatus, resolution: str) -> None:
        now = time.time()
        issue["status"] = target.name
        issue["updated"] = now
        if target.category == "done":
            if issue["resolution"] is None:
                issue["resolution"], issue["resolutiondate"] = resolution, now
        else:
            issue["resolution"] = issue["resolutiondate"] = None

    def _issue_json(self, issue: JsonObj, wanted: set[str] | None = None) -> JsonObj:
        project = self._projects[issue["project"]]
        status = project.workflow.status(issue["status"])
        resolution_id = next((i for i, n in _RESOLUTIONS if n == issue["resolution"]), None)
        priority_id = next(i for i, n in _PRIORITIES if n == issue["priority"])
        comments = [self._comment_json(issue, c) for c in issue["comments"]]
        fields: JsonObj = {
            "summary": issue["summary"],
            "description": issue["description"],
            "issuetype": self._issue_type_json(issue["issuetype"]),
            "project": self._project_json(project, detail=False),
            "labels": list(issue["labels"]),
            "status": self._status_json(status),
            "resolution": None if issue["resolution"] is None else {
                "self": f"{self._base}/rest/api/2/resolution/{resolution_id}", "id": resolution_id,
                "description": "", "name": issue["resolution"],
            },
            "resolutiondate": None if issue["resolutiondate"] is None else _jira_time(issue["resolutiondate"]),
            "created": _jira_time(issue["created"]),
            "updated": _jira_time(issue["updated"]),
            "priority": {"self": f"{self._base}/rest/api/2/priority/{priority_id}", "id": priority_id,
                         "name": issue["priority"]},
            "reporter": self._user(issue["reporter"]),
            "creator": self._user(issue["reporter"]),
            "assignee": None if issue["assignee"] is None else self._user(issue["assignee"]),
            "comment": {"comments": comments, "maxResults": len(comments), "total": len(comments), "startAt": 0},
        }
        if wanted is not None and "*all" not in wanted:
            navigable = "*navigable" in wanted
            fields = {
                name: value for name, value in fields.items()
                if (name in wanted or (navigable and name != "comment")) and f"-{name}" not in wanted
            }
        return {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": issue["id"], "self": f"{self._base}/rest/api/2/issue/{issue['id']}", "key": issue["key"],
            "fields": fields,
        }

    def _available_transitions(self, issue: JsonObj) -> list[JiraTransition]:
        workflow = self._projects[issue["project"]].workflow
        return [t for t in workflow.transitions if not t.sources or issue["status"] in t.sources]

    def _transition_json(self, issue: JsonObj, transition: JiraTransition, with_fields: bool) -> JsonObj:
        workflow = self._projects[issue["project"]].workflow
        body: JsonObj = {
            "id": transition.id, "name": transition.name, "to": self._status_json(workflow.status(transition.to)),
            "hasScreen": False, "isGlobal": not transition.sources, "isInitial": False, "isAvailable": True,
            "isConditional": False, "isLooped": False,
        }
        if with_fields:
            body["fields"] = {}
        return body

    # ---------------------------------------------------------------- JQL evaluation

    def _resolve_jql_values(self, clause: _Clause) -> list[str | None]:
        """Canonical values for a clause, with Jira's 400 for values that do not exist."""
        resolved: list[str | None] = []
        for value in clause.values:
            if value is None:
                resolved.append(None)
                continue
            lowered = value.lower()
            if clause.field == "project":
                project = self._find_project(value)
                if project is None:
                    raise _JqlError(f"The value '{value}' does not exist for the field 'project'.")
                resolved.append(project.key)
            elif clause.field == "status":
                match = next((s.name for s in self._statuses.values() if lowered in (s.name.lower(), s.id)), None)
                if match is None:
                    raise _JqlError(f"The value '{value}' does not exist for the field 'status'.")
                resolved.append(match)
            elif clause.field == "statusCategory":
                category = next(
                    (k for k, (cid, _, name) in _CATEGORIES.items() if lowered in (k, name.lower(), str(cid))), None
                )
                if category is None:
                    raise _JqlError(f"The value '{value}' does not exist for the field 'statusCategory'.")
                resolved.append(category)
            elif clause.field == "resolution":
                if lowered == "unresolved":
                    resolved.append(None)
                    continue
                match = next((n for i, n in _RESOLUTIONS if lowered in (n.lower(), i)), None)
                if match is None:
                    raise _JqlError(f"The value '{value}' does not exist for the field 'resolution'.")
                resolved.append(match)
            elif clause.field == "issuetype":
                match = next((n for n, i in self._issue_type_ids.items() if lowered in (n.lower(), i)), None)
                if match is None:
                    raise _JqlError(f"The value '{value}' does not exist for the field 'issuetype'.")
                resolved.append(match)
            elif clause.field == "key":
                resolved.append(value.upper())
            else:
                resolved.append(value)
        return resolved

    def _clause_values_of(self, issue: JsonObj, field_name: str) -> list[str]:
        if field_name == "labels":
            return list(issue["labels"])
        if field_name == "statusCategory":
            return [self._projects[issue["project"]].workflow.status(issue["status"]).category]
        if field_name == "resolution":
            return [] if issue["resolution"] is None else [issue["resolution"]]
        if field_name == "key":
            return [issue["key"], issue["id"]]
        return [issue[field_name]]

    def _search(self, jql: str) -> list[JsonObj]:
        query = _parse_jql(jql)
        compiled = [(clause, self._resolve_jql_values(clause)) for clause in query.clauses]

        def matches(issue: JsonObj) -> bool:
            for clause, values in compiled:
                present = self._clause_values_of(issue, clause.field)
                wants_empty = None in values
                wanted = {v for v in values if v is not None}
                if clause.op in ("=", "in"):
                    if not ((wants_empty and not present) or wanted & set(present)):
                        return False
                elif clause.op in ("!=", "not in"):
                    # JQL's negative operators never match an empty field.
                    if wants_empty and not wanted:
                        if not present:
                            return False
                    elif not present or wanted & set(present):
                        return False
                elif clause.op == "is":
                    if present:
                        return False
                elif not present:  # "is not"
                    return False
            return True

        found = [issue for issue in self._issues.values() if matches(issue)]
        found.sort(key=lambda i: -int(i["id"]))  # Jira's default: newest first
        for sort_field, descending in reversed(query.order):
            found.sort(key=_sort_key(sort_field), reverse=descending)
        return found

    # ---------------------------------------------------------------- HTTP entry point

    def _authenticate(self, header: str | None) -> tuple[str | None, bool]:
        """``(user, credentials_given)``."""
        if not header:
            return None, False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return None, True
            ok = hmac.compare_digest(user.encode(), self.username.encode()) and hmac.compare_digest(
                password.encode(), self.password.encode()
            )
            return (user if ok else None), True
        if scheme.lower() == "bearer":
            ok = hmac.compare_digest(value.strip().encode(), self.personal_access_token.encode())
            return (self.username if ok else None), True
        return None, True

    def _handle(self, req: _Handler, method: str) -> None:
        split = urlsplit(req.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length > 0 else b""
        user, credentials_given = self._authenticate(req.headers.get("Authorization"))

        def record(status: int | None, fault: str | None = None) -> None:
            with self._lock:
                self.request_log.append(JiraRequestRecord(method, path, split.query, status, user, fault))

        with self._lock:
            outage, retry_after = self._outage, self._outage_retry_after
            armed = next((f for f in self._faults if f._take(method, path)), None)
        if outage == "503":
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            record(503, "outage")
            req.send_body(503, "<html><body><h1>503 Service Unavailable</h1>Jira is unavailable.</body></html>",
                          headers=headers, content_type="text/html;charset=UTF-8")
            return
        if armed is not None:
            if armed.mode == "reset":
                record(None, "reset")
                req.reset_connection()
                return
            if armed.mode == "status":
                headers = {"Retry-After": str(armed.retry_after)} if armed.retry_after is not None else {}
                record(armed.status, "status")
                req.send_body(armed.status, {"errorMessages": ["Injected fault"], "errors": {}}, headers=headers)
                return
            time.sleep(armed.delay_s)

        anonymous_ok = method == "GET" and path.rstrip("/") == "/rest/api/2/serverInfo"
        if user is None and (credentials_given or not anonymous_ok):
            headers = {"X-AUSERNAME": "anonymous",
                       "WWW-Authenticate": 'Basic realm="protected-area"'}
            if credentials_given:
                headers["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
            body = {"errorMessages": ["You are not authenticated. Authentication required to perform this "
                                      "operation."], "errors": {}}
            record(401)
            req.send_body(401, body, headers=headers)
            return
        try:
            with self._lock:
                code, payload = self._dispatch(method, path, query, raw, user)
        except _JiraError as error:
            record(error.code)
            req.send_body(error.code, error.body, headers=error.headers)
            return
        except Exception:
            log.exception("jira emulator: internal error on %s %s", method, path)
            record(500)
            req.send_body(500, {"errorMessages": ["Internal server error"], "errors": {}})
            return
        # Logged before the reply goes out, so a client that got its answer sees its record.
        record(code)
        req.send_body(code, payload, headers={"X-AUSERNAME": user or "anonymous"})

    @staticmethod
    def _json_body(raw: bytes) -> Any:
        if not raw.strip():
            raise _JiraError(400, ["No content to map to Object due to end of input"])
        try:
            return json.loads(raw)
        except ValueError:
            raise _JiraError(400, ["Unexpected character in the request body; it is not JSON."]) from None

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes, user: str | None
    ) -> tuple[int, Any]:
        prefix = "/rest/api/2/"
        if not path.startswith(prefix):
            raise _JiraError(404, ["null for uri: " + path])
        parts = [p for p in path[len(prefix):].split("/") if p]
        routes: list[tuple[str, tuple[str, ...], Callable[..., tuple[int, Any]]]] = [
            ("GET", ("serverInfo",), self._get_server_info),
            ("GET", ("myself",), lambda: (200, {**self._user(user or "anonymous"), "groups": {"size": 1, "items": []},
                                                "locale": "en_US"})),
            ("GET", ("field",), self._get_fields),
            ("GET", ("project",), lambda: (200, [self._project_json(p, detail=False)
                                                 for p in sorted(self._projects.values(), key=lambda p: p.key)])),
            ("GET", ("project", "*"), self._get_project),
            ("GET", ("project", "*", "statuses"), self._get_project_statuses),
            ("GET", ("issuetype",), lambda: (200, [self._issue_type_json(n) for n in self._issue_type_ids])),
            ("GET", ("status",), lambda: (200, [self._status_json(s) for s in self._statuses.values()])),
            ("GET", ("statuscategory",), lambda: (200, [self._category_json(k) for k in _CATEGORIES])),
            ("GET", ("priority",), lambda: (200, [{"self": f"{self._base}/rest/api/2/priority/{i}", "id": i, "name": n}
                                                  for i, n in _PRIORITIES])),
            ("GET", ("resolution",), lambda: (200, [{"self": f"{self._base}/rest/api/2/resolution/{i}", "id": i,
                                                     "name": n, "description": ""} for i, n in _RESOLUTIONS])),
            ("GET", ("search",), lambda: self._search_request(
                {k: (v if k == "fields" else v[0]) for k, v in query.items()})),
            ("POST", ("search",), lambda: self._search_request(self._json_body(raw))),
            ("POST", ("issue",), lambda: self._post_issue(self._json_body(raw), user or "anonymous")),
            ("GET", ("issue", "*"), lambda ref: (200, self._issue_json(self._find_issue(ref), _wanted_fields(query)))),
            ("PUT", ("issue", "*"), lambda ref: self._put_issue(ref, self._json_body(raw), user or "anonymous")),
            ("GET", ("issue", "*", "comment"), lambda ref: self._get_comments(ref, query)),
            ("POST", ("issue", "*", "comment"), lambda ref: self._post_comment(ref, self._json_body(raw),
                                                                              user or "anonymous")),
            ("GET", ("issue", "*", "comment", "*"), self._get_comment),
            ("GET", ("issue", "*", "transitions"), lambda ref: self._get_transitions(ref, query)),
            ("POST", ("issue", "*", "transitions"), lambda ref: self._post_transition(ref, self._json_body(raw),
                                                                                     user or "anonymous")),
        ]
        path_matched = False
        for route_method, pattern, handler in routes:
            if len(pattern) != len(parts) or any(p != "*" and p != q for p, q in zip(pattern, parts, strict=True)):
                continue
            path_matched = True
            if route_method == method:
                args = [q for p, q in zip(pattern, parts, strict=True) if p == "*"]
                return handler(*args)
        if path_matched:
            raise _JiraError(405, ["Method Not Allowed"])
        raise _JiraError(404, ["null for uri: " + path])

    def _get_server_info(self) -> tuple[int, Any]:
        now = time.time()
        major, minor, patch = self.version
        return 200, {
            "baseUrl": self._base, "version": f"{major}.{minor}.{patch}", "versionNumbers": list(self.version),
            "deploymentType": "Server", "buildNumber": major * 100000 + minor * 1000 + patch,
            "buildDate": "2024-11-05T00:00:00.000+0000", "databaseBuildNumber": major * 100000 + minor * 1000 + patch,
            "serverTime": _jira_time(now), "scmInfo": "0" * 40, "serverTitle": "gpumedic Jira emulator",
        }

    def _get_fields(self) -> tuple[int, Any]:
        return 200, [
            {"id": field_id, "name": name, "custom": False, "orderable": field_id in _SETTABLE_ON_CREATE,
             "navigable": field_id != "comment", "searchable": True, "clauseNames": list(clauses),
             "schema": {"type": schema, "system": field_id}}
            for field_id, name, schema, clauses in _SYSTEM_FIELDS
        ]

    def _get_project(self, ref: str) -> tuple[int, Any]:
        project = self._find_project(ref)
        if project is None:
            raise _JiraError(404, [f"No project could be found with key '{ref}'."])
        return 200, self._project_json(project, detail=True)

    def _get_project_statuses(self, ref: str) -> tuple[int, Any]:
        project = self._find_project(ref)
        if project is None:
            raise _JiraError(404, [f"No project could be found with key '{ref}'."])
        return 200, [
            {**self._issue_type_json(t), "statuses": [self._status_json(s) for s in project.workflow.statuses]}
            for t in project.issue_types
        ]

    def _search_request(self, params: Any) -> tuple[int, Any]:
        if not isinstance(params, dict):
            raise _JiraError(400, ["The search request must be a JSON object."])
        jql = str(params.get("jql") or "")
        raw_max = params.get("maxResults")
        try:
            start_at = int(params.get("startAt") or 0)
            max_results = 50 if raw_max in (None, "") else int(raw_max)
        except (TypeError, ValueError):
            raise _JiraError(400, ["startAt and maxResults must be integers."]) from None
        max_results = max(0, min(max_results, 1000))
        try:
            found = self._search(jql)
        except _JqlError as error:
            raise _JiraError(400, [str(error)]) from None
        wanted = _wanted_fields_from(params.get("fields"))
        page = found[start_at: start_at + max_results]
        return 200, {
            "expand": "schema,names", "startAt": start_at, "maxResults": max_results, "total": len(found),
            "issues": [self._issue_json(issue, wanted) for issue in page],
        }

    def _post_issue(self, body: Any, user: str) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise _JiraError(400, ["The request body must be a JSON object."])
        key = self._create_issue(body.get("fields"), user)
        issue = self._issues[key]
        for operation in (body.get("update") or {}).get("comment") or []:
            if "add" in operation:
                self._append_comment(issue, str(operation["add"].get("body") or ""), user)
        return 201, {"id": issue["id"], "key": key, "self": f"{self._base}/rest/api/2/issue/{issue['id']}"}

    def _put_issue(self, ref: str, body: Any, user: str) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        if not isinstance(body, dict):
            raise _JiraError(400, ["The request body must be a JSON object."])
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        errors = self._validate_fields(fields, _SETTABLE_ON_EDIT)
        for name in update:
            if name not in _SETTABLE_ON_EDIT | {"comment"}:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        labels: list[Any] = list(fields["labels"]) if isinstance(fields.get("labels"), list) else list(issue["labels"])
        for operation in update.get("labels") or []:
            if "add" in operation:
                labels.append(operation["add"])
            if "remove" in operation:
                labels = [label for label in labels if label != operation["remove"]]
            if "set" in operation:
                labels = list(operation["set"])
        errors.update(self._validate_fields({"labels": labels}, _SETTABLE_ON_EDIT))
        if errors:
            raise _JiraError(400, [], errors)
        for name in ("summary", "description"):
            if name in fields:
                issue[name] = fields[name]
        if "priority" in fields:
            ref_priority = fields["priority"]
            issue["priority"] = next(n for i, n in _PRIORITIES if ref_priority.get("name") in (n, i)
                                     or ref_priority.get("id") == i)
        if "assignee" in fields:
            issue["assignee"] = (fields["assignee"] or {}).get("name")
        issue["labels"] = list(dict.fromkeys(labels))
        for operation in update.get("comment") or []:
            if "add" in operation:
                self._append_comment(issue, str(operation["add"].get("body") or ""), user)
        issue["updated"] = time.time()
        return 204, None

    def _get_comments(self, ref: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        comments = [self._comment_json(issue, c) for c in issue["comments"]]
        order = (query.get("orderBy") or [""])[0]
        if order == "-created":
            comments.reverse()
        start = int((query.get("startAt") or ["0"])[0])
        limit = int((query.get("maxResults") or [str(max(len(comments), 1))])[0])
        page = comments[start: start + limit]
        return 200, {"startAt": start, "maxResults": limit, "total": len(comments), "comments": page}

    def _get_comment(self, ref: str, comment_id: str) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        for comment in issue["comments"]:
            if comment["id"] == comment_id:
                return 200, self._comment_json(issue, comment)
        raise _JiraError(404, [f"Can not find a comment for the id: {comment_id}."])

    def _post_comment(self, ref: str, body: Any, user: str) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _JiraError(400, [], {"comment": "Comment body can not be empty!"})
        return 201, self._comment_json(issue, self._append_comment(issue, text, user))

    def _get_transitions(self, ref: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        wanted_id = query["transitionId"][0] if query.get("transitionId") else None
        with_fields = "transitions.fields" in (query.get("expand") or [""])[0]
        transitions = [
            self._transition_json(issue, t, with_fields) for t in self._available_transitions(issue)
            if wanted_id is None or t.id == wanted_id
        ]
        return 200, {"expand": "transitions", "transitions": transitions}

    def _post_transition(self, ref: str, body: Any, user: str) -> tuple[int, Any]:
        issue = self._find_issue(ref)
        transition_ref = body.get("transition") if isinstance(body, dict) else None
        if not isinstance(transition_ref, dict) or (
            transition_ref.get("id") is None and not transition_ref.get("name")
        ):
            raise _JiraError(400, ["Missing 'transition' identifier"])
        wanted = str(transition_ref.get("id") if transition_ref.get("id") is not None else transition_ref["name"])
        transition = next((t for t in self._available_transitions(issue) if wanted in (t.id, t.name)), None)
        if transition is None:
            raise _JiraError(400, [f"Transition id '{wanted}' is not valid for this issue."])
        fields = body.get("fields") or {}
        resolution = transition.resolution
        if isinstance(fields.get("resolution"), dict):
            named = fields["resolution"].get("name") or fields["resolution"].get("id")
            match = next((n for i, n in _RESOLUTIONS if named in (n, i)), None)
            if match is None:
                raise _JiraError(400, [], {"resolution": "Could not find valid 'id' or 'name' in resolution object."})
            resolution = match
        workflow = self._projects[issue["project"]].workflow
        self._enter_status(issue, workflow.status(transition.to), resolution)
        for operation in (body.get("update") or {}).get("comment") or []:
            if "add" in operation:
                self._append_comment(issue, str(operation["add"].get("body") or ""), user)
        return 204, None


def _sort_key(sort_field: str) -> Callable[[JsonObj], tuple[Any, ...]]:
    if sort_field == "key":
        return lambda issue: (issue["project"], int(issue["key"].rsplit("-", 1)[1]))
    return lambda issue: (issue[sort_field], int(issue["id"]))


def _wanted_fields_from(value: Any) -> set[str] | None:
    if value in (None, "", []):
        return None
    items = value if isinstance(value, list) else [value]
    wanted: set[str] = set()
    for item in items:
        wanted.update(part.strip() for part in str(item).split(",") if part.strip())
    return wanted or None


def _wanted_fields(query: dict[str, list[str]]) -> set[str] | None:
    return _wanted_fields_from(query.get("fields"))

