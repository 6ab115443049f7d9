"""The remediation state machine: from "this node needs repair" to readmitted or ticketed.

The workflow around this module is a thin loop, and everything it needs to decide
lives here:

    record = NodeRecord.from_annotations(node.metadata.annotations)   # I/O
    step   = next_step(record, latest=..., observed_at=..., now=..., policy=..., fleet=...)
    if step is WaitForBudget / WaitForEvidence / WaitForProbation / Halt / Done: wait or stop
    record = begin_step(record, step, now=now);  persist(record)      # "intended"
    outcome = execute(step)                                            # I/O (or simulated_outcome)
    record = apply_outcome(record, step, outcome, now=now);  persist(record)   # "done"

**Crash safety.** Every acting step has a ledger key (`cordon:1`, `drain:1`,
`reset:1`, `bootid:2`, `reboot:2`, `diag:2`, `readmit:1`, `approval:replace`,
`ticket`...). `begin_step` records the key as intended (and moves the state) *before*
the step runs; `apply_outcome` records it done *after*. Both are idempotent, and a key
in `steps_done` is never returned by `next_step` again. After a crash between the two,
`next_step` sees an intended key that is not done and resumes without repeating a
destructive step that may have taken effect:

* cordon, drain, diagnostics, readmit, approval requests: safe to re-issue (they are
  idempotent against the cluster; a drain still needs fresh evidence);
* a GPU reset: never re-issued. Whether it ran cannot be told afterwards, so the
  workflow measures instead (`RunDiagnostics`); a failure then climbs the ladder;
* a reboot: never re-issued blind. `VerifyRebooted(expected_old_boot_id)` asks the
  workflow whether the boot id changed (the id is captured by `CaptureBootId` and
  persisted before the reboot is issued). Unchanged means the reboot never took
  effect, and only then is it issued again (once; a second miss escalates);
* a ticket: re-issued with `dedupe_key=incident_id`: the Jira adapter must look for an
  issue carrying that key before creating one.

**Safety.** Cordon, drain, reset and reboot are only returned when the latest
assessment is fresh (`policy.max_evidence_age`, observed no later than `now`), not
`unknown`, and still needs remediation. Otherwise `next_step` waits
(`WaitForEvidence`). The one exception is finishing a cordon that was already decided,
since a cordon protects and destroys nothing. A new cordon also needs room in the
disruption budget, and cordon, drain, reset and reboot all stop while the circuit
breaker is open (see `gpumedic.domain.budget`).

**The ladder.** `reset_gpu → reboot → replace`. A failed diagnostic after a repair,
a failed reset, or a reboot the node does not come back from, climbs one rung. A
relapse during probation climbs one rung too, instead of repeating the repair. A node
with N incidents within the loop-guard window goes straight to replace. `inspect`
(and anything the automation cannot settle by itself, such as a diagnostic that fails
while the sweep calls the node healthy) is not an automated repair. The node is
quarantined and drained, then waits for a human (`RequestApproval(kind=inspect)`), and
the same approval path as replace follows.

**Approvals.** Approve → `FileTicket` → `ticketed`. Reject → `failed`, with the
decision in the outcome. The node is left cordoned for the human who rejected it, and
no new incident opens while it stays cordoned. Timeout → the ticket is filed anyway,
marked "awaiting decision", so the request is not lost, and the incident ends
`ticketed`.

**Circuit breaker.** When the breaker is open, no cordon, drain, reset or reboot is
returned. The node asks once per incident for a breaker override
(`RequestApproval(kind=breaker)`; it is a gate, not a state). Approve → this incident
goes on (the budget still applies). Reject → `cancelled` if we held nothing yet,
otherwise `failed` with the node left cordoned. Timeout → `Halt` while the breaker
stays open. The incident resumes by itself once the breaker closes, or when an
operator sets a fleet-wide override. Non-destructive steps (diagnostics, readmit,
approvals, tickets, verification) go on while it is open.

**Dry run.** A dry-run record produces the same steps with `dry_run=True`. The workflow
logs each as "would do", does nothing to the node, and feeds back
`simulated_outcome(step)` (everything succeeds; approvals time out). The record walks
the whole path, so its annotations show what would have happened. Dry-run records are
never treated as cancelled by the cluster's real cordon state, and they only count
against the budget of other dry runs.

**Cancellation.** If a node we hold (cordon confirmed) is found schedulable, someone
uncordoned it by hand. `Cancel` removes our taint (never touching the cordon) and ends
the incident `cancelled`. For `cancel_quiet_period` no new incident is opened for the
node.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

from gpumedic.domain.budget import FleetView, RemediationPolicy, budget_allows, circuit_breaker
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict

ANNOTATION_PREFIX = "gpumedic.io/"
SCHEMA_VERSION = "1"
# The NoSchedule taint that marks a node quarantined by gpumedic (besides the cordon).
QUARANTINE_TAINT_KEY = "gpumedic.io/quarantine"
QUARANTINE_TAINT_EFFECT = "NoSchedule"

HISTORY_LIMIT = 40  # entries kept in the record (and its annotation); older ones live in the logs
PAST_INCIDENTS_LIMIT = 20
REASONS_LIMIT = 20
DRY_RUN_TAG = " (dry run)"  # ends every history note of a dry-run incident
KEY_LIMIT = 64  # characters of a ledger key in the history
TEXT_LIMIT = 300  # characters of one reason, note or approval text


# --------------------------------------------------------------------------- states


class RemediationState(StrEnum):
    IN_SERVICE = "in_service"  # incident open, nothing done yet; or closed after probation
    QUARANTINED = "quarantined"  # cordoned + tainted
    DRAINING = "draining"
    DRAINED = "drained"
    RESETTING = "resetting"
    REBOOTING = "rebooting"
    DIAGNOSING = "diagnosing"
    READMITTED = "readmitted"  # back in service, on probation
    AWAITING_APPROVAL = "awaiting_approval"  # replace or inspect, a human decides
    TICKETED = "ticketed"
    FAILED = "failed"  # automation stopped; the node is left as the outcome says
    CANCELLED = "cancelled"  # an operator uncordoned the node, or declined a breaker override

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


S = RemediationState
_TERMINAL = frozenset({S.TICKETED, S.FAILED, S.CANCELLED})
# States in which gpumedic keeps the node out of service and remediation is under way.
HELD_STATES = frozenset(
    {S.QUARANTINED, S.DRAINING, S.DRAINED, S.RESETTING, S.REBOOTING, S.DIAGNOSING, S.AWAITING_APPROVAL}
)

TRANSITIONS: Mapping[RemediationState, frozenset[RemediationState]] = MappingProxyType(
    {
        S.IN_SERVICE: frozenset({S.QUARANTINED, S.CANCELLED}),
        S.QUARANTINED: frozenset({S.DRAINING, S.READMITTED, S.CANCELLED, S.FAILED}),
        S.DRAINING: frozenset({S.DRAINED, S.READMITTED, S.CANCELLED, S.FAILED}),
        S.DRAINED: frozenset(
            {S.RESETTING, S.REBOOTING, S.DIAGNOSING, S.AWAITING_APPROVAL, S.CANCELLED, S.FAILED}
        ),
        S.RESETTING: frozenset({S.DIAGNOSING, S.DRAINED, S.CANCELLED, S.FAILED}),
        S.REBOOTING: frozenset({S.DIAGNOSING, S.DRAINED, S.CANCELLED, S.FAILED}),
        S.DIAGNOSING: frozenset({S.READMITTED, S.DRAINED, S.CANCELLED, S.FAILED}),
        S.READMITTED: frozenset({S.IN_SERVICE, S.QUARANTINED, S.CANCELLED, S.FAILED}),
        S.AWAITING_APPROVAL: frozenset({S.TICKETED, S.FAILED, S.CANCELLED}),
        S.TICKETED: frozenset(),
        S.FAILED: frozenset(),
        S.CANCELLED: frozenset(),
    }
)


class IllegalTransition(ValueError):
    def __init__(self, from_state: RemediationState, to_state: RemediationState) -> None:
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"illegal remediation transition {from_state} -> {to_state}")


class StepNotBegun(ValueError):
    """An outcome was applied for a step whose intent was never recorded (`begin_step`)."""


class CorruptRecord(ValueError):
    """The gpumedic annotations on a node cannot be read back. Stop; never start afresh."""


class Repair(StrEnum):
    """The rung of the escalation ladder an incident is on.

    `reset_gpu → reboot → replace` are the ladder. `inspect` ranks between reboot and
    replace, as `Action` does. It is not an automated repair: the node waits for a human.
    """

    RESET_GPU = "reset_gpu"
    REBOOT = "reboot"
    INSPECT = "inspect"
    REPLACE = "replace"

    @property
    def rank(self) -> int:
        return Action(self.value).rank

    @property
    def automated(self) -> bool:
        return self in (Repair.RESET_GPU, Repair.REBOOT)

    def next_rung(self) -> Repair:
        return Repair.REBOOT if self is Repair.RESET_GPU else Repair.REPLACE

    @classmethod
    def for_action(cls, action: Action) -> Repair | None:
        return cls(action.value) if action.needs_remediation else None


def _higher(a: Repair, b: Repair | None) -> Repair:
    return b if b is not None and b.rank > a.rank else a


class ApprovalKind(StrEnum):
    BREAKER = "breaker"  # override the open circuit breaker for this incident
    REPLACE = "replace"  # file a replacement (RMA) ticket
    INSPECT = "inspect"  # hand the node to a human for inspection (ticket)


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Approval:
    kind: ApprovalKind
    decision: Decision
    approver: str  # "" on timeout
    reason: str
    time: datetime
    rma: str | None = None


@dataclass(frozen=True, slots=True)
class GpuTarget:
    """A GPU an incident acts on. The UUID is its identity: nvidia-smi renumbers the GPUs
    when one falls off the bus, so an index read an hour ago may name another GPU now."""

    index: int  # as numbered when the GPU was chosen; for people
    uuid: str | None = None  # None: the collector reported none, and the GPU cannot be reset safely

    def __str__(self) -> str:
        return f"GPU {self.index}" + (f" ({self.uuid})" if self.uuid else "")

    def encode(self) -> str:
        return f"{self.index}:{self.uuid}" if self.uuid else str(self.index)

    @classmethod
    def decode(cls, text: str) -> GpuTarget:
        index, _, uuid = text.partition(":")
        return cls(int(index), uuid or None)


def merge_targets(*groups: Iterable[GpuTarget]) -> tuple[GpuTarget, ...]:
    """One target per GPU; a later group's reading (the fresher one) wins for the same UUID."""
    by_id: dict[str | int, GpuTarget] = {}
    for group in groups:
        for t in group:
            by_id[t.uuid or t.index] = t
    return tuple(sorted(by_id.values(), key=lambda t: (t.index, t.uuid or "")))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One thing that happened to the incident. `from_state == to_state` for events."""

    time: datetime
    from_state: RemediationState
    to_state: RemediationState
    step: str  # ledger key ("reset:1"), or "open"
    note: str


@dataclass(frozen=True, slots=True)
class IncidentSummary:
    """What the loop guard remembers of an earlier incident of the same node."""

    incident_id: str
    opened_at: datetime
    closed_at: datetime | None
    outcome: str
    repaired: bool  # an automated repair (reset or reboot) was started


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The persisted state of one node's remediation incident (see `to_annotations`)."""

    node: str
    incident_id: str
    state: RemediationState
    requested: Action  # what the assessment that opened the incident asked for
    repair: Repair  # the current rung
    reasons: tuple[str, ...]
    opened_at: datetime
    updated_at: datetime
    attempt: int = 1  # the current repair attempt; climbs with the ladder and on relapse
    hold: int = 1  # how many times this incident took the node out of service (1, 2 after a relapse)
    history: tuple[HistoryEntry, ...] = ()
    steps_intended: frozenset[str] = frozenset()
    steps_done: frozenset[str] = frozenset()  # finished, whatever the result; results as "key:pass"...
    approval: Approval | None = None  # the replace/inspect decision
    breaker_approval: Approval | None = None
    ticket_key: str | None = None
    cordoned_by_us: bool = False  # False: the node was already cordoned; never uncordon it
    readmitted_at: datetime | None = None
    probation_until: datetime | None = None
    gpus: tuple[GpuTarget, ...] = ()  # the GPUs to reset
    dry_run: bool = False
    boot_id_before: str | None = None
    outcome: str | None = None  # set when the incident is closed
    closed_at: datetime | None = None
    past_incidents: tuple[IncidentSummary, ...] = ()

    @property
    def closed(self) -> bool:
        return self.outcome is not None

    @property
    def cordon_key(self) -> str:
        return f"cordon:{self.hold}"

    @property
    def cordon_confirmed(self) -> bool:
        """Our cordon for the current hold took effect."""
        key = self.cordon_key
        return key in self.steps_done and f"{key}:failed" not in self.steps_done

    @property
    def holds_node(self) -> bool:
        """This incident keeps the node out of service (or is about to, or left it so)."""
        if self.state in HELD_STATES or self.state in (S.TICKETED, S.FAILED):
            return self.cordon_key in self.steps_intended
        if self.state is S.READMITTED:  # still cordoned until the uncordon is confirmed
            return f"readmit:{self.hold}" not in self.steps_done
        return False

    @property
    def pending_steps(self) -> frozenset[str]:
        """Steps begun whose outcome was never recorded: what a crash interrupted."""
        return self.steps_intended - self.steps_done

    @property
    def repaired(self) -> bool:
        return any(k.startswith(("reset:", "reboot:")) for k in self.steps_intended)

    def summary(self) -> IncidentSummary:
        return IncidentSummary(
            self.incident_id, self.opened_at, self.closed_at, self.outcome or str(self.state), self.repaired
        )

    def to_annotations(self) -> dict[str, str]:
        return _to_annotations(self)

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> NodeRecord | None:
        return _from_annotations(annotations)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class WaitForBudget:
    reason: str
    out_now: int
    limit: int


@dataclass(frozen=True, slots=True)
class WaitForEvidence:
    """Collect and assess the node again (or wait for the next sweep), then ask again."""

    reason: str


@dataclass(frozen=True, slots=True)
class WaitForProbation:
    reason: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Halt:
    """Automation stops for this node (opted out, breaker open and not overridden)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    outcome: str


@dataclass(frozen=True, slots=True)
class Cordon:
    """Cordon the node and add the quarantine taint. Answer: `Succeeded` or `Failed`.

    `already_cordoned` is what the cluster said when the cordon was decided; it is
    persisted with the intent (`cordoned_by_us`), so a cordon re-issued after a crash
    never mistakes our own cordon for someone else's.
    """

    key: str
    hold: int
    attempt: int
    repair: Repair
    reasons: tuple[str, ...]
    note: str
    already_cordoned: bool = False
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Drain:
    """Evict the node's pods (respecting PDBs). Answer: `Succeeded` or `Failed`."""

    key: str
    timeout: timedelta
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class CaptureBootId:
    """Read the node's current boot id (Node.status.nodeInfo.bootID). Answer: `BootIdRead`."""

    key: str
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class ResetGpus:
    """`nvidia-smi --gpu-reset` on these GPUs, found by UUID. Answer: `Succeeded` or `Failed`."""

    key: str
    gpus: tuple[GpuTarget, ...]
    dry_run: bool = False

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(t.index for t in self.gpus)


@dataclass(frozen=True, slots=True)
class Reboot:
    """Reboot and wait for the node to come back Ready with a new boot id.

    Answer: `Rebooted(new_boot_id)`, `NotRebooted` (boot id unchanged), or `Failed`
    (did not come back within `timeout`).
    """

    key: str
    expected_old_boot_id: str
    timeout: timedelta
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class VerifyRebooted:
    """A reboot was issued but its outcome was never recorded: did it happen?

    Answers as for `Reboot`; must not reboot.
    """

    key: str  # the interrupted reboot's key
    expected_old_boot_id: str
    timeout: timedelta
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class RunDiagnostics:
    """`dcgmi diag -r level`. Answer: `DiagnosticsResult`, or `Failed` when it could not run."""

    key: str
    level: int
    timeout: timedelta
    note: str = ""
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Readmit:
    """Remove the quarantine taint; uncordon only when `uncordon`. Answer: `Succeeded`/`Failed`."""

    key: str
    uncordon: bool
    probation: timedelta
    note: str = ""
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class RequestApproval:
    """Ask a human. Answer: `ApprovalReceived` or `ApprovalTimedOut` (after `timeout`)."""

    key: str
    kind: ApprovalKind
    evidence: tuple[str, ...]
    timeout: timedelta
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class FileTicket:
    """File (or find, by `dedupe_key`) the Jira ticket. Answer: `TicketFiled` or `Failed`."""

    key: str
    kind: ApprovalKind
    summary: str
    evidence: tuple[str, ...]
    awaiting_decision: bool  # the approval timed out: the ticket carries the decision
    dedupe_key: str
    rma: str | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """The node was uncordoned by hand: remove our taint, leave the cordon alone.

    Answer: `Succeeded` or `Failed`.
    """

    key: str
    reason: str
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class CloseIncident:
    """No I/O: close the incident with `outcome`. Answer: `Succeeded`."""

    key: str
    outcome: str
    dry_run: bool = False


ActingStep: TypeAlias = (
    Cordon
    | Drain
    | CaptureBootId
    | ResetGpus
    | Reboot
    | VerifyRebooted
    | RunDiagnostics
    | Readmit
    | RequestApproval
    | FileTicket
    | Cancel
    | CloseIncident
)
Step: TypeAlias = WaitForBudget | WaitForEvidence | WaitForProbation | Halt | Done | ActingStep
ACTING_STEPS = (
    Cordon,
    Drain,
    CaptureBootId,
    ResetGpus,
    Reboot,
    VerifyRebooted,
    RunDiagnostics,
    Readmit,
    RequestApproval,
    FileTicket,
    Cancel,
    CloseIncident,
)
# Steps that disrupt workloads or the node; they need fresh evidence that still needs remediation.
DESTRUCTIVE_STEPS = (Drain, ResetGpus, Reboot)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Succeeded:
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    """The step failed for good (transient errors are the workflow's retries' business)."""

    reason: str


@dataclass(frozen=True, slots=True)
class BootIdRead:
    boot_id: str


@dataclass(frozen=True, slots=True)
class Rebooted:
    boot_id: str  # the new boot id; the node is Ready


@dataclass(frozen=True, slots=True)
class NotRebooted:
    detail: str = ""  # the node is up with the old boot id: the reboot never took effect


@dataclass(frozen=True, slots=True)
class DiagnosticsResult:
    passed: bool
    failing_gpus: tuple[int, ...] = ()
    summary: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalReceived:
    approver: str
    approve: bool
    reason: str = ""
    rma: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalTimedOut:
    pass


@dataclass(frozen=True, slots=True)
class TicketFiled:
    key: str


StepOutcome: TypeAlias = (
    Succeeded
    | Failed
    | BootIdRead
    | Rebooted
    | NotRebooted
    | DiagnosticsResult
    | ApprovalReceived
    | ApprovalTimedOut
    | TicketFiled
)


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the latest assessment allows. `usable`: fresh and not unknown."""

    usable: bool
    needs: bool  # usable and still needs remediation: may justify a destructive step
    reason: str
    action: Action = Action.NONE
    observed_at: datetime | None = None
    reasons: tuple[str, ...] = ()
    gpus: tuple[GpuTarget, ...] = ()

    @property
    def healthy(self) -> bool:
        return self.usable and not self.needs


def check_evidence(
    node: str,
    latest: NodeAssessment | None,
    observed_at: datetime | None,
    *,
    now: datetime,
    policy: RemediationPolicy,
) -> Evidence:
    """Judge the latest assessment of `node` as grounds for acting now."""
    if latest is None:
        return Evidence(False, False, "no assessment of the node")
    if latest.node != node:
        raise ValueError(f"assessment of {latest.node} given for {node}")
    if observed_at is None:
        return Evidence(False, False, "the assessment carries no observation time")
    if observed_at > now:
        return Evidence(False, False, f"the assessment is dated in the future ({observed_at.isoformat()})")
    age = now - observed_at
    if age > policy.max_evidence_age:
        return Evidence(False, False, f"the latest assessment is {age} old (limit {policy.max_evidence_age})")
    reasons = _reasons_of(latest)
    if latest.verdict is Verdict.UNKNOWN:
        return Evidence(
            False,
            False,
            "the latest assessment is unknown: " + ("; ".join(reasons) or "no reason given"),
            latest.action,
            observed_at,
            reasons,
        )
    needs = latest.needs_remediation
    return Evidence(
        True,
        needs,
        f"fresh assessment: {latest.verdict}, {latest.action}",
        latest.action,
        observed_at,
        reasons,
        _failing_gpus(latest),
    )


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    return tuple(_clip(r) for r in reasons)[:REASONS_LIMIT]


def _reasons_of(assessment: NodeAssessment) -> tuple[str, ...]:
    # The assessment already names the GPU in its reasons ("GPU 3: ..."); name it only where it does not.
    gpu_reasons = (r if r.startswith(f"GPU {g.index}:") else f"GPU {g.index}: {r}"
                   for g in assessment.gpus for r in g.reasons)
    return _clip_reasons((*assessment.reasons, *gpu_reasons))


def _failing_gpus(assessment: NodeAssessment) -> tuple[GpuTarget, ...]:
    return merge_targets(GpuTarget(g.index, g.uuid) for g in assessment.gpus if g.action.needs_remediation)


# --------------------------------------------------------------------------- opening


@dataclass(frozen=True, slots=True)
class OpenDecision:
    open: bool
    reason: str


def should_open_incident(
    prior: NodeRecord | None,
    latest: NodeAssessment,
    *,
    observed_at: datetime,
    now: datetime,
    policy: RemediationPolicy,
    fleet: FleetView,
) -> OpenDecision:
    """Does this sweep result start a new incident for its node?"""
    node = latest.node
    if node in fleet.opted_out:
        return OpenDecision(False, f"{node} is opted out of automated remediation")
    ev = check_evidence(node, latest, observed_at, now=now, policy=policy)
    if not ev.usable:
        return OpenDecision(False, ev.reason)
    if not ev.needs:
        return OpenDecision(False, f"{node} does not need remediation ({latest.action})")
    refusal = refused_by_record(prior, now=now, policy=policy, fleet=fleet)
    if refusal:
        return OpenDecision(False, refusal)
    return OpenDecision(True, f"{node} needs {latest.action}")


def refused_by_record(prior: NodeRecord | None, *, now: datetime, policy: RemediationPolicy, fleet: FleetView) -> str:
    """Why the node's record alone keeps a new incident from opening, whatever a sweep finds ("" when it does
    not): an incident still open, a failed or ticketed one still holding the node out of service, one an
    operator cancelled lately."""
    if prior is None:
        return ""
    if not prior.closed:
        return f"{prior.node} already has incident {prior.incident_id} ({prior.state})"
    if prior.state in (S.TICKETED, S.FAILED) and (prior.node in fleet.unschedulable or prior.dry_run):
        return f"{prior.node} is still out of service after incident {prior.incident_id} ({prior.outcome})"
    if (
        prior.state is S.CANCELLED
        and prior.closed_at is not None
        and now - prior.closed_at < policy.cancel_quiet_period
    ):
        return f"incident {prior.incident_id} was cancelled by an operator at {prior.closed_at.isoformat()}"
    return ""


def open_incident(
    assessment: NodeAssessment,
    *,
    incident_id: str,
    now: datetime,
    policy: RemediationPolicy,
    prior: NodeRecord | None = None,
    dry_run: bool = False,
) -> NodeRecord:
    """A new incident in state in_service (nothing done yet).

    `prior` is the node's previous (closed) record, read back from its annotations.
    Its summary joins `past_incidents`, which feeds the loop guard.
    """
    rung = Repair.for_action(assessment.action)
    if rung is None or assessment.verdict is Verdict.UNKNOWN:
        raise ValueError(f"{assessment.node}: {assessment.verdict}/{assessment.action} opens no incident")
    past: tuple[IncidentSummary, ...] = ()
    if prior is not None:
        if prior.node != assessment.node:
            raise ValueError(f"prior record of {prior.node} given for {assessment.node}")
        if not prior.closed:
            raise ValueError(f"{prior.node} already has open incident {prior.incident_id}")
        past = (*prior.past_incidents, prior.summary())[-PAST_INCIDENTS_LIMIT:]
    gpus = _failing_gpus(assessment) or merge_targets(GpuTarget(g.index, g.uuid) for g in assessment.gpus)
    notes: list[str] = []
    if rung is Repair.RESET_GPU and not gpus:
        rung = Repair.REBOOT
        notes.append("no GPU to target: reboot instead of a GPU reset")
    since = now - policy.remediation_window
    recent = [p for p in past if p.repaired and since <= p.opened_at <= now]
    if len(recent) + 1 >= policy.max_remediations_per_window and rung.rank < Repair.REPLACE.rank:
        rung = Repair.REPLACE
        notes.append(
            f"loop guard: remediation {len(recent) + 1} of this node within {policy.remediation_window}"
            " (limit "
            f"{policy.max_remediations_per_window}): straight to replace"
        )
    reasons = _clip_reasons((*_reasons_of(assessment), *notes))
    note = f"incident opened: {assessment.verdict}, {assessment.action} -> {rung}" + (
        DRY_RUN_TAG if dry_run else ""
    )
    return NodeRecord(
        node=assessment.node,
        incident_id=incident_id,
        state=S.IN_SERVICE,
        requested=assessment.action,
        repair=rung,
        reasons=reasons,
        opened_at=now,
        updated_at=now,
        history=(HistoryEntry(now, S.IN_SERVICE, S.IN_SERVICE, "open", _clip(note)),),
        gpus=gpus,
        dry_run=dry_run,
        past_incidents=past,
    )


# The kind of an incident whose evidence named no part: the remediation it started.
UNNAMED_CAUSE_PREFIX = "remediation:"


def incident_kinds(assessment: NodeAssessment, requested: Action) -> dict[int | None, str]:
    """What an incident records per failing GPU (key None: the node as a whole) for the forecaster:
    the failure class its evidence named ("hbm", "fallen_off_bus"), else the remediation the
    incident started ("remediation:reset_gpu"), which a fit files under "other"."""
    started = f"{UNNAMED_CAUSE_PREFIX}{requested}"
    failing: dict[int | None, str] = {
        g.index: str(g.cause or started) for g in assessment.gpus if g.action.needs_remediation
    }
    return failing or {None: str(assessment.cause or started)}


# --------------------------------------------------------------------------- transitions


def _with_entry(record: NodeRecord, entry: HistoryEntry, **changes: Any) -> NodeRecord:
    if record.dry_run and not entry.note.endswith(DRY_RUN_TAG):
        entry = replace(entry, note=_clip(entry.note, TEXT_LIMIT - len(DRY_RUN_TAG)) + DRY_RUN_TAG)
    history = (*record.history, entry)[-HISTORY_LIMIT:]
    return replace(record, history=history, updated_at=entry.time, **changes)


def transition(
    record: NodeRecord, to: RemediationState, *, now: datetime, note: str, step: str = ""
) -> NodeRecord:
    """Move to `to`, or raise `IllegalTransition` if the table does not allow it."""
    if to not in TRANSITIONS[record.state]:
        raise IllegalTransition(record.state, to)
    return _with_entry(
        record, HistoryEntry(now, record.state, to, _clip(step, KEY_LIMIT), _clip(note)), state=to
    )


def _event(record: NodeRecord, *, now: datetime, step: str, note: str, **changes: Any) -> NodeRecord:
    entry = HistoryEntry(now, record.state, record.state, _clip(step, KEY_LIMIT), _clip(note))
    return _with_entry(record, entry, **changes)


def _move(
    record: NodeRecord, to: RemediationState, *, now: datetime, step: str, note: str, **changes: Any
) -> NodeRecord:
    """Change fields, then move to `to` (an event when already there)."""
    record = replace(record, **changes)
    if record.state is to:
        return _event(record, now=now, step=step, note=note)
    return transition(record, to, now=now, note=note, step=step)


def _finish(
    record: NodeRecord, to: RemediationState, *, now: datetime, step: str, outcome: str, **changes: Any
) -> NodeRecord:
    outcome = _clip(outcome)
    return _move(record, to, now=now, step=step, note=outcome, outcome=outcome, closed_at=now, **changes)


# --------------------------------------------------------------------------- next_step


FAILURE_TICKET = "ticket:failure"


def failure_ticket(record: NodeRecord) -> FileTicket | None:
    """A failed incident that still holds the node is a failure that needs a human: one ticket says so.

    Not when a human already decided (a rejected replacement), not for a dry run, and not
    when filing a ticket is what failed.
    """
    r = record
    if r.state is not S.FAILED or r.dry_run or not r.holds_node:
        return None
    if {FAILURE_TICKET, f"{FAILURE_TICKET}:failed", "ticket", "ticket:failed"} & r.steps_done:
        return None
    if r.approval is not None and r.approval.decision is Decision.REJECT:
        return None
    return FileTicket(
        FAILURE_TICKET,
        ApprovalKind.INSPECT,
        f"{r.node}: automated remediation stopped; a human must take over",
        _clip_reasons((*r.reasons, r.outcome or "failed")),
        awaiting_decision=False,
        dedupe_key=r.incident_id,
    )


def next_step(
    record: NodeRecord,
    *,
    latest: NodeAssessment | None,
    observed_at: datetime | None,
    now: datetime,
    policy: RemediationPolicy,
    fleet: FleetView,
) -> Step:
    """The one thing to do next for this incident. Pure; call it again after every outcome.

    `latest` is the node's most recent assessment and `observed_at` when its telemetry
    was collected (`NodeTelemetry.collected_at`). Without a time the evidence is never
    fresh.
    """
    r = record
    if r.closed or r.state.terminal:
        return failure_ticket(r) or Done(r.outcome or str(r.state))
    if r.node in fleet.opted_out:
        return Halt(f"{r.node} is opted out of automated remediation; left as it is ({r.state})")
    if not r.dry_run and r.state in HELD_STATES and r.cordon_confirmed and r.node not in fleet.unschedulable:
        return Cancel(
            "cancel",
            f"{r.node} was uncordoned by someone else while gpumedic held it ({r.state})",
            r.dry_run,
        )
    ev = check_evidence(r.node, latest, observed_at, now=now, policy=policy)
    match r.state:
        case S.IN_SERVICE:
            return _enter(r, ev, now=now, policy=policy, fleet=fleet, relapse=False)
        case S.QUARANTINED:
            if r.cordon_key not in r.steps_done:  # decided, never confirmed: finish it
                return Cordon(
                    r.cordon_key,
                    r.hold,
                    r.attempt,
                    r.repair,
                    r.reasons,
                    "finishing an interrupted cordon",
                    not r.cordoned_by_us,
                    r.dry_run,
                )
            return _toward_drain(r, ev, now=now, policy=policy, fleet=fleet)
        case S.DRAINING:
            return _toward_drain(r, ev, now=now, policy=policy, fleet=fleet)
        case S.DRAINED:
            return _repair(r, ev, now=now, policy=policy, fleet=fleet)
        case S.RESETTING:
            note = (
                "reset done: proving it"
                if f"reset:{r.attempt}" in r.steps_done
                else "an interrupted GPU reset cannot be verified: measuring instead of resetting again"
            )
            return _diagnose(r, policy, note)
        case S.REBOOTING:
            key = f"reboot:{r.attempt}"
            if key in r.steps_done:
                return _diagnose(r, policy, "reboot done: proving it")
            return VerifyRebooted(key, r.boot_id_before or "", policy.reboot_timeout, r.dry_run)
        case S.DIAGNOSING:
            key = f"diag:{r.attempt}"
            if key not in r.steps_done:
                return _diagnose(r, policy, "diagnostics were interrupted: running them again")
            if f"{key}:pass" in r.steps_done:
                return _readmit(r, policy, "diagnostics passed")
            return Halt(f"inconsistent record: {key} finished without a result")
        case S.READMITTED:
            if f"readmit:{r.hold}" not in r.steps_done:
                return _readmit(r, policy, "finishing an interrupted readmission")
            return _probation(r, ev, now=now, policy=policy, fleet=fleet)
        case S.AWAITING_APPROVAL:
            return _after_approval(r, policy)
    return Halt(f"no step defined for state {r.state}")  # pragma: no cover - the match is exhaustive


def _enter(
    r: NodeRecord,
    ev: Evidence,
    *,
    now: datetime,
    policy: RemediationPolicy,
    fleet: FleetView,
    relapse: bool,
) -> Step:
    """Take the node out of service (the first time, or again after a relapse)."""
    if not ev.usable:
        return WaitForEvidence(ev.reason)
    if not ev.needs:
        if relapse:  # cannot happen: _probation only calls this on evidence that needs remediation
            return WaitForProbation("healthy again", r.probation_until or now)
        return CloseIncident(
            "close", "resolved: a fresh sweep found the node healthy before any action", r.dry_run
        )
    if relapse:
        tried = any(k.startswith(f"{_REPAIR_PREFIX.get(r.repair, '-')}:") for k in r.steps_intended)
        base = r.repair.next_rung() if tried else r.repair
        rung = _higher(base, Repair.for_action(ev.action))
        hold, attempt = r.hold + 1, r.attempt + 1
        note = f"relapse during probation ({ev.action}): {r.repair} -> {rung}"
    else:
        rung = _higher(r.repair, Repair.for_action(ev.action))
        hold, attempt = r.hold, r.attempt
        note = f"quarantine for {rung}" + (
            f" (evidence escalated from {r.repair})" if rung != r.repair else ""
        )
    gate = _breaker_gate(r, now=now, policy=policy, fleet=fleet)
    if gate is not None:
        return gate
    decision = budget_allows(fleet, r.node, policy, dry_run=r.dry_run)
    if not decision.allowed:
        return WaitForBudget(decision.reason, decision.out_now, decision.limit)
    already = r.node in fleet.unschedulable
    return Cordon(f"cordon:{hold}", hold, attempt, rung, ev.reasons or r.reasons, note, already, r.dry_run)


_REPAIR_PREFIX = {Repair.RESET_GPU: "reset", Repair.REBOOT: "reboot"}


def _toward_drain(
    r: NodeRecord, ev: Evidence, *, now: datetime, policy: RemediationPolicy, fleet: FleetView
) -> Step:
    if not ev.usable:
        return WaitForEvidence(ev.reason)
    if not ev.needs:
        return _readmit(r, policy, "a fresh sweep found the node healthy before it was drained")
    gate = _breaker_gate(r, now=now, policy=policy, fleet=fleet)
    if gate is not None:
        return gate
    return Drain(f"drain:{r.hold}", policy.drain_timeout, r.dry_run)


def _repair(
    r: NodeRecord, ev: Evidence, *, now: datetime, policy: RemediationPolicy, fleet: FleetView
) -> Step:
    """The node is drained: repair it on the current rung, or hand it to a human."""
    rung = _higher(r.repair, Repair.for_action(ev.action)) if ev.needs else r.repair
    if not rung.automated:
        kind = ApprovalKind(rung.value)
        return RequestApproval(f"approval:{kind}", kind, r.reasons, policy.approval_timeout, r.dry_run)
    if not ev.usable:
        return WaitForEvidence(ev.reason)
    if not ev.needs:
        # The sweep no longer sees a problem: prove it before readmitting (a failure
        # here, with nothing repaired, hands the node to a human: the evidence conflicts).
        return _diagnose(r, policy, "a fresh sweep found the node healthy before the repair: proving it")
    gate = _breaker_gate(r, now=now, policy=policy, fleet=fleet)
    if gate is not None:
        return gate
    k = r.attempt
    targets = merge_targets(r.gpus, ev.gpus)
    if rung is Repair.RESET_GPU and targets:
        return ResetGpus(f"reset:{k}", targets, r.dry_run)
    if f"bootid:{k}" not in r.steps_done:
        return CaptureBootId(f"bootid:{k}", r.dry_run)
    return Reboot(f"reboot:{k}", r.boot_id_before or "", policy.reboot_timeout, r.dry_run)


def _diagnose(r: NodeRecord, policy: RemediationPolicy, note: str) -> RunDiagnostics:
    return RunDiagnostics(f"diag:{r.attempt}", policy.diag_level, policy.diag_timeout, note, r.dry_run)


def _readmit(r: NodeRecord, policy: RemediationPolicy, note: str) -> Readmit:
    return Readmit(f"readmit:{r.hold}", r.cordoned_by_us, policy.probation, note, r.dry_run)


def _probation(
    r: NodeRecord, ev: Evidence, *, now: datetime, policy: RemediationPolicy, fleet: FleetView
) -> Step:
    since = r.readmitted_at or r.updated_at
    until = r.probation_until or since
    if r.dry_run:  # nothing was repaired, so a sweep would only "relapse": the dry run ends here
        return CloseIncident(
            "close", f"dry run complete: would have repaired ({r.repair}) and readmitted", True
        )
    if not ev.usable:
        return WaitForEvidence(f"on probation until {until.isoformat()}: {ev.reason}")
    assert ev.observed_at is not None  # usable evidence always has a time
    if ev.observed_at <= since:
        return WaitForEvidence("on probation: waiting for a sweep taken after readmission")
    if ev.needs:
        return _enter(r, ev, now=now, policy=policy, fleet=fleet, relapse=True)
    if ev.observed_at >= until:
        return CloseIncident("close", f"recovered: healthy after probation ({r.repair})", r.dry_run)
    return WaitForProbation(f"healthy so far; on probation until {until.isoformat()}", until)


def _after_approval(r: NodeRecord, policy: RemediationPolicy) -> Step:
    kind = ApprovalKind.INSPECT if r.repair is Repair.INSPECT else ApprovalKind.REPLACE
    key = f"approval:{kind}"
    if key not in r.steps_done or r.approval is None:
        return RequestApproval(key, kind, r.reasons, policy.approval_timeout, r.dry_run)
    awaiting = r.approval.decision is Decision.TIMEOUT
    what = "replacement" if kind is ApprovalKind.REPLACE else "inspection"
    summary = f"{r.node}: GPU node needs {what}" + (" (awaiting decision)" if awaiting else "")
    return FileTicket("ticket", kind, summary, r.reasons, awaiting, r.incident_id, r.approval.rma, r.dry_run)


_BREAKER_APPROVAL_KEY = f"approval:{ApprovalKind.BREAKER}"


def _breaker_overridden(r: NodeRecord) -> bool:
    return r.breaker_approval is not None and r.breaker_approval.decision is Decision.APPROVE


def breaker_override_refused(r: NodeRecord) -> bool:
    """The override was asked for once and not given: while the breaker stays open, every run halts."""
    return _BREAKER_APPROVAL_KEY in r.steps_done and not _breaker_overridden(r)


def _breaker_gate(
    r: NodeRecord, *, now: datetime, policy: RemediationPolicy, fleet: FleetView
) -> Step | None:
    breaker = circuit_breaker(fleet, now, policy)
    if not breaker.open or _breaker_overridden(r):
        return None
    if not breaker_override_refused(r):
        return RequestApproval(
            _BREAKER_APPROVAL_KEY, ApprovalKind.BREAKER, (breaker.reason,), policy.approval_timeout, r.dry_run
        )
    return Halt(f"circuit breaker open: {breaker.reason}; no override was given for this incident")


# --------------------------------------------------------------------------- begin / apply


def begin_step(record: NodeRecord, step: Step, *, now: datetime) -> NodeRecord:
    """Record `step` as intended (and move the state) before it runs. Idempotent.

    Waits, halts and `Done` change nothing.
    """
    if not isinstance(step, ACTING_STEPS):
        return record
    r = record
    key = step.key
    if key in r.steps_intended or key in r.steps_done:
        return r
    intended = r.steps_intended | {key}
    if isinstance(step, Cordon):
        whose = "; already cordoned by someone else, it stays so" if step.already_cordoned else ""
        return _move(
            r,
            S.QUARANTINED,
            now=now,
            step=key,
            note=step.note + whose,
            steps_intended=intended,
            hold=step.hold,
            attempt=step.attempt,
            repair=step.repair,
            reasons=step.reasons,
            cordoned_by_us=not step.already_cordoned,
            readmitted_at=None,
            probation_until=None,
        )
    if isinstance(step, Drain):
        return _move(r, S.DRAINING, now=now, step=key, note="drain", steps_intended=intended)
    if isinstance(step, ResetGpus):
        return _move(
            r,
            S.RESETTING,
            now=now,
            step=key,
            note="reset " + ", ".join(map(str, step.gpus)),
            steps_intended=intended,
            repair=Repair.RESET_GPU,
            gpus=step.gpus,
        )
    if isinstance(step, Reboot):
        return _move(
            r,
            S.REBOOTING,
            now=now,
            step=key,
            note=f"reboot (boot id {step.expected_old_boot_id})",
            steps_intended=intended,
            repair=Repair.REBOOT,
        )
    if isinstance(step, RunDiagnostics):
        return _move(
            r,
            S.DIAGNOSING,
            now=now,
            step=key,
            note=f"dcgmi diag -r {step.level}: {step.note}",
            steps_intended=intended,
        )
    if isinstance(step, Readmit):
        return _move(
            r, S.READMITTED, now=now, step=key, note=f"readmit: {step.note}", steps_intended=intended
        )
    if isinstance(step, RequestApproval) and step.kind is not ApprovalKind.BREAKER:
        return _move(
            r,
            S.AWAITING_APPROVAL,
            now=now,
            step=key,
            note=f"{step.kind} approval requested",
            steps_intended=intended,
            repair=Repair(step.kind.value),
        )
    if isinstance(step, CaptureBootId):
        note = "capture boot id"
    elif isinstance(step, RequestApproval):
        note = "breaker override requested"
    elif isinstance(step, FileTicket):
        note = f"file ticket ({step.dedupe_key})"
    elif isinstance(step, Cancel):
        note = step.reason
    elif isinstance(step, CloseIncident):
        note = step.outcome
    else:  # VerifyRebooted: its key is the interrupted reboot's, already intended above
        note = "verify reboot"
    return _event(r, now=now, step=key, note=note, steps_intended=intended)


def apply_outcome(record: NodeRecord, step: Step, outcome: StepOutcome, *, now: datetime) -> NodeRecord:
    """Advance the incident with what `step` did. Applying the same outcome twice is a no-op."""
    if not isinstance(step, ACTING_STEPS):
        raise ValueError(f"{type(step).__name__} has no outcome")
    r = record
    key = step.key
    if key in r.steps_done:
        return r
    if _reboot_missed(r, outcome) and key not in r.steps_intended and f"{key}:lost" in r.steps_done:
        return r  # this miss was already recorded
    if key not in r.steps_intended:
        raise StepNotBegun(f"{key}: begin_step was never recorded for this step")

    def done(*keys: str) -> frozenset[str]:
        return r.steps_done | {key, *keys}

    def wrong() -> ValueError:
        return ValueError(f"{type(outcome).__name__} does not answer {type(step).__name__}")

    if isinstance(step, Cordon):
        if isinstance(outcome, Succeeded):
            note = "cordoned and tainted" if r.cordoned_by_us else "tainted (cordoned by someone else)"
            return _event(r, now=now, step=key, note=note, steps_done=done())
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: cordon failed ({outcome.reason}); the node may be partly quarantined",
            )
        raise wrong()

    if isinstance(step, Drain):
        if isinstance(outcome, Succeeded):
            return _move(r, S.DRAINED, now=now, step=key, note=outcome.detail or "drained", steps_done=done())
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: drain did not complete ({outcome.reason}); node left cordoned",
            )
        raise wrong()

    if isinstance(step, CaptureBootId):
        if isinstance(outcome, BootIdRead):
            return _event(
                r,
                now=now,
                step=key,
                note=f"boot id {outcome.boot_id}",
                steps_done=done(),
                boot_id_before=outcome.boot_id,
            )
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: could not read the boot id ({outcome.reason}); will not reboot blind",
            )
        raise wrong()

    if isinstance(step, ResetGpus):
        if isinstance(outcome, Succeeded):
            return _event(r, now=now, step=key, note=outcome.detail or "GPUs reset", steps_done=done())
        if isinstance(outcome, Failed):
            return _climb(
                r,
                key,
                done(f"{key}:failed"),
                now=now,
                to=Repair.REBOOT,
                note=f"GPU reset failed ({outcome.reason})",
            )
        raise wrong()

    if isinstance(step, Reboot | VerifyRebooted):
        if isinstance(outcome, Rebooted) and not _reboot_missed(r, outcome):
            return _event(
                r,
                now=now,
                step=key,
                note=f"rebooted: boot id {r.boot_id_before} -> {outcome.boot_id}",
                steps_done=done(),
            )
        if isinstance(outcome, Rebooted | NotRebooted):
            detail = outcome.detail if isinstance(outcome, NotRebooted) else "boot id unchanged"
            if f"{key}:lost" not in r.steps_done:
                return _move(
                    r,
                    S.DRAINED,
                    now=now,
                    step=key,
                    note=f"the reboot did not take effect ({detail}): it may be issued once more",
                    steps_intended=r.steps_intended - {key},
                    steps_done=r.steps_done | {f"{key}:lost"},
                )
            outcome = Failed(f"the reboot did not take effect twice ({detail})")
        if isinstance(outcome, Failed):
            return _climb(
                r,
                key,
                done(f"{key}:failed"),
                now=now,
                to=Repair.REPLACE,
                note=f"reboot failed ({outcome.reason})",
            )
        raise wrong()

    if isinstance(step, RunDiagnostics):
        if isinstance(outcome, DiagnosticsResult):
            summary = outcome.summary or ("passed" if outcome.passed else "failed")
            if outcome.passed:
                return _event(
                    r,
                    now=now,
                    step=key,
                    note=f"diagnostics passed: {summary}",
                    steps_done=done(f"{key}:pass"),
                )
            # dcgmi names GPUs by today's index only: no UUID is guessed from an older numbering.
            gpus = merge_targets(GpuTarget(i) for i in outcome.failing_gpus) or r.gpus
            reason = f"diagnostics failed: {summary}"
            if _repaired_in_attempt(r):
                return _climb(
                    r, key, done(f"{key}:fail"), now=now, to=r.repair.next_rung(), note=reason, gpus=gpus
                )
            conflict = f"{reason}, while the latest sweep found the node healthy"
            return _climb(r, key, done(f"{key}:fail"), now=now, to=Repair.INSPECT, note=conflict, gpus=gpus)
        if isinstance(outcome, Failed):
            return _climb(
                r,
                key,
                done(f"{key}:failed"),
                now=now,
                to=Repair.INSPECT,
                note=f"diagnostics could not run ({outcome.reason})",
            )
        raise wrong()

    if isinstance(step, Readmit):
        if isinstance(outcome, Succeeded):
            until = now + step.probation
            return _event(
                r,
                now=now,
                step=key,
                note=f"readmitted; on probation until {until.isoformat()}",
                steps_done=done(),
                readmitted_at=now,
                probation_until=until,
            )
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: readmission failed ({outcome.reason}); the node may still be cordoned",
            )
        raise wrong()

    if isinstance(step, RequestApproval):
        if isinstance(outcome, ApprovalReceived):
            decision = Decision.APPROVE if outcome.approve else Decision.REJECT
            approval = Approval(
                step.kind,
                decision,
                _clip(outcome.approver),
                _clip(outcome.reason),
                now,
                _clip(outcome.rma) if outcome.rma else None,
            )
        elif isinstance(outcome, ApprovalTimedOut):
            approval = Approval(step.kind, Decision.TIMEOUT, "", f"no decision within {step.timeout}", now)
        else:
            raise wrong()
        marks = done(f"{key}:{approval.decision}")
        by = f"{approval.approver}: {approval.reason}" if approval.approver else approval.reason
        if step.kind is ApprovalKind.BREAKER:
            if approval.decision is Decision.REJECT:
                held = r.state in HELD_STATES
                return _finish(
                    r,
                    S.FAILED if held else S.CANCELLED,
                    now=now,
                    step=key,
                    steps_done=marks,
                    breaker_approval=approval,
                    outcome=f"{'failed' if held else 'cancelled'}: breaker override rejected by {by}"
                    + ("; node left quarantined" if held else ""),
                )
            return _event(
                r,
                now=now,
                step=key,
                note=f"breaker override {approval.decision} ({by})",
                steps_done=marks,
                breaker_approval=approval,
            )
        if approval.decision is Decision.REJECT:
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=marks,
                approval=approval,
                outcome=f"failed: {step.kind} rejected by {by}; node left quarantined for a human",
            )
        return _event(
            r,
            now=now,
            step=key,
            note=f"{step.kind} {approval.decision} ({by})",
            steps_done=marks,
            approval=approval,
        )

    if isinstance(step, FileTicket) and r.state is S.FAILED:
        if isinstance(outcome, TicketFiled):
            return _event(r, now=now, step=key, note=f"ticket {outcome.key} filed for a human",
                          steps_done=done(), ticket_key=outcome.key,
                          outcome=_clip(f"{r.outcome}; ticket {outcome.key} filed for a human"))
        if isinstance(outcome, Failed):
            return _event(r, now=now, step=key, note=f"could not file a ticket: {outcome.reason}",
                          steps_done=done(f"{key}:failed"))
        raise wrong()

    if isinstance(step, FileTicket):
        if isinstance(outcome, TicketFiled):
            what = "awaiting decision" if step.awaiting_decision else "approved"
            return _finish(
                r,
                S.TICKETED,
                now=now,
                step=key,
                steps_done=done(),
                ticket_key=outcome.key,
                outcome=f"ticketed: {outcome.key} ({step.kind}, {what})",
            )
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: could not file the ticket ({outcome.reason}); node left quarantined",
            )
        raise wrong()

    if isinstance(step, Cancel):
        if isinstance(outcome, Succeeded):
            return _finish(
                r, S.CANCELLED, now=now, step=key, steps_done=done(), outcome=f"cancelled: {step.reason}"
            )
        if isinstance(outcome, Failed):
            return _finish(
                r,
                S.FAILED,
                now=now,
                step=key,
                steps_done=done(f"{key}:failed"),
                outcome=f"failed: {step.reason}, and our taint could not be removed ({outcome.reason})",
            )
        raise wrong()

    # CloseIncident
    if not isinstance(outcome, Succeeded):
        raise wrong()
    return _finish(r, S.IN_SERVICE, now=now, step=key, steps_done=done(), outcome=step.outcome)


def _reboot_missed(r: NodeRecord, outcome: StepOutcome) -> bool:
    """The node is up with the boot id it had before: the reboot never took effect."""
    return isinstance(outcome, NotRebooted) or (
        isinstance(outcome, Rebooted) and outcome.boot_id == r.boot_id_before
    )


def _repaired_in_attempt(r: NodeRecord) -> bool:
    return f"reset:{r.attempt}" in r.steps_intended or f"reboot:{r.attempt}" in r.steps_intended


def _climb(
    r: NodeRecord,
    key: str,
    steps_done: frozenset[str],
    *,
    now: datetime,
    to: Repair,
    note: str,
    gpus: tuple[GpuTarget, ...] | None = None,
) -> NodeRecord:
    """Escalate to rung `to` for a new attempt; the node stays drained."""
    return _move(
        r,
        S.DRAINED,
        now=now,
        step=key,
        note=f"{note}: {r.repair} -> {to}",
        steps_done=steps_done,
        repair=to,
        attempt=r.attempt + 1,
        gpus=r.gpus if gpus is None else gpus,
    )


def approval_requested_at(record: NodeRecord, step: RequestApproval) -> datetime:
    """When the pending approval was asked for: its intent in the history."""
    return next((h.time for h in reversed(record.history) if h.step == step.key), record.updated_at)


def approval_deadline(record: NodeRecord, step: RequestApproval, timeout: timedelta | None = None) -> datetime:
    """When the pending approval times out: asked-for time plus `timeout` (default: the step's).

    Counted from the request, not from the run that waits: a run resumed a day later does not
    grant the human another full timeout.
    """
    return approval_requested_at(record, step) + (step.timeout if timeout is None else timeout)


def simulated_outcome(step: ActingStep) -> StepOutcome:
    """The outcome a dry run feeds back: everything succeeds, approvals time out."""
    if isinstance(step, CaptureBootId):
        return BootIdRead("dry-run")
    if isinstance(step, Reboot | VerifyRebooted):
        return Rebooted(f"{step.expected_old_boot_id}+dry-run")
    if isinstance(step, RunDiagnostics):
        return DiagnosticsResult(True, (), "dry run: diagnostics not run")
    if isinstance(step, RequestApproval):
        return ApprovalTimedOut()
    if isinstance(step, FileTicket):
        return TicketFiled(f"DRY-RUN-{step.dedupe_key}")
    return Succeeded("dry run")


# --------------------------------------------------------------------------- annotations


class _Key:
    VERSION = ANNOTATION_PREFIX + "version"
    NODE = ANNOTATION_PREFIX + "node"
    STATE = ANNOTATION_PREFIX + "state"
    INCIDENT = ANNOTATION_PREFIX + "incident"
    REQUESTED = ANNOTATION_PREFIX + "requested"
    REPAIR = ANNOTATION_PREFIX + "repair"
    ATTEMPT = ANNOTATION_PREFIX + "attempt"
    HOLD = ANNOTATION_PREFIX + "hold"
    STEP = ANNOTATION_PREFIX + "step"  # written for people; ignored on read
    REASONS = ANNOTATION_PREFIX + "reasons"
    OPENED_AT = ANNOTATION_PREFIX + "opened-at"
    UPDATED_AT = ANNOTATION_PREFIX + "updated-at"
    STEPS_INTENDED = ANNOTATION_PREFIX + "steps-intended"
    STEPS_DONE = ANNOTATION_PREFIX + "steps-done"
    HISTORY = ANNOTATION_PREFIX + "history"
    APPROVAL = ANNOTATION_PREFIX + "approval"
    BREAKER_APPROVAL = ANNOTATION_PREFIX + "breaker-approval"
    TICKET = ANNOTATION_PREFIX + "ticket"
    CORDONED_BY_US = ANNOTATION_PREFIX + "cordoned-by-us"
    READMITTED_AT = ANNOTATION_PREFIX + "readmitted-at"
    PROBATION_UNTIL = ANNOTATION_PREFIX + "probation-until"
    GPUS = ANNOTATION_PREFIX + "gpus"
    DRY_RUN = ANNOTATION_PREFIX + "dry-run"
    BOOT_ID_BEFORE = ANNOTATION_PREFIX + "boot-id-before"
    OUTCOME = ANNOTATION_PREFIX + "outcome"
    CLOSED_AT = ANNOTATION_PREFIX + "closed-at"
    PAST_INCIDENTS = ANNOTATION_PREFIX + "past-incidents"


# Every key `to_annotations` writes. All are always written ("" for none), so a merge
# patch of the whole dict never leaves a previous incident's value behind.
ANNOTATION_KEYS: tuple[str, ...] = tuple(
    v for k, v in vars(_Key).items() if not k.startswith("_") and isinstance(v, str)
)


def _ts(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _approval_json(a: Approval | None) -> str:
    if a is None:
        return ""
    return _json(
        {
            "kind": a.kind,
            "decision": a.decision,
            "approver": a.approver,
            "reason": a.reason,
            "time": a.time.isoformat(),
            "rma": a.rma,
        }
    )


def _to_annotations(r: NodeRecord) -> dict[str, str]:
    history = [
        {"t": h.time.isoformat(), "from": h.from_state, "to": h.to_state, "step": h.step, "note": h.note}
        for h in r.history[-HISTORY_LIMIT:]
    ]
    past = [
        {
            "id": p.incident_id,
            "opened": p.opened_at.isoformat(),
            "closed": _ts(p.closed_at),
            "outcome": p.outcome,
            "repaired": p.repaired,
        }
        for p in r.past_incidents[-PAST_INCIDENTS_LIMIT:]
    ]
    return {
        _Key.VERSION: SCHEMA_VERSION,
        _Key.NODE: r.node,
        _Key.STATE: str(r.state),
        _Key.INCIDENT: r.incident_id,
        _Key.REQUESTED: str(r.requested),
        _Key.REPAIR: str(r.repair),
        _Key.ATTEMPT: str(r.attempt),
        _Key.HOLD: str(r.hold),
        _Key.STEP: ",".join(sorted(r.pending_steps)),
        _Key.REASONS: _json(list(r.reasons)),
        _Key.OPENED_AT: _ts(r.opened_at),
        _Key.UPDATED_AT: _ts(r.updated_at),
        _Key.STEPS_INTENDED: _json(sorted(r.steps_intended)),
        _Key.STEPS_DONE: _json(sorted(r.steps_done)),
        _Key.HISTORY: _json(history),
        _Key.APPROVAL: _approval_json(r.approval),
        _Key.BREAKER_APPROVAL: _approval_json(r.breaker_approval),
        _Key.TICKET: r.ticket_key or "",
        _Key.CORDONED_BY_US: "true" if r.cordoned_by_us else "false",
        _Key.READMITTED_AT: _ts(r.readmitted_at),
        _Key.PROBATION_UNTIL: _ts(r.probation_until),
        _Key.GPUS: ",".join(t.encode() for t in r.gpus),
        _Key.DRY_RUN: "true" if r.dry_run else "false",
        _Key.BOOT_ID_BEFORE: r.boot_id_before or "",
        _Key.OUTCOME: r.outcome or "",
        _Key.CLOSED_AT: _ts(r.closed_at),
        _Key.PAST_INCIDENTS: _json(past),
    }


class _Reader:
    def __init__(self, annotations: Mapping[str, str]) -> None:
        self.a = annotations

    def text(self, key: str) -> str:
        try:
            value = self.a[key]
        except KeyError:
            raise CorruptRecord(f"{key} is missing") from None
        if not isinstance(value, str):
            raise CorruptRecord(f"{key} is not a string")
        return value

    def optional(self, key: str) -> str | None:
        return self.text(key) or None

    def time(self, key: str) -> datetime:
        return _parse_time(key, self.text(key))

    def optional_time(self, key: str) -> datetime | None:
        value = self.text(key)
        return _parse_time(key, value) if value else None

    def boolean(self, key: str) -> bool:
        value = self.text(key)
        if value not in ("true", "false"):
            raise CorruptRecord(f"{key}={value!r} is not true/false")
        return value == "true"

    def integer(self, key: str) -> int:
        value = self.text(key)
        if not value.isdigit():
            raise CorruptRecord(f"{key}={value!r} is not a count")
        return int(value)

    def json(self, key: str) -> Any:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as err:
            raise CorruptRecord(f"{key} is not JSON: {err}") from None


def _parse_time(key: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CorruptRecord(f"{key}={value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise CorruptRecord(f"{key}={value!r} has no time zone")
    return parsed


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptRecord(f"{key} is not a list of strings")
    return value


def _approval_from(key: str, raw: str) -> Approval | None:
    if not raw:
        return None
    try:
        d = json.loads(raw)
        return Approval(
            ApprovalKind(d["kind"]),
            Decision(d["decision"]),
            str(d["approver"]),
            str(d["reason"]),
            _parse_time(key, d["time"]),
            None if d["rma"] is None else str(d["rma"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptRecord(f"{key} is not an approval: {err}") from None


def _from_annotations(annotations: Mapping[str, str]) -> NodeRecord | None:
    """The record stored on a node, or None when there is none. Raises `CorruptRecord`."""
    if _Key.STATE not in annotations:
        return None
    a = _Reader(annotations)
    version = a.text(_Key.VERSION)
    if version != SCHEMA_VERSION:
        raise CorruptRecord(f"{_Key.VERSION}={version!r}: this gpumedic reads version {SCHEMA_VERSION}")
    try:
        history = tuple(
            HistoryEntry(
                _parse_time(_Key.HISTORY, h["t"]), S(h["from"]), S(h["to"]), str(h["step"]), str(h["note"])
            )
            for h in a.json(_Key.HISTORY)
        )
        past = tuple(
            IncidentSummary(
                str(p["id"]),
                _parse_time(_Key.PAST_INCIDENTS, p["opened"]),
                _parse_time(_Key.PAST_INCIDENTS, p["closed"]) if p["closed"] else None,
                str(p["outcome"]),
                bool(p["repaired"]),
            )
            for p in a.json(_Key.PAST_INCIDENTS)
        )
        state = S(a.text(_Key.STATE))
        requested = Action(a.text(_Key.REQUESTED))
        repair = Repair(a.text(_Key.REPAIR))
        gpus_raw = a.text(_Key.GPUS)
        gpus = tuple(GpuTarget.decode(t) for t in gpus_raw.split(",")) if gpus_raw else ()
    except CorruptRecord:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptRecord(f"unreadable gpumedic annotations: {err!r}") from None
    return NodeRecord(
        node=a.text(_Key.NODE),
        incident_id=a.text(_Key.INCIDENT),
        state=state,
        requested=requested,
        repair=repair,
        reasons=tuple(_strings(_Key.REASONS, a.json(_Key.REASONS))),
        opened_at=a.time(_Key.OPENED_AT),
        updated_at=a.time(_Key.UPDATED_AT),
        attempt=a.integer(_Key.ATTEMPT),
        hold=a.integer(_Key.HOLD),
        history=history,
        steps_intended=frozenset(_strings(_Key.STEPS_INTENDED, a.json(_Key.STEPS_INTENDED))),
        steps_done=frozenset(_strings(_Key.STEPS_DONE, a.json(_Key.STEPS_DONE))),
        approval=_approval_from(_Key.APPROVAL, a.text(_Key.APPROVAL)),
        breaker_approval=_approval_from(_Key.BREAKER_APPROVAL, a.text(_Key.BREAKER_APPROVAL)),
        ticket_key=a.optional(_Key.TICKET),
        cordoned_by_us=a.boolean(_Key.CORDONED_BY_US),
        readmitted_at=a.optional_time(_Key.READMITTED_AT),
        probation_until=a.optional_time(_Key.PROBATION_UNTIL),
        gpus=gpus,
        dry_run=a.boolean(_Key.DRY_RUN),
        boot_id_before=a.optional(_Key.BOOT_ID_BEFORE),
        outcome=a.optional(_Key.OUTCOME),
        closed_at=a.optional_time(_Key.CLOSED_AT),
        past_incidents=past,
    )
