"""The daily failure forecast, as the runbook reads: load history, score, record, report, request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger

from gpumedic.config import load_fleet_settings
from gpumedic.domain.risk_window import HOURS_PER_DAY
from gpumedic.run_names import flow_run_named
from tasks.forecast import (
    emit_failure_predicted,
    hold_alarms_of_condemned_gpus,
    load_forecast_model,
    load_history,
    load_prior_incidents,
    publish_forecast,
    record_forecasts,
    score_gpus,
    set_aside_departed_nodes,
    set_aside_silent_gpus,
)

# The longest window the forecaster reads prior incidents over (a GPU's own: 180 days).
PRIOR_INCIDENT_DAYS = 180


@flow(name="failure-forecast", flow_run_name=flow_run_named("failure-forecast"),
      description="Score every GPU's risk of failure within the model's lead plus the "
      "horizon from its telemetry history; report the riskiest with their evidence; raise proactive-maintenance "
      "requests.")
def failure_forecast(
    fleet_file: str, horizon_days: float = 7.0, lookback_days: float = 30.0, emit_events: bool = True,
    silent_after_hours: float = 48.0,
) -> dict[str, Any]:
    """Returns `{computed_at, horizon_days, window_starts_after_hours, gpus, model, alarms: [{node, gpu, risk,
    factors, held}], silent: [{node, gpu, last_sample}], departed: [node], requested}`. An alarm on a GPU the
    latest sweep sends to a human (replace, inspect) is `held` (why, in words): remediation asks about that GPU, so
    no order is requested.

    Args:
        fleet_file: Path of the fleet YAML file on the worker: its telemetry store, forecast model and nodes (a
            node in the store that is no longer in the fleet is not scored; `departed` names it).
        horizon_days: The risk's horizon after the model's lead: each GPU's risk is its probability of
            failure within lead + this many days (24 h + 7 days for the shipped model: "within 8 days");
            reports, approval forms and order tickets state it. Alarms do not move with it: they compare
            the risk over the model's own window with its alarm threshold.
        lookback_days: Days of telemetry history to read (prior incidents: always the last 180 days).
        emit_events: Raise `gpumedic.gpu.failure_predicted` for each new alarm, which starts a
            proactive-maintenance run (a human approves before anything is ordered). Off: report only.
        silent_after_hours: A GPU with no reading for this long is not scored but listed as silent: empty
            recent windows would read as a healthy GPU exactly when nobody can see it. Sweeps keep a reading of
            every live series at least daily, so the default is two missed days.
    """
    logger = get_run_logger()
    fleet = load_fleet_settings(fleet_file)
    now = datetime.now(UTC)
    history, departed = set_aside_departed_nodes(load_history(fleet.store_url, now - timedelta(days=lookback_days)),
                                                 fleet_file)
    history, silent = set_aside_silent_gpus(history, now, silent_after_hours)
    incidents = load_prior_incidents(fleet.store_url, now - timedelta(days=PRIOR_INCIDENT_DAYS))
    model = load_forecast_model(fleet.forecast_model)
    forecasts = score_gpus(history, incidents, now, horizon_days, model)
    window = model.risk_window(horizon_days * HOURS_PER_DAY)
    forecasts = hold_alarms_of_condemned_gpus(fleet.store_url, forecasts)
    new_alarms = record_forecasts(fleet.store_url, forecasts, now, window)
    publish_forecast(fleet.store_url, forecasts, now, window, model.note, silent, departed)
    requested = emit_failure_predicted(new_alarms) if emit_events else []
    logger.info("scored %d GPUs from %d samples and %d prior incidents: %d alarms (%d new, %d held for "
                "remediation); %d silent and %d nodes out of the fleet, not scored", len(forecasts), len(history),
                len(incidents), sum(f.alarm for f in forecasts), len(new_alarms),
                sum(f.held is not None for f in forecasts), len(silent), len(departed))
    return {
        "computed_at": now.isoformat(),
        "horizon_days": horizon_days,
        "window_starts_after_hours": window.starts_after_hours,
        "gpus": len(forecasts),
        "model": model.note,
        "alarms": [{"node": f.node, "gpu": f.gpu, "risk": f.risk, "factors": list(f.factors),
                    "held": f.held}
                   for f in forecasts if f.alarm],
        "silent": [{"node": s.node, "gpu": s.gpu, "last_sample": s.last_sample.isoformat()} for s in silent],
        "departed": departed,
        "requested": requested,
    }
