"""A quick sweep keeps the last full sweep's word on what it cannot read; rates of full-only
counters are taken between full sweeps."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from gpumedic.domain.assess import assess_node
from gpumedic.domain.deep_readings import (
    CARRIED_FIELDS,
    full_baseline,
    quick_sweep_note,
    readings_to_carry,
    without_full_readings,
)
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, RowRemapBanks
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict
from tests.domain.test_assess import NOW, POLICY, gpu, gpu_result, node

FULL_AT = NOW - timedelta(hours=7)
NOTE = f"(as read by the full sweep at {FULL_AT:%Y-%m-%d %H:%M} UTC)"


def quick_gpu(index: int, **changes: object) -> GpuTelemetry:
    """What a quick sweep reads of a healthy GPU: no `nvidia-smi -q`, no NVLink error counters."""
    full = gpu(index)
    read = dataclasses.replace(
        full, temp_slowdown_c=None, temp_shutdown_c=None, sram_threshold_exceeded=None, remap_banks=None,
        pcie_replay=None, nvlinks=tuple(NvLinkState(link=link.link, active=link.active) for link in full.nvlinks),
    )
    return dataclasses.replace(read, **changes)


def quick_node(*changed: GpuTelemetry, at: object = NOW) -> NodeTelemetry:
    gpus = {i: quick_gpu(i) for i in range(8)} | {g.index: g for g in changed}
    return dataclasses.replace(node(at=at), gpus=tuple(gpus[i] for i in sorted(gpus)), depth="quick")  # type: ignore[arg-type]


def full_node(*changed: GpuTelemetry, at: object = FULL_AT) -> NodeTelemetry:
    return node(*changed, at=at)  # type: ignore[arg-type]


def verdict_of(result: NodeAssessment, index: int) -> tuple[Verdict, Action, tuple[str, ...]]:
    g = gpu_result(result, index)
    return g.verdict, g.action, g.reasons


def test_a_quick_sweep_alone_cannot_see_an_sram_replacement_criterion() -> None:
    """The gap this closes: judged on its own, the quick sweep reads a condemned GPU as healthy."""
    assert assess_node(quick_node(), POLICY).verdict is Verdict.HEALTHY


def test_the_full_sweeps_sram_flag_stands_through_quick_sweeps_and_says_when_it_was_read() -> None:
    last_full = full_node(gpu(3, sram_threshold_exceeded=True))
    result = assess_node(quick_node(), POLICY, last_full=last_full)
    verdict, action, reasons = verdict_of(result, 3)
    assert (verdict, action) == (Verdict.FAILED, Action.REPLACE)
    assert reasons == (f"GPU 3: SRAM uncorrectable errors exceed the field diagnostic's threshold "
                       f"(SRAM Threshold Exceeded: Yes): replacement criterion {NOTE}",)
    assert all(verdict_of(result, i)[0] is Verdict.HEALTHY for i in range(8) if i != 3)


def test_exhausted_spare_rows_stand_through_quick_sweeps() -> None:
    banks = RowRemapBanks(max=2500, high=50, partial=5, low=2, none=3)
    result = assess_node(quick_node(), POLICY, last_full=full_node(gpu(5, remap_banks=banks)))
    verdict, action, reasons = verdict_of(result, 5)
    assert (verdict, action) == (Verdict.FAILED, Action.REPLACE)
    assert reasons[0] == f"GPU 5: 3 banks have no spare rows left {NOTE}"


def test_the_full_sweeps_slowdown_temperature_replaces_the_assumed_one() -> None:
    # 88 C: above the 87 C a quick sweep must assume, below this board's own 91 C.
    warm = quick_gpu(2, temperature_c=88.0)
    alone = assess_node(quick_node(warm), POLICY)
    assert verdict_of(alone, 2)[0] is Verdict.DEGRADED and "(not reported; assumed)" in verdict_of(alone, 2)[2][0]
    carried = assess_node(quick_node(warm), POLICY, last_full=full_node(gpu(2, temp_slowdown_c=91.0)))
    assert verdict_of(carried, 2) == (Verdict.HEALTHY, Action.NONE, ())
    hot = assess_node(quick_node(quick_gpu(2, temperature_c=92.0)), POLICY,
                      last_full=full_node(gpu(2, temp_slowdown_c=91.0)))
    assert verdict_of(hot, 2)[2] == (f"GPU 2: 92 C is at or above the slowdown threshold 91 C {NOTE}",)


def test_findings_from_the_quick_sweeps_own_readings_carry_no_note() -> None:
    result = assess_node(quick_node(quick_gpu(1, row_remap_pending=True)), POLICY,
                         last_full=full_node(gpu(3, sram_threshold_exceeded=True)))
    assert verdict_of(result, 1)[2] == ("GPU 1: pending row remap: takes effect at the next GPU reset",)


def test_the_quick_sweeps_own_reading_wins_over_the_full_sweeps() -> None:
    # The full sweep saw a pending remap; a GPU reset settled it; the quick sweep reads "No".
    result = assess_node(quick_node(), POLICY, last_full=full_node(gpu(4, row_remap_pending=True)))
    assert verdict_of(result, 4) == (Verdict.HEALTHY, Action.NONE, ())


def test_a_replaced_board_does_not_inherit_its_predecessors_readings() -> None:
    new_board = quick_gpu(3, uuid="GPU-fresh-board", serial="1653229999999")
    result = assess_node(quick_node(new_board), POLICY, last_full=full_node(gpu(3, sram_threshold_exceeded=True)))
    assert result.verdict is Verdict.HEALTHY


def test_readings_older_than_the_policy_allows_are_not_carried() -> None:
    last_full = full_node(gpu(3, sram_threshold_exceeded=True), at=NOW - timedelta(hours=49))
    assert assess_node(quick_node(), POLICY, last_full=last_full).verdict is Verdict.HEALTHY
    longer = HealthPolicy(full_reading_max_age_hours=72)
    assert assess_node(quick_node(), longer, last_full=last_full).verdict is Verdict.FAILED
    never = HealthPolicy(full_reading_max_age_hours=0)
    assert assess_node(quick_node(), never, last_full=full_node(gpu(3, sram_threshold_exceeded=True))).verdict \
        is Verdict.HEALTHY


def test_nothing_is_carried_from_a_failed_or_later_reading_or_into_a_full_one() -> None:
    flagged = gpu(3, sram_threshold_exceeded=True)
    max_age = timedelta(hours=48)
    assert readings_to_carry(quick_node(), dataclasses.replace(full_node(flagged), collection_errors=("x",)),
                             max_age) is None
    assert readings_to_carry(quick_node(), full_node(flagged, at=NOW + timedelta(minutes=1)), max_age) is None
    assert readings_to_carry(full_node(at=NOW), full_node(flagged), max_age) is None
    # A full sweep that reads the flag cleared stands on its own reading.
    assert assess_node(full_node(at=NOW), POLICY, last_full=full_node(flagged)).verdict is Verdict.HEALTHY


def test_gauges_and_counters_are_never_carried() -> None:
    """A temperature read hours ago is not the temperature now; a carried counter would make a false rate."""
    hot_then = gpu(2, temperature_c=95.0, pcie_replay=10_000_000)
    cool_now = quick_gpu(2, temperature_c=None)
    result = assess_node(quick_node(cool_now), POLICY, previous=full_node(hot_then), last_full=full_node(hot_then))
    assert verdict_of(result, 2) == (Verdict.HEALTHY, Action.NONE, ())
    assert set(CARRIED_FIELDS).isdisjoint({"temperature_c", "power_w", "pcie_replay", "nvlinks", "ecc_sbe_volatile",
                                           "ecc_dbe_volatile", "remapped_rows_uncorrectable"})


def test_a_full_sweep_after_a_quick_one_takes_link_rates_against_the_last_full_sweep() -> None:
    """Quick sweeps every 15 minutes leave no PCIe or NVLink counters in the previous reading; without
    the last full sweep as baseline, no such rate would ever be computed."""
    day_ago = NOW - timedelta(hours=24)
    links_then = tuple(NvLinkState(link=i, active=True, crc_errors=0) for i in range(18))
    links_now = tuple(NvLinkState(link=i, active=True, crc_errors=(24 * 400_000 if i == 7 else 3)) for i in range(18))
    last_full = full_node(gpu(6, pcie_replay=100, nvlinks=links_then), at=day_ago)
    previous_quick = quick_node(at=NOW - timedelta(minutes=15))
    now = full_node(gpu(6, pcie_replay=100 + 24 * 600, nvlinks=links_now), at=NOW)

    without = assess_node(now, POLICY, previous=previous_quick)
    assert verdict_of(without, 6) == (Verdict.HEALTHY, Action.NONE, ())
    result = assess_node(now, POLICY, previous=previous_quick, last_full=last_full)
    assert verdict_of(result, 6) == (Verdict.WATCH, Action.MONITOR, (
        "GPU 6: 600 PCIe replays per hour (over 24 h), above 480/h",
        "GPU 6: NVLink CRC errors link 7 400000/h (over 24 h), above 360000/h",
    ))


def test_the_link_rates_the_last_full_sweep_measured_stand_through_quick_sweeps() -> None:
    """The nightly sweep finds a link erring; the quick sweep 15 minutes later reads neither counter and,
    on its own, would call the GPU healthy until the next night."""
    day_before = FULL_AT - timedelta(hours=24)
    links_then = tuple(NvLinkState(link=i, active=True, crc_errors=0) for i in range(18))
    links_full = tuple(NvLinkState(link=i, active=True, crc_errors=(24 * 400_000 if i == 7 else 3)) for i in range(18))
    before_full = full_node(gpu(6, pcie_replay=100, nvlinks=links_then), at=day_before)
    last_full = full_node(gpu(6, pcie_replay=100 + 24 * 600, nvlinks=links_full))
    between = (f"(as measured between the full sweeps at {day_before:%Y-%m-%d %H:%M} and "
               f"{FULL_AT:%Y-%m-%d %H:%M} UTC)")

    alone = assess_node(quick_node(), POLICY, last_full=last_full)
    assert verdict_of(alone, 6) == (Verdict.HEALTHY, Action.NONE, ())
    result = assess_node(quick_node(), POLICY, last_full=last_full, before_last_full=before_full)
    assert verdict_of(result, 6) == (Verdict.WATCH, Action.MONITOR, (
        f"GPU 6: 600 PCIe replays per hour (over 24 h), above 480/h {between}",
        f"GPU 6: NVLink CRC errors link 7 400000/h (over 24 h), above 360000/h {between}",
    ))
    assert [verdict_of(result, i)[0] for i in range(8) if i != 6] == [Verdict.HEALTHY] * 7
    # Not past the policy's age for carried readings, not onto another board, not into a full sweep.
    stale = POLICY.model_copy(update={"full_reading_max_age_hours": 6})
    assert verdict_of(assess_node(quick_node(), stale, last_full=last_full, before_last_full=before_full),
                      6)[0] is Verdict.HEALTHY
    replaced = quick_node(quick_gpu(6, uuid="GPU-new-board"))
    assert verdict_of(assess_node(replaced, POLICY, last_full=last_full, before_last_full=before_full),
                      6)[0] is Verdict.HEALTHY
    fresh_full = full_node(gpu(6, pcie_replay=100 + 24 * 600, nvlinks=links_full), at=NOW)
    assert verdict_of(assess_node(fresh_full, POLICY, previous=last_full, last_full=last_full,
                                  before_last_full=before_full), 6) == (Verdict.HEALTHY, Action.NONE, ())


def test_correctable_ecc_rates_still_use_the_previous_sweep_whatever_its_depth() -> None:
    previous_quick = quick_node(quick_gpu(0, ecc_sbe_volatile=0), at=NOW - timedelta(minutes=15))
    now = full_node(gpu(0, ecc_sbe_volatile=50), at=NOW)
    result = assess_node(now, POLICY, previous=previous_quick, last_full=full_node(at=NOW - timedelta(hours=24)))
    assert verdict_of(result, 0)[2] == (
        "GPU 0: 200 correctable (SBE) ECC errors per hour (volatile counter, over 0.25 h), above 100/h",)


def test_the_link_rate_baseline_is_the_latest_full_reading() -> None:
    full_previous, older_full, quick = full_node(at=NOW - timedelta(hours=1)), full_node(), quick_node()
    assert full_baseline(full_node(at=NOW), full_previous, older_full) is full_previous
    assert full_baseline(full_node(at=NOW), quick, older_full) is older_full
    assert full_baseline(full_node(at=NOW), quick, None) is None
    assert full_baseline(quick, full_previous, older_full) is None  # a quick sweep reads no such counter


def test_a_quick_sweep_names_the_nodes_it_has_no_full_reading_for() -> None:
    def named(name: str, telemetry: NodeTelemetry) -> NodeTelemetry:
        return dataclasses.replace(telemetry, node=name)

    quick = [named("fresh", quick_node()), named("stale", quick_node()), named("never", quick_node()),
             named("down", dataclasses.replace(quick_node(), collection_errors=("ssh: connection refused",))),
             named("exporter", full_node(at=NOW))]
    last_full = {"fresh": named("fresh", full_node()), "stale": named("stale", full_node(at=NOW - timedelta(days=3)))}
    lacking = without_full_readings(quick, last_full, timedelta(hours=48))
    assert lacking == ["stale", "never"]  # an unreachable node is unknown anyway; a full reading has its own
    note = quick_sweep_note(48, lacking)
    assert note.endswith("**2 nodes had no clean full sweep in that time, so nothing of this is judged there:** "
                         "stale, never. Check that the nightly full sweep runs and reaches them.")
    many = quick_sweep_note(48, [f"n{i}" for i in range(13)])
    assert "13 nodes" in many and "n9 and 3 more." in many and "n10" not in many
    assert "no clean full sweep" not in quick_sweep_note(48)
