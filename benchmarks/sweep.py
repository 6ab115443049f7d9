"""Sweep throughput on simulated fleets: the Prefect flow vs the same collection in a plain loop.

    python benchmarks/sweep.py [--sizes 50 200 500] [--gpus 8]

For each size it starts a simulated fleet (one real sshd per node on 127.0.0.1), then
1. collects every node in a plain Python loop (`gpumedic.collection.collect_nodes`), and
2. runs the `fleet_sweep` flow (collect in shards + assess + store + artifacts) under a
   local Prefect test server,
and prints nodes/second for both and the flow/plain wall-time ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from gpumedic.collection import collect_nodes
from gpumedic.inventory import resolve_fleet
from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet


def run(sizes: list[int], gpus: int, concurrency: int) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import fleet_sweep

    print(f"cores: {os.cpu_count()}, GPUs per node: {gpus}, concurrency: {concurrency}")
    header = ("nodes", "start s", "plain s", "plain n/s", "flow s", "flow n/s", "flow/plain")
    print(" ".join(f"{h:>10}" for h in header))
    with prefect_test_harness(server_startup_timeout=120):
        for size in sizes:
            with tempfile.TemporaryDirectory(prefix="gpumedic-bench-") as root:
                fleet = SimulatedFleet(Path(root))
                fleet.create(FleetSimulation(nodes=size, gpus_per_node=gpus, seed=size, exporter=False))
                t0 = time.perf_counter()
                fleet.start(exporter=False)
                started = time.perf_counter() - t0
                try:
                    inventory = yaml.safe_load(fleet.inventory_file.read_text())
                    inventory["fleet"]["concurrency"] = concurrency
                    path = Path(root) / "bench.yaml"
                    path.write_text(yaml.safe_dump(inventory))
                    settings, targets = resolve_fleet(str(path))

                    t0 = time.perf_counter()
                    plain = collect_nodes(settings, targets)
                    plain_s = time.perf_counter() - t0
                    failed = sum(1 for t in plain if t.collection_errors)

                    t0 = time.perf_counter()
                    document = fleet_sweep(fleet_file=str(path), emit_events=False)
                    flow_s = time.perf_counter() - t0
                    unknown = sum(1 for n in document["nodes"] if n["verdict"] == "unknown")
                finally:
                    fleet.stop()
            figures = (started, plain_s, size / plain_s, flow_s, size / flow_s, flow_s / plain_s)
            print(f"{size:>10} " + " ".join(f"{f:>10.2f}" for f in figures)
                  + (f"   ({failed} plain / {unknown} flow nodes failed)" if failed or unknown else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    run(args.sizes, args.gpus, args.concurrency)


if __name__ == "__main__":
    main()
