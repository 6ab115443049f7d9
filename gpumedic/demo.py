"""`gpumedic demo`: the whole product on one machine, against a simulated fleet.

1. a local Prefect server (SQLite) in the background;
2. a simulated fleet: one real sshd per node on 127.0.0.1 (packaged example: 12 nodes, 9 faults);
3. every deployment served from one process (`deployments/serve.py`, no work pool);
4. a full sweep run through the server, its summary printed with where to look in the UI;
5. remediation of the nodes that need it, when the remediation workflow is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, cast

from prefect.client.schemas.objects import FlowRun

from gpumedic.config import load_fleet_file
from gpumedic.prefect_server import LocalPrefectServer, prefect_env, start_local_server
from gpumedic.sim.fleet import SimulatedFleet

SWEEP_DEPLOYMENT = "fleet-sweep/nightly-full-sweep"


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


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


def run_sweep_deployment(timeout_s: float = 600) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    flow_run = cast(FlowRun, run_deployment(SWEEP_DEPLOYMENT, timeout=timeout_s))
    state = flow_run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"the sweep run {flow_run.name} ended in state {state}")
    return cast(dict[str, Any], state.result())


def run_demo(*, auto_approve: bool, json_out: Path | None, fleet_file: Path | None, keep_running: bool) -> int:
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
    os.environ.update(prefect_env(home / "prefect", server.api_url))
    fleet = SimulatedFleet(home / "fleet")
    serve_process: subprocess.Popen[bytes] | None = None
    try:
        _step(f"starting a simulated fleet: {spec.nodes} nodes x {spec.gpus_per_node} GPUs, real sshd on 127.0.0.1")
        fleet.create(spec)
        fleet.start(exporter=spec.exporter)
        _step("serving the deployments (nightly full sweep, 15-minute quick sweep, remediation)")
        serve_log = open(home / "serve.log", "ab")  # noqa: SIM115 - owned by the serve process
        serve_process = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--fleet", str(fleet.inventory_file)],
            stdout=serve_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
        )
        _wait_for_deployment(SWEEP_DEPLOYMENT)
        _step("running a full sweep through the server")
        document = run_sweep_deployment()
        _print_summary(document)
        outcome: dict[str, Any] = {"sweep": document, "nodes": {}}
        if importlib.util.find_spec("gpumedic.demo_remediation") is not None:
            from gpumedic.demo_remediation import remediate_demo_fleet

            outcome = remediate_demo_fleet(document, fleet=fleet, home=home, ui_url=server.ui_url,
                                           auto_approve=auto_approve)
        if json_out:
            json_out.write_text(json.dumps(outcome, indent=2, default=str) + "\n")
            _step(f"wrote {json_out}")
        print(f"\nPrefect UI: {server.ui_url}")
        print(f"  flow runs:  {server.ui_url}/runs   (open the fleet-sweep run, then its Artifacts tab)")
        print(f"  artifacts:  {server.ui_url}/artifacts  (fleet-health-report, fleet-unhealthy-nodes)")
        if keep_running:
            print("\nThe server, the deployments and the simulated fleet stay up. Press Ctrl-C to stop.")
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
        fleet.stop()
        server.stop()


def _print_summary(document: dict[str, Any]) -> None:
    print(f"\nsweep {document['sweep_id']}:")
    print(f"  {'node':<14} {'verdict':<9} {'action':<12} first reason")
    for node in document["nodes"]:
        print(f"  {node['node']:<14} {node['verdict']:<9} {node['action']:<12} {(node['reasons'] or ['-'])[0][:90]}")
