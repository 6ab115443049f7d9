"""The forecaster's domain code: features, CUSUM, hazard model, calibration, the public entry."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gpumedic.backtest import BacktestProtocol, training_set
from gpumedic.domain.forecast import (
    DEFAULT_MODEL,
    FEATURES,
    Entities,
    Failure,
    FailureClass,
    Grid,
    HistoryFrame,
    LogLinearBaseline,
    chunk_features,
    fit_hazard,
    forecast_fleet,
    poisson_cusum,
    prepare,
    to_epoch,
)
from gpumedic.domain.forecast.cusum import CUSUM_DECISION
from gpumedic.domain.forecast.explain import describe
from gpumedic.domain.forecast.features import CHUNK_GPU_HOURS, MIN_CHUNK_ENTITIES
from gpumedic.domain.forecast.hazard import _group_rows
from gpumedic.domain.history import Sample
from gpumedic.sim.degradation import simulate_fleet_frame

T0 = datetime(2025, 3, 1, tzinfo=UTC)
F = {name: i for i, name in enumerate(FEATURES)}


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def features_at(samples: list[Sample], hour: float, failures: list[Failure] | None = None) -> dict[str, float]:
    """Feature values of the one GPU in `samples` at `hour` (a grid from T0)."""
    frame = HistoryFrame.from_samples(samples)
    grid = Grid(origin=to_epoch(T0), hours=int(hour) + 1)
    src = prepare(frame, grid, failures or [], Entities.from_keys(frame.keys))
    x = chunk_features(src, 0, len(src.entities)).x
    e = src.entities.keys.index(("n1", 0))
    return {name: float(x[i, e, -1]) for i, name in enumerate(FEATURES)}


def healthy_gpu(node: str, gpu: int, hours: int) -> list[Sample]:
    rows = []
    for h in range(0, hours, 12):
        rows.append(Sample(at(h), node, gpu, "temperature_c", 60.0 + (h % 24) / 12))
        rows.append(Sample(at(h), node, gpu, "power_w", 500.0))
    for h in range(0, hours, 24):
        rows.append(Sample(at(h), node, gpu, "ecc_sbe_volatile", 0.0))
    return rows


# --- counters and bursts --------------------------------------------------------------------


def test_counter_drop_is_a_reset_and_counts_the_new_value_as_increase() -> None:
    # 0 → 5 → 12 → (driver reload) 3 → 7: increases 5 + 7 + 3 + 4 = 19 errors.
    values = [(0, 0.0), (10, 5.0), (20, 12.0), (30, 3.0), (40, 7.0)]
    rows = [Sample(at(h), "n1", 0, "ecc_sbe_volatile", v) for h, v in values]
    f = features_at(rows, 48)
    assert math.expm1(f["sbe_errors_7d"]) == pytest.approx(19.0)


def test_first_reading_of_a_lifetime_counter_is_not_an_increase() -> None:
    rows = [Sample(at(0), "n1", 0, "ecc_sbe_aggregate", 5000.0), Sample(at(5), "n1", 0, "ecc_sbe_aggregate", 5000.0)]
    f = features_at(rows, 10)
    assert f["sbe_errors_7d"] == 0.0
    assert f["sbe_bursts_7d"] == 0.0


def test_volatile_counter_preferred_so_errors_are_not_counted_twice() -> None:
    rows = []
    for h, v in [(0, 0.0), (10, 4.0)]:
        rows.append(Sample(at(h), "n1", 0, "ecc_sbe_volatile", v))
        rows.append(Sample(at(h), "n1", 0, "ecc_sbe_aggregate", 100 + v))
    assert math.expm1(features_at(rows, 12)["sbe_errors_7d"]) == pytest.approx(4.0)


def test_errors_hours_apart_merge_into_one_burst_and_a_day_apart_do_not() -> None:
    close = [Sample(at(h), "n1", 0, "ecc_sbe_volatile", v) for h, v in [(0, 0), (10, 3), (11, 9), (13, 20)]]
    apart = [Sample(at(h), "n1", 0, "ecc_sbe_volatile", v) for h, v in [(0, 0), (10, 3), (40, 9)]]
    assert math.expm1(features_at(close, 48)["sbe_bursts_7d"]) == pytest.approx(1.0)
    assert math.expm1(features_at(apart, 48)["sbe_bursts_7d"]) == pytest.approx(2.0)


def replay_counter(hourly: dict[int, float], until: int) -> list[Sample]:
    """A cumulative PCIe replay counter read every hour from 0 to `until`, growing by `hourly[h]` at hour h."""
    total, rows = 0.0, []
    for h in range(until + 1):
        total += hourly.get(h, 0.0)
        rows.append(Sample(at(h), "n1", 0, "pcie_replay", total))
    return rows


def test_a_link_erring_for_days_has_a_long_open_episode_and_a_spike_a_short_one_that_closes() -> None:
    failing = replay_counter({h: 2.0 for h in range(20, 100, 3)}, 100)  # every 3 h for 80 h
    assert features_at(failing, 100)["pcie_replay_episode_days"] == pytest.approx((100 - 20 + 1) / 24)
    spike = replay_counter({h: 30.0 for h in range(80, 86)}, 100)  # six hours, then quiet
    assert features_at(spike, 90)["pcie_replay_episode_days"] == pytest.approx((90 - 80 + 1) / 24)
    assert features_at(spike, 98)["pcie_replay_episode_days"] == 0.0  # quiet for 13 h: over
    # A gap longer than EPISODE_GAP_HOURS starts a new episode.
    two = replay_counter({10: 1.0, 11: 1.0, 40: 1.0, 41: 1.0}, 45)
    assert features_at(two, 45)["pcie_replay_episode_days"] == pytest.approx(6 / 24)
    # A replaced GPU's episode starts with it, not with its predecessor's.
    erring = replay_counter({h: 1.0 for h in range(1, 49)}, 48)
    assert features_at(erring, 48, [Failure(at(30), "n1", 0, "pcie")])["pcie_replay_episode_days"] == pytest.approx(
        (48 - 31 + 1) / 24
    )
    # ... even when the predecessor erred a few hours before it was replaced and the new GPU errs soon after.
    handed_over = replay_counter({h: 1.0 for h in [*range(1, 28), *range(34, 49)]}, 48)
    assert features_at(handed_over, 48, [Failure(at(30), "n1", 0, "pcie")])[
        "pcie_replay_episode_days"] == pytest.approx((48 - 34 + 1) / 24)


def test_errors_growing_half_day_after_half_day_are_rising_and_a_spike_or_a_steady_link_is_not() -> None:
    # Half-days ending at hour 95: [48, 59], [60, 71], [72, 83], [84, 95].
    growing = replay_counter({h: 2.0 ** ((h - 48) // 12) for h in range(48, 96)}, 95)
    assert features_at(growing, 95)["pcie_replay_rising"] == pytest.approx(min(
        math.log((12 * 8 + 1) / (12 * 4 + 1)), math.log((12 * 4 + 1) / (12 * 2 + 1)), math.log((12 * 2 + 1) / (12 + 1))
    ))
    spike = replay_counter({h: 50.0 for h in range(84, 96)}, 95)
    assert features_at(spike, 95)["pcie_replay_rising"] == 0.0
    steady = replay_counter({h: 3.0 for h in range(0, 96)}, 95)
    assert features_at(steady, 95)["pcie_replay_rising"] == 0.0
    # Active from hour 1: the first reading is no increase.
    assert features_at(steady, 95)["pcie_replay_episode_days"] == pytest.approx(95 / 24)


def test_replaced_gpu_starts_a_new_segment() -> None:
    rows = [Sample(at(h), "n1", 0, "ecc_sbe_volatile", v) for h, v in [(0, 0), (10, 50), (20, 400)]]
    rows += [Sample(at(40), "n1", 0, "ecc_sbe_volatile", 0.0)]
    replaced = [Failure(at(30), "n1", 0, "hbm")]
    assert features_at(rows, 48)["sbe_errors_7d"] > 0
    after = features_at(rows, 48, replaced)
    assert after["sbe_errors_7d"] == 0.0
    assert after["sbe_cusum"] == 0.0
    assert after["prior_gpu_failures_180d"] == pytest.approx(math.log1p(1))


def test_an_incident_the_gpu_lived_through_keeps_its_history_and_counts_as_a_prior() -> None:
    rows = [Sample(at(h), "n1", 0, "ecc_sbe_volatile", v) for h, v in [(0, 0), (10, 50), (20, 400)]]
    rows += [Sample(at(40), "n1", 0, "ecc_sbe_volatile", 0.0)]  # the reset zeroed the volatile counter
    reset = [Failure(at(30), "n1", 0, "remediation:reset_gpu", replaced=False)]
    before, after = features_at(rows, 48), features_at(rows, 48, reset)
    assert after["sbe_errors_7d"] == before["sbe_errors_7d"] > 0
    assert after["sbe_cusum"] == before["sbe_cusum"]
    assert after["prior_gpu_failures_180d"] == pytest.approx(math.log1p(1))
    assert after["prior_node_failures_90d"] == pytest.approx(math.log1p(1))


def test_survived_incidents_count_for_the_gpu_that_lived_through_them_until_it_is_replaced() -> None:
    rows = healthy_gpu("n1", 0, 24 * 40)
    incident = Failure(at(24), "n1", 0, "remediation:reset_gpu", replaced=False)
    f = features_at(rows, 48, [incident])
    assert f["survived_incidents_7d"] == f["survived_incidents_30d"] == pytest.approx(math.log1p(1))
    later = features_at(rows, 24 * 10, [incident])
    assert later["survived_incidents_7d"] == 0.0  # out of the week, still in the month
    assert later["survived_incidents_30d"] == pytest.approx(math.log1p(1))

    # A replacement: the new GPU lived through nothing, though the slot keeps its record.
    replaced = features_at(rows, 24 * 10, [incident, Failure(at(24 * 5), "n1", 0, "hbm")])
    assert replaced["survived_incidents_30d"] == replaced["survived_incidents_180d"] == 0.0
    assert replaced["prior_gpu_failures_180d"] == pytest.approx(math.log1p(2))
    # A failure that replaced the GPU is never counted as survived, even by itself.
    assert features_at(rows, 48, [Failure(at(24), "n1", 0, "hbm")])["survived_incidents_7d"] == 0.0


def test_node_level_xid_counts_against_every_gpu_of_the_node() -> None:
    rows = healthy_gpu("n1", 0, 48) + healthy_gpu("n1", 1, 48)
    rows.append(Sample(at(30), "n1", None, "xid", 79.0))
    frame = HistoryFrame.from_samples(rows)
    src = prepare(frame, Grid(to_epoch(T0), 48), [], Entities.from_keys(frame.keys))
    x = chunk_features(src, 0, len(src.entities)).x
    assert src.entities.keys == (("n1", 0), ("n1", 1))
    assert np.all(x[F["xid_fatal_30d"], :, -1] == pytest.approx(math.log1p(1)))


# --- CUSUM -----------------------------------------------------------------------------------


def test_poisson_cusum_stays_low_in_control_and_signals_soon_after_a_step_change() -> None:
    rng = np.random.default_rng(7)
    lam0 = 0.01
    before = rng.poisson(lam0, 5000)
    after = rng.poisson(lam0 * 8, 2000)
    s = poisson_cusum(np.concatenate([before, after])[None, :], np.full(7000, lam0))[0]
    alarmed_before = float(np.mean(s[:5000] > CUSUM_DECISION))
    alarmed_after = float(np.mean(s[5200:] > CUSUM_DECISION))
    assert alarmed_before < 0.05
    assert alarmed_after > 0.8
    crossed = np.flatnonzero(s[5000:] > CUSUM_DECISION)
    # Drift after the change ≈ λ1 ln ρ − (ρ−1) λ0 = 0.09 per interval: h is reached in ~30.
    assert crossed[0] < 200
    assert (s >= 0).all()


def test_poisson_cusum_restarts_where_told() -> None:
    counts = np.array([[1, 1, 1, 0, 0]], dtype=float)
    restart = np.array([[False, False, False, True, False]])
    s = poisson_cusum(counts, np.full(5, 0.01), restart=restart)[0]
    assert s[2] > s[1] > s[0] > 0
    assert s[3] == 0.0


def test_fleet_baseline_makes_a_fleet_wide_rise_no_individual_signal() -> None:
    # Every GPU bursting equally raises the baseline: nobody stands out for long.
    n, hours = 64, 24 * 40
    rows: list[Sample] = []
    for g in range(n):
        node, gpu = f"n{g // 8}", g % 8
        total = 0.0
        for h in range(0, hours, 48):
            total += 3
            rows.append(Sample(at(h + (g % 5)), node, gpu, "ecc_sbe_volatile", total))
    frame = HistoryFrame.from_samples(rows)
    src = prepare(frame, Grid(to_epoch(T0), hours), [], Entities.from_keys(frame.keys))
    assert src.fleet_baseline[-1] == pytest.approx(1 / 48, rel=0.2)
    s = chunk_features(src, 0, n).x[F["sbe_cusum"], :, -1]
    assert float(np.max(s)) < CUSUM_DECISION


# --- hazard model --------------------------------------------------------------------------


def test_fit_hazard_recovers_a_known_effect_and_is_calibrated_in_the_large() -> None:
    rng = np.random.default_rng(3)
    n = 40_000
    x = np.zeros((n, len(FEATURES)))
    flag = rng.random(n) < 0.05
    x[flag, F["remap_failure"]] = 1.0
    p = np.where(flag, 0.3, 0.003)
    fails = rng.random(n) < p
    kinds = ["hbm" if f else None for f in fails.tolist()]
    model = fit_hazard(x, kinds, FEATURES, lead_hours=24, horizon_hours=168)
    risk = model.risk(x.T)
    assert risk[flag].mean() == pytest.approx(0.3, abs=0.05)
    assert risk[~flag].mean() == pytest.approx(0.003, abs=0.002)
    assert risk.mean() == pytest.approx(fails.mean(), rel=0.02)


def test_a_fit_on_float32_rows_is_the_fit_on_the_same_rows_widened() -> None:
    """Rows are merged in their own precision (half the bytes to sort): widening float32 is exact,
    so the very same rows merge, and the fit is the same, from scratch and towards a prior.

    The merged rows come out in another order (float32 and float64 bytes sort differently), so the
    solver's sums round differently: the coefficients agree to its step tolerance (1e-7), not bit for bit.
    """
    frame, failures = simulate_fleet_frame(240, 50, seed=8)
    rows = training_set(frame, failures)
    assert rows.x.dtype == np.float32
    y = rows.y.astype(np.float64)
    merged = [_group_rows(x, y) for x in (rows.x, rows.x.astype(np.float64))]
    (narrow_rows, *narrow_counts, _), (wide_rows, *wide_counts, _) = merged
    narrow_order, wide_order = np.lexsort(narrow_rows.T), np.lexsort(wide_rows.T)
    np.testing.assert_array_equal(narrow_rows[narrow_order], wide_rows[wide_order])
    for narrow_count, wide_count in zip(narrow_counts, wide_counts, strict=True):
        np.testing.assert_array_equal(narrow_count[narrow_order], wide_count[wide_order])
    for prior in (None, DEFAULT_MODEL):
        fits = [
            fit_hazard(x, rows.kinds(), FEATURES, lead_hours=24, horizon_hours=168, prior=prior,
                       time_to_failure=rows.time_to_failure)
            for x in (rows.x, rows.x.astype(np.float64))
        ]
        for narrow, wide in zip(fits[0].causes, fits[1].causes, strict=True):
            np.testing.assert_allclose(narrow.coef, wide.coef, rtol=0, atol=1e-7)
            np.testing.assert_allclose(narrow.mean, wide.mean, rtol=1e-12)
            assert narrow.intercept == pytest.approx(wide.intercept, abs=1e-7)
            np.testing.assert_array_equal(narrow.lead_by_feature, wide.lead_by_feature)


def test_default_model_is_calibrated_on_a_fleet_it_was_not_fitted_on() -> None:
    frame, failures = simulate_fleet_frame(800, 75, seed=41)
    rows = training_set(frame, failures, BacktestProtocol(train_every_hours=12))
    risk = DEFAULT_MODEL.risk(rows.x.T.astype(np.float64))
    observed = float(rows.y.mean())
    assert observed > 0
    assert 0.5 < float(risk.mean()) / observed < 2.0
    # And it ranks: the riskiest 1% of GPU-hours fail far more often than the rest.
    top = risk >= np.quantile(risk, 0.99)
    assert rows.y[top].mean() > 5 * rows.y[~top].mean()


def test_risk_for_another_horizon_uses_a_constant_hazard() -> None:
    x = np.zeros((len(FEATURES), 1))
    p7 = float(DEFAULT_MODEL.risk(x)[0])
    p14 = float(DEFAULT_MODEL.risk(x, horizon_hours=336)[0])
    assert p14 == pytest.approx(1 - (1 - p7) ** 2)


# --- baseline ----------------------------------------------------------------------------------


def test_log_linear_baseline_extrapolates_a_growing_count() -> None:
    hours = np.arange(200)
    cumulative = np.expm1(0.02 * hours)[None, :]  # log(1+C) grows 0.02 per hour
    b = LogLinearBaseline(threshold=100.0, window_hours=48)
    s = b.scores(cumulative, ahead_hours=100)
    assert s[0, -1] == pytest.approx(0.02 * (199 + 100), rel=1e-6)
    assert b.alarms(s)[0, -1]
    assert not b.alarms(b.scores(np.zeros((1, 200)), 100))[0, -1]


# --- the public entry ---------------------------------------------------------------------------


def failing_hbm(node: str, gpu: int) -> list[Sample]:
    rows = healthy_gpu(node, gpu, 24 * 10)
    total = 0.0
    for d in range(4, 10):
        for h in range(0, 24, 8 if d < 8 else 3):
            total += 5 * d
            rows.append(Sample(at(24 * d + h), node, gpu, "ecc_sbe_volatile", total))
    for i, h in enumerate((24 * 7, 24 * 8, 24 * 9)):
        rows.append(Sample(at(h), node, gpu, "remapped_rows_correctable", float(i + 1)))
        rows.append(Sample(at(h), node, gpu, "xid", 63.0))
        rows.append(Sample(at(h), node, gpu, "row_remap_pending", 1.0))
    rows.append(Sample(at(24 * 9 + 2), node, gpu, "xid", 94.0))
    rows.append(Sample(at(24 * 9 + 2), node, gpu, "remap_banks_low", 1.0))
    return rows


def test_forecast_fleet_ranks_a_degrading_gpu_first_and_says_why() -> None:
    samples = failing_hbm("n1", 3)
    for g in (0, 1, 2, 4, 5, 6, 7):
        samples += healthy_gpu("n1", g, 24 * 10)
    out = forecast_fleet(samples, at(24 * 10))
    assert len(out) == 8
    first = out[0]
    assert (first.node, first.gpu) == ("n1", 3)
    assert first.risk > 10 * out[1].risk
    assert first.alarm
    assert first.lead_time_hours is not None and first.lead_time_hours > 0
    text = " ".join(first.factors)
    assert "remap" in text or "Xid" in text
    assert FailureClass.FALLEN_OFF_BUS in first.unpredictable_classes
    assert all(0.0 <= f.risk <= 1.0 for f in out)
    assert not out[-1].alarm and out[-1].lead_time_hours is None


def test_forecast_fleet_ignores_samples_after_now() -> None:
    now = at(24 * 5)
    base = healthy_gpu("n1", 0, 24 * 5)
    future = failing_hbm("n1", 0)  # everything after `now` here is the future
    mixed = base + [s for s in future if s.time > now]
    a = forecast_fleet(base, now)
    b = forecast_fleet(mixed, now)
    assert [(f.node, f.gpu, f.risk) for f in a] == [(f.node, f.gpu, f.risk) for f in b]


def test_forecast_fleet_of_nothing_is_empty() -> None:
    assert forecast_fleet([], T0) == []


# --- feature chunks: memory bounded by GPU-hours, features independent of the chunking ----------------


def test_feature_chunks_bound_gpu_hours_never_split_a_node_and_cover_every_entity() -> None:
    keys = [(f"n{n:03d}", g) for n in range(300) for g in range(8)] + [("solo", None)]
    entities = Entities.from_keys(keys)
    for hours in (24, 1_000, 4_320, 8_760, 100_000):
        chunks = entities.feature_chunks(hours)
        assert chunks[0][0] == 0 and chunks[-1][1] == len(entities)
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(chunks))
        for a, b in chunks:
            assert a == 0 or entities.node_index[a] != entities.node_index[a - 1], "a node was split"
            # A chunk reaches its target and then closes at the next node boundary: at most one node over.
            target = max(MIN_CHUNK_ENTITIES, CHUNK_GPU_HOURS // hours)
            assert b - a < target + 8
    # A year of history is computed for fewer GPUs at a time than six weeks are.
    assert len(entities.feature_chunks(8_760)) > 4 * len(entities.feature_chunks(1_000))


def test_features_of_a_gpu_do_not_depend_on_which_chunk_computes_them() -> None:
    frame, failures = simulate_fleet_frame(96, 60, seed=5)
    entities = Entities.from_keys(frame.keys)
    grid = Grid.covering(int(frame.time[0]), int(frame.time[-1]))
    src = prepare(frame, grid, failures, entities)
    whole = chunk_features(src, 0, len(entities))
    chunks = entities.feature_chunks(CHUNK_GPU_HOURS)  # as if the history were that long: one node a chunk
    assert len(chunks) == len(entities.nodes)
    for e0, e1 in chunks:
        part = chunk_features(src, e0, e1)
        np.testing.assert_array_equal(part.x, whole.x[:, e0:e1])
        np.testing.assert_array_equal(part.resets, whole.resets[e0:e1])


def test_every_feature_the_model_reads_is_explained_in_words() -> None:
    for name in FEATURES:
        words = describe(name, 1.0)
        assert name not in words, f"{name} has no words: an SRE would read {words!r}"
