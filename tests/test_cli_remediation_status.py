"""`gpumedic remediation status` against the Kubernetes API emulator, through the real `kubernetes` client."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.cli import main
from gpumedic.domain.remediation import RemediationState
from gpumedic.domain.verdict import Action
from gpumedic.sim.kube_api import KubeApiEmulator
from tests.remediation_walk import walk

FLEET = (
    "fleet:\n  source: exporter\n  nodes: [{name: gpu-a}, {name: gpu-b}, {name: gpu-c}]\n"
    "  remediation: {max_fraction_out: 1.0}\n"
)


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[KubeApiEmulator, Path, Path]:
    with KubeApiEmulator() as kube:
        for name in ("gpu-a", "gpu-b", "gpu-c"):
            kube.add_node(name, gpus=8)
        kube.add_node("cpu-a", gpus=0)
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(FLEET)
        yield kube, kubeconfig, fleet


def test_it_lists_the_nodes_gpumedic_holds_and_names_an_unreadable_record(
    cluster: tuple[KubeApiEmulator, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig, fleet = cluster
    now = datetime.now(UTC)
    draining = walk("gpu-a", Action.RESET_GPU, until=RemediationState.DRAINING, at=now - timedelta(minutes=5))
    waiting = walk("gpu-b", Action.REPLACE, until=RemediationState.AWAITING_APPROVAL, at=now - timedelta(hours=1))
    with KubeNodes.from_kubeconfig(kubeconfig) as kube:
        for record in (draining, waiting):
            kube.cordon(record.node, taint_value=str(record.requested))
            kube.write_annotations(record.node, record.to_annotations())
        broken = {**waiting.to_annotations(), "gpumedic.io/history": "[{not json"}
        kube.write_annotations("gpu-c", broken)

    out_file = tmp_path / "status.json"
    code = main(
        ["remediation", "status", "--fleet", str(fleet), "--kubeconfig", str(kubeconfig), "--json", str(out_file)]
    )
    out = capsys.readouterr().out

    assert code == 0
    assert "remediation on 3 GPU nodes" in out  # the CPU node is not part of the GPU fleet
    assert "out of service by gpumedic: 2 of at most 3 nodes (max_nodes_out 5, max_fraction_out 100%)" in out
    assert "gpu-c: its remediation record cannot be read (gpumedic.io/history" in out
    assert "waiting for a human: gpu-b" in out
    assert out.splitlines()[-1] == f"read from: {kubeconfig} (--kubeconfig)"  # which cluster this is
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("gpu-") and "  " in line}
    assert "draining" in rows["gpu-a"] and "awaiting_approval" in rows["gpu-b"]
    assert "approve or reject the replacement in the Prefect UI" in rows["gpu-b"]
    document = json.loads(out_file.read_text())
    assert [n["node"] for n in document["nodes"]] == ["gpu-a", "gpu-b"]
    assert document["unreadable"][0]["node"] == "gpu-c"


def test_a_cluster_with_nothing_under_remediation_says_so(
    cluster: tuple[KubeApiEmulator, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, kubeconfig, fleet = cluster
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["remediation", "status", "--fleet", str(fleet), "--kubeconfig", str(kubeconfig)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "out of service by gpumedic: 0 of at most 3 nodes (max_nodes_out 5, max_fraction_out 100%)"
    assert out[2].startswith("circuit breaker closed: ")
    # The fleet-wide override lives on the Prefect server: without its address the status says it did not look.
    assert out[3].startswith("fleet-wide breaker override: not read (set PREFECT_API_URL")
    assert out[-2:] == ["no open incidents", f"read from: {kubeconfig} (--kubeconfig)"]


def test_an_api_server_that_cannot_be_reached_is_a_clear_error(
    cluster: tuple[KubeApiEmulator, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube, _, fleet = cluster
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config = kube.kubeconfig()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"
    moved = tmp_path / "kubeconfig-nowhere"
    moved.write_text(json.dumps(config))

    code = main(["remediation", "status", "--fleet", str(fleet), "--kubeconfig", str(moved)])

    err = capsys.readouterr().err
    assert code == 1
    assert "cannot read the nodes' remediation records" in err and "cannot reach the API server" in err


def test_without_kubeconfig_it_reads_the_cluster_and_context_the_fleet_file_names(
    cluster: tuple[KubeApiEmulator, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig, _ = cluster
    fleet = tmp_path / "fleet-with-cluster.yaml"
    fleet.write_text(FLEET + f"  kubernetes: {{kubeconfig: {kubeconfig.name}, context: gpumedic-sim}}\n")
    assert main(["remediation", "status", "--fleet", str(fleet)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("remediation on 3 GPU nodes")
    assert out[-1] == f"read from: {kubeconfig}, context gpumedic-sim (the fleet file's kubernetes.kubeconfig)"
    # A context the kubeconfig lacks is an error that names it, not a read of the current context.
    fleet.write_text(FLEET + f"  kubernetes: {{kubeconfig: {kubeconfig}, context: prod}}\n")
    assert main(["remediation", "status", "--fleet", str(fleet)]) == 1
    assert "context prod" in capsys.readouterr().err
