"""The weekly refit of the failure forecaster, as the runbook reads: load, fit and check, install, report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger

from gpumedic.backtest import BacktestProtocol
from gpumedic.config import load_fleet_settings
from gpumedic.run_names import flow_run_named
from tasks.forecast import load_history, load_prior_incidents
from tasks.refit import fit_and_check, install_forecast_model, publish_refit


@flow(
    name="forecast-model-refit",
    flow_run_name=flow_run_named("forecast-model-refit"),
    description="Refit the failure forecaster on the fleet's own history and incidents; adopt it only if it "
    "ranks the last weeks, which it did not see, at least as well as the shipped model.",
)
def refit_forecast_model(
    fleet_file: str,
    history_days: float = 180.0,
    check_days: float = 28.0,
    prior_precision: float = BacktestProtocol().prior_precision,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Returns `{computed_at, adopted, would_adopt, dry_run, reason, model_file, ...}`.

    Args:
        fleet_file: Path of the fleet YAML file on the worker: its telemetry store and `forecast_model`, the
            file a refit that passes its check is written to (without one, only a dry run does anything).
        history_days: Days of history and incidents to fit on.
        check_days: The most recent days, held out of the fit; the refit is adopted only if it ranks them at
            least as well as the shipped model.
        prior_precision: How strongly the fit is held to the shipped model: higher moves less on few
            incidents.
        dry_run: Fit, check and report what the refit would decide, and write no model file; it runs even where
            the fleet file names no `forecast_model`, to see what refitting would do before turning it on.
    """
    fleet = load_fleet_settings(fleet_file)
    now = datetime.now(UTC)
    if fleet.forecast_model is None and not dry_run:
        # Refitting is opt-in: without a file to write, the daily forecast keeps the shipped model.
        reason = (
            f"not refitted: {fleet_file} names no forecast_model, the file the refit writes and the daily "
            "forecast reads (e.g. forecast_model: fleet-model.json); dry_run=true shows what a refit would do"
        )
        get_run_logger().warning("%s", reason)
        return {"computed_at": now.isoformat(), "adopted": False, "would_adopt": False, "dry_run": False,
                "reason": reason, "model_file": None}
    since = now - timedelta(days=history_days)
    history = load_history(fleet.store_url, since)
    incidents = load_prior_incidents(fleet.store_url, since)
    outcome = fit_and_check(history, incidents, now, check_days, prior_precision)
    archived, installed = None, False
    if outcome.adopted is not None and fleet.forecast_model is not None and not dry_run:
        archived = install_forecast_model(fleet.forecast_model, outcome.adopted, now)
        installed = True
    publish_refit(outcome, fleet.forecast_model, archived, now, dry_run)
    check = outcome.check
    return {
        "computed_at": now.isoformat(),
        "adopted": installed,  # a model was written where the daily forecast reads it
        "would_adopt": outcome.adopted is not None,  # the check's decision, dry run or not
        "dry_run": dry_run,
        "reason": f"dry run, nothing written; a real run would have {outcome.reason}" if dry_run else outcome.reason,
        "model_file": None if fleet.forecast_model is None else str(fleet.forecast_model),
        "previous_model": None if archived is None else str(archived),
        "incidents": len(incidents),
        "held_out": None
        if check is None
        else {
            "hours": check.hours,
            "prevalence": check.prevalence,
            "pr_auc_shipped": check.prior_pr_auc,
            "pr_auc_fitted": check.fitted_pr_auc,
        },
    }
