"""Serve every gpumedic deployment from one process, without a work pool (the embedded default).

    python -m deployments.serve --fleet FLEET_FILE

The same schedules are declared in prefect.yaml for work-pool based deployments.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from prefect import serve
from prefect.schedules import Cron, Interval

from flows.sweep import fleet_sweep
from gpumedic.config import ConfigError, load_fleet_settings

NIGHTLY_CRON = "0 2 * * *"
QUICK_SWEEP_SECONDS = 15 * 60


def build_deployments(fleet_file: str, timezone: str | None = None) -> list[Any]:
    tz = timezone or os.environ.get("GPUMEDIC_TIMEZONE", "UTC")
    deployments = [
        fleet_sweep.to_deployment(
            name="nightly-full-sweep",
            schedules=[Cron(NIGHTLY_CRON, timezone=tz)],
            parameters={"fleet_file": fleet_file, "depth": "full"},
            description="Full health sweep of the fleet every night at 02:00.",
            tags=["gpumedic", "sweep"],
        ),
        fleet_sweep.to_deployment(
            name="quick-sweep",
            schedules=[Interval(QUICK_SWEEP_SECONDS)],
            parameters={"fleet_file": fleet_file, "depth": "quick"},
            description="Quick sweep every 15 minutes: nvidia-smi counters and new Xids.",
            tags=["gpumedic", "sweep"],
        ),
    ]
    from deployments.forecast import forecast_deployments
    from deployments.remediation import remediation_deployments

    return deployments + remediation_deployments(fleet_file) + forecast_deployments(fleet_file, tz)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleet", required=True, help="fleet file (or a simulated fleet's inventory.yaml)")
    parser.add_argument("--timezone", default=None, help="timezone of the nightly cron (default UTC)")
    args = parser.parse_args(argv)
    fleet_file = os.path.abspath(args.fleet)
    load_fleet_settings(fleet_file)  # every run reads it: a file it cannot read is refused before anything is served
    serve(*build_deployments(fleet_file, args.timezone))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        raise SystemExit(f"deployments.serve: {err}") from None
