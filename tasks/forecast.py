"""Prefect tasks of the failure forecast: read history, score, record, report, raise requests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from gpumedic.adapters.errors import AdapterError
from gpumedic.adapters.jira_tickets import TicketRequest
from gpumedic.adapters.model_file import load_model
from gpumedic.adapters.store import StoredForecast, TelemetryStore
from gpumedic.adapters.ticket_outbox import file_through_outbox
from gpumedic.config import load_fleet_settings
from gpumedic.domain.forecast import (
    Failure,
    GpuForecast,
    HazardModel,
    HistoryFrame,
    SilentGpu,
    forecast_frame,
    set_aside_departed,
    set_aside_silent,
    with_holds,
)
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.wording import first_named
from gpumedic.inventory import resolve_fleet
from gpumedic.reporting import CHART_FIELDS, daily_increments, forecast_markdown, forecast_rows
from tasks.remediation import jira_for_fleet, retry_if_transient

FAILURE_PREDICTED_EVENT = "gpumedic.gpu.failure_predicted"


@task(name="load-history", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_history(store_url: str | None, since: datetime) -> HistoryFrame:
    return TelemetryStore(store_url).history_frame(since)


@task(name="load-prior-incidents", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_prior_incidents(store_url: str | None, since: datetime) -> list[Failure]:
    """GPUs and nodes that remediation took out of service: prior incidents, the strongest predictor."""
    return TelemetryStore(store_url).prior_incidents(since)


@task(name="load-forecast-model", cache_policy=NO_CACHE)
def load_forecast_model(path: Path | None) -> HazardModel:
    """The fleet's own model (the weekly refit's, or `gpumedic forecast fit`'s), or the shipped one; also
    the shipped one while the named file does not exist yet (no refit has passed its check), and the report
    says so. A model file that cannot be read fails the run: scoring with a model nobody chose would be a
    silent change of every risk."""
    model = load_model(path, missing_is_shipped=True)
    get_run_logger().info("forecast model: %s", model.note or path)
    return model


@task(name="set-aside-departed-nodes", cache_policy=NO_CACHE)
def set_aside_departed_nodes(history: HistoryFrame, fleet_file: str) -> tuple[HistoryFrame, list[str]]:
    """The history of the nodes in the fleet now (its file's list, or the Nodes its label selector matches),
    and the names of the nodes in the store that left it (not scored, not listed as silent).

    A fleet whose Kubernetes cluster cannot be read now keeps every node: the forecast does not wait on the
    API server, and a node it cannot place is scored (or listed as silent) as before."""
    logger = get_run_logger()
    try:
        _, targets = resolve_fleet(fleet_file)
    except AdapterError as err:
        logger.warning("every node in the store is scored: which nodes are in the fleet cannot be told: %s", err)
        return history, []
    history, departed = set_aside_departed(history, [t.name for t in targets])
    if departed:
        logger.info("%d nodes in the store are no longer in the fleet, not scored: %s", len(departed),
                    first_named(departed))
    return history, departed


@task(name="set-aside-silent-gpus", cache_policy=NO_CACHE)
def set_aside_silent_gpus(
    history: HistoryFrame, now: datetime, silent_after_hours: float
) -> tuple[HistoryFrame, list[SilentGpu]]:
    """The history of the GPUs heard from lately, and the GPUs that went silent (not scored: silence is not
    health)."""
    live, silent = set_aside_silent(history, now, timedelta(hours=silent_after_hours))
    if silent:
        shown = first_named([f"{s.node}/{'node' if s.gpu is None else s.gpu} (last {s.last_sample:%Y-%m-%d %H:%M})"
                             for s in silent])
        get_run_logger().warning("%d GPUs without telemetry for %g h or more are not scored: %s", len(silent),
                                 silent_after_hours, shown)
    return live, silent


@task(name="score-gpus", cache_policy=NO_CACHE)
def score_gpus(
    history: HistoryFrame, prior_incidents: Sequence[Failure], now: datetime, horizon_days: float, model: HazardModel
) -> list[GpuForecast]:
    return forecast_frame(
        history, now, horizon=timedelta(days=horizon_days), model=model, prior_failures=prior_incidents
    )


@task(name="hold-alarms-of-condemned-gpus", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def hold_alarms_of_condemned_gpus(store_url: str | None, forecasts: Sequence[GpuForecast]) -> list[GpuForecast]:
    """`forecasts`, the alarms on GPUs the latest sweep sends to a human held: remediation asks about those, so
    no order is requested (`gpumedic.domain.forecast.condemned`)."""
    forecasts = with_holds(forecasts, TelemetryStore(store_url).latest_condemned())
    held = [f for f in forecasts if f.held is not None]
    if held:
        get_run_logger().info("%d alarms raise no proactive-maintenance request, as the latest sweep sends their "
                              "GPUs to a human: %s", len(held),
                              "; ".join(f"{f.node}/{'node' if f.gpu is None else f.gpu}: {f.held}" for f in held))
    return forecasts


@task(name="record-forecasts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record_forecasts(
    store_url: str | None, forecasts: Sequence[GpuForecast], now: datetime, window: RiskWindow
) -> list[GpuForecast]:
    """Store the latest risk per GPU (a probability of failure in `window`); returns the alarms to request:
    those not held, and not requested by the previous forecast already."""
    store = TelemetryStore(store_url)
    before = store.latest_forecasts({f.node for f in forecasts})
    store.record_forecasts(
        StoredForecast(f.node, f.gpu, f.risk, f.lead_time_hours, f.alarm, f.factors, now, window, f.held)
        for f in forecasts
    )
    return [f for f in forecasts if f.requested and not (before.get((f.node, f.gpu)) or _NO_ALARM).requested]


_NO_ALARM = StoredForecast("", None, 0.0, None, False, (), datetime.min, UNRECORDED)


@task(name="publish-forecast", cache_policy=NO_CACHE)
def publish_forecast(
    store_url: str | None, forecasts: Sequence[GpuForecast], now: datetime, window: RiskWindow,
    model_note: str, silent: Sequence[SilentGpu] = (), departed: Sequence[str] = (), chart_gpus: int = 5,
    chart_days: int = 14,
) -> None:
    riskiest = list(forecasts[:chart_gpus])
    since = now - timedelta(days=chart_days)
    history = TelemetryStore(store_url).samples_of([(f.node, f.gpu) for f in riskiest], since)
    charts = {
        key: {field: daily_increments(own, field, now=now, days=chart_days) for field, _ in CHART_FIELDS}
        for key, own in history.items()
    }
    create_table_artifact(
        key="gpu-failure-risk",
        table=forecast_rows(forecasts, silent, now=now)
        or [{"node": "-", "gpu": "-", "risk": "-", "alarm": "", "lead time": "-",
             "evidence": "no telemetry history yet"}],
        description=f"Riskiest GPUs: probability of failure {window}"
        + (f"; then {len(silent)} GPUs without telemetry lately, not scored (risk unknown)" if silent else ""),
    )
    create_markdown_artifact(
        key="gpu-failure-forecast",
        markdown=forecast_markdown(forecasts, charts, now=now, window=window, chart_days=chart_days,
                                   model_note=model_note, silent=silent, departed=departed),
        description="Failure forecast with the evidence behind the riskiest GPUs",
    )


@task(name="emit-failure-predicted", cache_policy=NO_CACHE)
def emit_failure_predicted(new_alarms: Sequence[GpuForecast]) -> list[str]:
    """One event per GPU whose alarm is new: a proactive-maintenance request (approval, then ticket)."""
    emitted = []
    for f in new_alarms:
        gpu = "node" if f.gpu is None else str(f.gpu)
        payload: dict[str, Any] = {"node": f.node, "gpu": f.gpu, "risk": round(f.risk, 4),
                                   "lead_time_hours": f.lead_time_hours, "factors": list(f.factors)}
        emit_event(
            event=FAILURE_PREDICTED_EVENT,
            resource={"prefect.resource.id": f"gpumedic.gpu.{f.node}.{gpu}",
                      "prefect.resource.name": f"{f.node}/{gpu}"},
            payload=payload,
        )
        emitted.append(f"{f.node}/{gpu}")
    get_run_logger().info("proactive-maintenance requests raised for %d GPUs: %s", len(emitted),
                          ", ".join(emitted) or "none")
    return emitted


@task(name="file-order-ticket", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=retry_if_transient,
      timeout_seconds=300)
def file_order_ticket(fleet_file: str, request: TicketRequest) -> str:
    """File through the durable outbox: kept while Jira is down, filed once, deduplicated per GPU."""
    _, settings, store_url = jira_for_fleet(fleet_file)
    return file_through_outbox(store_url, settings, request)[0]


@task(name="read-node-forecast", cache_policy=NO_CACHE)
def read_node_forecast(fleet_file: str, node: str) -> list[StoredForecast]:
    """The latest forecast for a node's GPUs, riskiest first; empty when there is none (it is context only)."""
    try:
        latest = TelemetryStore(load_fleet_settings(fleet_file).store_url).latest_forecasts([node])
    except Exception as err:  # an approval must not fail because its context could not be read
        get_run_logger().warning("node=%s forecast unavailable: %s", node, err)
        return []
    return sorted(latest.values(), key=lambda f: -f.risk)
