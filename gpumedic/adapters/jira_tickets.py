"""Replacement tickets in Jira through the real `jira` client: file once per GPU, comment after.

- **One open ticket per GPU.** Every ticket carries its GPU's dedup label
  (`gpumedic-gpu-<uuid-or-serial>`); before creating, a JQL search by that label finds an open
  ticket (status category not Done) and the new evidence becomes a comment on it instead.
- **Idempotent per incident.** The ticket also carries `gpumedic-incident-<id>` and each
  comment a `[gpumedic incident <id>]` marker. Filing the same incident again (a retry, or a
  re-run after a crash between Jira's answer and our bookkeeping) finds its own ticket or
  comment and adopts it without writing anything: no duplicate issue, no duplicate comment.
- **Transitions by status category** (`new`, `indeterminate`, `done`), never by name: workflows
  name their transitions freely ("Close", "Resolve", "Ship it"), the categories are fixed.
- **Errors**: unreachable server, timeouts, 409, 429 and 5xx are `TransientError`; 400, 401, 403,
  404 (and other 4xx) are `PermanentError` with a message that says what to fix. The client is
  built with `max_retries=0` by default: retrying is the outbox's and Prefect's job, and the
  library's own backoff sleeps 20 s and more per attempt.
- **The API token is never logged**: it is not part of any repr or message, and `JIRAError`s are
  not chained into our errors because their text dumps whole responses.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self

import requests
from jira import JIRA, JIRAError

from gpumedic.adapters.errors import AdapterError, PermanentError, TransientError

log = logging.getLogger(__name__)

StatusCategory = Literal["new", "indeterminate", "done"]

GPU_LABEL_PREFIX = "gpumedic-gpu-"
INCIDENT_LABEL_PREFIX = "gpumedic-incident-"
_LABEL_UNSAFE = re.compile(r"[^a-z0-9._:-]+")
_SUMMARY_MAX = 255  # Jira rejects longer summaries with 400


def _label(text: str) -> str:
    """A Jira label: no spaces (a space would split it), lower case for stable matching."""
    label = _LABEL_UNSAFE.sub("-", text.strip().lower()).strip("-")
    if not label:
        raise ValueError(f"cannot make a label of {text!r}")
    return label


def gpu_dedup_key(*, uuid: str | None = None, serial: str | None = None) -> str:
    """`gpumedic-gpu-<uuid>` (or `<serial>` when the UUID is unknown), lower-cased.

    The UUID comes first because every datacenter GPU reports one and it travels with the
    board; a serial can read "N/A". Callers must pick one rule and keep it, so this is it.
    """
    ident = next((v for v in (uuid, serial) if v and v.strip() and v.strip().upper() != "N/A"), None)
    if ident is None:
        raise ValueError("a GPU needs a UUID or a serial to be ticketed")
    return GPU_LABEL_PREFIX + _label(ident)


def incident_label(incident_id: str) -> str:
    return INCIDENT_LABEL_PREFIX + _label(incident_id)


def incident_marker(incident_id: str) -> str:
    return f"[gpumedic incident {incident_id}]"


@dataclass(frozen=True, slots=True)
class Approval:
    approver: str
    reason: str
    rma: str | None = None


# The label on every ticket the failure forecast filed (an order, not a repair).
FORECAST_ORDER_LABEL = "gpumedic-forecast"


@dataclass(frozen=True, slots=True)
class TicketRequest:
    """Everything needed to file one ticket; JSON round-trips through `to_json`/`from_json` (the outbox)."""

    dedup_key: str
    incident_id: str
    project: str
    issue_type: str  # e.g. "Hardware Replacement", "Order Replacement"
    summary: str
    description: str  # the evidence, markdown
    node: str
    labels: tuple[str, ...] = ()
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    gpu_serial: str | None = None
    approval: Approval | None = None

    def __post_init__(self) -> None:
        if not self.dedup_key or _label(self.dedup_key) != self.dedup_key:
            raise ValueError(f"dedup_key {self.dedup_key!r} must be a lower-case Jira label without spaces")
        for name in ("incident_id", "project", "issue_type", "summary", "node"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"TicketRequest.{name} must not be empty")
        if any(_label(label) != label for label in self.labels):
            raise ValueError(f"labels must be lower-case without spaces: {self.labels!r}")

    def all_labels(self) -> list[str]:
        wanted = ["gpumedic", self.dedup_key, incident_label(self.incident_id), *self.labels]
        return list(dict.fromkeys(wanted))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        values = dict(data)
        approval = values.get("approval")
        values["approval"] = Approval(**approval) if approval else None
        values["labels"] = tuple(values.get("labels") or ())
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TicketOutcome:
    key: str
    created: bool  # a new issue was created
    commented: bool  # the evidence went into a comment on an open issue
    # Neither: this incident had already been filed (a retry or a re-run adopted its own ticket).


@dataclass(frozen=True, slots=True)
class JiraSettings:
    server: str
    user: str
    api_token: str = field(repr=False)
    timeout_s: float = 15.0
    max_retries: int = 0
    verify: bool | str = True  # False, True or a CA bundle path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "GPUMEDIC_JIRA_") -> Self:
        """`<prefix>URL`, `<prefix>USER` and `<prefix>TOKEN` (or `<prefix>TOKEN_FILE`), `<prefix>CA_BUNDLE`."""
        env = os.environ if environ is None else environ
        missing = [f"{prefix}{n}" for n in ("URL", "USER") if not env.get(f"{prefix}{n}")]
        token = read_token(f"{prefix}TOKEN", env)
        if not token:
            missing.append(f"{prefix}TOKEN")
        if missing:
            raise PermanentError(f"Jira is not configured: set {', '.join(missing)}")
        return cls(
            server=env[f"{prefix}URL"],
            user=env[f"{prefix}USER"],
            api_token=token or "",
            verify=env.get(f"{prefix}CA_BUNDLE") or True,
        )

    @classmethod
    def from_config(
        cls, server: str, user: str, token_env: str, environ: Mapping[str, str] | None = None
    ) -> Self:
        """The fleet file names the server and the user; the token comes from `token_env` (or `<token_env>_FILE`)."""
        token = read_token(token_env, os.environ if environ is None else environ)
        if not token:
            raise PermanentError(f"no Jira API token: set the environment variable {token_env} or {token_env}_FILE")
        return cls(server=server, user=user, api_token=token)


def read_token(name: str, environ: Mapping[str, str]) -> str | None:
    """A secret from the variable `name`, or from the file `<name>_FILE` names (never logged)."""
    token = (environ.get(name) or "").strip()
    token_file = environ.get(f"{name}_FILE")
    if not token and token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as err:
            raise PermanentError(f"cannot read {name}_FILE {token_file}: {err.strerror}") from None
    return token or None


def _translate(err: Exception, what: str) -> AdapterError:
    if isinstance(err, JIRAError):
        status = err.status_code
        detail = (err.text or "").strip()[:500]
        if status == 401:
            return PermanentError(f"{what}: Jira refused the credentials (401); check the user and API token")
        if status == 403:
            return PermanentError(f"{what}: not allowed (403): {detail}; check the account's project permissions")
        if status == 404:
            return PermanentError(f"{what}: not found (404): {detail}")
        if status == 400:
            return PermanentError(f"{what}: Jira rejected the request (400): {detail}")
        if status is not None and (status in (408, 409, 429) or status >= 500):
            return TransientError(f"{what}: Jira answered {status}: {detail}")
        return PermanentError(f"{what}: Jira answered {status}: {detail}")
    if isinstance(err, requests.Timeout):
        return TransientError(f"{what}: Jira did not answer in time")
    if isinstance(err, requests.RequestException | OSError):
        return TransientError(f"{what}: cannot reach Jira: {type(err).__name__}")
    return PermanentError(f"{what}: {type(err).__name__}: {err}")


def _jql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class JiraTickets:
    """Files and moves replacement tickets. The client is created on first use (no I/O in `__init__`)."""

    def __init__(self, settings: JiraSettings) -> None:
        self.settings = settings
        self._jira: JIRA | None = None

    def __repr__(self) -> str:
        return f"JiraTickets(server={self.settings.server!r}, user={self.settings.user!r})"

    def close(self) -> None:
        if self._jira is not None:
            self._jira.close()
            self._jira = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self) -> JIRA:
        if self._jira is None:
            s = self.settings
            try:
                self._jira = JIRA(
                    server=s.server,
                    basic_auth=(s.user, s.api_token),
                    timeout=s.timeout_s,
                    max_retries=s.max_retries,
                    options={"verify": s.verify, "check_update": False},
                )
            except (JIRAError, requests.RequestException, OSError) as err:
                raise _translate(err, f"connecting to Jira at {s.server}") from None
        return self._jira

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (JIRAError, requests.RequestException, OSError) as err:
            raise _translate(err, what) from None

    # -- filing ----------------------------------------------------------------------------

    def find_open(self, project: str, dedup_key: str) -> list[dict[str, Any]]:
        """Open issues (status category not Done) carrying `dedup_key`, oldest first, as raw JSON."""
        jira = self._client()
        jql = (
            f"project = {_jql_string(project)} AND labels = {_jql_string(dedup_key)} "
            "AND statusCategory != Done ORDER BY created ASC"
        )
        found = self._call(
            f"searching Jira for {dedup_key}", jira.search_issues, jql, maxResults=10,
            fields=["labels", "status", "summary"], json_result=True,
        )
        return list(found.get("issues") or [])

    def file_replacement(self, ticket: TicketRequest) -> TicketOutcome:
        """Create the ticket, or comment on the GPU's open ticket, or adopt this incident's own."""
        jira = self._client()
        existing = self.find_open(ticket.project, ticket.dedup_key)
        if existing:
            issue = existing[0]
            key = str(issue["key"])
            if len(existing) > 1:
                log.warning("dedup=%s open_tickets=%s using=%s", ticket.dedup_key,
                            ",".join(str(i["key"]) for i in existing), key)
            labels = (issue.get("fields") or {}).get("labels") or []
            if incident_label(ticket.incident_id) in labels or self._has_comment_for(key, ticket.incident_id):
                log.info("incident=%s node=%s action=ticket adopted=%s", ticket.incident_id, ticket.node, key)
                return TicketOutcome(key=key, created=False, commented=False)
            self._call(f"commenting on {key}", jira.add_comment, key, self.render_comment(ticket))
            log.info("incident=%s node=%s action=ticket commented=%s", ticket.incident_id, ticket.node, key)
            return TicketOutcome(key=key, created=False, commented=True)

        summary = ticket.summary if len(ticket.summary) <= _SUMMARY_MAX else ticket.summary[: _SUMMARY_MAX - 1] + "…"
        fields = {
            "project": {"key": ticket.project},
            "issuetype": {"name": ticket.issue_type},
            "summary": summary,
            "description": self.render_description(ticket),
            "labels": ticket.all_labels(),
        }
        issue_obj = self._call(f"creating a {ticket.issue_type} ticket in {ticket.project}", jira.create_issue,
                               fields=fields, prefetch=False)
        key = str(issue_obj.key)
        log.info("incident=%s node=%s action=ticket created=%s", ticket.incident_id, ticket.node, key)
        return TicketOutcome(key=key, created=True, commented=False)

    def _has_comment_for(self, key: str, incident_id: str) -> bool:
        marker = incident_marker(incident_id)
        comments = self._call(f"reading comments of {key}", self._client().comments, key)
        return any(marker in (getattr(c, "body", "") or "") for c in comments)

    @staticmethod
    def _facts(ticket: TicketRequest) -> list[str]:
        gpu = ", ".join(
            f"{name} {value}"
            for name, value in (("index", ticket.gpu_index), ("UUID", ticket.gpu_uuid), ("serial", ticket.gpu_serial))
            if value is not None
        )
        lines = [f"*Node:* {ticket.node}", f"*GPU:* {gpu or 'unknown'}", f"*Incident:* {ticket.incident_id}"]
        if ticket.approval is not None:
            a = ticket.approval
            lines.append(f"*Approved by:* {a.approver} — {a.reason}" + (f" (RMA {a.rma})" if a.rma else ""))
        return lines

    def render_description(self, ticket: TicketRequest) -> str:
        marker = incident_marker(ticket.incident_id)
        return "\n".join([*self._facts(ticket), "", ticket.description.strip(), "", marker])

    def render_comment(self, ticket: TicketRequest) -> str:
        return "\n".join([
            "gpumedic found this GPU faulty again.", "", *self._facts(ticket), "", ticket.description.strip(), "",
            incident_marker(ticket.incident_id),
        ])

    # -- workflow --------------------------------------------------------------------------

    def status_category(self, key: str) -> str:
        issue = self._call(f"reading {key}", self._client().issue, key, fields="status")
        return str(issue.raw["fields"]["status"]["statusCategory"]["key"])

    def transition_to_category(self, key: str, category_key: StatusCategory) -> bool:
        """Move `key` into a status of category `category_key`; False when it already is in one.

        The transition is chosen by its target's status category, never by its name. When none
        of the available transitions leads there, `PermanentError` lists what is available.
        """
        if self.status_category(key) == category_key:
            return False
        jira = self._client()
        transitions = self._call(f"listing transitions of {key}", jira.transitions, key)
        matching = [
            t for t in transitions
            if ((t.get("to") or {}).get("statusCategory") or {}).get("key") == category_key
        ]
        if not matching:
            available = ", ".join(
                f"{t.get('name')!r}→{((t.get('to') or {}).get('statusCategory') or {}).get('key')}"
                for t in transitions
            )
            raise PermanentError(f"{key}: no transition leads to status category {category_key!r} "
                                 f"(available: {available or 'none'})")
        chosen = matching[0]
        self._call(f"transitioning {key}", jira.transition_issue, key, str(chosen["id"]))
        log.info("ticket=%s action=transition to=%s via=%r", key, category_key, chosen.get("name"))
        return True
