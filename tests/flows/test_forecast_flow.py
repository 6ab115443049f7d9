"""The daily failure_forecast flow under the Prefect harness, over a real telemetry store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.forecast import CondemnedGpu
from gpumedic.domain.history import Sample
from gpumedic.domain.verdict import Action


def _degrading_history(now: datetime) -> list[Sample]:
    """Node n1: GPU 3 runs out of spare rows (SBE burst, remaps, pending remap, Xid 63 then 64); the rest are quiet."""
    rows = []
    for h in range(24 * 20):
        t = now - timedelta(hours=24 * 20 - h)
        for gpu in range(4):
            bad = gpu == 3
            sbe = float(int(max(0, h - 300) ** 2 * 0.5)) if bad else 0.0
            remapped = float(max(0, (h - 380) // 20)) if bad else 0.0
            rows.append(Sample(t, "n1", gpu, "ecc_sbe_aggregate", sbe))
            rows.append(Sample(t, "n1", gpu, "remapped_rows_uncorrectable", remapped))
            rows.append(Sample(t, "n1", gpu, "row_remap_pending", float(bad and h > 450)))
            rows.append(Sample(t, "n1", gpu, "temperature_c", 60.0))
        if h in (400, 430, 455):
            rows.append(Sample(t, "n1", 3, "xid", 63.0))
        if h == 470:
            rows.append(Sample(t, "n1", 3, "xid", 64.0))
    return rows


@pytest.mark.usefixtures("prefect_harness")
def test_forecast_alarms_once_on_the_degrading_gpu_and_reports_its_evidence(tmp_path: Path, db_url: str) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast

    url = db_url  # SQLite and PostgreSQL
    TelemetryStore(url).append_samples(_degrading_history(datetime.now(UTC)))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n")

    first = failure_forecast(fleet_file=str(fleet))
    assert first["gpus"] == 4
    assert [(a["node"], a["gpu"]) for a in first["alarms"]] == [("n1", 3)]
    assert first["requested"] == ["n1/3"]
    assert any("remapped" in factor for factor in first["alarms"][0]["factors"])

    second = failure_forecast(fleet_file=str(fleet))
    assert second["requested"] == []  # the same alarm is not requested twice

    stored = TelemetryStore(url).latest_forecasts(["n1"])
    assert stored[("n1", 3)].alarm
    assert not stored[("n1", 0)].alarm
    report = Artifact.get("gpu-failure-forecast")
    assert report is not None
    assert "n1 GPU 3" in str(report.data)
    assert "correctable ECC / day" in str(report.data)
    assert Artifact.get("gpu-failure-risk") is not None


@pytest.mark.usefixtures("prefect_harness")
def test_gpus_without_telemetry_lately_are_listed_as_silent_never_scored_or_requested(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast

    now = datetime.now(UTC)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    # n2 is n1's degrading history, stopped five days ago (the node was taken out, or cannot be reached):
    # scored, its stale remap flags would head the list and request a replacement nobody can check.
    gone = now - timedelta(days=5)
    store.append_samples(Sample(s.time, "n2", s.gpu, s.field, s.value) for s in _degrading_history(gone))
    store.append_samples(s for s in _degrading_history(now) if s.gpu != 3)  # n1's GPUs 0-2: quiet, still read
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}, {{name: n2}}]\n  store_url: {url}\n")

    result = failure_forecast(fleet_file=str(fleet))
    assert result["gpus"] == 3 and result["alarms"] == [] and result["requested"] == []
    assert [(s["node"], s["gpu"]) for s in result["silent"]] == [("n2", 0), ("n2", 1), ("n2", 2), ("n2", 3)]
    assert datetime.fromisoformat(result["silent"][0]["last_sample"]) <= gone
    assert store.latest_forecasts(["n2"]) == {}  # no risk is shown for it anywhere (sweep, approval form)
    table = Artifact.get("gpu-failure-risk")
    assert table is not None and "unknown" in str(table.data) and "no telemetry since" in str(table.data)
    report = Artifact.get("gpu-failure-forecast")
    assert report is not None and "## Not scored: no telemetry lately" in str(report.data)
    assert "| n2 | 3 |" in str(report.data)

    # Heard from again, it is scored again; a shorter `silent_after_hours` sets n1 aside too.
    assert failure_forecast(fleet_file=str(fleet), silent_after_hours=24 * 6)["gpus"] == 7
    none_scored = failure_forecast(fleet_file=str(fleet), silent_after_hours=0.5, emit_events=False)
    assert none_scored["gpus"] == 0 and len(none_scored["silent"]) == 7
    assert store.latest_forecasts(["n1", "n2"]) == {}  # an empty run leaves no earlier risk standing


@pytest.mark.usefixtures("prefect_harness")
def test_a_node_taken_out_of_the_fleet_is_neither_scored_nor_listed_as_silent(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    now = datetime.now(UTC)
    # n2 degrades as n1 did and is still read: scored, it would alarm and order a part. But the fleet no longer
    # holds it (decommissioned, or moved to another fleet): that board is not this fleet's to maintain.
    store.append_samples(Sample(s.time, "n2", s.gpu, s.field, s.value) for s in _degrading_history(now))
    store.append_samples(s for s in _degrading_history(now) if s.gpu != 3)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n")

    result = failure_forecast(fleet_file=str(fleet))
    assert result["gpus"] == 3 and result["alarms"] == [] and result["requested"] == []
    assert result["departed"] == ["n2"] and result["silent"] == []
    assert store.latest_forecasts(["n2"]) == {}
    report = Artifact.get("gpu-failure-forecast")
    assert report is not None and "1 node with history in the store is no longer in the fleet" in str(report.data)
    assert "| n2 |" not in str(report.data)

    # Back in the fleet file, it is scored on the history the store kept.
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}, {{name: n2}}]\n  store_url: {url}\n")
    back = failure_forecast(fleet_file=str(fleet))
    assert back["departed"] == [] and back["gpus"] == 7
    assert [(a["node"], a["gpu"]) for a in back["alarms"]] == [("n2", 3)] and back["requested"] == ["n2/3"]


def _sweep_condemning(store: TelemetryStore, at: datetime, *condemned: CondemnedGpu) -> None:
    """What a sweep records: its summary and the GPUs it sent to a human."""
    sweep_id = condemned[0].sweep_id if condemned else f"sweep-{at:%H%M%S}"
    store.record_sweep(sweep_id, at, {"summary": "...", "condemned": [c.to_json() for c in condemned]})


@pytest.mark.usefixtures("prefect_harness")
def test_an_alarm_on_a_gpu_the_sweep_sends_to_a_human_is_held_until_it_is_back(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sweep already said `replace`: remediation asks about that GPU, so the forecast orders nothing."""
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast
    from gpumedic.cli_forecast import main as forecast_cli

    now = datetime.now(UTC)
    store = TelemetryStore(db_url)
    store.append_samples(_degrading_history(now))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {db_url}\n")
    _sweep_condemning(store, now - timedelta(hours=2))  # an earlier sweep, which condemned nothing
    _sweep_condemning(store, now - timedelta(minutes=5), CondemnedGpu("n1", 3, Action.REPLACE, "sweep-b"))

    held = failure_forecast(fleet_file=str(fleet))
    [alarm] = held["alarms"]
    assert (alarm["node"], alarm["gpu"]) == ("n1", 3) and "sweep-b" in alarm["held"]
    assert held["requested"] == []
    stored = store.latest_forecasts(["n1"])[("n1", 3)]
    assert stored.alarm and not stored.requested and "replace" in (stored.held or "")
    table = Artifact.get("gpu-failure-risk")
    assert table is not None and '"alarm": "held"' in str(table.data)
    report = Artifact.get("gpu-failure-forecast")
    assert report is not None and "n1 GPU 3: " in str(report.data) and "(alarm, held)" in str(report.data)
    assert forecast_cli(["forecast", "show", "--fleet", str(fleet), "--top", "1"]) == 0
    [shown] = capsys.readouterr().out.splitlines()[2:]
    assert shown.split()[:2] == ["n1", "3"] and " held " in shown and "sweep sweep-b sends GPU 3" in shown

    # The GPU came back (the part was swapped, or the inspection found nothing) and still alarms: requested now.
    _sweep_condemning(store, now - timedelta(minutes=1))
    back = failure_forecast(fleet_file=str(fleet))
    assert back["alarms"][0]["held"] is None and back["requested"] == ["n1/3"]
    assert store.latest_forecasts(["n1"])[("n1", 3)].requested


@pytest.mark.usefixtures("prefect_harness")
def test_prior_incidents_from_remediation_raise_the_risk_and_are_named(tmp_path: Path) -> None:
    from flows.forecast import failure_forecast

    now = datetime.now(UTC)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    store.append_samples(  # four quiet GPUs
        Sample(now - timedelta(hours=h), "n1", gpu, "ecc_sbe_aggregate", 0.0) for h in range(240) for gpu in range(4)
    )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n")
    failure_forecast(fleet_file=str(fleet), emit_events=False)
    before = store.latest_forecasts(["n1"])
    assert before[("n1", 2)].risk == pytest.approx(before[("n1", 0)].risk)

    store.record_incident("inc-a", "n1", {2: "remediation:reset_gpu"}, now - timedelta(days=40))
    store.record_incident("inc-b", "n1", {2: "remediation:reset_gpu"}, now - timedelta(days=12))
    failure_forecast(fleet_file=str(fleet), emit_events=False)
    after = store.latest_forecasts(["n1"])
    # Prior incidents on a node are the field's strongest predictor: every GPU of n1 is riskier now.
    for gpu in range(4):
        assert after[("n1", gpu)].risk > 2 * before[("n1", gpu)].risk
    assert any("GPU slot" in f for f in after[("n1", 2)].factors)  # and GPU 2's own are named
    assert not any("GPU slot" in f for f in after[("n1", 0)].factors)


@pytest.mark.usefixtures("prefect_harness")
def test_the_fleet_s_own_model_scores_and_is_named_in_the_report(tmp_path: Path) -> None:
    from dataclasses import replace

    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast
    from gpumedic.adapters.model_file import write_model
    from gpumedic.domain.forecast import DEFAULT_MODEL

    url = f"sqlite:///{tmp_path / 'store.db'}"
    TelemetryStore(url).append_samples(_degrading_history(datetime.now(UTC)))
    # A model that learnt nothing but base rates: GPU 3's evidence no longer counts, so it does not alarm.
    blank = replace(DEFAULT_MODEL, causes=tuple(replace(c, coef=(0.0,) * len(c.coef)) for c in DEFAULT_MODEL.causes))
    (tmp_path / "models").mkdir()
    write_model(tmp_path / "models" / "fleet.json", replace(blank, note="fleet n1 model"))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n"
        "  forecast_model: models/fleet.json\n"
    )

    result = failure_forecast(fleet_file=str(fleet), emit_events=False)
    assert result["model"] == "fleet n1 model"
    assert result["gpus"] == 4 and result["alarms"] == []
    report = Artifact.get("gpu-failure-forecast")
    assert report is not None and "Model: fleet n1 model." in str(report.data)


@pytest.mark.usefixtures("prefect_harness")
def test_a_model_file_that_cannot_be_read_fails_the_run_before_anything_is_scored(tmp_path: Path) -> None:
    from flows.forecast import failure_forecast
    from gpumedic.adapters.model_file import ModelFileError

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    store.append_samples(_degrading_history(datetime.now(UTC)))
    (tmp_path / "fleet.json").write_text('{"format": "gpumedic.hazard-model/1", "features": []}')
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n  forecast_model: fleet.json\n"
    )
    with pytest.raises(ModelFileError, match=r"fleet.json: features: .*refit it"):
        failure_forecast(fleet_file=str(fleet), emit_events=False)
    assert store.latest_forecasts(["n1"]) == {}  # the previous forecast (none) stands; no risk was recorded


@pytest.mark.usefixtures("prefect_harness")
def test_forecast_show_prints_the_latest_forecast_riskiest_first(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from flows.forecast import failure_forecast
    from gpumedic.cli_forecast import main as forecast_cli

    url = f"sqlite:///{tmp_path / 'store.db'}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n")
    assert forecast_cli(["forecast", "show", "--fleet", str(fleet)]) == 0
    assert "no forecast in the store yet" in capsys.readouterr().out

    TelemetryStore(url).append_samples(_degrading_history(datetime.now(UTC)))
    failure_forecast(fleet_file=str(fleet), horizon_days=3, emit_events=False)
    assert forecast_cli(["forecast", "show", "--fleet", str(fleet), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 GPUs, 1 above the alarm threshold; risk of failure within 4 days of the forecast" in lines[0]
    assert len(lines) == 4  # heading, column names, the two riskiest
    assert lines[2].split()[:2] == ["n1", "3"] and " yes " in lines[2] and "remapped" in lines[2]
    assert " yes " not in lines[3]
