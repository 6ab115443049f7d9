"""The simulator of degrading GPUs: rates, mix, noise, resets, determinism."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pytest

from gpumedic.domain.forecast import Failure, FailureClass, HistoryFrame, to_epoch
from gpumedic.domain.forecast.frame import FIELD_INDEX
from gpumedic.domain.history import HISTORY_FIELDS, Sample
from gpumedic.sim.degradation import (
    DEFAULT_PARAMS,
    GPUS_PER_NODE,
    SIM_START,
    FailureTruth,
    simulate,
    simulate_fleet,
    simulate_fleet_frame,
)


@pytest.fixture(scope="module")
def fleet() -> tuple[HistoryFrame, list[Failure]]:
    return simulate_fleet_frame(2400, 120, seed=77)


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    a, fa = simulate_fleet_frame(40, 20, seed=9)
    b, fb = simulate_fleet_frame(40, 20, seed=9)
    c, _ = simulate_fleet_frame(40, 20, seed=10)
    assert fa == fb
    for col in ("time", "key", "field", "value"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert len(a) != len(c) or not np.array_equal(a.value, c.value)
    sim = simulate(40, 20, seed=9)
    assert sim.failures == fa
    np.testing.assert_array_equal(sim.frame.value, a.value)


def test_simulate_fleet_returns_history_rows_and_failures() -> None:
    samples, failures = simulate_fleet(16, 5, seed=1)
    assert samples and all(isinstance(s, Sample) for s in samples)
    assert all(s.field in HISTORY_FIELDS for s in samples)
    end = SIM_START + timedelta(days=5)
    assert all(SIM_START <= s.time < end for s in samples)
    assert all(isinstance(f, Failure) and SIM_START <= f.time < end for f in failures)


def test_eight_gpus_per_node(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, _ = fleet
    gpus_by_node = Counter(node for node, gpu in frame.keys if gpu is not None)
    assert set(gpus_by_node.values()) == {GPUS_PER_NODE}
    assert len(gpus_by_node) == 2400 // GPUS_PER_NODE


def test_failure_rate_follows_the_llama3_anchor(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    _, failures = fleet
    expected = DEFAULT_PARAMS.failures_per_gpu_day * 2400 * 120  # ≈ 87
    assert DEFAULT_PARAMS.failures_per_gpu_day == pytest.approx(3.0e-4, rel=0.02)
    assert expected * 0.65 < len(failures) < expected * 1.35  # Poisson sd ≈ 9 (10%)


def test_failure_mix_includes_classes_with_no_precursor(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    _, failures = fleet
    kinds = Counter(f.kind for f in failures)
    assert kinds[FailureClass.HBM] > 0 and kinds[FailureClass.NVLINK] > 0
    assert kinds[FailureClass.FALLEN_OFF_BUS] > 0
    unpredictable = sum(v for k, v in kinds.items() if not FailureClass(k).has_precursor)
    assert 0.25 < unpredictable / len(failures) < 0.6  # 112 of 268 in the Llama 3 mix


def test_harmless_correctable_bursts_on_gpus_that_never_fail(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = fleet
    failed = {(f.node, f.gpu) for f in failures}
    sbe = frame.field == FIELD_INDEX["ecc_sbe_volatile"]
    erring = {frame.keys[k] for k in np.unique(frame.key[sbe & (frame.value > 0)]).tolist()}
    healthy_erring = erring - failed
    assert len(healthy_erring) > 5 * len(failed & erring)
    # Harmless remaps and contained uncorrectable errors happen too (Xid 63 / 94).
    xid = frame.field == FIELD_INDEX["xid"]
    xkeys = {frame.keys[k] for k in np.unique(frame.key[xid & np.isin(frame.value, [63, 94])]).tolist()}
    assert len(xkeys - failed) > 0


def test_driver_reloads_reset_volatile_counters(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, _ = fleet
    m = frame.field == FIELD_INDEX["nvlink_crc_errors"]
    k, t, v = frame.key[m], frame.time[m], frame.value[m]
    order = np.lexsort((t, k))
    k, v = k[order], v[order]
    drops = (k[1:] == k[:-1]) & (v[1:] < v[:-1])
    assert drops.sum() > 100


def test_counters_never_go_negative_and_xids_are_codes(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, _ = fleet
    counters = np.isin(frame.field, [FIELD_INDEX[f] for f in ("ecc_sbe_volatile", "ecc_sbe_aggregate", "pcie_replay")])
    assert (frame.value[counters] >= 0).all()
    xids = set(frame.value[frame.field == FIELD_INDEX["xid"]].astype(int).tolist())
    assert xids <= {48, 63, 64, 74, 79, 94, 95, 119, 120}
    assert {79, 63, 94} <= xids


def test_sensor_noise_and_missing_readings(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, _ = fleet
    temp = frame.value[frame.field == FIELD_INDEX["temperature_c"]]
    assert 2.0 < temp.std() < 10.0
    per_gpu = len(temp) / 2400
    assert per_gpu < 120 * 2  # every 12 hours, some missing, none while a GPU is out


def test_no_telemetry_while_a_failed_gpu_is_out(fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = fleet
    index = {k: i for i, k in enumerate(frame.keys)}
    f = next(f for f in failures if f.gpu is not None)
    k = index[(f.node, f.gpu)]
    t = to_epoch(f.time)
    rows = frame.time[(frame.key == k) & (frame.field != FIELD_INDEX["xid"])]
    assert not ((rows > t) & (rows < t + 23 * 3600)).any()  # downtime is at least 24 h


def test_ground_truth_says_which_failures_could_be_foreseen() -> None:
    sim = simulate(2400, 120, seed=77)
    assert set(sim.truth) == set(sim.failures)
    by_kind: dict[str, list[FailureTruth]] = {}
    for f, truth in sim.truth.items():
        by_kind.setdefault(f.kind, []).append(truth)
    # No precursor at all: nothing could foresee them.
    for kind in (FailureClass.FALLEN_OFF_BUS, FailureClass.SDC):
        assert all(t.warning_hours == 0 and not t.foreseeable(0.0) for t in by_kind.get(kind, []))
    # Weak precursors are never counted as foreseeable, however early their trace.
    assert all(not t.foreseeable(0.0) for ts in by_kind.values() for t in ts if t.weak)
    hbm = by_kind[FailureClass.HBM]
    assert 0.03 < sum(t.weak for t in hbm) / len(hbm) < 0.3  # 12% drawn weak
    assert sum(t.foreseeable(24.0) for t in hbm) / len(hbm) > 0.6
    # A longer lead can only shrink what is foreseeable.
    assert all(t.foreseeable(24.0) >= t.foreseeable(96.0) for ts in by_kind.values() for t in ts)


def test_a_foreseeable_failure_left_evidence_in_its_gpus_history_before_the_lead() -> None:
    sim = simulate(2400, 120, seed=77)
    lead = 24.0
    key_of = {k: i for i, k in enumerate(sim.frame.keys)}
    checked = 0
    for f, truth in sim.truth.items():
        if not truth.foreseeable(lead) or f.gpu is None:
            continue
        t = to_epoch(f.time)
        first = t - truth.warning_hours * 3600
        sel = (sim.frame.key == key_of[(f.node, f.gpu)]) & (sim.frame.time >= first - 3600)
        sel &= sim.frame.time <= t - lead * 3600
        assert sel.any(), f
        checked += 1
    assert checked > 20
