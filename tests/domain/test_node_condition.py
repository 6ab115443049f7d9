"""The GpuUnhealthy node condition: what each verdict says, and when it is worth writing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumedic.domain.node_condition import (
    CONDITION_TYPE,
    HEARTBEAT_REFRESH,
    MESSAGE_LIMIT,
    NodeCondition,
    condition_for,
    next_condition,
)
from gpumedic.domain.observation import Observation
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

T0 = datetime(2026, 11, 23, 4, 0, 0, 123456, tzinfo=UTC)


def _gpu(index: int, verdict: Verdict = Verdict.HEALTHY, action: Action = Action.NONE, *reasons: str) -> GpuAssessment:
    return GpuAssessment(index, verdict, action, tuple(reasons))


def _node(verdict: Verdict, action: Action, reasons: tuple[str, ...] = (), gpus: int = 8,
          gpu_reasons: dict[int, str] | None = None) -> NodeAssessment:
    gpu_reasons = gpu_reasons or {}
    return NodeAssessment("gpu-node-01", verdict, action, reasons, tuple(
        _gpu(i, verdict if i in gpu_reasons else Verdict.HEALTHY, action if i in gpu_reasons else Action.NONE,
             *([gpu_reasons[i]] if i in gpu_reasons else [])) for i in range(gpus)))


def test_a_healthy_node_is_false_and_says_how_many_gpus_were_assessed() -> None:
    c = condition_for(_node(Verdict.HEALTHY, Action.NONE), None, T0)
    assert (c.type, c.status, c.reason, c.message) == (CONDITION_TYPE, "False", "GpusHealthy", "all 8 GPUs healthy")
    assert c.last_heartbeat == c.last_transition == T0.replace(microsecond=0)  # the API stores whole seconds


def test_a_watched_node_is_not_unhealthy_but_says_why_it_is_watched() -> None:
    c = condition_for(_node(Verdict.WATCH, Action.MONITOR, gpu_reasons={2: "GPU 2: SBE rate 40/h"}), None, T0)
    assert (c.status, c.reason, c.message) == ("False", "GpusWatched", "GPU 2: SBE rate 40/h")


@pytest.mark.parametrize(("verdict", "action", "reason"), [
    (Verdict.FAILED, Action.REPLACE, "ReplaceGpu"),
    (Verdict.FAILED, Action.RESET_GPU, "ResetGpu"),
    (Verdict.DEGRADED, Action.REBOOT, "RebootNode"),
    (Verdict.FAILED, Action.INSPECT, "InspectGpu"),
    (Verdict.DEGRADED, Action.RESTART_APP, "RestartApp"),
    (Verdict.DEGRADED, Action.MONITOR, "GpuDegraded"),
])
def test_a_degraded_or_failed_node_is_true_and_the_reason_names_the_repair(
    verdict: Verdict, action: Action, reason: str
) -> None:
    c = condition_for(_node(verdict, action, ("Xid 79 on 0000:1B:00.0",), gpu_reasons={3: "GPU 3: DBE"}), None, T0)
    assert (c.status, c.reason) == ("True", reason)
    assert c.message == "Xid 79 on 0000:1B:00.0; GPU 3: DBE"  # the node's reasons, then its GPUs'


def test_a_node_no_sweep_could_assess_is_unknown_never_false_and_says_since_when() -> None:
    seen = Observation("gpu-node-01", checked_at=T0, seen_at=T0 - timedelta(hours=30),
                       first_checked_at=T0 - timedelta(days=9))
    c = condition_for(_node(Verdict.UNKNOWN, Action.NONE, ("ssh: connection refused",), gpus=0), seen, T0)
    assert (c.status, c.reason) == ("Unknown", "NotAssessed")
    assert c.message == "not seen since 2026-11-21 22:00 UTC; ssh: connection refused"
    never = Observation("gpu-node-01", checked_at=T0, seen_at=None, first_checked_at=T0 - timedelta(hours=2))
    c = condition_for(_node(Verdict.UNKNOWN, Action.NONE, gpus=0), never, T0)
    assert c.message == "never seen: unknown in every sweep since the first, 2026-11-23 02:00 UTC; no health data"
    long_reasons = tuple(f"ssh: attempt {i}: " + "connection reset by peer " * 10 for i in range(10))
    c = condition_for(_node(Verdict.UNKNOWN, Action.NONE, long_reasons, gpus=0), seen, T0)
    assert c.message.startswith("not seen since 2026-11-21 22:00 UTC; ssh: attempt 0") and "more" in c.message


@given(st.sampled_from(list(Verdict)), st.sampled_from(list(Action)), st.integers(0, 8))
def test_only_a_node_assessed_healthy_or_watched_is_ever_false(verdict: Verdict, action: Action, gpus: int) -> None:
    c = condition_for(_node(verdict, action, ("why",), gpus=gpus), None, T0)
    expected = {Verdict.UNKNOWN: "Unknown", Verdict.HEALTHY: "False", Verdict.WATCH: "False"}.get(verdict, "True")
    assert c.status == expected and c.reason and c.reason.isalnum()


def test_a_long_list_of_reasons_is_cut_at_a_whole_reason_and_says_how_many_were_left_out() -> None:
    reasons = {i: f"GPU {i}: " + "uncorrectable remapped rows growing " * 8 for i in range(8)}
    c = condition_for(_node(Verdict.FAILED, Action.REPLACE, gpu_reasons=reasons), None, T0)
    assert len(c.message) <= MESSAGE_LIMIT
    kept = c.message.split("; … and ")[0].split("; ")
    assert kept == [reasons[i] for i in range(len(kept))] and 0 < len(kept) < 8
    assert c.message.endswith(f"; … and {8 - len(kept)} more")


def test_a_single_reason_longer_than_the_limit_is_cut_with_an_ellipsis() -> None:
    c = condition_for(_node(Verdict.FAILED, Action.REPLACE, ("x" * 5000, "second")), None, T0)
    assert len(c.message) <= MESSAGE_LIMIT and c.message.startswith("xxx") and c.message.endswith("… and 1 more")


def _on_node(status: str, reason: str, message: str, heartbeat: datetime, transition: datetime) -> NodeCondition:
    return NodeCondition(CONDITION_TYPE, status, reason, message, heartbeat, transition)  # type: ignore[arg-type]


def test_the_first_condition_on_a_node_is_written_as_found() -> None:
    found = condition_for(_node(Verdict.HEALTHY, Action.NONE), None, T0)
    assert next_condition(None, found, HEARTBEAT_REFRESH) == found


def test_an_unchanged_condition_is_not_written_again_until_its_heartbeat_is_refresh_old() -> None:
    earlier = T0 - timedelta(minutes=15)
    on_node = _on_node("False", "GpusHealthy", "all 8 GPUs healthy", earlier, T0 - timedelta(days=3))
    found = condition_for(_node(Verdict.HEALTHY, Action.NONE), None, T0)
    assert next_condition(on_node, found, HEARTBEAT_REFRESH) is None
    stale = replace(on_node, last_heartbeat=T0 - HEARTBEAT_REFRESH - timedelta(seconds=1))
    refreshed = next_condition(stale, found, HEARTBEAT_REFRESH)
    assert refreshed is not None and refreshed.last_heartbeat == T0.replace(microsecond=0)
    assert refreshed.last_transition == T0 - timedelta(days=3)  # the status has not changed since


def test_a_new_status_moves_the_transition_time_and_a_new_reason_alone_does_not() -> None:
    since = T0 - timedelta(days=3)
    healthy = _on_node("False", "GpusHealthy", "all 8 GPUs healthy", T0 - timedelta(minutes=15), since)
    failed = condition_for(_node(Verdict.FAILED, Action.REPLACE, gpu_reasons={1: "GPU 1: row remap failure"}),
                           None, T0)
    written = next_condition(healthy, failed, HEARTBEAT_REFRESH)
    assert written is not None and written.last_transition == T0.replace(microsecond=0)
    watched = condition_for(_node(Verdict.WATCH, Action.MONITOR, gpu_reasons={1: "GPU 1: SBE burst"}), None, T0)
    written = next_condition(healthy, watched, HEARTBEAT_REFRESH)
    assert written is not None and written.reason == "GpusWatched" and written.last_transition == since


def test_an_older_sweep_never_overwrites_a_newer_sweeps_condition() -> None:
    newer = _on_node("True", "ReplaceGpu", "GPU 1: row remap failure", T0 + timedelta(minutes=5), T0)
    older = condition_for(_node(Verdict.HEALTHY, Action.NONE), None, T0)
    assert next_condition(newer, older, HEARTBEAT_REFRESH) is None
    same_sweep = replace(newer, last_heartbeat=T0.replace(microsecond=0))  # a retried write of this sweep
    assert next_condition(same_sweep, older, HEARTBEAT_REFRESH) is None


def test_a_condition_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        NodeCondition(CONDITION_TYPE, "False", "GpusHealthy", "", datetime(2026, 11, 23), T0)
