"""Time and memory of the forecaster's scheduled work, as the flows run it, on simulated fleets.

    python benchmarks/forecast_cost.py                     # 1,000 GPUs; 90, 180 and 365 days of history
    python benchmarks/forecast_cost.py --gpus 2000 --days 180

For each history length, in a fresh child process (so one size's arrays never inflate the next
one's figures), on the whole simulated history and its failures:

* the daily forecast: `forecast_frame` at the history's last instant (it reads up to 200 days);
* the weekly refit: `refit_on_history` with the flow's defaults (28-day check, prior precision 100);
* the same refit decision made from the one-shot public calls (`fit_fleet_model` to the check,
  `held_out_check`, `fit_fleet_model` again when adopted), each of which bins the history and
  computes its features itself.

Seconds are timed without tracing; peak MiB is the peak of Python and numpy allocations during
the call (tracemalloc, a second run), on top of the history it was handed. The ratios printed
are the refit's peak against the shortest history's, and the one-shot calls' time against the
shared refit's: three feature passes against two when a refit is adopted; two against two (a
ratio near 1) when the check keeps the model in use and no final fit is made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumedic.backtest import BacktestProtocol, fit_fleet_model, held_out_check
from gpumedic.domain.forecast import DEFAULT_MODEL, Failure, HistoryFrame, forecast_frame, from_epoch
from gpumedic.refit import refit_on_history
from gpumedic.sim.degradation import simulate_fleet_frame

CHECK_DAYS = 28.0
PROTOCOL = BacktestProtocol(prior_precision=100.0)  # the refit flow's default


def _daily_forecast(frame: HistoryFrame, failures: list[Failure], now_s: int) -> bool:
    return any(f.alarm for f in forecast_frame(frame, from_epoch(now_s), prior_failures=failures))


def _refit_shared(frame: HistoryFrame, failures: list[Failure], now_s: int) -> bool:
    outcome = refit_on_history(frame, failures, from_epoch(now_s), check_days=CHECK_DAYS, protocol=PROTOCOL)
    return outcome.adopted is not None


def _refit_one_shot(frame: HistoryFrame, failures: list[Failure], now_s: int) -> bool:
    now = from_epoch(now_s)
    until = now - timedelta(days=CHECK_DAYS)
    candidate = fit_fleet_model(frame, failures, PROTOCOL, until=until)
    check = held_out_check(frame, failures, PROTOCOL, prior=DEFAULT_MODEL, fitted=candidate.model, until=until, now=now)
    if check.fitted_is_no_worse:
        fit_fleet_model(frame, failures, PROTOCOL, until=now)
        return True
    return False


def _timed(call: Callable[[], bool]) -> tuple[bool, float]:
    t0 = time.perf_counter()
    out = call()
    return out, time.perf_counter() - t0


def _peak_mib(call: Callable[[], bool]) -> float:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(gpus: int, days: float, seed: int) -> dict[str, float | int | bool]:
    """One history length, in this process."""
    frame, failures = simulate_fleet_frame(gpus, days, seed)
    now_s = int(frame.time[-1])

    def daily() -> bool:
        return _daily_forecast(frame, failures, now_s)

    def refit() -> bool:
        return _refit_shared(frame, failures, now_s)

    alarms, daily_s = _timed(daily)
    adopted, refit_s = _timed(refit)
    adopted_one_shot, one_shot_s = _timed(lambda: _refit_one_shot(frame, failures, now_s))
    return {
        "gpus": gpus,
        "days": days,
        "rows": len(frame),
        "failures": len(failures),
        "alarms": alarms,
        "daily_s": daily_s,
        "daily_mib": _peak_mib(daily),
        "adopted": adopted,
        "same_decision": adopted == adopted_one_shot,
        "refit_s": refit_s,
        "refit_mib": _peak_mib(refit),
        "one_shot_s": one_shot_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--days", type=float, nargs="+", default=[90.0, 180.0, 365.0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.gpus, args.days[0], args.seed)))
        return 0
    print(f"seed {args.seed}; refit: check {CHECK_DAYS:g} d, prior precision {PROTOCOL.prior_precision:g}")
    print(
        f"{'GPUs':>6} {'days':>5} {'rows':>10} {'fail':>5} | {'daily s':>8} {'peak MiB':>9} | {'adopted':>8} "
        f"{'refit s':>8} {'GPU-days/s':>11} {'peak MiB':>9} {'vs first':>9} | {'one-shot s':>10} {'ratio':>6}"
    )
    first_peak: float | None = None
    for days in args.days:
        child = [sys.executable, __file__, "--child", "--gpus", str(args.gpus), "--days", str(days)]
        done = subprocess.run([*child, "--seed", str(args.seed)], check=True, capture_output=True, text=True)
        m = json.loads(done.stdout.strip().splitlines()[-1])
        first_peak = first_peak or m["refit_mib"]
        gpu_days_per_s = m["gpus"] * m["days"] / m["refit_s"]
        print(
            f"{m['gpus']:>6} {m['days']:>5g} {m['rows']:>10,} {m['failures']:>5} | {m['daily_s']:>8.1f} "
            f"{m['daily_mib']:>9,.0f} | {m['adopted']!s:>8} {m['refit_s']:>8.1f} "
            f"{gpu_days_per_s:>11,.0f} {m['refit_mib']:>9,.0f} {m['refit_mib'] / first_peak:>9.2f} | "
            f"{m['one_shot_s']:>10.1f} {m['one_shot_s'] / m['refit_s']:>6.2f}"
        )
        if not m["same_decision"]:
            print("  the one-shot calls reached another decision than the shared refit: they are not the same refit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
