"""The backtest protocol, the CSV files and the CLI round trip."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from gpumedic import backtest as bt
from gpumedic.adapters.history_csv import (
    HistoryCsvError,
    parse_time,
    read_failures,
    read_history,
    write_failures,
    write_history,
)
from gpumedic.backtest import BacktestProtocol, average_precision, score_backtest, score_with
from gpumedic.cli_forecast import main as forecast_cli
from gpumedic.domain.forecast import (
    DEFAULT_MODEL,
    Entities,
    Failure,
    Grid,
    HistoryFrame,
    chunk_features,
    forecast_frame,
    from_epoch,
    prepare,
    to_epoch,
)
from gpumedic.domain.forecast.frame import Key
from gpumedic.domain.history import Sample
from gpumedic.sim.degradation import simulate_fleet_frame

T0 = datetime(2025, 1, 1, tzinfo=UTC)
METRIC_KEYS = {"precision", "recall", "pr_auc", "alarms", "caught", "failures", "lead_hours_median", "lead_hours_p10"}


@pytest.fixture(scope="module")
def small_fleet() -> tuple[HistoryFrame, list[Failure]]:
    # A small fleet whose failures are frequent enough to score: 10× the field rate.
    from gpumedic.sim.degradation import DegradationParams

    params = DegradationParams(failures_per_gpu_day=3e-3)
    return simulate_fleet_frame(64, 30, seed=5, params=params)


# --- the protocol's pieces --------------------------------------------------------------------


def _targets(failure_hours: Sequence[tuple[int, int]], n_entities: int) -> tuple[Grid, bt._Targets]:
    grid = Grid(origin=to_epoch(T0), hours=2000)
    ents = Entities.from_keys([("n", g) for g in range(n_entities)])
    fails = [Failure(T0 + timedelta(hours=h), "n", g, "hbm") for g, h in failure_hours]
    return grid, bt._Targets.build(fails, ents)


def test_first_alarm_suppresses_later_ones_until_the_window_closes() -> None:
    grid, targets = _targets([], 1)
    raw = np.zeros((1, 600), dtype=bool)
    raw[0, :] = True  # the forecaster would alarm every hour
    resets = (np.zeros(0, dtype=np.int64),)
    fired = bt._fire(raw, resets, targets, grid, BacktestProtocol())
    assert fired[0].tolist() == [0, 193, 386, 579]  # window = 24 h lead + 168 h horizon
    fired = bt._fire(raw, resets, targets, grid, BacktestProtocol(rearm_after_window=False))
    assert fired[0].tolist() == [0]


def test_a_reset_or_a_failure_rearms_the_alarm() -> None:
    grid, targets = _targets([(0, 100)], 1)
    raw = np.zeros((1, 300), dtype=bool)
    raw[0, 10:300] = True
    fired = bt._fire(raw, (np.array([40]),), targets, grid, BacktestProtocol(rearm_after_window=False))
    assert fired[0].tolist() == [10, 40, 100]  # reset at hour 40, failure at hour 100


def test_caught_only_if_the_alarm_is_inside_the_lead_window() -> None:
    fail_h = 400
    grid, targets = _targets([(0, fail_h), (1, fail_h)], 2)
    k_scored = 1500
    labels = bt._labels(targets, 2, grid, k_scored, 24, 168)
    assert labels[0, fail_h - 24] and labels[0, fail_h - 192]
    assert not labels[0, fail_h - 23] and not labels[0, fail_h - 193]
    fired = [np.array([fail_h - 30]), np.array([fail_h - 10])]  # in time / too late
    out = bt._metrics(fired, labels, labels.astype(float), targets, grid, k_scored, BacktestProtocol())
    m = out.metrics
    assert (m.alarms, m.caught, m.failures) == (2, 1, 2)
    assert m.precision == pytest.approx(0.5)
    assert m.lead_hours_median == pytest.approx(30.0)
    assert out.caught.tolist() == [True, False]


def test_false_alarms_are_told_apart_by_what_followed_them() -> None:
    grid, targets = _targets([(0, 400), (1, 900), (1, 1200)], 3)  # GPU 2 never fails
    k_scored = 1500
    labels = bt._labels(targets, 3, grid, k_scored, 24, 168)
    fired = [
        np.array([380, 395]),  # 20 h and 5 h before its failure: inside the lead
        np.array([500, 1050]),  # 400 h before a failure: after the window; 150 h before the next: in it
        np.array([10, 700]),
    ]
    m = bt._metrics(fired, labels, labels.astype(float), targets, grid, k_scored, BacktestProtocol()).metrics
    assert (m.alarms, round(m.precision * m.alarms)) == (6, 1)
    assert m.false_alarms == bt.FalseAlarms(too_late=2, too_early=1, no_failure=2)


def test_node_level_failure_is_positive_for_every_gpu_of_the_node() -> None:
    grid = Grid(origin=to_epoch(T0), hours=1000)
    ents = Entities.from_keys([("a", 0), ("a", 1), ("b", 0)])
    targets = bt._Targets.build([Failure(T0 + timedelta(hours=500), "a", None, "fallen_off_bus")], ents)
    labels = bt._labels(targets, 3, grid, 800, 24, 168)
    assert labels[0, 400] and labels[1, 400] and not labels[2, 400]


def test_average_precision_groups_ties() -> None:
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([True, False, True])) == pytest.approx(
        0.5 * 1.0 + 0.5 * (2 / 3)
    )
    # A constant score is the prevalence, whatever the order of the rows.
    y = np.array([False, True, False, False])
    assert average_precision(np.zeros(4), y) == pytest.approx(0.25)
    assert math.isnan(average_precision(np.zeros(3), np.zeros(3, dtype=bool)))


# --- only data up to t -------------------------------------------------------------------------


def test_the_backtest_shows_a_forecaster_only_the_past(small_fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = small_fleet
    frame = frame.until(int(frame.time[0]) + 12 * 86400)
    protocol = BacktestProtocol(lead=timedelta(hours=6), horizon=timedelta(days=2))
    seen: list[tuple[int, int, int]] = []

    def peeking(history: HistoryFrame, known: Sequence[Failure], now: int) -> Mapping[Key, tuple[float, bool]]:
        last_fail = max((to_epoch(f.time) for f in known), default=0)
        seen.append((now, int(history.time[-1]), last_fail))
        return {}

    score_with(peeking, frame, failures, protocol)
    assert seen
    assert all(last_row <= now and last_fail <= now for now, last_row, last_fail in seen)


def test_a_forecaster_given_the_future_would_score_differently(
    small_fleet: tuple[HistoryFrame, list[Failure]],
) -> None:
    frame, failures = small_fleet
    frame = frame.until(int(frame.time[0]) + 16 * 86400)
    protocol = BacktestProtocol(lead=timedelta(hours=6), horizon=timedelta(days=2))
    lead, horizon = 6 * 3600, 2 * 86400

    def oracle(known: Sequence[Failure]) -> bt.Scorer:
        def score(history: HistoryFrame, _: Sequence[Failure], now: int) -> Mapping[Key, tuple[float, bool]]:
            out: dict[Key, tuple[float, bool]] = {}
            for f in known:
                if now + lead <= to_epoch(f.time) <= now + lead + horizon and f.gpu is not None:
                    out[(f.node, f.gpu)] = (1.0, True)
            return out

        return score

    def honest(history: HistoryFrame, known: Sequence[Failure], now: int) -> Mapping[Key, tuple[float, bool]]:
        return oracle(known)(history, known, now)  # the same rule on what the backtest hands over

    cheating, _ = score_with(oracle(failures), frame, failures, protocol)
    fair, _ = score_with(honest, frame, failures, protocol)
    assert cheating.failures > 0
    assert cheating.recall == pytest.approx(1.0)
    assert fair.caught == 0 and fair.alarms == 0


def test_features_at_hour_k_do_not_change_when_the_future_does(
    small_fleet: tuple[HistoryFrame, list[Failure]],
) -> None:
    frame, failures = small_fleet
    grid = Grid.covering(int(frame.time[0]), int(frame.time[-1]))
    k = 24 * 12
    cut = grid.instant(k)
    ents = Entities.from_keys(frame.keys)
    full = chunk_features(prepare(frame, grid, failures, ents), 0, 16)
    past = chunk_features(
        prepare(frame.until(cut), grid, [f for f in failures if to_epoch(f.time) <= cut], ents), 0, 16
    )
    np.testing.assert_array_equal(full.x[:, :, : k + 1], past.x[:, :, : k + 1])


def test_backtest_scores_equal_forecast_fleet_run_at_that_hour(
    small_fleet: tuple[HistoryFrame, list[Failure]],
) -> None:
    frame, failures = small_fleet
    scored = score_backtest(frame, failures, BacktestProtocol(training="fixed"))
    for k in (30, 24 * 9 + 5, scored.k_scored - 1):
        now = scored.grid.instant(k)
        forecasts = forecast_frame(frame, from_epoch(now), prior_failures=failures, model=DEFAULT_MODEL)
        by_key = {(f.node, f.gpu): f.risk for f in forecasts}
        for e in range(0, len(scored.entities), 7):
            assert by_key[scored.entities.keys[e]] == pytest.approx(float(scored.risk[e, k]), rel=1e-4, abs=1e-7)


def test_backtest_json_has_exactly_the_issue_keys(small_fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = small_fleet
    result = bt.run_backtest(frame, failures, BacktestProtocol(training="fixed"))
    doc = result.to_json()
    assert set(doc) == {"forecaster", "baseline", "prevalence"}
    assert set(cast(dict[str, object], doc["forecaster"])) == METRIC_KEYS
    assert set(cast(dict[str, object], doc["baseline"])) == METRIC_KEYS
    assert 0 < cast(float, doc["prevalence"]) < 1
    json.dumps(doc, allow_nan=False)
    assert "by_class" in result.to_json(by_class=True)


def test_per_failure_outcomes_add_up_to_the_metrics(small_fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = small_fleet
    scored = score_backtest(frame, failures, BacktestProtocol(training="fixed"))
    for threshold in (0.02, 0.2, None):
        counted, caught = scored.caught(threshold)
        metrics = scored.evaluate(threshold=threshold).forecaster
        assert len(counted) == len(caught) == len(failures)
        assert int(counted.sum()) == metrics.failures
        assert int(caught.sum()) == metrics.caught
        assert not (caught & ~counted).any()


def test_labels_for_another_window_nest_as_windows_do(small_fleet: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = small_fleet
    scored = score_backtest(frame, failures, BacktestProtocol(training="fixed"))
    same = scored.labels_for(lead_hours=scored.protocol.lead_h, horizon_hours=scored.protocol.horizon_h)
    np.testing.assert_array_equal(same, scored.labels)
    from_now = scored.labels_for(lead_hours=0, horizon_hours=scored.protocol.lead_h + scored.protocol.horizon_h)
    assert (from_now | ~scored.labels).all()  # [t, t + lead + horizon] contains [t + lead, ...]
    assert from_now.sum() > scored.labels.sum()


def test_walk_forward_training_uses_only_windows_closed_before_the_refit(
    small_fleet: tuple[HistoryFrame, list[Failure]],
) -> None:
    frame, failures = small_fleet
    protocol = BacktestProtocol(lead=timedelta(hours=6), horizon=timedelta(days=2), min_train_failures=1)
    scored = score_backtest(frame, failures, protocol)
    assert len(scored.schedule.models) > 1  # it did refit
    assert scored.schedule.starts[0] == 0 and list(scored.schedule.starts) == sorted(scored.schedule.starts)
    rows = bt.training_set(frame, failures, protocol)
    window = protocol.lead_h + protocol.horizon_h
    for start in scored.schedule.starts[1:].tolist():
        usable = rows.hour + window <= start
        assert usable.any() and (rows.hour[usable] + window <= start).all()


def test_history_shorter_than_lead_plus_horizon_is_refused() -> None:
    rows = [Sample(T0 + timedelta(hours=h), "n", 0, "temperature_c", 60.0) for h in range(48)]
    with pytest.raises(ValueError, match="shorter than lead"):
        score_backtest(HistoryFrame.from_samples(rows), [])


# --- CSV files -----------------------------------------------------------------------------------


def test_csv_round_trip_keeps_every_row(tmp_path: Path) -> None:
    rows = [
        Sample(T0, "n1", 0, "ecc_sbe_volatile", 3.0),
        Sample(T0 + timedelta(seconds=90), "n1", None, "xid", 79.0),
        Sample(T0 + timedelta(hours=1), "n2", 7, "temperature_c", 61.5),
    ]
    fails = [Failure(T0 + timedelta(days=1), "n1", None, "fallen_off_bus"), Failure(T0, "n2", 7, "hbm")]
    write_history(tmp_path / "H.csv", rows)
    write_failures(tmp_path / "F.csv", fails)
    back = read_history(tmp_path / "H.csv").to_samples()
    assert sorted(back, key=lambda s: s.time) == rows
    assert sorted(read_failures(tmp_path / "F.csv"), key=lambda f: f.time) == sorted(fails, key=lambda f: f.time)


def test_csv_accepts_epoch_seconds_naive_iso_and_any_column_order(tmp_path: Path) -> None:
    p = tmp_path / "H.csv"
    p.write_text(
        "node,time,field,value,gpu,comment\n"
        "n1,1735689600,ecc_sbe_volatile,1,0,x\n"
        "n1,2025-01-01T01:00:00,ecc_sbe_volatile,2,0,\n"
        "n1,2025-01-01 02:00:00+01:00,xid,79,,\n"
    )
    s = read_history(p).to_samples()
    assert sorted(x.time for x in s) == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1)]
    assert {x.gpu for x in s} == {0, None}
    assert parse_time("1735689600.9") == 1735689600


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ("time,node,gpu,field,value\n2025-13-01T00:00:00Z,n1,0,xid,79\n", 2, "time", "ISO-8601"),
        ("time,node,gpu,field,value\n0,n1,0,xid,79\n0,n1,zero,xid,79\n", 3, "gpu", "non-negative integer"),
        ("time,node,gpu,field,value\n0,n1,0,ecc_sbe,1\n", 2, "field", "unknown field"),
        ("time,node,gpu,field,value\n0,n1,0,xid,seventy\n", 2, "value", "not a number"),
        ("time,node,gpu,field,value\n0,n1,0,xid,nan\n", 2, "value", "finite"),
        ("time,node,gpu,field,value\n0,,0,xid,79\n", 2, "node", "empty node"),
        ("time,node,gpu,field,value\n0,n1,0\n", 2, None, "expected 5 columns"),
        ("time,node,field,value\n0,n1,xid,79\n", 1, None, "missing column(s) gpu"),
        ("", 1, None, "empty file"),
    ],
)
def test_csv_errors_name_the_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: str | None, reason: str
) -> None:
    p = tmp_path / "HISTORY.csv"
    p.write_text(text)
    with pytest.raises(HistoryCsvError) as err:
        read_history(p)
    assert err.value.line == line
    assert err.value.column == column
    message = str(err.value)
    assert "HISTORY.csv" in message and f"line {line}" in message and reason in message
    if column:
        assert f"column '{column}'" in message


def test_failures_csv_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "FAILURES.csv"
    p.write_text("time,node,gpu,kind\n2025-01-01T00:00:00Z,n1,0,hbm\n2025-01-01T00:00:00Z,n1,0,\n")
    with pytest.raises(HistoryCsvError, match=r"FAILURES.csv, line 3, column 'kind'"):
        read_failures(p)


def test_failures_csv_carries_survived_incidents_only_when_there_are_any(tmp_path: Path) -> None:
    replaced = [Failure(T0, "n1", 0, "hbm")]
    write_failures(tmp_path / "plain.csv", replaced)
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == "time,node,gpu,kind"

    mixed = [*replaced, Failure(T0 + timedelta(days=2), "n1", None, "hbm", replaced=False)]
    write_failures(tmp_path / "mixed.csv", mixed)
    lines = (tmp_path / "mixed.csv").read_text().splitlines()
    assert lines == [
        "time,node,gpu,kind,replaced",
        "2025-01-01T00:00:00Z,n1,0,hbm,true",
        "2025-01-03T00:00:00Z,n1,,hbm,false",
    ]
    assert read_failures(tmp_path / "mixed.csv") == mixed


@pytest.mark.parametrize(
    ("cell", "replaced"), [("false", False), ("No", False), ("0", False), ("yes", True), ("", True)]
)
def test_failures_csv_reads_the_replaced_column(tmp_path: Path, cell: str, replaced: bool) -> None:
    p = tmp_path / "FAILURES.csv"
    p.write_text(f"kind,replaced,time,node,gpu\nhbm,{cell},0,n1,0\n")
    assert [f.replaced for f in read_failures(p)] == [replaced]


def test_failures_csv_refuses_a_replaced_cell_that_is_not_a_yes_or_no(tmp_path: Path) -> None:
    p = tmp_path / "FAILURES.csv"
    p.write_text("time,node,gpu,kind,replaced\n0,n1,0,hbm,maybe\n")
    with pytest.raises(HistoryCsvError, match=r"line 2, column 'replaced': not true or false"):
        read_failures(p)


# --- CLI round trip ---------------------------------------------------------------------------------


def test_cli_simulate_then_backtest_writes_the_exact_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    assert forecast_cli(["forecast", "simulate", "--gpus", "24", "--days", "21", "--seed", "3", "--out", str(out)]) == 0
    assert (out / "HISTORY.csv").exists() and (out / "FAILURES.csv").exists()
    report = tmp_path / "bt.json"
    args = ["forecast", "backtest", "--history", str(out / "HISTORY.csv"), "--failures", str(out / "FAILURES.csv")]
    assert forecast_cli([*args, "--json", str(report)]) == 0
    assert "forecaster's false alarms: " in capsys.readouterr().err
    doc = json.loads(report.read_text())
    assert set(doc) == {"forecaster", "baseline", "prevalence"}
    assert set(doc["forecaster"]) == METRIC_KEYS and set(doc["baseline"]) == METRIC_KEYS
    assert forecast_cli([*args, "--lead-hours", "12", "--horizon-days", "3", "--json", "-", "--by-class"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"forecaster", "baseline", "prevalence", "by_class", "false_alarms"}
    for who in ("forecaster", "baseline"):
        m, false = printed[who], printed["false_alarms"][who]
        assert set(false) == {"too_late", "too_early", "no_failure"}
        assert sum(false.values()) == m["alarms"] - (round(m["precision"] * m["alarms"]) if m["alarms"] else 0)


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = tmp_path / "HISTORY.csv"
    h.write_text("time,node,gpu,field,value\nyesterday,n1,0,xid,79\n")
    f = tmp_path / "FAILURES.csv"
    f.write_text("time,node,gpu,kind\n")
    code = forecast_cli(["forecast", "backtest", "--history", str(h), "--failures", str(f), "--json", "-"])
    assert code == 2
    assert "HISTORY.csv, line 2, column 'time'" in capsys.readouterr().err


def test_cli_score_prints_the_risk_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    forecast_cli(["forecast", "simulate", "--gpus", "16", "--days", "10", "--seed", "1", "--out", str(out)])
    capsys.readouterr()
    code = forecast_cli(["forecast", "score", "--history", str(out / "HISTORY.csv"), "--at", "2025-01-08T00:00:00Z"])
    assert code == 0
    text = capsys.readouterr().out
    assert "risk of failure within 8 days of the forecast" in text and "node-0001" in text
    assert "fallen_off_bus" in text
