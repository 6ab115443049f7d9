"""Prefect tasks of the weekly forecast-model refit: fit and check, install, report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from gpumedic.adapters.model_file import install_model
from gpumedic.backtest import BacktestProtocol
from gpumedic.domain.forecast import DEFAULT_MODEL, Failure, HazardModel, HistoryFrame
from gpumedic.refit import RefitOutcome, refit_on_history
from gpumedic.reporting import refit_markdown


@task(name="fit-and-check", cache_policy=NO_CACHE)
def fit_and_check(
    history: HistoryFrame, incidents: Sequence[Failure], now: datetime, check_days: float, prior_precision: float
) -> RefitOutcome:
    """Fit on the store's history up to `check_days` ago, check on the days since, and refit on it
    all only if the check holds. Always from the shipped model, as the walk-forward backtest does."""
    logger = get_run_logger()
    outcome = refit_on_history(
        history,
        incidents,
        now,
        check_days=check_days,
        protocol=BacktestProtocol(prior_precision=prior_precision),
        source="the weekly refit on the telemetry store",
        progress=logger.info,
    )
    logger.info("%s", outcome.reason)
    return outcome


@task(name="install-forecast-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def install_forecast_model(path: Path, model: HazardModel, now: datetime) -> Path | None:
    """Write the adopted model where the daily forecast reads it; the one it replaces is kept beside it."""
    archived = install_model(path, model, at=now)
    get_run_logger().info("installed %s (previous model kept as %s)", path, archived or "none: there was none")
    return archived


@task(name="publish-refit", cache_policy=NO_CACHE)
def publish_refit(
    outcome: RefitOutcome, path: Path | None, archived: Path | None, now: datetime, dry_run: bool = False
) -> None:
    create_markdown_artifact(
        key="forecast-model-refit",
        markdown=refit_markdown(outcome, path=path, archived=archived, now=now, prior=DEFAULT_MODEL, dry_run=dry_run),
        description="Weekly refit of the failure forecaster: what it was fitted on, how it was checked, whether it "
        "is in use",
    )
