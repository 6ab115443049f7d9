"""GPUs gone silent are set aside, not scored as quiet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gpumedic.domain.forecast import HistoryFrame, SilentGpu, forecast_frame, set_aside_departed, set_aside_silent
from gpumedic.domain.history import Sample

NOW = datetime(2025, 6, 1, tzinfo=UTC)
TWO_DAYS = timedelta(hours=48)


def gauges(node: str, gpu: int, *, until_hours_ago: float, days: int = 10) -> list[Sample]:
    """Hourly temperature of one GPU over `days`, stopping `until_hours_ago` before NOW."""
    return [
        Sample(NOW - timedelta(hours=h), node, gpu, "temperature_c", 60.0)
        for h in range(24 * days, 0, -1)
        if h >= until_hours_ago
    ]


def test_a_gpu_heard_from_lately_is_scored_and_one_silent_for_two_days_is_set_aside() -> None:
    frame = HistoryFrame.from_samples(gauges("n1", 0, until_hours_ago=1) + gauges("n1", 1, until_hours_ago=60))
    live, silent = set_aside_silent(frame, NOW, TWO_DAYS)
    assert live.keys == (("n1", 0),)
    assert len(live) == 24 * 10  # every row of the live GPU, none of the silent one's
    assert silent == [SilentGpu("n1", 1, NOW - timedelta(hours=60))]
    assert silent[0].silent_for(NOW) == timedelta(hours=60)


def test_the_boundary_is_inclusive_a_reading_exactly_silent_after_ago_still_counts() -> None:
    frame = HistoryFrame.from_samples(gauges("n1", 0, until_hours_ago=48))
    assert set_aside_silent(frame, NOW, TWO_DAYS)[1] == []
    assert [s.gpu for s in set_aside_silent(frame, NOW, timedelta(hours=47))[1]] == [0]


def test_a_node_level_series_is_heard_from_while_its_node_is() -> None:
    xid = Sample(NOW - timedelta(days=9), "n1", None, "xid", 79.0)  # the node's only node-level row: old
    alive = HistoryFrame.from_samples([xid, *gauges("n1", 0, until_hours_ago=1)])
    live, silent = set_aside_silent(alive, NOW, TWO_DAYS)
    assert set(live.keys) == {("n1", None), ("n1", 0)} and silent == []

    gone = HistoryFrame.from_samples([xid, *gauges("n1", 0, until_hours_ago=72)])
    live, silent = set_aside_silent(gone, NOW, TWO_DAYS)
    assert live.keys == ()
    # The node-level series goes silent with its node, and is not listed apart from the node's
    # GPUs: the forecaster scores a node's events on its GPUs.
    assert silent == [SilentGpu("n1", 0, NOW - timedelta(hours=72))]

    # A node with no GPU series (a server-level log) is listed by its node-level series alone.
    server = HistoryFrame.from_samples([xid, Sample(NOW - timedelta(hours=72), "n2", None, "ecc_sbe_volatile", 3.0)])
    live, silent = set_aside_silent(server, NOW, TWO_DAYS)
    assert live.keys == ()
    assert silent == [SilentGpu("n1", None, NOW - timedelta(days=9)), SilentGpu("n2", None, NOW - timedelta(hours=72))]


def test_readings_after_now_neither_keep_a_gpu_alive_nor_make_it_known() -> None:
    later = [Sample(NOW + timedelta(hours=1), "n1", 0, "temperature_c", 60.0),
             Sample(NOW + timedelta(hours=1), "n2", 0, "temperature_c", 60.0)]
    frame = HistoryFrame.from_samples(gauges("n1", 0, until_hours_ago=100) + later)
    live, silent = set_aside_silent(frame, NOW, TWO_DAYS)
    assert live.keys == ()
    assert [(s.node, s.gpu) for s in silent] == [("n1", 0)]  # n2 was not known at NOW: not listed


def test_silent_gpus_come_longest_silent_first() -> None:
    frame = HistoryFrame.from_samples(
        gauges("n2", 0, until_hours_ago=50) + gauges("n1", 0, until_hours_ago=200) + gauges("n1", 1, until_hours_ago=90)
    )
    assert [(s.node, s.gpu) for s in set_aside_silent(frame, NOW, TWO_DAYS)[1]] == [("n1", 0), ("n1", 1), ("n2", 0)]


def test_a_silent_gpu_whose_last_state_was_alarming_gets_no_risk_at_all() -> None:
    """Scored anyway, the stale flags of a node taken away would head the riskiest list for a month."""
    last = NOW - timedelta(days=5)
    stale = [Sample(last - timedelta(hours=h), "n9", 0, name, 1.0)
             for h in range(48) for name in ("row_remap_pending", "row_remap_failure", "remap_banks_none")]
    stale += [Sample(last - timedelta(hours=h), "n9", 0, "xid", 64.0) for h in (3, 20)]
    frame = HistoryFrame.from_samples(stale + gauges("n1", 0, until_hours_ago=1))
    scored_anyway = forecast_frame(frame, NOW)
    assert (scored_anyway[0].node, scored_anyway[0].gpu) == ("n9", 0)
    assert scored_anyway[0].risk > 10 * scored_anyway[1].risk
    assert any("Xid 64" in factor for factor in scored_anyway[0].factors)

    live, silent = set_aside_silent(frame, NOW, TWO_DAYS)
    assert [(f.node, f.gpu) for f in forecast_frame(live, NOW)] == [("n1", 0)]
    assert [(s.node, s.gpu, s.last_sample) for s in silent] == [("n9", 0, last)]


def test_restricting_a_frame_keeps_the_kept_keys_rows_in_time_order() -> None:
    frame = HistoryFrame.from_samples(
        [Sample(NOW - timedelta(hours=h), f"n{h % 3}", 0, "power_w", float(h)) for h in range(30)]
    )
    kept = frame.restricted_to(np.array([k[0] != "n1" for k in frame.keys]))
    assert set(kept.keys) == {("n0", 0), ("n2", 0)}
    assert sorted(kept.value.tolist()) == [float(h) for h in range(30) if h % 3 != 1]
    assert np.all(np.diff(kept.time) >= 0)
    assert all(kept.keys[k][0] == f"n{int(v) % 3}" for k, v in zip(kept.key.tolist(), kept.value.tolist(), strict=True))
    with pytest.raises(ValueError, match="one flag per key"):
        frame.restricted_to(np.array([True]))


def test_silent_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_aside_silent(HistoryFrame.empty(), NOW, timedelta(0))


def test_an_empty_history_has_nothing_live_and_nothing_silent() -> None:
    live, silent = set_aside_silent(HistoryFrame.empty(), NOW, TWO_DAYS)
    assert len(live) == 0 and live.keys == () and silent == []


def test_nodes_no_longer_in_the_fleet_are_set_aside_by_name_with_their_node_level_rows() -> None:
    xid = Sample(NOW - timedelta(hours=3), "n2", None, "xid", 79.0)  # an Xid that names no GPU
    frame = HistoryFrame.from_samples(
        gauges("n1", 0, until_hours_ago=1) + gauges("n2", 0, until_hours_ago=1) + gauges("n3", 1, until_hours_ago=1)
        + [xid]
    )
    kept, departed = set_aside_departed(frame, ["n1", "n4"])  # n4: in the fleet, nothing in the store yet
    assert kept.keys == (("n1", 0),) and len(kept) == 24 * 10
    assert departed == ["n2", "n3"]
    everyone, none = set_aside_departed(frame, ["n1", "n2", "n3"])
    assert none == [] and everyone.keys == frame.keys and len(everyone) == len(frame)
