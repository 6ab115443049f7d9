"""Deployments of the failure forecast: daily scoring, a weekly refit, and proactive maintenance on each new alarm."""

from __future__ import annotations

import os
from typing import Any

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.forecast import failure_forecast
from flows.maintenance import proactive_maintenance
from flows.refit import refit_forecast_model
from tasks.forecast import FAILURE_PREDICTED_EVENT

DAILY_FORECAST_CRON = "0 3 * * *"  # after the nightly full sweep at 02:00
WEEKLY_REFIT_CRON = "0 4 * * 0"  # Sundays, after that day's forecast


def forecast_deployments(fleet_file: str, timezone: str = "UTC") -> list[Any]:
    return [
        failure_forecast.to_deployment(
            name="daily-failure-forecast",
            schedules=[Cron(DAILY_FORECAST_CRON, timezone=timezone)],
            parameters={"fleet_file": fleet_file},
            description="Score every GPU's risk of failure within 8 days (a 24 h lead, then the 7-day horizon); "
            "raise proactive requests.",
            tags=["gpumedic", "forecast"],
        ),
        refit_forecast_model.to_deployment(
            name="weekly-forecast-refit",
            schedules=[Cron(WEEKLY_REFIT_CRON, timezone=timezone)],
            parameters={"fleet_file": fleet_file},
            description="Refit the forecaster on the fleet's history and incidents; adopt it only if it passes a "
            "check on weeks it did not see.",
            tags=["gpumedic", "forecast"],
        ),
        proactive_maintenance.to_deployment(
            name="proactive-maintenance",
            parameters={"fleet_file": fleet_file, "auto_approve": os.environ.get("GPUMEDIC_AUTO_APPROVE") == "1"},
            description="Ask a human to approve ordering a replacement for a GPU the forecast expects to fail.",
            tags=["gpumedic", "forecast"],
            triggers=[
                DeploymentEventTrigger(
                    name="order-replacement-on-alarm",
                    expect={FAILURE_PREDICTED_EVENT},
                    match={"prefect.resource.id": "gpumedic.gpu.*"},
                    parameters={"node": "{{ event.payload.node }}", "gpu": "{{ event.payload.gpu }}"},
                )
            ],
        ),
    ]
