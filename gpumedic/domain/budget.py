"""How much of the fleet automation may disrupt at once, and when it must stop.

Two guards sit in front of every remediation step that takes capacity away:

* the **disruption budget** (`budget_allows`): at most K GPU nodes may be held out of
  service by gpumedic at the same time;
* the **circuit breaker** (`circuit_breaker`): when too large a share of the fleet
  turned unhealthy within a short window, the cause is probably shared (a driver
  rollout, a switch, a bad sweep) rather than many independent GPU faults, and
  automation must stop and ask a human.

Both are computed from a `FleetView` that the caller builds from the cluster's real
state each time (the records read back from Node annotations, which nodes are
unschedulable right now, recent unhealthy observations) and never from counters kept
in memory: an orchestrator that restarts, or two flows running side by side, see the
same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # remediation imports this module at runtime; the reverse is types only
    from gpumedic.domain.remediation import NodeRecord


class RemediationPolicy(BaseModel):
    """Limits and timings of automated remediation; one per fleet (from the fleet YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_nodes_out: int = Field(
        default=5,
        ge=0,
        description="Most GPU nodes gpumedic may hold out of service at once. 0 disables automation.",
    )
    max_fraction_out: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description=(
            "Most nodes held out of service at once, as a fraction of the GPU fleet's node "
            "count (rounded down, but never below one node unless this is 0). The budget is the "
            "smaller of this and max_nodes_out."
        ),
    )
    max_remediations_per_window: int = Field(
        default=3,
        ge=1,
        description=(
            "Loop guard: the Nth incident of one node within remediation_window (this one "
            "included, counting earlier incidents that ran an automated repair) skips the "
            "automated repairs and goes straight to replace."
        ),
    )
    remediation_window: timedelta = Field(
        default=timedelta(days=7),
        description="The sliding window of the loop guard.",
    )
    diag_level: int = Field(
        default=2,
        ge=1,
        le=4,
        description="`dcgmi diag -r` level run to prove a repair before readmitting a node.",
    )
    diag_timeout: timedelta = Field(
        default=timedelta(minutes=45),
        description="How long the workflow lets one diagnostic run before reporting it failed.",
    )
    probation: timedelta = Field(
        default=timedelta(minutes=15),
        description=(
            "After readmission the node is on probation: a sweep observed before this much "
            "time has passed cannot end it, and any sweep during it that finds the node needing "
            "remediation escalates to the next rung instead of repeating the same repair."
        ),
    )
    max_evidence_age: timedelta = Field(
        default=timedelta(minutes=15),
        description=(
            "Oldest assessment that may justify a step. Older (or unknown) evidence never "
            "justifies cordon, drain, reset or reboot: the workflow waits for a fresh sweep."
        ),
    )
    breaker_fraction: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description=(
            "The circuit breaker opens when more than this fraction of the GPU fleet's nodes "
            "were observed unhealthy within breaker_window. 1.0 disables it."
        ),
    )
    breaker_window: timedelta = Field(
        default=timedelta(hours=1),
        description="The sliding window of the circuit breaker.",
    )
    breaker_min_nodes: int = Field(
        default=3,
        ge=1,
        description=(
            "The breaker never opens on fewer unhealthy nodes than this, so that one bad node "
            "in a small fleet is repaired rather than treated as a storm."
        ),
    )
    approval_timeout: timedelta = Field(
        default=timedelta(hours=24),
        description=(
            "How long the workflow waits for a human decision. A replace/inspect request that "
            "times out is filed as a ticket marked 'awaiting decision'; a breaker override "
            "that times out halts this node's automation while the breaker stays open."
        ),
    )
    drain_timeout: timedelta = Field(
        default=timedelta(minutes=30),
        description="How long a drain may take before it is reported failed (node left cordoned).",
    )
    reboot_timeout: timedelta = Field(
        default=timedelta(minutes=20),
        description="How long the workflow waits for a rebooted node to come back Ready.",
    )
    cancel_quiet_period: timedelta = Field(
        default=timedelta(hours=24),
        description=(
            "After an operator cancels an incident (uncordons the node by hand), no new incident "
            "is opened for that node for this long, so automation does not fight the operator."
        ),
    )

    @field_validator(
        "remediation_window",
        "diag_timeout",
        "probation",
        "max_evidence_age",
        "breaker_window",
        "approval_timeout",
        "drain_timeout",
        "reboot_timeout",
        "cancel_quiet_period",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value


@dataclass(frozen=True, slots=True)
class UnhealthyObservation:
    """A sweep found `node` needing remediation at `observed_at`."""

    node: str
    observed_at: datetime


# An override is for a known event (a driver rollout, a rack's power work), not a way to switch the breaker off.
MAX_BREAKER_OVERRIDE = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class BreakerOverride:
    """An operator's fleet-wide override of the circuit breaker: remediation goes on in a storm until `until`."""

    until: datetime
    by: str
    reason: str
    set_at: datetime

    def __post_init__(self) -> None:
        if self.until.tzinfo is None or self.set_at.tzinfo is None:
            raise ValueError("a breaker override's times must carry a timezone")
        if not self.by.strip() or not self.reason.strip():
            raise ValueError("a breaker override must say who set it and why")
        if not timedelta(0) < self.until - self.set_at <= MAX_BREAKER_OVERRIDE:
            raise ValueError(
                f"a breaker override lasts more than 0 and at most {_duration(MAX_BREAKER_OVERRIDE)} "
                f"(this one: {self.set_at.isoformat()} to {self.until.isoformat()})"
            )

    def active(self, now: datetime) -> bool:
        return self.set_at <= now < self.until

    def to_json(self) -> dict[str, str]:
        return {"until": self.until.isoformat(), "by": self.by, "reason": self.reason,
                "set_at": self.set_at.isoformat()}

    @classmethod
    def from_json(cls, data: object) -> BreakerOverride:
        """Raises ValueError, naming what is wrong, for anything but what `to_json` writes."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("until", "by", "reason",
                                                                                       "set_at")):
            raise ValueError(f"expected {{until, by, reason, set_at}} as strings, got {data!r:.200}")
        times = {}
        for key in ("until", "set_at"):
            try:
                times[key] = datetime.fromisoformat(data[key])
            except ValueError:
                raise ValueError(f"{key}: {data[key]!r} is not an ISO-8601 time") from None
        return cls(times["until"], data["by"], data["reason"], times["set_at"])


@dataclass(frozen=True, slots=True)
class FleetView:
    """The cluster as it is now, as far as the budget and the breaker need to know.

    Build it afresh before each decision from the cluster's own state: `records` are
    the remediation records read back from Node annotations (one per node at most),
    `unschedulable` the nodes whose `spec.unschedulable` is true right now, `unhealthy`
    the recent sweep observations, `opted_out` the nodes an operator marked
    `gpumedic.io/opt-out`, and `breaker_override` a fleet-wide override of the breaker an
    operator set (`gpumedic remediation breaker-override`).
    """

    gpu_nodes: int  # size of the GPU fleet, in nodes
    records: tuple[NodeRecord, ...] = ()
    unschedulable: frozenset[str] = frozenset()
    unhealthy: tuple[UnhealthyObservation, ...] = ()
    opted_out: frozenset[str] = frozenset()
    breaker_override: BreakerOverride | None = None

    def __post_init__(self) -> None:
        if self.gpu_nodes < 0:
            raise ValueError("gpu_nodes must not be negative")
        nodes = [r.node for r in self.records]
        if len(nodes) != len(set(nodes)):
            raise ValueError("a node has at most one remediation record")

    def record_for(self, node: str) -> NodeRecord | None:
        return next((r for r in self.records if r.node == node), None)


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    allowed: bool
    reason: str
    out_now: int  # nodes gpumedic holds out of service now (see `out_of_service_by_us`)
    limit: int


@dataclass(frozen=True, slots=True)
class BreakerState:
    open: bool
    reason: str
    unhealthy_share: float  # distinct nodes observed unhealthy within the window / fleet nodes
    unhealthy_nodes: int


def _counts_against_budget(record: NodeRecord, fleet: FleetView, *, include_dry_run: bool) -> bool:
    if record.dry_run and not include_dry_run:
        return False
    if not record.holds_node:
        return False
    if not record.cordon_confirmed:
        # A cordon that was decided but not confirmed (in flight, or the process died
        # right after deciding it) counts: two flows must not both squeeze through.
        # A terminal record whose cordon never happened holds nothing.
        return not record.state.terminal
    if not record.cordoned_by_us:
        return False  # someone else's cordon: that capacity was out before we came
    if record.dry_run:
        return True  # a simulated cordon never shows in the cluster; trust the record
    # The cluster's real state wins: a node that was uncordoned by hand (or replaced and
    # returned) is in service whatever our record says.
    return record.node in fleet.unschedulable


def out_of_service_by_us(fleet: FleetView, *, include_dry_run: bool = False) -> frozenset[str]:
    """Nodes gpumedic holds out of service now, as the budget counts them.

    Counted: every record that holds its node (quarantined through awaiting approval, and
    ticketed/failed nodes we left cordoned) whose cordon is in flight, or confirmed by us
    and still in effect in the cluster. Not counted: nodes cordoned by someone else
    before us, nodes on probation (they are in service), dry-run records (unless
    `include_dry_run`, so that a dry run still shows when it would have waited).
    """
    return frozenset(
        r.node for r in fleet.records if _counts_against_budget(r, fleet, include_dry_run=include_dry_run)
    )


def budget_limit(fleet: FleetView, policy: RemediationPolicy) -> int:
    """min(max_nodes_out, floor(max_fraction_out × GPU nodes)), the latter at least 1.

    Measured in nodes, not GPUs: a node is the unit we cordon, drain and reboot, and a
    node's GPUs are lost to users together. The fractional limit never rounds to zero
    (unless the fraction is 0), otherwise a fleet under ten nodes could never be
    repaired at 10%.
    """
    if policy.max_fraction_out <= 0:
        return 0
    # The epsilon keeps 0.29 × 100 from flooring to 28.
    by_fraction = max(1, math.floor(policy.max_fraction_out * fleet.gpu_nodes + 1e-9))
    return min(policy.max_nodes_out, by_fraction)


def budget_allows(
    fleet: FleetView, node: str, policy: RemediationPolicy, *, dry_run: bool = False
) -> BudgetDecision:
    """May `node` be taken out of service now?

    A node that is already counted (this same incident holds it) is allowed without
    taking a second slot. A node that is already unschedulable because someone else
    cordoned it is allowed without a slot: our remediation takes no capacity that was
    not already gone. Otherwise one more node must fit under `budget_limit`.
    """
    limit = budget_limit(fleet, policy)
    counted = out_of_service_by_us(fleet, include_dry_run=dry_run)
    out_now = len(counted)
    if node in counted:
        return BudgetDecision(True, f"{node} is already out of service for this incident", out_now, limit)
    if node in fleet.unschedulable:
        return BudgetDecision(
            True, f"{node} is already cordoned by someone else: no capacity is taken", out_now, limit
        )
    if out_now + 1 > limit:
        return BudgetDecision(
            False,
            f"disruption budget exhausted: {out_now} of {limit} nodes already out of service",
            out_now,
            limit,
        )
    return BudgetDecision(True, f"{out_now} of {limit} nodes out of service; one more fits", out_now, limit)


def circuit_breaker(fleet: FleetView, now: datetime, policy: RemediationPolicy) -> BreakerState:
    """Open when more than `breaker_fraction` of the fleet turned unhealthy within the window.

    Counts distinct nodes with an unhealthy observation in [now - breaker_window, now].
    It needs at least `breaker_min_nodes` of them. An active fleet-wide override
    (`fleet.breaker_override`, while it lasts) keeps it closed, and says who set it and why.
    """
    since = now - policy.breaker_window
    nodes = {o.node for o in fleet.unhealthy if since <= o.observed_at <= now}
    count = len(nodes)
    share = count / fleet.gpu_nodes if fleet.gpu_nodes else 0.0
    tripped = count >= policy.breaker_min_nodes and share > policy.breaker_fraction
    window = _duration(policy.breaker_window)
    if not tripped:
        return BreakerState(
            False,
            f"{count} of {fleet.gpu_nodes} nodes unhealthy within {window} "
            f"(opens above {policy.breaker_fraction:.0%})",
            share,
            count,
        )
    storm = (
        f"{count} of {fleet.gpu_nodes} nodes ({share:.0%}) turned unhealthy within {window}, "
        f"above the {policy.breaker_fraction:.0%} breaker"
    )
    override = fleet.breaker_override
    if override is not None and override.active(now):
        return BreakerState(
            False,
            f"{storm}; overridden by {override.by} until {override.until.isoformat()}: {override.reason}",
            share,
            count,
        )
    return BreakerState(True, storm, share, count)


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
