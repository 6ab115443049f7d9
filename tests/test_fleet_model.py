"""A model fitted on a fleet's own history: the fit, its file, and the commands that make and use it."""

from __future__ import annotations

import itertools
import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from gpumedic.adapters.history_csv import read_failures, read_history, write_failures, write_history
from gpumedic.adapters.model_file import (
    ModelFileError,
    archived_models,
    install_model,
    load_model,
    read_model,
    write_model,
)
from gpumedic.adapters.store import TelemetryStore
from gpumedic.backtest import BacktestProtocol, FleetHistory, fit_fleet_model, held_out_check, score_backtest
from gpumedic.cli_forecast import main as forecast_cli
from gpumedic.domain.forecast import DEFAULT_MODEL, Failure, HazardModel, HistoryFrame, to_epoch
from gpumedic.domain.history import Sample
from gpumedic.refit import refit_on_history
from gpumedic.sim.degradation import DegradationParams, simulate_fleet_frame

# Failures ten times as frequent as the field's, so that a small fleet holds enough to fit on.
FREQUENT = DegradationParams(failures_per_gpu_day=3e-3)


@pytest.fixture(scope="module")
def fleet_a() -> tuple[HistoryFrame, list[Failure]]:
    return simulate_fleet_frame(160, 45, seed=21, params=FREQUENT)


@pytest.fixture(scope="module")
def fleet_b() -> tuple[HistoryFrame, list[Failure]]:
    return simulate_fleet_frame(160, 45, seed=22, params=FREQUENT)


def _intercept_only(model: HazardModel) -> HazardModel:
    """A model that knows each cause's base rate and nothing else."""
    return replace(model, causes=tuple(replace(c, coef=(0.0,) * len(c.coef)) for c in model.causes))


# --- the fit ---------------------------------------------------------------------------------------


def test_a_fit_learns_what_the_history_holds(
    fleet_a: tuple[HistoryFrame, list[Failure]], fleet_b: tuple[HistoryFrame, list[Failure]]
) -> None:
    """Starting from a model that has learnt nothing, a fit on fleet A ranks fleet B's GPUs far better."""
    blank = _intercept_only(DEFAULT_MODEL)
    protocol = BacktestProtocol(prior_precision=1.0, training="fixed")
    fit = fit_fleet_model(*fleet_a, protocol, prior=blank)
    assert fit.failures >= protocol.min_train_failures and fit.positive_rows > 0
    before = score_backtest(*fleet_b, protocol, model=blank).evaluate().forecaster.pr_auc
    after = score_backtest(*fleet_b, protocol, model=fit.model).evaluate().forecaster.pr_auc
    assert after > 3 * before


def test_a_fit_until_a_time_sees_nothing_after_it(fleet_a: tuple[HistoryFrame, list[Failure]]) -> None:
    """Fitting the whole history `until` T gives the very model fitted on the history cut at T."""
    frame, failures = fleet_a
    protocol = BacktestProtocol(prior_precision=1.0)
    until = datetime.fromtimestamp(int(frame.time[0]), UTC) + timedelta(days=30)
    cut = [f for f in failures if to_epoch(f.time) <= to_epoch(until)]
    whole = fit_fleet_model(frame, failures, protocol, until=until)
    only_past = fit_fleet_model(frame.until(to_epoch(until)), cut, protocol)
    assert whole.rows == only_past.rows and whole.failures_by_cause == only_past.failures_by_cause
    for a, b in zip(whole.model.causes, only_past.model.causes, strict=True):
        np.testing.assert_allclose(a.coef, b.coef, rtol=1e-9, atol=1e-12)
        assert a.intercept == pytest.approx(b.intercept, rel=1e-9)
    assert whole.last + timedelta(hours=protocol.lead_h + protocol.horizon_h) <= until


def test_a_strong_prior_keeps_the_model_and_a_weak_one_lets_the_history_move_it(
    fleet_a: tuple[HistoryFrame, list[Failure]],
) -> None:
    def moved(precision: float) -> float:
        fit = fit_fleet_model(*fleet_a, BacktestProtocol(prior_precision=precision))
        return max(
            float(np.max(np.abs(np.subtract(a.coef, b.coef))))
            for a, b in zip(fit.model.causes, DEFAULT_MODEL.causes, strict=True)
        )

    assert moved(1e8) < 1e-3 < moved(1.0)


def test_a_fit_on_too_few_failures_is_refused(fleet_a: tuple[HistoryFrame, list[Failure]]) -> None:
    frame, failures = fleet_a
    with pytest.raises(ValueError, match="fewer than 3"):
        fit_fleet_model(frame, failures[:2], BacktestProtocol())
    with pytest.raises(ValueError, match="nothing to fit on"):
        fit_fleet_model(frame, failures, BacktestProtocol(), until=datetime.fromtimestamp(int(frame.time[0]), UTC))


# --- the model file ----------------------------------------------------------------------------------


def test_a_model_file_reads_back_and_is_replaced_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    write_model(path, DEFAULT_MODEL.with_threshold(0.4))
    assert read_model(path).alarm_threshold == 0.4
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the flow's user; it holds no secret
    write_model(path, DEFAULT_MODEL)
    assert read_model(path).alarm_threshold == DEFAULT_MODEL.alarm_threshold
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary file left behind


def test_a_model_file_that_cannot_be_used_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"forecast model .*absent.json: No such file"):
        read_model(tmp_path / "absent.json")
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"format": ')
    with pytest.raises(ModelFileError, match="garbled.json: not JSON"):
        read_model(garbled)
    other = tmp_path / "other.json"
    doc = json.loads(json.dumps(_as_doc(DEFAULT_MODEL)))
    doc["features"] = doc["features"][:-1]
    other.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="other.json: features: .*refit it"):
        read_model(other)


def _as_doc(model: HazardModel) -> dict[str, object]:
    from gpumedic.domain.forecast.model_codec import model_to_dict

    return model_to_dict(model)


def test_installing_a_model_keeps_the_ones_it_replaced_newest_last_and_only_so_many(tmp_path: Path) -> None:
    path = tmp_path / "fleet-model.json"
    t0 = datetime(2026, 1, 4, 4, 0, tzinfo=UTC)
    assert install_model(path, DEFAULT_MODEL.with_threshold(0.1), at=t0) is None  # nothing to keep yet
    kept = [install_model(path, DEFAULT_MODEL.with_threshold(0.1 * (w + 2)), at=t0 + timedelta(weeks=w + 1), keep=3)
            for w in range(4)]
    assert read_model(path).alarm_threshold == pytest.approx(0.5)
    assert archived_models(path) == kept[1:]  # the oldest went once there were more than 3
    assert kept[-1] is not None and kept[-1].name == "fleet-model.20260201T040000Z.json"
    assert read_model(kept[-1]).alarm_threshold == pytest.approx(0.4)  # the model the last install replaced
    (tmp_path / "fleet-model.notes.json").write_text("{}")  # someone else's file is never touched
    install_model(path, DEFAULT_MODEL, at=t0 + timedelta(weeks=9), keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fleet-model.20260308T040000Z.json", "fleet-model.json", "fleet-model.notes.json"
    ]


def test_a_named_model_file_that_does_not_exist_yet_is_the_shipped_model_where_asked(tmp_path: Path) -> None:
    absent = tmp_path / "fleet-model.json"
    model = load_model(absent, missing_is_shipped=True)
    assert model.causes == DEFAULT_MODEL.causes
    assert f"no fitted model at {absent} yet" in model.note
    with pytest.raises(ModelFileError, match="No such file"):
        load_model(absent)
    absent.write_text("{}")  # there, but not a model: never quietly the shipped one
    with pytest.raises(ModelFileError):
        load_model(absent, missing_is_shipped=True)


# --- the weekly refit ---------------------------------------------------------------------------------


def _end(frame: HistoryFrame) -> datetime:
    return datetime.fromtimestamp(int(frame.time[-1]), UTC)


def test_a_refit_is_adopted_exactly_when_its_fit_ranks_the_unseen_weeks_no_worse(
    fleet_a: tuple[HistoryFrame, list[Failure]], fleet_b: tuple[HistoryFrame, list[Failure]]
) -> None:
    adopted = []
    for (frame, failures), precision in itertools.product((fleet_a, fleet_b), (1.0, 100.0)):
        protocol = BacktestProtocol(prior_precision=precision)
        now = _end(frame)
        outcome = refit_on_history(frame, failures, now, check_days=15, protocol=protocol)
        until = now - timedelta(days=15)
        candidate = fit_fleet_model(frame, failures, protocol, until=until)
        check = held_out_check(frame, failures, protocol, prior=DEFAULT_MODEL, fitted=candidate.model, until=until)
        assert outcome.check == check and check.judged
        assert (outcome.adopted is not None) == (check.fitted_pr_auc >= check.prior_pr_auc), outcome.reason
        adopted.append(outcome.adopted is not None)
        if outcome.adopted is None:
            assert "worse than its prior" in outcome.reason
            continue
        everything = fit_fleet_model(frame, failures, protocol)
        for got, want in zip(outcome.adopted.causes, everything.model.causes, strict=True):
            assert got.coef == want.coef and got.intercept == want.intercept
        assert f"fitted {check.fitted_pr_auc:.3f}" in outcome.adopted.note
        assert outcome.final is not None and outcome.final.rows > candidate.rows
    assert set(adopted) == {True, False}  # both decisions were exercised


def test_the_check_scores_the_unseen_hours_exactly_as_the_backtest_does(
    fleet_a: tuple[HistoryFrame, list[Failure]],
) -> None:
    """The check scores only the hours it judges, both models from one feature pass; its figures are
    those of two whole fixed-model backtests cut to the same hours."""
    frame, failures = fleet_a
    protocol = BacktestProtocol(prior_precision=1.0)
    history = FleetHistory(frame, failures, protocol)
    until = _end(frame) - timedelta(days=20)
    fitted = history.fit(DEFAULT_MODEL, until).model
    fixed = replace(protocol, training="fixed")
    prior_scored = score_backtest(frame, failures, fixed)
    fitted_scored = score_backtest(frame, failures, fixed, model=fitted)
    hour = prior_scored.first_hour_at(until)
    for now in (None, _end(frame) - timedelta(days=3)):
        window_closed = None if now is None else now - protocol.lead - protocol.horizon
        stop = prior_scored.k_scored if window_closed is None else prior_scored.hours_through(window_closed)
        check = history.check(prior=DEFAULT_MODEL, fitted=fitted, until=until, now=now)
        assert check.judged and check.hours == stop - hour > 0
        assert (check.prior_pr_auc, check.prevalence) == prior_scored.pr_auc_from(hour, stop)
        assert check.fitted_pr_auc == fitted_scored.pr_auc_from(hour, stop)[0]
        assert check.fitted_pr_auc != check.prior_pr_auc
    assert history.check(prior=DEFAULT_MODEL, fitted=fitted, until=until, now=until).hours == 0


def test_a_refit_computes_the_training_features_once_for_both_fits(
    fleet_a: tuple[HistoryFrame, list[Failure]],
) -> None:
    said: list[str] = []
    frame, failures = fleet_a
    protocol = BacktestProtocol(prior_precision=1.0)
    # Against a prior that has learnt nothing the check passes, whatever the shipped coefficients are.
    blank = _intercept_only(DEFAULT_MODEL)
    outcome = refit_on_history(
        frame, failures, _end(frame), check_days=15, protocol=protocol, prior=blank, progress=said.append
    )
    assert outcome.final is not None, outcome.reason  # both fits were made
    gpus = len({key for key in frame.keys if key[1] is not None})
    assert sum(line == f"training features of {gpus:,}/{gpus:,} GPUs" for line in said) == 1, said
    assert sum(line.startswith("scoring the hours after") for line in said) == 1


def test_a_refit_uses_nothing_after_its_now(fleet_b: tuple[HistoryFrame, list[Failure]]) -> None:
    """Rows and failures after `now` may say anything: the decision, the check and the model stay the same."""
    frame, failures = fleet_b
    now = _end(frame) - timedelta(days=8)
    t = to_epoch(now)
    cut = int(np.searchsorted(frame.time, t, side="right"))
    garbled_values = frame.value.copy()
    garbled_values[cut:] = garbled_values[cut:] * 7 + 3
    garbled = HistoryFrame(frame.keys, frame.time, frame.key, frame.field, garbled_values)
    moved = [f if to_epoch(f.time) <= t else replace(f, node=failures[0].node, gpu=0) for f in failures]
    assert len(frame) > cut and moved != failures
    protocol = BacktestProtocol(prior_precision=100.0)
    honest = refit_on_history(frame, failures, now, check_days=15, protocol=protocol)
    other = refit_on_history(garbled, moved, now, check_days=15, protocol=protocol)
    assert honest.check == other.check and honest.check is not None and honest.check.judged
    assert honest.reason == other.reason
    assert honest.adopted is not None and other.adopted is not None
    assert _as_doc(honest.adopted) == _as_doc(other.adopted)  # as written to the file (a NaN is never == itself)


def test_a_refit_keeps_the_model_when_there_is_nothing_to_fit_on_or_to_judge_by(
    fleet_a: tuple[HistoryFrame, list[Failure]],
) -> None:
    frame, failures = fleet_a
    now = _end(frame)
    few = refit_on_history(frame, failures[:2], now, check_days=15)
    assert few.adopted is None and few.check is None
    assert "nothing to fit on" in few.reason and "fewer than 3" in few.reason
    early = [f for f in failures if f.time < now - timedelta(days=20)]
    quiet = refit_on_history(frame, early, now, check_days=15)
    assert quiet.adopted is None and quiet.check is not None and not quiet.check.judged
    assert "no failure in the windows after" in quiet.reason


# --- the commands ----------------------------------------------------------------------------------


def test_cli_fit_writes_a_model_that_score_and_backtest_then_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_a: tuple[HistoryFrame, list[Failure]]
) -> None:
    sim = tmp_path / "sim"
    sim.mkdir()
    write_history(sim / "HISTORY.csv", fleet_a[0])
    write_failures(sim / "FAILURES.csv", fleet_a[1])
    data = ["--history", str(sim / "HISTORY.csv"), "--failures", str(sim / "FAILURES.csv")]
    model_path = tmp_path / "fleet-model.json"
    code = forecast_cli(
        ["forecast", "fit", *data, "--out", str(model_path), "--prior-precision", "1", "--threshold", "0.6"]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    model = read_model(model_path)
    assert model.alarm_threshold == 0.6
    assert model.note in printed and "fitted by `gpumedic forecast fit` on HISTORY.csv" in model.note
    assert "largest moves from the prior" in printed
    assert model.causes != DEFAULT_MODEL.causes

    at = ["--at", "2025-02-01T00:00:00Z"]
    assert (
        forecast_cli(["forecast", "score", "--history", str(sim / "HISTORY.csv"), *at, "--model", str(model_path)]) == 0
    )
    with_fit = capsys.readouterr().out
    assert forecast_cli(["forecast", "score", "--history", str(sim / "HISTORY.csv"), *at]) == 0
    assert capsys.readouterr().out != with_fit  # the model changed the risks

    report = tmp_path / "bt.json"
    args = ["forecast", "backtest", *data, "--training", "fixed", "--model", str(model_path), "--json", str(report)]
    assert forecast_cli(args) == 0
    assert set(json.loads(report.read_text())) == {"forecaster", "baseline", "prevalence"}


def test_cli_refuses_a_bad_model_or_too_few_failures_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = tmp_path / "sim"
    forecast_cli(["forecast", "simulate", "--gpus", "8", "--days", "12", "--seed", "2", "--out", str(sim)])
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    history = ["--history", str(sim / "HISTORY.csv")]
    code = forecast_cli(["forecast", "score", *history, "--at", "2025-01-10", "--model", str(bad)])
    assert code == 2 and "bad.json: the document: expected an object" in capsys.readouterr().err
    empty = tmp_path / "FAILURES.csv"
    empty.write_text("time,node,gpu,kind\n")
    code = forecast_cli(["forecast", "fit", *history, "--failures", str(empty), "--out", str(tmp_path / "m.json")])
    assert code == 2 and "hold 0 failures, fewer than 3" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_cli_export_writes_the_store_as_the_csv_files_fit_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    store.append_samples(
        Sample(now - timedelta(hours=h), "n1", gpu, "ecc_sbe_aggregate", float(100 - h))
        for h in range(72)
        for gpu in (0, 1)
    )
    store.append_samples([Sample(now - timedelta(hours=5), "n1", 1, "xid", 63.0)])
    store.record_incident("inc-1", "n1", {1: "remediation:reset_gpu"}, now - timedelta(hours=2))
    store.record_incident("inc-2", "n1", {0: "hbm"}, now - timedelta(hours=3))
    store.record_incident("inc-0", "n1", {0: "remediation:reset_gpu"}, now - timedelta(days=40))  # before --days
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n")

    out = tmp_path / "export"
    assert forecast_cli(["forecast", "export", "--fleet", str(fleet), "--days", "30", "--out", str(out)]) == 0
    assert "1 of 2 incidents name the remediation they started" in capsys.readouterr().err
    exported = read_history(out / "HISTORY.csv")
    stored = store.history_frame(now - timedelta(days=30))

    def rows(frame: HistoryFrame) -> list[tuple[datetime, str, int | None, str, float]]:
        return sorted((s.time, s.node, s.gpu, s.field, s.value) for s in frame.to_samples())

    assert rows(exported) == rows(stored)
    assert len(exported) == 2 * 72 + 1
    incidents = read_failures(out / "FAILURES.csv")
    assert [(f.node, f.gpu, f.kind, f.replaced) for f in incidents] == [
        ("n1", 0, "hbm", False), ("n1", 1, "remediation:reset_gpu", False)
    ]


def test_pr_auc_from_the_first_hour_is_the_backtest_s_and_later_hours_are_a_tail(
    fleet_b: tuple[HistoryFrame, list[Failure]],
) -> None:
    scored = score_backtest(*fleet_b, BacktestProtocol(training="fixed"))
    assert scored.pr_auc_from(0)[0] == scored.evaluate().forecaster.pr_auc
    start = datetime.fromtimestamp(int(fleet_b[0].time[0]), UTC)
    assert scored.first_hour_at(start - timedelta(days=3)) == 0
    k = scored.first_hour_at(start + timedelta(days=20, minutes=30))
    assert scored.grid.instant(k - 1) < to_epoch(start + timedelta(days=20, minutes=30)) <= scored.grid.instant(k)
    _, prevalence = scored.pr_auc_from(k)
    assert prevalence == pytest.approx(scored.labels[:, k:].mean())
    assert scored.first_hour_at(start + timedelta(days=400)) == scored.k_scored
    assert np.isnan(scored.pr_auc_from(scored.k_scored)[0])


def test_cli_fit_until_checks_both_models_on_the_hours_it_did_not_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_a: tuple[HistoryFrame, list[Failure]]
) -> None:
    write_history(tmp_path / "HISTORY.csv", fleet_a[0])
    write_failures(tmp_path / "FAILURES.csv", fleet_a[1])
    until = datetime.fromtimestamp(int(fleet_a[0].time[0]), UTC) + timedelta(days=25)
    args = ["forecast", "fit", "--history", str(tmp_path / "HISTORY.csv"), "--failures", str(tmp_path / "FAILURES.csv")]
    code = forecast_cli(
        [*args, "--out", str(tmp_path / "m.json"), "--until", until.isoformat(), "--prior-precision", "1"]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    shipped = score_backtest(*fleet_a, BacktestProtocol(training="fixed"))
    fitted = score_backtest(*fleet_a, BacktestProtocol(training="fixed"), model=read_model(tmp_path / "m.json"))
    hour = shipped.first_hour_at(until)
    expected = f"PR-AUC prior {shipped.pr_auc_from(hour)[0]:.3f}, fitted {fitted.pr_auc_from(hour)[0]:.3f}"
    assert f"held-out check, {shipped.k_scored - hour:,} hours after {until:%Y-%m-%d %H:%M} UTC" in printed
    assert expected in printed


def test_cli_fit_until_says_when_the_unseen_hours_cannot_judge_the_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet_a: tuple[HistoryFrame, list[Failure]]
) -> None:
    frame, failures = fleet_a
    start, end = (datetime.fromtimestamp(int(t), UTC) for t in (frame.time[0], frame.time[-1]))
    write_history(tmp_path / "HISTORY.csv", frame)
    args = ["forecast", "fit", "--history", str(tmp_path / "HISTORY.csv"), "--out", str(tmp_path / "m.json")]
    until = start + timedelta(days=30)
    early = [f for f in failures if f.time < until - timedelta(days=10)]
    write_failures(tmp_path / "EARLY.csv", early)
    assert forecast_cli([*args, "--failures", str(tmp_path / "EARLY.csv"), "--until", until.isoformat()]) == 0
    assert f"no failure in the windows after {until:%Y-%m-%d %H:%M} UTC" in capsys.readouterr().out
    write_failures(tmp_path / "FAILURES.csv", failures)
    late = end - timedelta(days=2)
    assert forecast_cli([*args, "--failures", str(tmp_path / "FAILURES.csv"), "--until", late.isoformat()]) == 0
    assert f"no scored hour after {late:%Y-%m-%d %H:%M} UTC" in capsys.readouterr().out
