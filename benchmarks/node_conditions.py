"""What publishing the GpuUnhealthy condition costs a sweep, and the API server, on a large fleet.

    python benchmarks/node_conditions.py [--sizes 100 1000 3000] [--changed 0.05]

For each fleet size it starts the Kubernetes API emulator (HTTPS on 127.0.0.1, the real
`kubernetes` client) with that many 8-GPU nodes and publishes three sweeps' conditions:
1. first: no node has the condition yet, every node is written;
2. steady: 15 minutes later, nothing changed: one list, no writes;
3. changes: 15 minutes after that, `--changed` of the nodes have a new verdict.
It prints seconds, milliseconds per node, the requests the API server answered, and the ratio of
each time to the smallest fleet's, so growth worse than linear shows. The emulator answers in
microseconds; a real API server adds its own latency per request, which the request counts
let you estimate.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumedic.adapters.kube_conditions import publish_conditions
from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.domain.node_condition import HEARTBEAT_REFRESH, condition_for
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict
from gpumedic.sim.kube_api import KubeApiEmulator

T0 = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
SELECTOR = "nvidia.com/gpu.present=true"


def _assessment(node: str, broken: bool) -> NodeAssessment:
    if not broken:
        return NodeAssessment(node, Verdict.HEALTHY, Action.NONE, (), tuple(
            GpuAssessment(i, Verdict.HEALTHY, Action.NONE, ()) for i in range(8)))
    gpu = GpuAssessment(3, Verdict.FAILED, Action.REPLACE, ("GPU 3: row remap failure",))
    return NodeAssessment(node, Verdict.FAILED, Action.REPLACE, (), (gpu,))


def sweep_figures(size: int, changed: float) -> list[tuple[str, float, int, int]]:
    """(phase, seconds, written, requests) for the three sweeps."""
    names = [f"gpu-node-{i:05d}" for i in range(size)]
    flipped = set(names[:: max(1, round(1 / changed))]) if changed > 0 else set()
    out = []
    with KubeApiEmulator() as kube:
        for name in names:
            kube.add_node(name, gpus=8, labels={"nvidia.com/gpu.present": "true"})
        with KubeNodes(kube.api_client()) as nodes:
            for phase, at, broken in (("first", T0, set()), ("steady", T0 + timedelta(minutes=15), set()),
                                      ("changes", T0 + timedelta(minutes=30), flipped)):
                found = {n: condition_for(_assessment(n, n in broken), None, at) for n in names}
                kube.clear_logs()
                start = time.perf_counter()
                outcome = publish_conditions(nodes, found, HEARTBEAT_REFRESH, SELECTOR)
                seconds = time.perf_counter() - start
                if outcome.failed or outcome.refused or outcome.missing:
                    raise SystemExit(f"{size} nodes, {phase}: {outcome.summary()}")
                out.append((phase, seconds, len(outcome.written), len(kube.request_log)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--changed", type=float, default=0.05, help="share of nodes whose verdict changes")
    args = parser.parse_args(argv)
    base: dict[str, float] = {}
    print(f"{'nodes':>6} {'sweep':>8} {'seconds':>8} {'ms/node':>8} {'written':>8} {'requests':>9} {'ratio':>7}")
    for size in args.sizes:
        for phase, seconds, written, requests in sweep_figures(size, args.changed):
            per_node = seconds / size
            base.setdefault(phase, per_node)
            print(f"{size:>6} {phase:>8} {seconds:>8.2f} {1000 * per_node:>8.3f} {written:>8} {requests:>9} "
                  f"{per_node / base[phase]:>6.2f}x")
    print("ratio: milliseconds per node against the smallest fleet's (1.00x: linear growth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
