"""`gpumedic forecast ...`: simulate fleets, backtest the forecaster, score a history.

    gpumedic forecast simulate --gpus 2000 --days 90 --seed 1 --out runs/sim1
    gpumedic forecast backtest --history runs/sim1/HISTORY.csv --failures runs/sim1/FAILURES.csv \\
        [--lead-hours 24] [--horizon-days 7] --json runs/sim1/backtest.json [--by-class]
    gpumedic forecast score --history HISTORY.csv --at 2025-03-01T00:00:00Z [--failures FAILURES.csv]
    gpumedic forecast export --fleet fleet.yaml --days 90 --out runs/fleet   # the store's history as CSV
    gpumedic forecast fit --history runs/fleet/HISTORY.csv --failures runs/fleet/FAILURES.csv \\
        --out fleet-model.json [--until 2025-03-01]   # then `forecast_model: fleet-model.json` in the fleet file

Every command that scores takes `--model FILE` (a model written by `forecast fit`).

Wire into the main CLI with `add_forecast_commands(subparsers)`; every leaf parser sets
`func(args) -> int` (the exit status). `python -m gpumedic.cli_forecast` runs it alone.
Progress goes to stderr; results to stdout or the named files.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from gpumedic.adapters.history_csv import (
    HistoryCsvError,
    parse_time,
    read_failures,
    read_history,
    write_failures,
    write_history,
)
from gpumedic.adapters.model_file import ModelFileError, load_model, write_model
from gpumedic.backtest import BacktestProtocol, FleetHistory, score_backtest
from gpumedic.domain.forecast import HazardModel, forecast_frame, from_epoch
from gpumedic.domain.remediation import UNNAMED_CAUSE_PREFIX
from gpumedic.domain.risk_window import HOURS_PER_DAY
from gpumedic.refit import fit_note
from gpumedic.reporting import alarm_label, evidence, largest_moves

_MODEL_HELP = "model file written by `forecast fit` (default: the shipped model)"
_WALK_FORWARD_PRIOR_PRECISION = BacktestProtocol().prior_precision


def _progress(start: float) -> Callable[[str], None]:
    def report(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return report


# Unreadable files, malformed rows, bad model files and histories the protocol cannot score
# (ValueError from the backtest) end a command with the reason on stderr, not a traceback.
_BAD_INPUT = (HistoryCsvError, ModelFileError, OSError, ValueError)


def _bad_input_exits_2(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _BAD_INPUT as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def _instant(text: str) -> datetime:
    try:
        return from_epoch(parse_time(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _simulate(args: argparse.Namespace) -> int:
    from gpumedic.sim.degradation import simulate_fleet_frame

    start = time.perf_counter()
    say = _progress(start)
    say(f"simulating {args.gpus} GPUs x {args.days} days, seed {args.seed}")
    frame, failures = simulate_fleet_frame(args.gpus, args.days, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"writing {len(frame):,} history rows")
    write_history(out / "HISTORY.csv", frame)
    write_failures(out / "FAILURES.csv", failures)
    say(f"wrote {out / 'HISTORY.csv'} and {out / 'FAILURES.csv'} ({len(failures)} failures)")
    return 0


@_bad_input_exits_2
def _backtest(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say = _progress(start)
    say(f"reading {args.history}")
    model = load_model(args.model)
    frame = read_history(args.history, progress=say)
    failures = read_failures(args.failures)
    say(f"{len(frame):,} rows, {len(frame.keys):,} series, {len(failures)} failures")
    protocol = BacktestProtocol(
        lead=timedelta(hours=args.lead_hours),
        horizon=timedelta(days=args.horizon_days),
        training=args.training,
        rearm_after_window=not args.no_rearm,
    )
    _warn_if_other_window(model, protocol)
    scored = score_backtest(frame, failures, protocol, model=model, progress=say)
    result = scored.evaluate()
    doc = result.to_json(by_class=args.by_class)
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    else:
        Path(args.json).write_text(text)
        say(f"wrote {args.json}")
    f, b = result.forecaster, result.baseline
    say(
        f"forecaster precision {f.precision:.3f} recall {f.recall:.3f} ({f.caught}/{f.failures}); "
        f"baseline precision {b.precision:.3f} recall {b.recall:.3f} ({b.caught}/{b.failures})"
    )
    wrong = f.false_alarms
    say(f"forecaster's false alarms: {wrong.too_late} on GPUs that failed within the lead (too late to count), "
        f"{wrong.too_early} on GPUs that failed after the window, {wrong.no_failure} on GPUs that did not fail")
    return 0


def _warn_if_other_window(model: HazardModel, protocol: BacktestProtocol) -> None:
    if (model.lead_hours, model.horizon_hours) != (protocol.lead_h, protocol.horizon_h):
        print(
            f"warning: the model was fitted for lead {model.lead_hours:g} h, horizon {model.horizon_hours:g} h; "
            f"this run asks about lead {protocol.lead_h} h, horizon {protocol.horizon_h} h",
            file=sys.stderr,
        )


def _print_risk_table(
    rows: Iterable[tuple[str, int | None, float, str, float | None, Sequence[str]]],
) -> None:
    """One line per GPU: node, gpu, risk, alarm ("yes", "held" or ""), lead hours, evidence (`score` and `show`
    print the same table)."""
    print(f"{'node':<16} {'gpu':>3} {'risk':>7} {'alarm':>5} {'lead_h':>6}  evidence")
    for node, gpu, risk, alarm, lead_h, factors in rows:
        lead = "" if lead_h is None else f"{lead_h:.0f}"
        slot = "-" if gpu is None else str(gpu)
        print(
            f"{node:<16} {slot:>3} {risk:>7.4f} {alarm:>5} {lead:>6}  "
            + ("; ".join(factors) or "no evidence above the fleet's")
        )


@_bad_input_exits_2
def _score(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    frame = read_history(args.history)
    failures = read_failures(args.failures) if args.failures else []
    at: datetime = args.at
    forecasts = forecast_frame(
        frame, at, horizon=timedelta(days=args.horizon_days), model=model, prior_failures=failures
    )
    print(f"risk of failure {model.risk_window(args.horizon_days * HOURS_PER_DAY)}, as of {at.isoformat()}")
    _print_risk_table(
        (fc.node, fc.gpu, fc.risk, alarm_label(fc), fc.lead_time_hours, fc.factors) for fc in forecasts[: args.top]
    )
    if forecasts:
        cannot = ", ".join(f"{c.value} ({c.why_unpredictable})" for c in forecasts[0].unpredictable_classes)
        print(f"\nnot predictable from telemetry: {cannot}")
    return 0


@_bad_input_exits_2
def _fit(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say = _progress(start)
    prior = load_model(args.prior)
    until: datetime | None = args.until
    say(f"reading {args.history}")
    frame = read_history(args.history, progress=say)
    failures = read_failures(args.failures)
    protocol = BacktestProtocol(
        lead=timedelta(hours=args.lead_hours),
        horizon=timedelta(days=args.horizon_days),
        prior_precision=args.prior_precision,
    )
    history = FleetHistory(frame, failures, protocol, say)
    fit = history.fit(prior, until)
    model = fit.model if args.threshold is None else fit.model.with_threshold(args.threshold)
    model = replace(model, note=fit_note(fit, f"`gpumedic forecast fit` on {Path(args.history).name}", prior, protocol))
    write_model(args.out, model)
    say(f"wrote {args.out}")
    print(model.note)
    print("largest moves from the prior (log-odds per standardised unit):")
    print("\n".join(f"  {line}" for line in largest_moves(prior, model)))
    if until is not None:
        check = history.check(prior=prior, fitted=model, until=until)
        print(check.describe())
    return 0


def _show(args: argparse.Namespace) -> int:
    from gpumedic.adapters.store import TelemetryStore, shared_window
    from gpumedic.config import load_fleet_settings

    store = TelemetryStore(load_fleet_settings(args.fleet).store_url)
    riskiest = store.riskiest_forecasts(args.top)
    if not riskiest:
        print("no forecast in the store yet: the daily-failure-forecast deployment (or a failure-forecast run) "
              "writes one")
        return 0
    gpus, alarms = store.forecast_counts()
    computed = max(f.computed_at for f in riskiest)
    print(f"latest failure forecast, {computed:%Y-%m-%d %H:%M} UTC: {gpus} GPUs, {alarms} above the alarm "
          f"threshold; risk of failure {shared_window(riskiest)}")
    _print_risk_table((f.node, f.gpu, f.risk, alarm_label(f), f.lead_time_h, evidence(f)) for f in riskiest)
    return 0


def _export(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gpumedic.adapters.store import TelemetryStore
    from gpumedic.config import load_fleet_settings

    say = _progress(time.perf_counter())
    store = TelemetryStore(load_fleet_settings(args.fleet).store_url)
    since = datetime.now(UTC) - timedelta(days=args.days)
    say(f"reading the store's history since {since:%Y-%m-%d %H:%M} UTC")
    frame = store.history_frame(since)
    incidents = store.prior_incidents(since)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_history(out / "HISTORY.csv", frame)
    write_failures(out / "FAILURES.csv", incidents)
    say(
        f"wrote {len(frame):,} history rows of {len(frame.keys):,} GPUs and {len(incidents)} incidents "
        f"to {out / 'HISTORY.csv'} and {out / 'FAILURES.csv'}"
    )
    unnamed = sum(f.kind.startswith(UNNAMED_CAUSE_PREFIX) for f in incidents)
    if unnamed:
        # Where the evidence named no part, the store knows what remediation did, not what broke:
        # a fit files those incidents under "other".
        say(
            f"note: {unnamed} of {len(incidents)} incidents name the remediation they started "
            f"({UNNAMED_CAUSE_PREFIX}<action>), not what broke; before `forecast fit`, set their kind to "
            "hbm, sram, nvlink, pcie or thermal where the ticket says"
        )
    return 0


def add_forecast_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `forecast simulate|backtest|score|fit|export` on a parent parser's subparsers."""
    forecast = subparsers.add_parser("forecast", help="failure forecasting: simulate, backtest, score, fit")
    sub = forecast.add_subparsers(dest="forecast_command", required=True)

    sim = sub.add_parser("simulate", help="write HISTORY.csv and FAILURES.csv of a simulated fleet")
    sim.add_argument("--gpus", type=int, required=True)
    sim.add_argument("--days", type=float, required=True)
    sim.add_argument("--seed", type=int, required=True)
    sim.add_argument("--out", required=True, help="directory to write HISTORY.csv and FAILURES.csv into")
    sim.set_defaults(func=_simulate)

    bt = sub.add_parser("backtest", help="forecaster vs baseline under the issue-4 protocol")
    bt.add_argument("--history", required=True)
    bt.add_argument("--failures", required=True)
    bt.add_argument("--lead-hours", type=float, default=24.0)
    bt.add_argument("--horizon-days", type=float, default=7.0)
    bt.add_argument("--json", required=True, help="output file ('-': stdout)")
    bt.add_argument("--by-class", action="store_true",
                    help="add per-failure-class recall under 'by_class', and the false alarms by what followed them "
                    "under 'false_alarms' (too_late, too_early, no_failure)")
    bt.add_argument(
        "--training",
        choices=["walk-forward", "fixed"],
        default="walk-forward",
        help="refit weekly on data whose outcome is known (default), or use the shipped model as is",
    )
    bt.add_argument(
        "--no-rearm",
        action="store_true",
        help="an unanswered alarm stays active until a failure or a reset (default: until its window closes)",
    )
    bt.add_argument("--model", help=_MODEL_HELP + "; with walk-forward, the prior every refit starts from")
    bt.set_defaults(func=_backtest)

    sc = sub.add_parser("score", help="risk table of every GPU at one instant")
    sc.add_argument("--history", required=True)
    sc.add_argument(
        "--at", required=True, type=_instant, help="ISO-8601 or epoch seconds; only data up to then is used"
    )
    sc.add_argument("--failures", help="earlier failures/replacements (only those up to --at are used)")
    sc.add_argument("--horizon-days", type=float, default=7.0)
    sc.add_argument("--top", type=int, default=20)
    sc.add_argument("--model", help=_MODEL_HELP)
    sc.set_defaults(func=_score)

    ft = sub.add_parser("fit", help="fit the hazard model on a fleet's own history, shrunk towards the shipped one")
    ft.add_argument("--history", required=True)
    ft.add_argument("--failures", required=True, help="the fleet's failures (or `forecast export`'s incidents)")
    ft.add_argument("--out", required=True, help="model file to write (JSON); the fleet file's `forecast_model`")
    ft.add_argument("--lead-hours", type=float, default=24.0)
    ft.add_argument("--horizon-days", type=float, default=7.0)
    ft.add_argument(
        "--until", type=_instant, help="fit only on rows whose window closed by then (ISO-8601 or epoch seconds)"
    )
    ft.add_argument("--prior", help="model to start from and shrink towards (default: the shipped model)")
    ft.add_argument(
        "--prior-precision",
        type=_positive,
        default=_WALK_FORWARD_PRIOR_PRECISION,
        help="how hard the fit leans on the prior: high keeps it, low lets the fleet's history decide "
        f"(default {_WALK_FORWARD_PRIOR_PRECISION:g}, the walk-forward backtest's)",
    )
    ft.add_argument("--threshold", type=_probability, help="alarm threshold (default: the prior's)")
    ft.set_defaults(func=_fit)

    sh = sub.add_parser("show", help="the latest daily forecast in the telemetry store, riskiest GPUs first")
    sh.add_argument("--fleet", required=True, help="fleet file naming the store (`store_url`)")
    sh.add_argument("--top", type=int, default=20, help="how many GPUs to list (default 20)")
    sh.set_defaults(func=_show)

    ex = sub.add_parser("export", help="the telemetry store's history and incidents as HISTORY.csv and FAILURES.csv")
    ex.add_argument("--fleet", required=True, help="fleet file naming the store (`store_url`)")
    ex.add_argument("--days", type=_positive, default=90.0, help="how far back (default 90)")
    ex.add_argument("--out", required=True, help="directory to write HISTORY.csv and FAILURES.csv into")
    ex.set_defaults(func=_export)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a probability strictly between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpumedic")
    add_forecast_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
