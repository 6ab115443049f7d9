"""Whether the sweeps can see each node, and since when they have not.

A node the sweep cannot read (unreachable, tools printing garbage, no health data) is
`unknown`, and nothing is done to it: the safe answer for one sweep. Left at that, it is also a
blind spot: a node that stays unknown hides every failure it has, and a fleet report that lists
it once among a dozen `unknown`s does not say it has been dark for three days. So each sweep
keeps, per node, when it was last seen (assessed with any verdict but `unknown`), and a node
dark for longer than the policy's `unseen_alert_after_hours` is announced once per dark spell
and listed in every report until it is seen again; its return is announced too, so whatever was
paged can be resolved.

Pure: the caller passes the sweep's time and the previous observations (the telemetry store's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gpumedic.domain.verdict import NodeAssessment, Verdict

__all__ = [
    "Observation", "dark_spell_text", "newly_unseen", "observe", "observe_fleet", "seen_again", "unseen",
    "without_unannounced",
]


@dataclass(frozen=True, slots=True)
class Observation:
    """What the sweeps know about seeing one node.

    `checked_at`: the latest sweep that looked at it. `seen_at`: the latest sweep that could
    assess it (None: none has, as far as the store remembers). `first_checked_at`: the first
    sweep that looked, which is where a node never seen has been dark since.
    """

    node: str
    checked_at: datetime
    seen_at: datetime | None
    first_checked_at: datetime

    def __post_init__(self) -> None:
        times = [self.checked_at, self.first_checked_at] + ([self.seen_at] if self.seen_at else [])
        if any(t.tzinfo is None for t in times):
            raise ValueError(f"{self.node}: observation times must be timezone-aware")
        if self.first_checked_at > self.checked_at or (self.seen_at and self.seen_at > self.checked_at):
            raise ValueError(f"{self.node}: an observation cannot be seen or first checked after its last check")

    @property
    def unseen(self) -> bool:
        """The latest sweep could not assess the node."""
        return self.seen_at != self.checked_at

    @property
    def dark_since(self) -> datetime | None:
        """Since when nothing is known about the node: its last sighting, else the first look. None: seen."""
        if not self.unseen:
            return None
        return self.seen_at or self.first_checked_at

    @property
    def unseen_for(self) -> timedelta:
        """How long, at the latest sweep, the node had gone unseen (zero when that sweep saw it)."""
        since = self.dark_since
        return timedelta(0) if since is None else self.checked_at - since


def dark_spell_text(observation: Observation) -> str:
    """Since when a node has gone unseen, in words that stay the same for the whole spell ("" when seen)."""
    if not observation.unseen:
        return ""
    if observation.seen_at is None:
        return f"never seen: unknown in every sweep since the first, {observation.first_checked_at:%Y-%m-%d %H:%M} UTC"
    return f"not seen since {observation.seen_at:%Y-%m-%d %H:%M} UTC"


def observe(previous: Observation | None, node: str, verdict: Verdict, at: datetime) -> Observation:
    """The observation after a sweep at `at` assessed `node` as `verdict`.

    A sweep older than the recorded one (a quick and a full sweep overlapping) changes
    nothing: the newest sweep's word stands.
    """
    if previous is not None and at < previous.checked_at:
        return previous
    first = previous.first_checked_at if previous is not None else at
    if verdict is not Verdict.UNKNOWN:
        return Observation(node=node, checked_at=at, seen_at=at, first_checked_at=first)
    return Observation(node=node, checked_at=at, seen_at=previous.seen_at if previous else None, first_checked_at=first)


def observe_fleet(
    previous: Mapping[str, Observation], assessments: Iterable[NodeAssessment], at: datetime
) -> list[Observation]:
    """One observation per assessed node, in the assessments' order."""
    return [observe(previous.get(a.node), a.node, a.verdict, at) for a in assessments]


def unseen(observations: Iterable[Observation]) -> list[Observation]:
    """The nodes the latest sweep could not assess, longest dark first."""
    return sorted((o for o in observations if o.unseen), key=lambda o: (-o.unseen_for.total_seconds(), o.node))


def newly_unseen(
    previous: Mapping[str, Observation], current: Iterable[Observation], after: timedelta
) -> list[Observation]:
    """The nodes whose dark spell reached `after` at this sweep: each spell is announced once.

    A spell reached `after` now when it lasts at least that long and, at the previous
    sweep, had not (or there was no spell: the node was seen, or never checked).
    """
    if after <= timedelta(0):
        raise ValueError("the unseen alert needs a positive delay")
    out = []
    for obs in current:
        before = previous.get(obs.node)
        # `before` already that long dark: announced by the sweep that recorded it (or `obs` is
        # `before` itself, returned unchanged for an older sweep).
        if obs.unseen_for >= after and (before is None or before.unseen_for < after):
            out.append(obs)
    return sorted(out, key=lambda o: (-o.unseen_for.total_seconds(), o.node))


def seen_again(previous: Mapping[str, Observation], current: Iterable[Observation], after: timedelta) -> list[
    tuple[Observation, Observation]
]:
    """(before, now) for each node this sweep saw after an announced dark spell (`before` was dark for
    `after` or more). A spell that ended before any sweep found it that long was never announced, so
    its end is not either."""
    out = []
    for obs in current:
        before = previous.get(obs.node)
        if before is not None and not obs.unseen and before.unseen_for >= after:
            out.append((before, obs))
    return sorted(out, key=lambda pair: pair[1].node)


def without_unannounced(
    previous: Mapping[str, Observation], current: Iterable[Observation], after: timedelta
) -> list[Observation]:
    """What a sweep that announces nothing (`emit_events` off) may record.

    A node whose dark spell reached `after` at this sweep, or that came back from an announced
    spell, keeps its previous record: recording the change would tell the next announcing sweep
    it had been announced already, and the page (or its resolution) would never go out.
    """
    current = list(current)
    held = {o.node for o in newly_unseen(previous, current, after)}
    held |= {now.node for _, now in seen_again(previous, current, after)}
    return [previous.get(o.node, o) if o.node in held else o for o in current]
