"""Blind spots: how long no sweep could assess a node, and announcing each dark spell once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumedic.domain.observation import (
    Observation,
    newly_unseen,
    observe,
    observe_fleet,
    seen_again,
    unseen,
    without_unannounced,
)
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SIX_HOURS = timedelta(hours=6)


def _sweeps(verdicts: list[Verdict], every: timedelta, after: timedelta = SIX_HOURS) -> tuple[Observation, list[int]]:
    """Sweep one node with these verdicts, `every` apart; the last observation and the sweeps that announced."""
    obs, announced, _ = _sweeps_and_returns(verdicts, every, after)
    return obs, announced


def _sweeps_and_returns(
    verdicts: list[Verdict], every: timedelta, after: timedelta
) -> tuple[Observation, list[int], list[tuple[int, timedelta]]]:
    """... and the sweeps that announced the node seen again, with how long it had been dark."""
    obs: Observation | None = None
    announced, returns = [], []
    for k, verdict in enumerate(verdicts):
        current = observe(obs, "n1", verdict, T0 + k * every)
        before = {"n1": obs} if obs else {}
        if newly_unseen(before, [current], after):
            announced.append(k)
        returns += [(k, was.unseen_for + (now.checked_at - was.checked_at)) for was, now in
                    seen_again(before, [current], after)]
        obs = current
    assert obs is not None
    return obs, announced, returns


def test_a_node_seen_by_the_latest_sweep_is_no_blind_spot_whatever_its_verdict() -> None:
    for verdict in (Verdict.HEALTHY, Verdict.FAILED, Verdict.DEGRADED):
        obs, _ = _sweeps([Verdict.UNKNOWN, verdict], timedelta(hours=8))
        assert not obs.unseen
        assert obs.unseen_for == timedelta(0) and obs.dark_since is None
        assert obs.seen_at == T0 + timedelta(hours=8)


def test_a_dark_node_counts_from_the_last_sweep_that_saw_it() -> None:
    obs, _ = _sweeps([Verdict.HEALTHY, Verdict.UNKNOWN, Verdict.UNKNOWN, Verdict.UNKNOWN], timedelta(hours=1))
    assert obs.unseen and obs.seen_at == T0 and obs.dark_since == T0
    assert obs.unseen_for == timedelta(hours=3)  # not 2 h: nothing is known since the last sighting


def test_a_node_never_seen_counts_from_the_first_sweep_that_looked() -> None:
    obs, _ = _sweeps([Verdict.UNKNOWN] * 5, timedelta(hours=2))
    assert obs.seen_at is None and obs.first_checked_at == T0
    assert obs.unseen_for == timedelta(hours=8)


def test_a_dark_spell_is_announced_once_at_the_first_sweep_past_the_delay() -> None:
    # Quick sweeps every 15 min: seen, then dark for 8 h.
    verdicts = [Verdict.HEALTHY] + [Verdict.UNKNOWN] * 32
    _, announced = _sweeps(verdicts, timedelta(minutes=15))
    assert announced == [24]  # 24 x 15 min = 6 h after the last sighting


def test_a_node_seen_again_and_lost_again_is_announced_again() -> None:
    spell = [Verdict.UNKNOWN] * 10
    _, announced = _sweeps([Verdict.HEALTHY, *spell, Verdict.WATCH, *spell], timedelta(hours=1))
    assert announced == [6, 17]


def test_the_return_of_an_announced_node_is_announced_with_how_long_it_was_dark() -> None:
    spell = [Verdict.UNKNOWN] * 10
    verdicts = [Verdict.HEALTHY, *spell, Verdict.WATCH, Verdict.UNKNOWN, Verdict.UNKNOWN, Verdict.HEALTHY]
    _, announced, returns = _sweeps_and_returns(verdicts, timedelta(hours=1), SIX_HOURS)
    assert announced == [6]
    assert returns == [(11, timedelta(hours=11))]  # the 2 h spell after it was never announced: nor is its end


def test_nightly_sweeps_announce_a_node_dark_since_the_previous_night() -> None:
    _, announced = _sweeps([Verdict.HEALTHY, Verdict.UNKNOWN, Verdict.UNKNOWN], timedelta(hours=24))
    assert announced == [1]


def test_an_older_sweep_recorded_late_does_not_override_a_newer_one() -> None:
    newer = observe(None, "n1", Verdict.HEALTHY, T0 + timedelta(hours=1))
    assert observe(newer, "n1", Verdict.UNKNOWN, T0) is newer
    # ...and its stale view is not announced again.
    dark = Observation("n1", T0 + timedelta(hours=9), T0, T0)
    assert newly_unseen({"n1": dark}, [observe(dark, "n1", Verdict.UNKNOWN, T0 + timedelta(hours=8))], SIX_HOURS) == []


def test_fleet_observations_follow_the_assessments_and_list_the_longest_dark_first() -> None:
    before = {"a": Observation("a", T0, T0, T0), "b": Observation("b", T0, None, T0 - timedelta(days=2))}
    assessments = [NodeAssessment(n, v, Action.NONE, (), ()) for n, v in
                   (("a", Verdict.UNKNOWN), ("b", Verdict.UNKNOWN), ("c", Verdict.HEALTHY), ("d", Verdict.UNKNOWN))]
    now = T0 + timedelta(hours=7)
    current = observe_fleet(before, assessments, now)
    assert [o.node for o in current] == ["a", "b", "c", "d"]
    assert [(o.node, o.unseen_for) for o in unseen(current)] == [
        ("b", timedelta(days=2, hours=7)), ("a", timedelta(hours=7)), ("d", timedelta(0))]
    assert [o.node for o in newly_unseen(before, current, SIX_HOURS)] == ["a"]  # b was already announced


def test_observations_refuse_naive_or_inconsistent_times_and_the_alert_a_zero_delay() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Observation("n1", datetime(2026, 11, 1), None, T0)
    with pytest.raises(ValueError, match="after its last check"):
        Observation("n1", T0, T0 + timedelta(hours=1), T0)
    with pytest.raises(ValueError, match="positive"):
        newly_unseen({}, [], timedelta(0))


@given(
    seen=st.lists(st.booleans(), min_size=1, max_size=60),
    every_min=st.integers(min_value=1, max_value=24 * 60),
    after_min=st.integers(min_value=1, max_value=48 * 60),
)
def test_every_dark_spell_that_reaches_the_delay_is_announced_exactly_once(
    seen: list[bool], every_min: int, after_min: int
) -> None:
    every, after = timedelta(minutes=every_min), timedelta(minutes=after_min)
    _, announced, returns = _sweeps_and_returns([Verdict.HEALTHY if s else Verdict.UNKNOWN for s in seen], every, after)
    # Counted independently: a spell is a run of unseen sweeps; it is dark from the sweep before it
    # (a sighting) or, at the start, from the first sweep.
    expected, expected_returns, start, announced_this_spell = [], [], None, False
    for k, s in enumerate(seen):
        if s:
            if start is not None and announced_this_spell:
                expected_returns.append((k, (k - start) * every))
            start = None
            continue
        if start is None:
            start = k - 1 if k > 0 else 0
            announced_this_spell = False
        if not announced_this_spell and (k - start) * every >= after:
            expected.append(k)
            announced_this_spell = True
    assert announced == expected
    assert returns == expected_returns


def _mixed_sweeps(
    sweeps: list[tuple[bool, bool]], every: timedelta, after: timedelta
) -> tuple[list[int], list[int]]:
    """Sweep one node: each sweep (seen, announces). A sweep that announces records what it saw; one
    that does not records `without_unannounced`. Returns the sweeps that announced the node dark, and back."""
    recorded: dict[str, Observation] = {}
    dark, back = [], []
    for k, (seen, announces) in enumerate(sweeps):
        current = [observe(recorded.get("n1"), "n1", Verdict.HEALTHY if seen else Verdict.UNKNOWN, T0 + k * every)]
        if announces:
            dark += [k for _ in newly_unseen(recorded, current, after)]
            back += [k for _ in seen_again(recorded, current, after)]
            recorded = {o.node: o for o in current}
        else:
            recorded = {o.node: o for o in without_unannounced(recorded, current, after)}
    return dark, back


def test_a_dark_spell_that_reaches_the_delay_in_a_report_only_sweep_is_announced_by_the_next_sweep() -> None:
    hour = timedelta(hours=1)
    # Seen at 0, dark from 1 h; the sweeps at 6 and 7 h report only; the one at 8 h announces.
    sweeps = [(True, True)] + [(False, True)] * 5 + [(False, False)] * 2 + [(False, True)] * 3
    assert _mixed_sweeps(sweeps, hour, SIX_HOURS) == ([8], [])
    # ... and its end, first seen by a report-only sweep, by the next sweep that announces.
    assert _mixed_sweeps([*sweeps, (True, False), (True, False), (True, True), (True, True)], hour, SIX_HOURS) \
        == ([8], [13])


def test_a_report_only_sweep_records_every_other_change() -> None:
    previous = {"n1": observe(None, "n1", Verdict.HEALTHY, T0)}
    darker = [observe(previous["n1"], "n1", Verdict.UNKNOWN, T0 + timedelta(hours=2))]
    assert without_unannounced(previous, darker, SIX_HOURS) == darker  # dark, not yet for the delay
    seen = [observe(previous["n1"], "n1", Verdict.FAILED, T0 + timedelta(hours=2))]
    assert without_unannounced(previous, seen, SIX_HOURS) == seen
    new_node = [observe(None, "n2", Verdict.UNKNOWN, T0)]
    assert without_unannounced(previous, new_node, SIX_HOURS) == new_node


@given(
    sweeps=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60),
    every_min=st.integers(min_value=1, max_value=24 * 60),
    after_min=st.integers(min_value=1, max_value=48 * 60),
)
def test_report_only_sweeps_never_swallow_a_page_or_its_resolution(
    sweeps: list[tuple[bool, bool]], every_min: int, after_min: int
) -> None:
    """Read the announcements as a page that opens (dark) and resolves (back). After every sweep that
    announces: the page is open if the node is dark for the delay or longer (counted from the last
    sweep of any kind that saw it), and resolved if the node is seen. Pages alternate: never opened
    twice, never resolved unopened."""
    every, after = timedelta(minutes=every_min), timedelta(minutes=after_min)
    dark, back = _mixed_sweeps(sweeps, every, after)
    page_open, start = False, None
    for k, (seen, announces) in enumerate(sweeps):
        if k in dark:
            assert not page_open, k
            page_open = True
        if k in back:
            assert page_open, k
            page_open = False
        if seen:
            start = None
        elif start is None:
            start = k - 1 if k > 0 else 0
        if announces:
            assert page_open == (not seen and start is not None and (k - start) * every >= after) or (
                # Seen by a report-only sweep in between: the spells merge, the page stays open.
                page_open and not seen), (k, dark, back)
            if seen:
                assert not page_open
