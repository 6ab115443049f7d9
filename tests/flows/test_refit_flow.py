"""The weekly refit_forecast_model flow under the Prefect harness, over a real telemetry store.

The store holds a simulated fleet's history moved to end now, and its failures recorded as
remediation records them (per GPU, with the failure class the evidence named). The flow fits,
checks on the last weeks, writes the model file only when the check holds, and the daily
forecast then scores with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.forecast import Failure, to_epoch
from gpumedic.domain.history import Sample
from gpumedic.sim.degradation import DegradationParams, simulate_fleet_frame

CHECK_DAYS = 15.0


def _fleet_in_store(tmp_path: Path, *, incidents: int | None = None) -> tuple[Path, str, list[Failure]]:
    """A 160-GPU, 45-day simulated fleet (failures ten times the field's rate) ending an hour ago."""
    frame, failures = simulate_fleet_frame(160, 45, seed=22, params=DegradationParams(failures_per_gpu_day=3e-3))
    shift = timedelta(seconds=to_epoch(datetime.now(UTC) - timedelta(hours=1)) - int(frame.time[-1]))
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    store.append_samples(Sample(s.time + shift, s.node, s.gpu, s.field, s.value) for s in frame.to_samples())
    recorded = failures if incidents is None else failures[:incidents]
    for i, f in enumerate(recorded):
        store.record_incident(f"sim-{i}", f.node, {f.gpu: f.kind}, f.time + shift)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"fleet:\n  source: exporter\n  nodes: [{{name: node-0000}}]\n  store_url: {url}\n"
        "  forecast_model: models/fleet-model.json\n"
    )
    return fleet, url, recorded


@pytest.mark.usefixtures("prefect_harness")
def test_a_refit_that_passes_its_check_is_installed_and_the_daily_forecast_scores_with_it(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast
    from flows.refit import refit_forecast_model
    from gpumedic.adapters.model_file import archived_models, read_model

    fleet, _, failures = _fleet_in_store(tmp_path)
    model_file = tmp_path / "models" / "fleet-model.json"

    first = refit_forecast_model(fleet_file=str(fleet), check_days=CHECK_DAYS)
    held_out = first["held_out"]
    assert held_out["hours"] > 0 and held_out["prevalence"] > 0
    assert first["adopted"] is (held_out["pr_auc_fitted"] >= held_out["pr_auc_shipped"]) is True, first["reason"]
    assert first["incidents"] == len(failures) and first["previous_model"] is None
    installed = read_model(model_file)
    assert installed.note.startswith("fitted by the weekly refit on the telemetry store")
    assert "hbm" not in installed.note and "memory" in installed.note  # incidents counted per forecaster cause
    report = str(Artifact.get("forecast-model-refit").data)  # type: ignore[union-attr]
    assert "adopted a refitted model" in report
    assert f"{held_out['pr_auc_fitted']:.3f}" in report and f"{held_out['pr_auc_shipped']:.3f}" in report

    daily = failure_forecast(fleet_file=str(fleet), emit_events=False)
    assert daily["model"] == installed.note

    second = refit_forecast_model(fleet_file=str(fleet), check_days=CHECK_DAYS)
    assert second["adopted"]
    assert [str(p) for p in archived_models(model_file)] == [second["previous_model"]]
    assert read_model(second["previous_model"]).note == installed.note
    assert "copy it over" in str(Artifact.get("forecast-model-refit").data)  # type: ignore[union-attr]


@pytest.mark.usefixtures("prefect_harness")
def test_a_fleet_with_too_few_incidents_keeps_the_shipped_model_and_says_so(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast
    from flows.refit import refit_forecast_model

    fleet, _, _ = _fleet_in_store(tmp_path, incidents=2)
    result = refit_forecast_model(fleet_file=str(fleet), check_days=CHECK_DAYS)
    assert not result["adopted"] and result["held_out"] is None
    assert "nothing to fit on" in result["reason"]
    assert not (tmp_path / "models" / "fleet-model.json").exists()
    report = str(Artifact.get("forecast-model-refit").data)  # type: ignore[union-attr]
    assert "kept the model in use" in report and "is unchanged" in report
    # Until a refit passes its check, the daily forecast scores with the shipped model and says why.
    daily = failure_forecast(fleet_file=str(fleet), emit_events=False)
    assert "no fitted model at" in daily["model"] and "fleet-model.json yet" in daily["model"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_fleet_file_without_a_model_file_is_not_refitted_and_the_run_says_why(tmp_path: Path) -> None:
    from flows.refit import refit_forecast_model

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: sqlite:///{tmp_path}/s.db\n")
    result = refit_forecast_model(fleet_file=str(fleet))
    assert not result["adopted"] and result["model_file"] is None
    assert "names no forecast_model" in result["reason"] and "dry_run=true shows" in result["reason"]
    assert list(tmp_path.iterdir()) == [fleet]  # nothing written, not even the store


@pytest.mark.usefixtures("prefect_harness")
def test_a_dry_run_fits_checks_and_reports_but_writes_no_model_even_without_a_model_file(tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.forecast import failure_forecast
    from flows.refit import refit_forecast_model

    fleet, _, _ = _fleet_in_store(tmp_path)
    result = refit_forecast_model(fleet_file=str(fleet), check_days=CHECK_DAYS, dry_run=True)
    held_out = result["held_out"]
    assert result["dry_run"] and not result["adopted"]
    assert result["would_adopt"] is (held_out["pr_auc_fitted"] >= held_out["pr_auc_shipped"]) is True
    assert result["reason"].startswith("dry run, nothing written; a real run would have adopted a refit")
    assert not (tmp_path / "models").exists()
    report = str(Artifact.get("forecast-model-refit").data)  # type: ignore[union-attr]
    assert "(dry run)" in report and "would adopt a refitted model" in report
    assert "Dry run: no model file was written" in report and "reads it from" not in report
    daily = failure_forecast(fleet_file=str(fleet), emit_events=False)
    assert "no fitted model at" in daily["model"]  # the daily forecast still scores with the shipped model

    # Before refitting is turned on (no forecast_model), a dry run shows what it would do.
    fleet.write_text(fleet.read_text().replace("  forecast_model: models/fleet-model.json\n", ""))
    preview = refit_forecast_model(fleet_file=str(fleet), check_days=CHECK_DAYS, dry_run=True)
    assert preview["model_file"] is None and preview["held_out"]["hours"] > 0  # it fitted and checked
    assert preview["would_adopt"] and not preview["adopted"]
    assert "names no `forecast_model`" in str(Artifact.get("forecast-model-refit").data)  # type: ignore[union-attr]
    assert not (tmp_path / "models").exists()
