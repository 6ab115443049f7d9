"""What gpumedic is doing to the fleet right now, read from the remediation records on the Nodes.

An SRE asks this before anything else: which nodes has gpumedic taken out of service, why, what is
each one waiting for (a drain, a human, a replacement), how much of the disruption budget is left,
and whether anything is stuck. The answer lives in the Nodes' `gpumedic.io/*` annotations;
`gpumedic remediation status` reads them and prints what this module renders. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gpumedic.domain.budget import (
    BreakerOverride,
    BreakerState,
    FleetView,
    RemediationPolicy,
    budget_limit,
    circuit_breaker,
    out_of_service_by_us,
)
from gpumedic.domain.remediation import (
    Decision,
    NodeRecord,
    RemediationState,
    Repair,
    breaker_override_refused,
    failure_ticket,
    refused_by_record,
)
from gpumedic.reporting import age_text

S = RemediationState
# States in which the workflow itself is acting: a record that stays in one of these far longer than
# the step's own deadline means the workflow stopped (its process died, its deployment is paused).
_ACTING = frozenset({S.QUARANTINED, S.DRAINING, S.DRAINED, S.RESETTING, S.REBOOTING, S.DIAGNOSING})
_APPROVALS = {
    "replace": "approve or reject the replacement in the Prefect UI",
    "inspect": "approve or reject handing the node to a human for inspection, in the Prefect UI",
    "breaker": "override the open circuit breaker for this node, or decline, in the Prefect UI",
}


def stalled_after(policy: RemediationPolicy) -> timedelta:
    """How long an acting state may last before it is reported as stalled: the longest step's deadline, twice."""
    return 2 * max(policy.drain_timeout, policy.reboot_timeout, policy.diag_timeout)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    state: str
    repair: str
    incident: str
    since: datetime  # the record's last change
    out_of_service: bool  # counted against the disruption budget
    needs: str  # what it waits for, in words; "" when its workflow is simply at work
    last: str  # the newest entry of its history
    dry_run: bool
    stalled: bool

    @property
    def shown_state(self) -> str:
        return self.state + (" (dry run)" if self.dry_run else "")

    @property
    def waiting_for(self) -> str:
        """What it waits for or, when its workflow is simply at work, what it did last."""
        return self.needs or self.last


@dataclass(frozen=True, slots=True)
class FleetStatus:
    now: datetime
    nodes: tuple[NodeStatus, ...]
    gpu_nodes: int
    out_of_service: int
    limit: int
    policy: RemediationPolicy
    breaker: BreakerState
    breaker_override: BreakerOverride | None  # the operator's fleet-wide override, while it lasts
    opted_out: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...]  # (node, why its record could not be read)
    closed_hidden: int  # closed incidents left out of `nodes`

    @property
    def needs_a_human(self) -> tuple[NodeStatus, ...]:
        return tuple(n for n in self.nodes if n.needs.startswith("a human"))

    @property
    def stalled(self) -> tuple[NodeStatus, ...]:
        return tuple(n for n in self.nodes if n.stalled)


def fleet_status(
    fleet: FleetView,
    policy: RemediationPolicy,
    now: datetime,
    *,
    unreadable: Sequence[tuple[str, str]] = (),
    include_closed: bool = False,
) -> FleetStatus:
    """The fleet's remediation status; closed incidents that no longer hold their node are left out unless asked."""
    out = out_of_service_by_us(fleet)
    breaker = circuit_breaker(fleet, now, policy)
    shown, hidden = [], 0
    for record in sorted(fleet.records, key=lambda r: r.node):
        if _settled(record) and not include_closed:
            hidden += 1
            continue
        shown.append(_node_status(record, record.node in out, policy, now, breaker.open))
    return FleetStatus(
        now=now,
        nodes=tuple(shown),
        gpu_nodes=fleet.gpu_nodes,
        out_of_service=len(out),
        limit=budget_limit(fleet, policy),
        policy=policy,
        breaker=breaker,
        breaker_override=fleet.breaker_override if fleet.breaker_override and fleet.breaker_override.active(now)
        else None,
        opted_out=tuple(sorted(fleet.opted_out)),
        unreadable=tuple(sorted(unreadable)),
        closed_hidden=hidden,
    )


def _settled(record: NodeRecord) -> bool:
    """Closed, and no longer holding its node out of service."""
    return record.closed and not record.holds_node


def _pending_approvals(record: NodeRecord) -> list[str]:
    """The approval steps asked for and not answered yet (`approval:replace`, ...)."""
    return sorted(k for k in record.pending_steps if k.startswith("approval:"))


def _held_by_breaker(record: NodeRecord, breaker_open: bool) -> bool:
    """Every run halts until the breaker closes: its override was asked for once and not given."""
    return breaker_open and not record.closed and breaker_override_refused(record)


def _stalled(record: NodeRecord, policy: RemediationPolicy, now: datetime, held_by_breaker: bool) -> bool:
    """No progress for too long in an acting state, and no open breaker to explain it."""
    return (not record.closed and record.state in _ACTING and now - record.updated_at > stalled_after(policy)
            and not held_by_breaker)


def _node_status(
    record: NodeRecord, out_of_service: bool, policy: RemediationPolicy, now: datetime, breaker_open: bool
) -> NodeStatus:
    held = _held_by_breaker(record, breaker_open)
    stalled = _stalled(record, policy, now, held)
    return NodeStatus(
        node=record.node,
        # A closed incident that still holds its node (ticketed, failed) is the one a human must look at.
        state=str(record.state) + (" (closed)" if _settled(record) else ""),
        repair=str(record.repair),
        incident=record.incident_id,
        since=record.updated_at,
        out_of_service=out_of_service,
        needs=_needs(record, now, stalled, held),
        last=_last(record),
        dry_run=record.dry_run,
        stalled=stalled,
    )


def _last(record: NodeRecord) -> str:
    if not record.history:
        return ""
    entry = record.history[-1]
    return f"{entry.note}: under way" if entry.step in record.pending_steps else entry.note


def _needs(record: NodeRecord, now: datetime, stalled: bool, held_by_breaker: bool) -> str:
    if held_by_breaker:
        return (
            "the circuit breaker to close (no override was given for this incident); meanwhile "
            "resume-remediations starts a run every 15 minutes, which readmits the node if it looks healthy"
        )
    if stalled:
        return (
            f"a new run: no progress for {age_text(now - record.updated_at)}, its run stopped; resume-remediations "
            f"starts one within 15 minutes, and it resumes from this record"
        )
    approvals = [k.split(":", 1)[1] for k in _pending_approvals(record)]
    if approvals:
        return "a human: " + "; ".join(
            _APPROVALS.get(kind, f"decide on {kind} in the Prefect UI") for kind in approvals
        )
    if record.state is S.TICKETED:
        ticket = record.ticket_key or "a ticket still in the outbox (filed once Jira answers: gpumedic tickets status)"
        work = "inspection" if record.repair is Repair.INSPECT else "replacement"
        if record.approval is not None and record.approval.decision is Decision.TIMEOUT:
            return f"a human: nobody decided in time; the {work} ticket was filed awaiting a decision: {ticket}"
        return f"the {work}: {ticket}"
    if record.state is S.FAILED:
        return f"a human: automation stopped ({record.outcome or 'no outcome recorded'})"
    if record.state is S.READMITTED and record.probation_until is not None:
        return f"probation until {_when(record.probation_until)}"
    return ""


def headline(status: FleetStatus) -> list[str]:
    """The disruption budget in use and the circuit breaker, one line each."""
    p = status.policy
    return [
        f"out of service by gpumedic: {status.out_of_service} of at most {status.limit} nodes "
        f"(max_nodes_out {p.max_nodes_out}, max_fraction_out {p.max_fraction_out:.0%})",
        f"circuit breaker {'OPEN' if status.breaker.open else 'closed'}: {status.breaker.reason}",
        *([_override_line(status.breaker_override)] if status.breaker_override else []),
    ]


def _override_line(override: BreakerOverride) -> str:
    return (f"fleet-wide breaker override by {override.by} until {_when(override.until)}: {override.reason} "
            "(gpumedic remediation breaker-override --clear ends it)")


# How long an open incident may sit waiting (for the budget, fresh evidence, the breaker) before a run
# is started to look again, and how late a run that should have ended a wait by itself may be.
RECHECK_AFTER = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Resumption:
    node: str
    incident: str
    why: str
    since: datetime  # the record's last change
    slot: int  # whole RECHECK_AFTER periods since then

    @property
    def key(self) -> str:
        """One run per record version and re-check period: two resumers that saw the same record at the same
        time start one run, and a run that waited again without changing the record does not block the
        next re-check (Prefect answers a reused key with the old run)."""
        return f"resume-{self.incident}-{self.since.isoformat()}-{self.slot}"


def due_for_resumption(fleet: FleetView, policy: RemediationPolicy, now: datetime) -> list[Resumption]:
    """Open incidents that no remediate-node run will come back to by itself.

    A run ends when its incident waits (probation, the disruption budget, fresh evidence, the
    breaker), and the next one starts on the next `gpumedic.node.unhealthy` event; a run whose
    process died leaves its record mid-step. A node that now looks healthy raises no event, so
    without a new run its incident would stay open, and a cordoned node out of service, for ever.
    Starting a run is always safe: it resumes from the record, and every destructive step still
    needs fresh evidence, the budget and a closed breaker.
    """
    due = []
    breaker_open = circuit_breaker(fleet, now, policy).open
    for record in sorted(fleet.records, key=lambda r: r.node):
        if record.node in fleet.opted_out:
            continue  # a run would only halt: an operator took the node out of automation
        why = _why_resume(record, policy, now, breaker_open)
        if why:
            slot = int((now - record.updated_at) / RECHECK_AFTER)
            due.append(Resumption(record.node, record.incident_id, why, record.updated_at, slot))
    return due


def why_a_run_would_stop(fleet: FleetView, policy: RemediationPolicy, now: datetime) -> dict[str, str]:
    """The nodes for which a remediate-node run started now would stop without doing anything, whatever
    a sweep found on them, each with why, in words.

    The sweep raises no `gpumedic.node.unhealthy` for them: each quick sweep would otherwise start a run
    that reads fresh evidence over SSH and stops, every 15 minutes for as long as the wait lasts (a
    human's decision: hours; a replacement on order: weeks). They are: nodes opted out of automation;
    open incidents waiting for a human's decision, within its timeout (past it by more than a re-check,
    the suspended run failed to apply the timeout and a run started now does: `due_for_resumption`);
    closed incidents whose record alone refuses a new one (`refused_by_record`: a failed or ticketed
    incident still holding the node out of service, a recent cancellation), unless a run still owes the
    failure ticket. An open incident that is not waiting for a human is never held: the event is what
    resumes it (a node failing on probation must reach its incident at once).
    """
    held = {node: f"{node} is opted out of automated remediation" for node in sorted(fleet.opted_out)}
    for record in sorted(fleet.records, key=lambda r: r.node):
        if record.node in held:
            continue
        if record.closed:  # as a run tells them apart
            why = "" if failure_ticket(record) is not None else refused_by_record(
                record, now=now, policy=policy, fleet=fleet)
        else:
            asked = _pending_approvals(record)
            waiting = asked and not _why_resume(record, policy, now, breaker_open=False)
            kinds = ", ".join(k.removeprefix("approval:") for k in asked)
            why = f"incident {record.incident_id} awaits a human's decision ({kinds})" if waiting else ""
        if why:
            held[record.node] = why
    return held


@dataclass(frozen=True, slots=True)
class SweepRequest:
    """What a sweep does about a node that needs remediation: raise its `gpumedic.node.unhealthy` or not."""

    raised: bool
    why: str  # why not; when raised, the open incident the run resumes ("" when none)

    @property
    def note(self) -> str:
        """As the sweep report says it."""
        if self.raised:
            return "run requested" + (f": {self.why}" if self.why else "")
        return f"no run requested: {self.why}"


def sweep_requests(
    needing: Sequence[str], fleet: FleetView | None, policy: RemediationPolicy, now: datetime, *, events: bool
) -> dict[str, SweepRequest]:
    """Per node that needs remediation, whether the sweep raises its event, and why not
    (`why_a_run_would_stop`) or which open incident the run resumes.

    `fleet`: the records on the Nodes, or None where the fleet file names no cluster or it could not
    be read (then every event is raised: a run reads the records itself and decides). `events`: off,
    the sweep only reports, and says what a sweep with events would have done: its dry run.
    """
    held = why_a_run_would_stop(fleet, policy, now) if fleet is not None else {}
    records = {r.node: r for r in fleet.records} if fleet is not None else {}
    requests = {}
    for node in needing:
        record = records.get(node)
        if node in held:
            request = SweepRequest(False, held[node])
        elif record is not None and not record.closed:
            request = SweepRequest(True, f"resumes incident {record.incident_id} ({record.state})")
        else:
            request = SweepRequest(True, "")
        requests[node] = request if events else _reporting_only(request)
    return requests


def _reporting_only(would: SweepRequest) -> SweepRequest:
    if would.raised:
        return SweepRequest(False, "this sweep only reports (events off); with events, a run would be requested"
                            + (f": it {would.why}" if would.why else ""))
    return SweepRequest(False, f"this sweep only reports (events off), and a run would only stop: {would.why}")


def _why_resume(record: NodeRecord, policy: RemediationPolicy, now: datetime, breaker_open: bool) -> str:
    if record.closed or record.state.terminal:
        return ""
    quiet = now - record.updated_at
    asked = _pending_approvals(record)
    if asked:
        # A suspended run times the request out itself; only a run the server failed to resume needs help.
        begun = min((h.time for h in record.history if h.step in asked), default=record.updated_at)
        late = now - begun - policy.approval_timeout
        return f"its approval request is {age_text(late)} past its timeout" if late > RECHECK_AFTER else ""
    if record.state is S.READMITTED:
        until = record.probation_until
        return f"its probation ended {age_text(now - until)} ago" if until is not None and now >= until else ""
    if _held_by_breaker(record, breaker_open):
        # Its run halts before any destructive step, but first readmits a node that now looks healthy.
        return (f"held by the open circuit breaker for {age_text(quiet)}: a run readmits the node if it looks "
                "healthy now, else halts again") if quiet > RECHECK_AFTER else ""
    if record.state in _ACTING:
        stalled = _stalled(record, policy, now, held_by_breaker=False)  # held ones returned above
        return f"no progress for {age_text(quiet)} (its run stopped)" if stalled else ""
    return f"waiting for {age_text(quiet)} (budget, evidence or the breaker)" if quiet > RECHECK_AFTER else ""


def render(status: FleetStatus) -> list[str]:
    """The lines `gpumedic remediation status` prints."""
    lines = [f"remediation on {status.gpu_nodes} GPU nodes, {_when(status.now)}", *headline(status)]
    if status.opted_out:
        lines.append(
            f"opted out (label gpumedic.io/managed=false or annotation gpumedic.io/opt-out=true): "
            f"{', '.join(status.opted_out)}"
        )
    for node, why in status.unreadable:
        lines.append(
            f"{node}: its remediation record cannot be read ({why}); remediation leaves the node alone "
            f"until the gpumedic.io/* annotations are fixed or removed"
        )
    if status.needs_a_human:
        lines.append(f"waiting for a human: {', '.join(n.node for n in status.needs_a_human)}")
    if status.stalled:
        lines.append(
            f"stalled (no progress for twice the longest step's deadline): {', '.join(n.node for n in status.stalled)}"
        )
    if not status.nodes:
        lines.append(
            "no open incidents"
            + (f" ({status.closed_hidden} closed; --all shows them)" if status.closed_hidden else "")
        )
        return lines
    header = ("node", "state", "repair", "since", "out", "incident", "waiting for / last")
    rows = [
        (
            n.node,
            n.shown_state,
            n.repair,
            _when(n.since),
            "yes" if n.out_of_service else "no",
            n.incident,
            n.waiting_for,
        )
        for n in status.nodes
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    lines.append("")
    for row in (header, *rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if status.closed_hidden:
        lines.append(f"({status.closed_hidden} closed incidents not shown; --all shows them)")
    return lines


def table_rows(status: FleetStatus) -> list[dict[str, str]]:
    """One row per listed node, for the Prefect UI's `fleet-remediation` table."""
    return [
        {
            "node": n.node,
            "incident": n.incident,
            "state": n.shown_state,
            "repair": n.repair,
            "out_of_service": "yes" if n.out_of_service else "no",
            "waiting_for": n.waiting_for,
            "since": n.since.isoformat(),
        }
        for n in status.nodes
    ]


def to_json(status: FleetStatus) -> dict[str, Any]:
    return {
        "time": status.now.isoformat(),
        "gpu_nodes": status.gpu_nodes,
        "out_of_service": status.out_of_service,
        "budget_limit": status.limit,
        "breaker": {"open": status.breaker.open, "reason": status.breaker.reason,
                    "override": status.breaker_override.to_json() if status.breaker_override else None},
        "opted_out": list(status.opted_out),
        "unreadable": [{"node": node, "error": why} for node, why in status.unreadable],
        "nodes": [
            {
                "node": n.node,
                "state": n.state,
                "repair": n.repair,
                "incident": n.incident,
                "since": n.since.isoformat(),
                "out_of_service": n.out_of_service,
                "needs": n.needs,
                "last": n.last,
                "dry_run": n.dry_run,
                "stalled": n.stalled,
            }
            for n in status.nodes
        ],
    }


def _when(t: datetime) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


