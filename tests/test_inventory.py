"""A fleet file's nodes: listed in it, or taken from Kubernetes (the emulator, through the real client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.inventory import resolve_fleet, resolve_node
from gpumedic.sim.kube_api import KubeApiEmulator

GPU_LABEL = {"nvidia.com/gpu.present": "true"}
RBAC = Path(__file__).resolve().parents[1] / "deploy" / "rbac.yaml"


@pytest.fixture
def cluster() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(seed=3) as kube:
        kube.add_node("gpu-a", gpus=8, labels=GPU_LABEL, internal_ip="10.20.0.11")
        kube.add_node("gpu-b", gpus=8, labels=GPU_LABEL, internal_ip="10.20.0.12")
        kube.add_node("cpu-c", gpus=0, internal_ip="10.20.0.13")  # not a GPU node: outside the selector
        yield kube


def _fleet_file(tmp_path: Path, kubeconfig: Path, **fleet: object) -> str:
    data = {"fleet": {"name": "t", "source": "ssh", "gpus_per_node": 8,
                      "ssh": {"user": "gpumedic", "key_file": str(tmp_path / "key"),
                              "known_hosts": str(tmp_path / "known_hosts"), "port": 2222},
                      "kubernetes": {"kubeconfig": str(kubeconfig)}, **fleet}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _kubeconfig_with_the_shipped_role(kube: KubeApiEmulator, tmp_path: Path) -> Path:
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    token = kube.service_account("gpumedic", "gpumedic", role["rules"])
    return kube.write_kubeconfig(tmp_path / "kubeconfig", token=token)


def _kubeconfig_of_a_cluster_gone(tmp_path: Path) -> Path:
    with KubeApiEmulator() as kube:
        return kube.write_kubeconfig(tmp_path / "gone.kubeconfig")


def test_a_fleet_file_without_nodes_sweeps_the_nodes_its_selector_matches_at_their_internal_ip(
    cluster: KubeApiEmulator, tmp_path: Path
) -> None:
    fleet, targets = resolve_fleet(_fleet_file(tmp_path, _kubeconfig_with_the_shipped_role(cluster, tmp_path)))
    assert [(t.name, t.ssh and (t.ssh.host, t.ssh.port), t.expected_gpus) for t in targets] == [
        ("gpu-a", ("10.20.0.11", 2222), 8), ("gpu-b", ("10.20.0.12", 2222), 8)]
    assert [n.name for n in fleet.nodes] == ["gpu-a", "gpu-b"]  # what the sweep's tasks are handed
    assert targets[0].exporter_url == "http://10.20.0.11:9400/metrics"


def test_one_node_is_read_alone_and_a_node_outside_the_selector_is_not_in_the_fleet(
    cluster: KubeApiEmulator, tmp_path: Path
) -> None:
    fleet_file = _fleet_file(tmp_path, _kubeconfig_with_the_shipped_role(cluster, tmp_path))
    cluster.clear_logs()
    _, target = resolve_node(fleet_file, "gpu-b")
    assert target.ssh is not None and target.ssh.host == "10.20.0.12"
    (request,) = [r for r in cluster.request_log if r.path == "/api/v1/nodes"]
    assert "fieldSelector=metadata.name%3Dgpu-b" in request.query  # one Node read, not the fleet's list
    with pytest.raises(PermanentError, match="cpu-c is not in the fleet"):
        resolve_node(fleet_file, "cpu-c")
    with pytest.raises(PermanentError, match="invalid node name"):  # never spliced into a field selector
        resolve_node(fleet_file, "gpu-a,metadata.name!=x")


def test_a_cluster_that_cannot_be_reached_is_a_transient_error_naming_it(tmp_path: Path) -> None:
    kubeconfig = _kubeconfig_of_a_cluster_gone(tmp_path)
    with pytest.raises(TransientError) as raised:
        resolve_fleet(_fleet_file(tmp_path, kubeconfig))
    said = str(raised.value)
    assert said.startswith(f"the fleet's nodes cannot be read from Kubernetes ({kubeconfig}")
    assert "cannot reach the API server" in said
    with pytest.raises(TransientError, match="cannot reach the API server"):
        resolve_node(_fleet_file(tmp_path, kubeconfig), "gpu-a")


def test_a_selector_that_matches_nothing_is_an_error_not_an_empty_healthy_fleet(
    cluster: KubeApiEmulator, tmp_path: Path
) -> None:
    kubeconfig = _kubeconfig_with_the_shipped_role(cluster, tmp_path)
    fleet_file = _fleet_file(tmp_path, kubeconfig)
    data = yaml.safe_load(Path(fleet_file).read_text())
    data["fleet"]["kubernetes"]["label_selector"] = "gpumedic.io/pool=b300"
    Path(fleet_file).write_text(yaml.safe_dump(data))
    with pytest.raises(PermanentError, match="no Node matches the fleet file's kubernetes.label_selector "
                                             "'gpumedic.io/pool=b300'"):
        resolve_fleet(fleet_file)


def test_a_fleet_file_that_lists_its_nodes_never_asks_the_cluster(tmp_path: Path) -> None:
    fleet_file = _fleet_file(tmp_path, _kubeconfig_of_a_cluster_gone(tmp_path),
                             nodes=[{"name": "gpu-x", "host": "10.30.0.1"}])
    _, targets = resolve_fleet(fleet_file)
    assert [(t.name, t.ssh and t.ssh.host) for t in targets] == [("gpu-x", "10.30.0.1")]
    _, target = resolve_node(fleet_file, "gpu-x")
    assert target.name == "gpu-x"
    with pytest.raises(PermanentError, match="gpu-y is not in the fleet"):
        resolve_node(fleet_file, "gpu-y")


def test_each_node_expects_the_gpus_its_label_declares_and_one_whose_label_is_no_count_expects_none(
    tmp_path: Path,
) -> None:
    """A 4-GPU node in a fleet of 8-GPU ones is not 'missing 4 GPUs' (a reboot); a garbled label is no figure."""
    label = "example.com/gpus"
    with KubeApiEmulator(seed=4) as kube:
        kube.add_node("gpu-eight", gpus=8, labels={**GPU_LABEL, label: "8"}, internal_ip="10.40.0.1")
        kube.add_node("gpu-four", gpus=4, labels={**GPU_LABEL, label: "4"}, internal_ip="10.40.0.2")
        kube.add_node("gpu-unlabelled", gpus=8, labels=GPU_LABEL, internal_ip="10.40.0.3")
        kube.add_node("gpu-garbled", gpus=4, labels={**GPU_LABEL, label: "four"}, internal_ip="10.40.0.4")
        fleet_file = _fleet_file(tmp_path, _kubeconfig_with_the_shipped_role(kube, tmp_path))
        data = yaml.safe_load(Path(fleet_file).read_text())
        data["fleet"]["kubernetes"]["expected_gpus_label"] = label
        Path(fleet_file).write_text(yaml.safe_dump(data))
        _, targets = resolve_fleet(fleet_file)
        _, garbled = resolve_node(fleet_file, "gpu-garbled")
    assert {t.name: t.expected_gpus for t in targets} == {
        "gpu-eight": 8, "gpu-four": 4, "gpu-unlabelled": 8, "gpu-garbled": None}  # unlabelled: gpus_per_node
    assert garbled.expected_gpus is None
