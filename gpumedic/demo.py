"""`gpumedic demo`: the whole product on one machine, against a simulated fleet.

1. a local Prefect server (SQLite) in the background;
2. a simulated fleet: one real sshd per node on 127.0.0.1 (packaged example: 12 nodes, 9 faults);
3. a simulated cluster around it: the Kubernetes API emulator with one Node per simulated
   node and workloads on them (DaemonSets, ReplicaSets under PodDisruptionBudgets, one
   StatefulSet pod that no budget lets go), a ReplicaSet controller that replaces evicted
   pods, and the Jira emulator;
4. every deployment served from one process (`deployments/serve.py`, no work pool), with
   the cluster's kubeconfig and the Jira token in its environment;
5. a full sweep run through the server, its summary printed with where to look in the UI;
6. remediation: the sweep's `gpumedic.node.unhealthy` events trigger one `remediate-node`
   run per node; the demo follows them (`gpumedic.demo_remediation`) and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml
from prefect.client.schemas.objects import FlowRun

from gpumedic.config import load_fleet_file
from gpumedic.prefect_server import LocalPrefectServer, prefect_env, start_local_server
from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet
from gpumedic.sim.jira_api import JiraEmulator
from gpumedic.sim.kube_api import KubeApiEmulator

SWEEP_DEPLOYMENT = "fleet-sweep/nightly-full-sweep"
REMEDIATION_DEPLOYMENT = "remediate-node/remediate-node"
RESUME_DEPLOYMENT = "resume-remediations/resume-remediations"
TICKETS_DEPLOYMENT = "file-pending-tickets/file-pending-tickets"
JIRA_TOKEN_ENV = "GPUMEDIC_JIRA_TOKEN"  # noqa: S105 - the variable's name, not a token
WORKLOAD_NAMESPACE = "ml"

# The demo's remediation policy, written into the fleet file's `remediation:` block.
#
# Budget: 4 nodes. A node that ends ticketed (awaiting its replacement) or failed stays
# cordoned and keeps its slot, and the example fleet has three of those (two replacements
# and a blocked drain): with 3 slots the three repairable nodes could wait forever.
# Breaker: 6 of the 12 example nodes are faulty on purpose. At the default 20% the breaker
# would stop automation and ask a human for an override per node; the demo raises it to 60%
# (the breaker itself is covered by the flow tests).
DEMO_POLICY: dict[str, Any] = {
    "max_nodes_out": 4,
    "max_fraction_out": 0.5,
    "breaker_fraction": 0.6,
    "diag_level": 2,
    "probation": 20,  # seconds: the demo re-checks readmitted nodes once it has passed
    "drain_timeout": 30,  # four drains at once queue behind one PDB slot; the blocked one fails after this
    "reboot_timeout": 60,
    "diag_timeout": 120,
    "approval_timeout": 30 * 60,
}


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _seconds(value: Any) -> str:
    return f"{int(value) // 60} min" if int(value) >= 120 else f"{int(value)} s"


# --------------------------------------------------------------------------- the simulated cluster


@dataclass
class _ReplicaSet:
    name: str
    labels: dict[str, str]
    gpus: int
    replicas: int


@dataclass
class DemoCluster:
    """The Kubernetes API and Jira emulators around a simulated fleet, with workloads on its nodes."""

    kube: KubeApiEmulator
    jira: JiraEmulator
    kubeconfig: Path
    policy: dict[str, Any]
    ledger_node: str | None = None  # where the StatefulSet pod that no budget lets go runs
    replica_sets: list[_ReplicaSet] = field(default_factory=list)
    out_of_service: list[tuple[float, int, list[str]]] = field(default_factory=list)  # (time, count, nodes)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def budget_limit(self) -> int:
        """The disruption budget the flows enforce, as the domain computes it."""
        from gpumedic.domain.budget import FleetView, RemediationPolicy, budget_limit

        nodes = sum(1 for n in self.kube.list_nodes() if int(n["status"]["capacity"].get("nvidia.com/gpu", "0")))
        return budget_limit(FleetView(gpu_nodes=nodes), RemediationPolicy.model_validate(self.policy))

    @property
    def max_out_at_once(self) -> int:
        return max((count for _, count, _ in self.out_of_service), default=0)

    def serve_env(self, *, auto_approve: bool) -> dict[str, str]:
        """What the served deployments need to reach the cluster and Jira."""
        return {
            "GPUMEDIC_KUBECONFIG": str(self.kubeconfig),
            JIRA_TOKEN_ENV: self.jira.password,
            "GPUMEDIC_AUTO_APPROVE": "1" if auto_approve else "0",
        }

    def start_background(self) -> None:
        for target, name in ((self._replicaset_controller, "demo-replicaset-controller"),
                             (self._watch_cordons, "demo-cordon-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.jira.stop()
        self.kube.close()  # and its temporary TLS material

    # -- what a kube-controller-manager and a scheduler would do -------------------------

    def _free_gpus(self) -> dict[str, int]:
        """GPUs not requested by any pod, on each node the scheduler may use."""
        free: dict[str, int] = {}
        for node in self.kube.list_nodes():
            spec = node["spec"]
            if spec.get("unschedulable") or any(t.get("effect") in ("NoSchedule", "NoExecute")
                                                for t in spec.get("taints") or []):
                continue
            name = node["metadata"]["name"]
            free[name] = int(node["status"]["capacity"].get("nvidia.com/gpu", "0"))
            for pod in self.kube.list_pods(name):
                for c in pod["spec"]["containers"]:
                    free[name] -= int((c.get("resources") or {}).get("requests", {}).get("nvidia.com/gpu", 0))
        return free

    def _replicaset_controller(self) -> None:
        """Replace evicted ReplicaSet pods on a schedulable node; they become Ready half a second later.

        Without it a PodDisruptionBudget that allowed one disruption would allow none after the
        first eviction, and every later drain would wait for ever.
        """
        starting: dict[str, float] = {}
        while not self._stop.wait(0.2):
            try:
                now = time.time()
                for name, ready_at in list(starting.items()):
                    if now >= ready_at:
                        with contextlib.suppress(KeyError):
                            self.kube.set_pod_phase(WORKLOAD_NAMESPACE, name, "Running", ready=True)
                        del starting[name]
                pods = self.kube.list_pods(namespace=WORKLOAD_NAMESPACE)
                for rs in self.replica_sets:
                    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                            and any(o["name"] == rs.name for o in p["metadata"].get("ownerReferences") or [])]
                    for _ in range(rs.replicas - len(live)):
                        free = self._free_gpus()
                        fits = sorted((-gpus, n) for n, gpus in free.items() if gpus >= rs.gpus)
                        if not fits:
                            break
                        pod = f"{rs.name}-{secrets.token_hex(3)[:5]}"
                        self.kube.add_pod(WORKLOAD_NAMESPACE, pod, fits[0][1], owner_kind="ReplicaSet",
                                          owner_name=rs.name, labels=rs.labels, gpus=rs.gpus, ready=False)
                        starting[pod] = now + 0.5
            except Exception as err:  # the demo's stand-in controller must not die on a race
                print(f"    (replicaset controller: {err})", file=sys.stderr)

    def _watch_cordons(self) -> None:
        """Every change to every Node, through a watch: how many are unschedulable at once."""
        from kubernetes import client, watch

        api = client.CoreV1Api(self.kube.api_client())
        unschedulable: dict[str, bool] = {}
        version: str | None = None
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(api.list_node, resource_version=version, timeout_seconds=1):
                    node = event["object"]
                    version = node.metadata.resource_version
                    unschedulable[node.metadata.name] = bool(node.spec.unschedulable) and event["type"] != "DELETED"
                    out = sorted(n for n, u in unschedulable.items() if u)
                    if not self.out_of_service or self.out_of_service[-1][1] != len(out):
                        self.out_of_service.append((time.time(), len(out), out))
            except Exception:  # 410 Expired or a dropped stream: list again
                version = None
                self._stop.wait(0.2)


def start_demo_cluster(fleet: SimulatedFleet, spec: FleetSimulation, root: Path,
                       policy: dict[str, Any] | None = None) -> DemoCluster:
    """Emulators up, one Node per simulated node with its pods, and the fleet file pointed at them."""
    policy = dict(DEMO_POLICY if policy is None else policy)
    kube = KubeApiEmulator(eviction_delay=1.0, seed=spec.seed).start()
    jira = JiraEmulator(username="gpumedic-bot").start()
    cluster = DemoCluster(kube, jira, kube.write_kubeconfig(root / "kubeconfig"), policy)
    _seed_workloads(cluster, list(fleet.nodes), spec)
    _configure_fleet_file(fleet.inventory_file, jira, policy, cluster.kubeconfig)
    cluster.start_background()
    return cluster


def _seed_workloads(cluster: DemoCluster, nodes: list[str], spec: FleetSimulation) -> None:
    kube = cluster.kube
    # Sized to leave room: with several nodes held for approval, evicted replicas must still fit elsewhere,
    # or their budget never allows the next drain (real clusters keep that headroom too).
    trainer = _ReplicaSet("trainer-6d5f7c9b8", {"app": "trainer", "team": "llm"}, gpus=2, replicas=len(nodes))
    notebook = _ReplicaSet("notebook-5c7f6", {"app": "notebook", "team": "research"}, gpus=1,
                           replicas=(len(nodes) + 1) // 2)
    cluster.replica_sets = [trainer, notebook]
    kube.add_namespace(WORKLOAD_NAMESPACE)
    for i, node in enumerate(nodes):
        suffix = node.rsplit("-", 1)[-1]
        kube.add_node(node, gpus=spec.gpus_per_node, labels={"nvidia.com/gpu.present": "true"})
        for ds in ("nvidia-device-plugin-daemonset", "dcgm-exporter"):
            kube.add_pod("kube-system", f"{ds}-{suffix}", node, owner_kind="DaemonSet", owner_name=ds,
                         labels={"app": ds})
        kube.add_pod(WORKLOAD_NAMESPACE, f"{trainer.name}-{suffix}", node, owner_kind="ReplicaSet",
                     owner_name=trainer.name, labels=trainer.labels, gpus=trainer.gpus)
        if i % 2 == 0:
            kube.add_pod(WORKLOAD_NAMESPACE, f"{notebook.name}-{suffix}", node, owner_kind="ReplicaSet",
                         owner_name=notebook.name, labels=notebook.labels, gpus=notebook.gpus)
    # One trainer may be down at a time: a drain waits (HTTP 429) until its replacement is Ready.
    kube.add_pdb(WORKLOAD_NAMESPACE, "trainer", {"app": "trainer"}, max_unavailable=1)
    # A single-replica ledger whose budget allows no disruption at all, on a healthy node: no
    # drain may ever evict it, and gpumedic has no reason to go near it. (A drain that such a
    # budget blocks hands the node to a human with a ticket: tests/flows pins that case.)
    faulty = {f["node"] for f in spec.faults}
    healthy = [n for n in nodes if n not in faulty]
    if healthy:
        cluster.ledger_node = healthy[-1]
        kube.add_pod(WORKLOAD_NAMESPACE, "ledger-0", healthy[-1], owner_kind="StatefulSet", owner_name="ledger",
                     labels={"app": "ledger"}, gpus=1)
        kube.add_pdb(WORKLOAD_NAMESPACE, "ledger", {"app": "ledger"}, min_available=1)


def _configure_fleet_file(path: Path, jira: JiraEmulator, policy: dict[str, Any], kubeconfig: Path) -> None:
    """Add the `jira:`, `remediation:` and `kubernetes:` blocks to the simulated fleet's inventory (its
    nodes stay listed: the cluster is where the sweep's verdicts go, as Node conditions)."""
    document = yaml.safe_load(path.read_text())
    document["fleet"]["kubernetes"] = {"kubeconfig": str(kubeconfig)}
    document["fleet"]["jira"] = {"url": jira.url, "user": jira.username, "token_env": JIRA_TOKEN_ENV,
                                 "project": "GPU"}
    document["fleet"]["remediation"] = policy
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    load_fleet_file(path)  # fail here, not in every flow run, if the blocks do not validate


# --------------------------------------------------------------------------- Prefect


def _wait_for_deployment(name: str, timeout_s: float = 120) -> None:
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def exists() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(name)
                return True
            except Exception:
                return False

    deadline = time.monotonic() + timeout_s
    while not run_coro_as_sync(exists()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"deployment {name} was not registered within {timeout_s:.0f}s")
        time.sleep(1)


def _run_served(deployment: str, timeout_s: float) -> tuple[str, str, dict[str, Any]]:
    """Run a served deployment once: its run's name, its state's name and its result."""
    from prefect.deployments import run_deployment

    flow_run = cast(FlowRun, run_deployment(deployment, timeout=timeout_s))
    state = flow_run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"the {deployment} run {flow_run.name} ended in state {state}")
    return flow_run.name, state.name or str(state.type.value), cast(dict[str, Any], state.result())


def run_sweep_deployment(timeout_s: float = 600) -> dict[str, Any]:
    return _run_served(SWEEP_DEPLOYMENT, timeout_s)[2]


def run_resume_deployment(timeout_s: float = 180) -> dict[str, Any]:
    """One run of resume-remediations (every 15 minutes in production) through the served deployment."""
    _step("running resume-remediations once (it runs every 15 minutes): open incidents no run will come back to")
    run, state, result = _run_served(RESUME_DEPLOYMENT, timeout_s)
    if result["started"]:
        print(f"    {run}: started " + ", ".join(f"{e['node']} ({e['why']})" for e in result["started"]))
    else:
        print(f"    {run}: nothing to resume ({len(result['left'])} incidents left waiting on a live run)")
    return {"run": run, "state": state, **result}


def run_ticket_deployment(timeout_s: float = 180) -> dict[str, Any]:
    """One run of file-pending-tickets (every 15 minutes in production) through the served deployment."""
    _step("running file-pending-tickets once (it runs every 15 minutes): tickets Jira was down for")
    run, state, result = _run_served(TICKETS_DEPLOYMENT, timeout_s)
    print(f"    {run}: {len(result['filed'])} filed now, {result['waiting']} waiting for Jira, "
          f"{result['refused']} refused by it")
    return {"run": run, "state": state, **result}


def _use_server(server: LocalPrefectServer, home: Path) -> None:
    """Point this process at the demo's server. Prefect reads its settings once, at import:
    without the refresh, the client here would start a temporary server of its own."""
    from prefect.context import refresh_global_settings_context

    os.environ.update(prefect_env(home, server.api_url))
    refresh_global_settings_context()


# --------------------------------------------------------------------------- the demo


def run_demo(*, auto_approve: bool, json_out: Path | None, fleet_file: Path | None, keep_running: bool) -> int:
    started = time.monotonic()
    home = Path(os.environ.get("GPUMEDIC_HOME", Path.home() / ".gpumedic")) / "demo" / time.strftime("%Y%m%d-%H%M%S")
    home.mkdir(parents=True, exist_ok=True)
    if fleet_file is None:
        fleet_file = Path(str(resources.files("gpumedic.sim") / "fleets" / "example.yaml"))
    spec = load_fleet_file(fleet_file).simulate
    if spec is None:
        print(f"{fleet_file}: the demo needs a `simulate:` fleet file", file=sys.stderr)
        return 2

    _step(f"starting a local Prefect server (SQLite under {home / 'prefect'})")
    server: LocalPrefectServer = start_local_server(home / "prefect")
    _use_server(server, home / "prefect")
    fleet = SimulatedFleet(home / "fleet")
    cluster: DemoCluster | None = None
    serve_process: subprocess.Popen[bytes] | None = None
    try:
        _step(f"starting a simulated fleet: {spec.nodes} nodes x {spec.gpus_per_node} GPUs, real sshd on 127.0.0.1")
        fleet.create(spec)
        fleet.start(exporter=spec.exporter)
        cluster = start_demo_cluster(fleet, spec, home)
        _print_cluster(cluster)
        _step("serving the deployments (nightly full sweep, 15-minute quick sweep, remediation, daily forecast, "
              "proactive maintenance)")
        serve_log = open(home / "serve.log", "ab")  # noqa: SIM115 - owned by the serve process
        env = {**os.environ, **cluster.serve_env(auto_approve=auto_approve),
               "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # pick triggered runs up within 2 s, not 10
        serve_process = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--fleet", str(fleet.inventory_file)],
            stdout=serve_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        _wait_for_deployment(SWEEP_DEPLOYMENT)
        _wait_for_deployment(REMEDIATION_DEPLOYMENT)
        from gpumedic.demo_forecast import forecast_demo_fleet, prepare_history, refresh_orders

        history = prepare_history(fleet, spec, datetime.now(UTC))
        _step("running a full sweep through the server")
        document = run_sweep_deployment()
        _print_summary(document)
        conditions = _print_node_conditions(cluster, document)
        forecast = forecast_demo_fleet(history, jira=cluster.jira, ui_url=server.ui_url, auto_approve=auto_approve)

        from gpumedic.demo_remediation import remediate_demo_fleet

        outcome = remediate_demo_fleet(document, fleet=fleet, cluster=cluster, ui_url=server.ui_url,
                                       auto_approve=auto_approve)
        outcome["forecast"] = refresh_orders(forecast, jira=cluster.jira, ui_url=server.ui_url)
        outcome["node_conditions"] = conditions
        outcome["remediation_status"] = _print_remediation_status(fleet, cluster)
        outcome["resume"] = run_resume_deployment()
        outcome["ticket_outbox"] = run_ticket_deployment()
        outcome["elapsed_s"] = round(time.monotonic() - started, 1)
        if json_out:
            json_out.write_text(json.dumps(outcome, indent=2, default=str) + "\n")
            _step(f"wrote {json_out}")
        print(f"\nPrefect UI: {server.ui_url}")
        print(f"  flow runs:  {server.ui_url}/runs   (the fleet-sweep run, the failure-forecast run and its "
              "proactive-maintenance order, then one remediate-node run per node)")
        print(f"  artifacts:  {server.ui_url}/artifacts  (fleet-health-report, gpu-failure-forecast, "
              "gpu-failure-risk, fleet-remediation, incident-*, resumed-remediations, ticket-outbox)")
        print(f"  logs:       {home / 'serve.log'}")
        if keep_running:
            print("\nThe server, the deployments, the simulated fleet and cluster stay up. Press Ctrl-C to stop.")
            try:
                while serve_process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        _step("stopping the demo")
        if serve_process is not None and serve_process.poll() is None:
            serve_process.terminate()
            try:
                serve_process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve_process.kill()
        if cluster is not None:
            cluster.stop()
        fleet.stop()
        server.stop()


def _print_cluster(cluster: DemoCluster) -> None:
    p = cluster.policy
    nodes = len(cluster.kube.list_nodes())
    pods = cluster.kube.list_pods()
    print(f"==> simulated cluster: Kubernetes API emulator at {cluster.kube.url} ({nodes} GPU nodes, "
          f"{len(pods)} pods), Jira emulator at {cluster.jira.url} (project GPU)")
    print("    workloads: a DaemonSet pair per node; ReplicaSet trainer under a PodDisruptionBudget "
          "(maxUnavailable 1), ReplicaSet notebook (no budget)")
    if cluster.ledger_node:
        print(f"    ledger-0 on {cluster.ledger_node} is under a budget with minAvailable 1 (all of it): "
              f"no drain may evict it")
    print(f"    remediation policy (fleet file `remediation:`): at most {cluster.budget_limit} nodes out of "
          f"service at once; diagnostics dcgmi diag -r {p['diag_level']}; drain deadline "
          f"{_seconds(p['drain_timeout'])}; probation {_seconds(p['probation'])}; approvals wait "
          f"{_seconds(p['approval_timeout'])}")
    print(f"    circuit breaker raised to {p['breaker_fraction']:.0%} of the fleet (default 20%): this demo "
          f"fleet is faulty on purpose, the breaker would otherwise ask a human to override it per node")


def _print_remediation_status(fleet: SimulatedFleet, cluster: DemoCluster) -> dict[str, Any]:
    """What `gpumedic remediation status` says once the demo's remediation has settled."""
    from gpumedic.adapters.breaker_override import read_breaker_override
    from gpumedic.config import cluster_access, load_fleet_settings
    from gpumedic.remediation_status import render, to_json
    from tasks.remediation import remediation_status_now

    _step(f"gpumedic remediation status --fleet {fleet.inventory_file}")
    settings = load_fleet_settings(fleet.inventory_file)
    access = cluster_access(settings.kubernetes, os.environ)
    status = remediation_status_now(access, settings.remediation_policy(), include_closed=True,
                                    breaker_override=read_breaker_override())
    for line in [*render(status), f"read from: {access}"]:
        print(f"    {line}" if line else "")
    return to_json(status)


def _print_node_conditions(cluster: DemoCluster, document: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The sweep's verdicts as the cluster now shows them (`kubectl describe node`): the GpuUnhealthy condition."""
    from gpumedic.domain.node_condition import CONDITION_TYPE

    print(f"\n  on the Nodes (kubectl describe node): condition {CONDITION_TYPE}")
    out = {}
    for node in (n["node"] for n in document["nodes"]):
        found = [c for c in cluster.kube.get_node(node)["status"]["conditions"] if c["type"] == CONDITION_TYPE]
        condition = found[0] if found else {"status": "-", "reason": "not written (see the sweep's log)"}
        out[node] = {"status": condition["status"], "reason": condition["reason"]}
        print(f"  {node:<14} {condition['status']:<8} {condition['reason']}")
    return out


def _print_summary(document: dict[str, Any]) -> None:
    print(f"\nsweep {document['sweep_id']}:")
    print(f"  {'node':<14} {'verdict':<9} {'action':<12} first reason")
    for node in document["nodes"]:
        print(f"  {node['node']:<14} {node['verdict']:<9} {node['action']:<12} {(node['reasons'] or ['-'])[0][:90]}")
