"""`gpumedic forecast ...`: simulate fleets, backtest the forecaster, score a history.

    gpumedic forecast simulate --gpus 2000 --days 90 --seed 1 --out runs/sim1
    gpumedic forecast backtest --history runs/sim1/HISTORY.csv --failures runs/sim1/FAILURES.csv \\
        [--lead-hours 24] [--horizon-days 7] --json runs/sim1/backtest.json [--by-class]
    gpumedic forecast score --history HISTORY.csv --at 2025-03-01T00:00:00Z [--failures FAILURES.csv]

Wire into the main CLI with `add_forecast_commands(subparsers)`; every leaf parser sets
`func(args) -> int` (the exit status). `python -m gpumedic.cli_forecast` runs it alone.
Progress goes to stderr; results to stdout or the named files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from gpumedic.adapters.history_csv import (
    HistoryCsvError,
    parse_time,
    read_failures,
    read_history,
    write_failures,
    write_history,
)
from gpumedic.backtest import BacktestProtocol, score_backtest
from gpumedic.domain.forecast import forecast_frame, from_epoch


def _progress(start: float) -> Callable[[str], None]:
    def report(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return report


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


def _backtest(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say = _progress(start)
    try:
        say(f"reading {args.history}")
        frame = read_history(args.history, progress=say)
        failures = read_failures(args.failures)
    except (HistoryCsvError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    say(f"{len(frame):,} rows, {len(frame.keys):,} series, {len(failures)} failures")
    protocol = BacktestProtocol(
        lead=timedelta(hours=args.lead_hours),
        horizon=timedelta(days=args.horizon_days),
        training=args.training,
        rearm_after_window=not args.no_rearm,
    )
    try:
        scored = score_backtest(frame, failures, protocol, progress=say)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
    return 0


def _score(args: argparse.Namespace) -> int:
    try:
        frame = read_history(args.history)
        failures = read_failures(args.failures) if args.failures else []
        at = from_epoch(parse_time(args.at))
    except (HistoryCsvError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: --at: {err}", file=sys.stderr)
        return 2
    forecasts = forecast_frame(frame, at, horizon=timedelta(days=args.horizon_days), prior_failures=failures)
    print(f"risk of failure within {args.horizon_days:g} days, as of {at.isoformat()}")
    print(f"{'node':<16} {'gpu':>3} {'risk':>7} {'alarm':>5} {'lead_h':>6}  evidence")
    for fc in forecasts[: args.top]:
        lead = "" if fc.lead_time_hours is None else f"{fc.lead_time_hours:.0f}"
        gpu = "-" if fc.gpu is None else str(fc.gpu)
        print(
            f"{fc.node:<16} {gpu:>3} {fc.risk:>7.4f} {'yes' if fc.alarm else '':>5} {lead:>6}  "
            + ("; ".join(fc.factors) or "no evidence above the fleet's")
        )
    if forecasts:
        cannot = ", ".join(f"{c.value} ({c.why_unpredictable})" for c in forecasts[0].unpredictable_classes)
        print(f"\nnot predictable from telemetry: {cannot}")
    return 0


def add_forecast_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `forecast simulate|backtest|score` on a parent parser's subparsers."""
    forecast = subparsers.add_parser("forecast", help="failure forecasting: simulate, backtest, score")
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
    bt.add_argument("--by-class", action="store_true", help="add per-failure-class recall under 'by_class'")
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
    bt.set_defaults(func=_backtest)

    sc = sub.add_parser("score", help="risk table of every GPU at one instant")
    sc.add_argument("--history", required=True)
    sc.add_argument("--at", required=True, help="ISO-8601 or epoch seconds; only data up to then is used")
    sc.add_argument("--failures", help="earlier failures/replacements (only those up to --at are used)")
    sc.add_argument("--horizon-days", type=float, default=7.0)
    sc.add_argument("--top", type=int, default=20)
    sc.set_defaults(func=_score)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpumedic")
    add_forecast_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
