"""What an operator's questions cost on a large fleet: `remediation status`, the resumer's pass, the ticket outbox.

    python benchmarks/remediation_status.py [--sizes 100 1000 3000] [--open 0.1] [--tickets 10000] [--repeat 3]

For each fleet size it starts the Kubernetes API emulator (HTTPS on 127.0.0.1, the real `kubernetes`
client) with that many 8-GPU nodes, a share of them holding an open remediation record (opened and
cordoned, as a storm leaves them), then times, best of `--repeat`:
1. `remediation_status_now`: list every Node, read the records, compute the status (the CLI's work);
2. `render`: the lines it prints;
3. `due_for_resumption` on the same view: the resume-remediations pass's decision.
It also times `ticket_queue` + `render` over an outbox of `--tickets` rows (what `gpumedic tickets
status` shows). It prints seconds, microseconds per node and the ratio to the smallest fleet, so
growth that is worse than linear shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from gpumedic.adapters.jira_tickets import TicketRequest
from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.adapters.ticket_outbox import OutboxEntry, OutboxStatus
from gpumedic.config import ClusterAccess
from gpumedic.domain.budget import RemediationPolicy
from gpumedic.domain.remediation import open_incident
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict
from gpumedic.remediation_status import due_for_resumption, render
from gpumedic.sim.kube_api import KubeApiEmulator
from gpumedic.ticket_queue import render as render_tickets
from gpumedic.ticket_queue import ticket_queue
from tasks.remediation import _fleet_view, read_records, remediation_status_now

POLICY = RemediationPolicy(max_nodes_out=10_000, max_fraction_out=1.0)


def best(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def _broken(node: str) -> NodeAssessment:
    gpu = GpuAssessment(0, Verdict.FAILED, Action.RESET_GPU, ("GPU 0: 2 volatile DBE",), uuid=f"GPU-{node}")
    return NodeAssessment(node, Verdict.FAILED, Action.RESET_GPU, (), (gpu,))


def fleet_figures(nodes: int, open_share: float, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as root, KubeApiEmulator() as kube:
        names = [f"gpu-node-{i:05d}" for i in range(nodes)]
        for name in names:
            kube.add_node(name, gpus=8)
        kubeconfig = kube.write_kubeconfig(Path(root) / "kubeconfig")
        opened = datetime.now(UTC) - timedelta(hours=1)
        with KubeNodes.from_kubeconfig(kubeconfig) as client:
            for name in names[: int(nodes * open_share)]:
                record = open_incident(_broken(name), incident_id=f"inc-{name}", now=opened, policy=POLICY)
                client.cordon(name, taint_value=str(record.requested))
                client.write_annotations(name, record.to_annotations())
        cluster = ClusterAccess(str(kubeconfig), None, "the emulator")
        status_s, status = best(repeat, lambda: remediation_status_now(cluster, POLICY))
        render_s, lines = best(repeat, lambda: render(status))
        with KubeNodes.from_kubeconfig(kubeconfig) as client:
            views = client.list_nodes()
        records, _ = read_records(views)
        view = _fleet_view(views, records)
        due_s, due = best(repeat, lambda: due_for_resumption(view, POLICY, datetime.now(UTC)))
        assert len(status.nodes) == int(nodes * open_share) and len(due) == len(status.nodes)
        return {"status_s": status_s, "render_s": render_s, "due_s": due_s, "lines": len(lines)}


def outbox_figures(count: int, repeat: int) -> tuple[float, int]:
    now = datetime.now(UTC)
    statuses: tuple[OutboxStatus, ...] = ("filed", "filed", "filed", "pending", "failed")
    entries = [
        OutboxEntry(
            id=i, status=statuses[i % len(statuses)], attempts=i % 4, last_error=None if i % 5 < 3 else "Jira 503",
            issue_key=f"GPU-{i}" if i % 5 < 3 else None, outcome="created" if i % 5 < 3 else None,
            enqueued_at=(now - timedelta(minutes=i)).timestamp(),
            filed_at=(now - timedelta(minutes=i)).timestamp() if i % 5 < 3 else None,
            request=TicketRequest(dedup_key=f"gpumedic-gpu-{i}", incident_id=f"inc-{i}", project="GPU",
                                  issue_type="Hardware Replacement", summary=f"Replace GPU 0 on node {i}",
                                  description="-", node=f"gpu-node-{i:05d}", gpu_index=0),
        )
        for i in range(count)
    ]
    seconds, lines = best(repeat, lambda: render_tickets(ticket_queue(entries, now)))
    return seconds, len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--open", type=float, default=0.1, help="share of the nodes with an open incident")
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}; {args.open:.0%} of the nodes with an open incident; best of {args.repeat}")
    header = ("nodes", "status s", "us/node", "x smallest", "render ms", "resume s", "lines")
    print(" ".join(f"{h:>10}" for h in header))
    base: float | None = None
    for nodes in args.sizes:
        f = fleet_figures(nodes, args.open, args.repeat)
        per_node = f["status_s"] / nodes
        base = base or per_node
        print(f"{nodes:>10} {f['status_s']:>10.3f} {per_node * 1e6:>10.0f} {per_node / base:>10.2f} "
              f"{f['render_s'] * 1e3:>10.1f} {f['due_s']:>10.4f} {f['lines']:>10}")
    seconds, lines = outbox_figures(args.tickets, args.repeat)
    print(f"ticket outbox of {args.tickets} rows: queue + render {seconds * 1e3:.1f} ms ({lines} lines)")


if __name__ == "__main__":
    main()
