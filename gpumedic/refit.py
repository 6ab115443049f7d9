"""Refitting the forecaster on a fleet's own history, with a check before it is used.

The weekly refit (`flows/refit.py`) runs `refit_on_history` over the telemetry store's
history and remediation incidents, which carry the failure class their evidence named:

1. fit a candidate on everything whose window had closed `check_days` ago, shrunk towards
   the prior (the shipped model): exactly one step of the walk-forward backtest;
2. score the hours since then, which that fit never saw, with the prior and with the
   candidate (`backtest.FleetHistory.check`);
3. only if the candidate ranks those hours at least as well (PR-AUC) does it fit again on
   everything whose window has closed now, and that model is adopted.

The check compares the candidate with its prior, not with the model in use: last week's
refit saw most of the check period, and would be judged on hours it was fitted on.

Adopting on the check rather than always: on the Calchas log, one fit used as is ranked new
hours worse than the shipped model at one prior precision in three, while weekly refits
beat it at every precision (docs/forecasting.md). No failures to judge by, or too few to
fit on, keeps the model in use: a quiet fleet teaches the model nothing.

The history is binned, and its features computed for fitting, once for both fits.

Pure: history and incidents in, a decision and models out; no Prefect, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gpumedic.backtest import BacktestProtocol, FleetFit, FleetHistory, HeldOutCheck, NothingToFit, Progress
from gpumedic.domain.forecast import DEFAULT_MODEL, Failure, HazardModel, HistoryFrame

# A refitted model's note names the model it was shrunk towards; refits of refits would nest without end.
_PRIOR_NOTE_CHARS = 200


@dataclass(frozen=True, slots=True)
class RefitOutcome:
    """What the refit decided, and why."""

    adopted: HazardModel | None  # the model to use from now on; None: keep the one in use
    reason: str
    check: HeldOutCheck | None = None  # None when no candidate could be fitted
    candidate: FleetFit | None = None  # fitted up to the check's start
    final: FleetFit | None = None  # fitted on everything closed by now (when adopted)


def refit_on_history(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    now: datetime,
    *,
    check_days: float = 28.0,
    protocol: BacktestProtocol = BacktestProtocol(),
    prior: HazardModel = DEFAULT_MODEL,
    source: str = "a refit on the telemetry store",
    progress: Progress | None = None,
) -> RefitOutcome:
    """Fit, check on the last `check_days`, and adopt a refit only if the check holds (module docstring)."""
    until = now - timedelta(days=check_days)
    history = FleetHistory(frame, failures, protocol, progress)
    try:
        candidate = history.fit(prior, until)
    except NothingToFit as why:
        return RefitOutcome(None, f"kept the model in use: nothing to fit on before the check period ({why})")
    check = history.check(prior=prior, fitted=candidate.model, until=until, now=now)
    if not check.judged:
        return RefitOutcome(None, f"kept the model in use: {check.describe()}", check, candidate)
    if not check.fitted_is_no_worse:
        return RefitOutcome(
            None,
            f"kept the model in use: a fit on this fleet ranked the {check.hours:,} hours since "
            f"{until:%Y-%m-%d %H:%M} UTC, which it never saw, worse than its prior "
            f"(PR-AUC {check.fitted_pr_auc:.3f} < {check.prior_pr_auc:.3f})",
            check,
            candidate,
        )
    final = history.fit(prior, now)
    model = replace(final.model, note=fit_note(final, source, prior, protocol, check))
    return RefitOutcome(
        model,
        f"adopted a refit: a fit ranked the {check.hours:,} hours since {until:%Y-%m-%d %H:%M} UTC, which it "
        f"never saw, at least as well as its prior (PR-AUC {check.fitted_pr_auc:.3f} vs {check.prior_pr_auc:.3f})",
        check,
        candidate,
        final,
    )


def fit_note(
    fit: FleetFit, source: str, prior: HazardModel, protocol: BacktestProtocol, check: HeldOutCheck | None = None
) -> str:
    """The model file's note: what the model was fitted on, towards what, and how it was checked."""
    checked = (
        ""
        if check is None or not check.judged
        else (
            f"; checked on {check.hours:,} unseen hours: PR-AUC prior {check.prior_pr_auc:.3f}, "
            f"fitted {check.fitted_pr_auc:.3f}"
        )
    )
    return (
        f"fitted by {source}: {fit.rows:,} rows from "
        f"{fit.first:%Y-%m-%d %H:%M} to {fit.last:%Y-%m-%d %H:%M} UTC, {fit.failures} failures ({fit.causes_text}); "
        f"shrunk towards [{_shortened(prior.note) or 'an unnamed model'}] "
        f"with prior precision {protocol.prior_precision:g}{checked}"
    )


def _shortened(text: str) -> str:
    return text if len(text) <= _PRIOR_NOTE_CHARS else text[: _PRIOR_NOTE_CHARS - 1] + "…"
