"""Each sweep's verdict on a node, as a NodeCondition the cluster can see.

Health data that lives only in gpumedic's reports is invisible where people and tools look at
a node: `kubectl describe node`, dashboards built on kube-state-metrics' node conditions,
schedulers' and autoscalers' node filters. node-problem-detector and NVSentinel publish GPU
problems as node conditions for that reason, and so does every sweep here: one condition,
`GpuUnhealthy`, whose polarity follows the kubelet's own (`MemoryPressure=True` is the bad
state), so that

- `True`: a GPU is degraded or failed; the reason names what repair it needs;
- `False`: every GPU was assessed and none needs more than watching;
- `Unknown`: the sweep could not assess the node. It is never `False`: a node nobody could
  read is not reported healthy.

Kubernetes' condition semantics are kept: `lastTransitionTime` moves only when the status
changes, `lastHeartbeatTime` says when a sweep last confirmed it. An older sweep never
overwrites a newer one's condition (a quick and a full sweep overlapping), and an unchanged
condition is written again only once its heartbeat is `refresh` old, so a 1,000-node fleet
swept every 15 minutes costs the API server a write per node per hour, plus one per change.

Pure: the caller passes the assessment, the node's observation and the condition the API
server has now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from gpumedic.domain.observation import Observation, dark_spell_text
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict

__all__ = [
    "CONDITION_TYPE", "HEARTBEAT_REFRESH", "MESSAGE_LIMIT", "ConditionStatus", "NodeCondition", "condition_for",
    "next_condition",
]

CONDITION_TYPE = "GpuUnhealthy"
# `kubectl describe node` prints the message on one line; past this it is noise, and the sweep
# report has every reason in full.
MESSAGE_LIMIT = 1024
# An unchanged condition is confirmed this often: a heartbeat older than that says the sweeps
# stopped, not that the node is fine.
HEARTBEAT_REFRESH = timedelta(hours=1)

ConditionStatus = Literal["True", "False", "Unknown"]

# CamelCase, as the API conventions ask of a condition's reason: what the node needs.
_REPAIR_REASON = {
    Action.RESTART_APP: "RestartApp",
    Action.RESET_GPU: "ResetGpu",
    Action.REBOOT: "RebootNode",
    Action.INSPECT: "InspectGpu",
    Action.REPLACE: "ReplaceGpu",
}


@dataclass(frozen=True, slots=True)
class NodeCondition:
    """One entry of a Node's `status.conditions`. Times are whole seconds, as the API stores them."""

    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_heartbeat: datetime
    last_transition: datetime

    def __post_init__(self) -> None:
        if self.last_heartbeat.tzinfo is None or self.last_transition.tzinfo is None:
            raise ValueError(f"condition {self.type}: times must be timezone-aware")

    def says_the_same_as(self, other: NodeCondition) -> bool:
        return (self.type, self.status, self.reason, self.message) == (
            other.type, other.status, other.reason, other.message)


def _message(parts: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """`parts` joined with "; ", as many whole ones as fit in `limit`, then how many were left out."""
    text = "; ".join(parts)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    for i, part in enumerate(parts):
        tail = f"; … and {len(parts) - i - 1} more" if i + 1 < len(parts) else ""
        candidate = "; ".join([*kept, part])
        if len(candidate) + len(tail) > limit:
            break
        kept.append(part)
    left = len(parts) - len(kept)
    if not kept:  # even the first reason is too long: cut it
        tail = f"; … and {left - 1} more" if left > 1 else ""
        return parts[0][: limit - len(tail) - 1] + "…" + tail
    return "; ".join(kept) + (f"; … and {left} more" if left else "")


def condition_for(assessment: NodeAssessment, observation: Observation | None, at: datetime) -> NodeCondition:
    """The condition that the sweep at `at` found for the node; its transition time is `at` until
    `next_condition` carries over the one already on the Node."""
    at = at.replace(microsecond=0)
    reasons = assessment.all_reasons
    status: ConditionStatus
    if assessment.verdict is Verdict.UNKNOWN:
        status, reason = "Unknown", "NotAssessed"
        spell = dark_spell_text(observation) if observation is not None else ""
        # How long it has been dark first: a cut message must not lose it to a long reason.
        parts = ([spell] if spell else []) + (reasons or ["no health data"])
    elif assessment.verdict in (Verdict.DEGRADED, Verdict.FAILED):
        status = "True"
        reason = _REPAIR_REASON.get(assessment.action, f"Gpu{assessment.verdict.value.capitalize()}")
        parts = reasons or [f"verdict {assessment.verdict.value}"]
    elif assessment.verdict is Verdict.WATCH:
        status, reason = "False", "GpusWatched"
        parts = reasons or ["verdict watch"]
    else:
        status, reason = "False", "GpusHealthy"
        parts = [f"all {len(assessment.gpus)} GPUs healthy" if assessment.gpus else "no GPU findings"]
    return NodeCondition(CONDITION_TYPE, status, reason, _message(parts), at, at)


def next_condition(previous: NodeCondition | None, found: NodeCondition, refresh: timedelta) -> NodeCondition | None:
    """What to write over `previous` (the Node's condition now) for a sweep that `found` this; None: nothing.

    Nothing when `previous` is as new as this sweep or newer (a later sweep wrote it), or when it
    says the same and its heartbeat is younger than `refresh`.
    """
    if previous is None:
        return found
    if previous.last_heartbeat >= found.last_heartbeat:
        return None
    if previous.status == found.status:
        found = replace(found, last_transition=previous.last_transition)
    if found.says_the_same_as(previous) and found.last_heartbeat - previous.last_heartbeat < refresh:
        return None
    return found
