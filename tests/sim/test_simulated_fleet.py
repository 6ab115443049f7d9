"""The simulated fleet itself: `sim up/down`, the node agent's sh subset, node actions."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gpumedic.sim import node_agent, node_state
from tests.conftest import EXAMPLE_FLEET, REPO, require_sshd
from tests.waiting import eventually


def _state(tmp_path: Path, **fault: object) -> Path:
    state = node_state.new_node("gpu-node-00", 2, 1, time.time())
    if fault:
        node_state.apply_fault(state, {"node": "gpu-node-00", **fault}, time.time())
    path = tmp_path / "state.json"
    node_state.save(path, state)
    return path


def _run(script: str, path: Path) -> tuple[str, int]:
    out = io.StringIO()
    rc = node_agent.run_script(script, path, out)
    return out.getvalue(), rc


def test_agent_reports_each_tools_exit_status(tmp_path: Path) -> None:
    path = _state(tmp_path)
    text, _ = _run("nvidia-smi --query-gpu=index,bogus --format=csv 2>&1; echo rc=$?; nosuchtool; echo rc=$?", path)
    assert 'Field "bogus" is not a valid field to query.' in text
    assert "rc=2" in text and "rc=127" in text


def test_agent_renders_faults_the_fleet_file_asks_for(tmp_path: Path) -> None:
    path = _state(tmp_path, gpu=1, nvlink_down=[2])
    text, rc = _run("nvidia-smi nvlink -s", path)
    assert rc == 0
    assert text.count("<inactive>") == 1


def test_a_reset_clears_transient_faults_but_not_hardware_faults(tmp_path: Path) -> None:
    path = _state(tmp_path, gpu=1, ecc_dbe_volatile=1)
    _run("nvidia-smi --gpu-reset -i 1", path)
    assert node_state.load(path)["gpus"][1]["dbe_vol"] == 0
    bad = _state(tmp_path, gpu=0, hw_fault=True)
    out, _ = _run("nvidia-smi --gpu-reset -i 0; dcgmi diag -r 2 -j", bad)
    assert '"status": "Fail"' in out


def test_sim_up_and_down_run_a_fleet_in_the_background(tmp_path: Path) -> None:
    require_sshd()
    root = tmp_path / "sim"
    cli = [sys.executable, "-m", "gpumedic.cli", "sim"]
    up = subprocess.run([*cli, "up", "--fleet", str(EXAMPLE_FLEET), "--dir", str(root)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        inventory = yaml.safe_load((root / "inventory.yaml").read_text())
        assert len(inventory["fleet"]["nodes"]) == 12
        pids = [int((root / "nodes" / n["name"] / "sshd.pid").read_text())
                for n in inventory["fleet"]["nodes"] if n["name"] != "gpu-node-09"]
        assert len(pids) == 11
    finally:
        down = subprocess.run([*cli, "down", "--dir", str(root)], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (root / "supervisor.ready").exists()
    assert eventually(lambda: all(not Path(f"/proc/{pid}").exists() for pid in pids))


def test_a_node_whose_port_was_taken_meanwhile_moves_to_another(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from gpumedic.sim import fleet as fleet_module
    from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet

    require_sshd()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    real = fleet_module._free_port
    ports = iter([busy])
    monkeypatch.setattr(fleet_module, "_free_port", lambda: next(ports, None) or real())
    fleet = SimulatedFleet(tmp_path / "fleet")
    fleet.create(FleetSimulation(nodes=1, gpus_per_node=1, exporter=False))
    try:
        fleet.start(exporter=False)
        port = fleet.nodes["gpu-node-00"].ssh_port
        assert port != busy
        assert f"[127.0.0.1]:{port} " in fleet.known_hosts.read_text()
        assert yaml.safe_load(fleet.inventory_file.read_text())["fleet"]["nodes"][0]["port"] == port
    finally:
        fleet.stop()
        taken.close()


def test_a_fleet_that_fails_to_start_leaves_no_sshd_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from gpumedic.sim import fleet as fleet_module
    from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet

    require_sshd()
    fleet = SimulatedFleet(tmp_path / "fleet")
    fleet.create(FleetSimulation(nodes=3, gpus_per_node=1, exporter=False))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the exporters could not start")

    monkeypatch.setattr(fleet_module.SimulatedFleet, "_wait_ready", broken)
    with pytest.raises(RuntimeError, match="exporters"):
        fleet.start(exporter=False)

    def sshd_left() -> str:
        return subprocess.run(["pgrep", "-f", f"sshd -D -f {fleet.root}"], capture_output=True, text=True).stdout

    assert eventually(lambda: sshd_left().strip() == ""), sshd_left()
