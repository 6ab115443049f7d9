"""Verdicts and recommended actions, and how they combine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from gpumedic.domain.failure_class import FailureClass


class Verdict(StrEnum):
    HEALTHY = "healthy"
    WATCH = "watch"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        # `unknown` ranks between degraded and failed: it must never hide a known
        # failure, and never be mistaken for health.
        return _VERDICT_RANK[self]


_VERDICT_RANK = {
    Verdict.HEALTHY: 0,
    Verdict.WATCH: 1,
    Verdict.DEGRADED: 2,
    Verdict.UNKNOWN: 3,
    Verdict.FAILED: 4,
}


class Action(StrEnum):
    """Recommended action, in increasing order of severity."""

    NONE = "none"
    MONITOR = "monitor"
    RESTART_APP = "restart_app"
    RESET_GPU = "reset_gpu"
    REBOOT = "reboot"
    INSPECT = "inspect"  # out of service, to a human, no automated repair
    REPLACE = "replace"

    @property
    def rank(self) -> int:
        return list(Action).index(self)

    @property
    def needs_remediation(self) -> bool:
        """True when the node must be taken out of service (a remediation workflow)."""
        return self.rank >= Action.RESET_GPU.rank


def worst_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.rank, default=Verdict.HEALTHY)


def worst_action(actions: Iterable[Action]) -> Action:
    return max(actions, key=lambda a: a.rank, default=Action.NONE)


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason behind a verdict: what was seen, and what it implies."""

    verdict: Verdict
    action: Action
    reason: str
    # Run field diagnostics after the action (Xid 48 with 63/64: drain, reset, then diagnose).
    field_diagnostics: bool = False
    # What the evidence says broke, where it says (a DBE: HBM); None for findings that do not
    # name a part (a driver recovery action, a collection error).
    cause: FailureClass | None = None


@dataclass(frozen=True, slots=True)
class GpuAssessment:
    index: int
    verdict: Verdict
    action: Action
    reasons: tuple[str, ...]
    uuid: str | None = None
    serial: str | None = None
    field_diagnostics: bool = False  # see Finding.field_diagnostics
    cause: FailureClass | None = None  # of the findings behind the action; see `assess.likely_cause`


@dataclass(frozen=True, slots=True)
class NodeAssessment:
    node: str
    verdict: Verdict
    action: Action
    reasons: tuple[str, ...]  # node-level reasons (collection, missing GPUs, unattributed Xids)
    gpus: tuple[GpuAssessment, ...]
    field_diagnostics: bool = False  # any GPU or node-level finding asks for field diagnostics
    cause: FailureClass | None = None  # of the node-level findings (missing GPUs, fabric)

    @property
    def needs_remediation(self) -> bool:
        return self.action.needs_remediation

    @property
    def all_reasons(self) -> list[str]:
        """The node's own reasons, then its GPUs'."""
        return list(self.reasons) + [r for g in self.gpus for r in g.reasons]
