"""Publishing the GpuUnhealthy condition through the real `kubernetes` client, against the API emulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpumedic.adapters.kube_conditions import publish_conditions
from gpumedic.adapters.kube_nodes import KubeNodes, NodeMissingError
from gpumedic.domain.node_condition import CONDITION_TYPE, HEARTBEAT_REFRESH, NodeCondition, next_condition
from gpumedic.sim.kube_api import KubeApiEmulator

T0 = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
SELECTOR = "nvidia.com/gpu.present=true"


def _condition(status: str, reason: str, message: str, at: datetime) -> NodeCondition:
    return NodeCondition(CONDITION_TYPE, status, reason, message, at, at)  # type: ignore[arg-type]


def _on_node(emulator: KubeApiEmulator, node: str) -> dict[str, Any]:
    return {c["type"]: c for c in emulator.get_node(node)["status"]["conditions"]}


def _status_patches(emulator: KubeApiEmulator) -> list[str]:
    return [r.path for r in emulator.request_log if r.method == "PATCH" and r.path.endswith("/status")]


@pytest.fixture
def emulator() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(seed=11) as emu:
        for name in ("gpu-a", "gpu-b", "gpu-c"):
            emu.add_node(name, gpus=8, labels={"nvidia.com/gpu.present": "true"})
        yield emu


@pytest.fixture
def kube(emulator: KubeApiEmulator) -> Iterator[KubeNodes]:
    with KubeNodes(emulator.api_client()) as nodes:
        yield nodes


def _findings(at: datetime) -> dict[str, NodeCondition]:
    return {
        "gpu-a": _condition("False", "GpusHealthy", "all 8 GPUs healthy", at),
        "gpu-b": _condition("True", "ReplaceGpu", "GPU 3: row remap failure", at),
        "gpu-c": _condition("Unknown", "NotAssessed", "ssh: connection refused", at),
    }


def test_each_node_gets_its_condition_beside_the_kubelets(emulator: KubeApiEmulator, kube: KubeNodes) -> None:
    outcome = publish_conditions(kube, _findings(T0), HEARTBEAT_REFRESH, SELECTOR)
    assert outcome.written == ["gpu-a", "gpu-b", "gpu-c"] and not (outcome.failed or outcome.refused)
    for node, status, reason in (("gpu-a", "False", "GpusHealthy"), ("gpu-b", "True", "ReplaceGpu"),
                                 ("gpu-c", "Unknown", "NotAssessed")):
        conditions = _on_node(emulator, node)
        assert conditions["Ready"]["status"] == "True"  # the kubelet's conditions are left as they were
        mine = conditions[CONDITION_TYPE]
        assert (mine["status"], mine["reason"]) == (status, reason)
        assert mine["lastHeartbeatTime"] == mine["lastTransitionTime"] == "2026-11-23T04:00:00Z"
    assert kube.get_node("gpu-b").conditions[CONDITION_TYPE] == _findings(T0)["gpu-b"]  # read back as written


def test_a_sweep_that_finds_nothing_new_writes_nothing_until_the_heartbeat_is_due(
    emulator: KubeApiEmulator, kube: KubeNodes
) -> None:
    publish_conditions(kube, _findings(T0), HEARTBEAT_REFRESH, SELECTOR)
    emulator.clear_logs()
    quarter_hour = publish_conditions(kube, _findings(T0 + timedelta(minutes=15)), HEARTBEAT_REFRESH, SELECTOR)
    assert quarter_hour.unchanged == ["gpu-a", "gpu-b", "gpu-c"] and quarter_hour.written == []
    assert _status_patches(emulator) == []  # one list, no writes
    later = T0 + HEARTBEAT_REFRESH + timedelta(minutes=1)
    findings = _findings(later) | {"gpu-b": _condition("False", "GpusHealthy", "all 8 GPUs healthy", later)}
    hour = publish_conditions(kube, findings, HEARTBEAT_REFRESH, SELECTOR)
    assert hour.written == ["gpu-a", "gpu-b", "gpu-c"]
    a, b = _on_node(emulator, "gpu-a")[CONDITION_TYPE], _on_node(emulator, "gpu-b")[CONDITION_TYPE]
    assert a["lastHeartbeatTime"] == "2026-11-23T05:01:00Z" and a["lastTransitionTime"] == "2026-11-23T04:00:00Z"
    assert b["status"] == "False" and b["lastTransitionTime"] == "2026-11-23T05:01:00Z"  # replaced: a transition


def test_a_newer_sweeps_condition_written_meanwhile_is_not_overwritten(
    emulator: KubeApiEmulator, kube: KubeNodes
) -> None:
    stale_view = kube.get_node("gpu-b")  # read by a slow sweep that started at T0 ...
    newer = _condition("True", "ReplaceGpu", "GPU 3: row remap failure", T0 + timedelta(minutes=5))
    kube.update_condition("gpu-b", CONDITION_TYPE, lambda _: newer)  # ... a later sweep wrote first
    emulator.clear_logs()
    older = _condition("False", "GpusHealthy", "all 8 GPUs healthy", T0)
    written = kube.update_condition("gpu-b", CONDITION_TYPE,
                                    lambda on_node: next_condition(on_node, older, HEARTBEAT_REFRESH), known=stale_view)
    assert written is None
    assert [r.status for r in emulator.request_log if r.method == "PATCH"] == [409]  # refused, read again, left
    assert _on_node(emulator, "gpu-b")[CONDITION_TYPE]["reason"] == "ReplaceGpu"


def test_nodes_not_in_the_cluster_and_failed_writes_are_reported_and_the_rest_written(
    emulator: KubeApiEmulator, kube: KubeNodes
) -> None:
    emulator.fault("/api/v1/nodes/gpu-b/status", count=None, method="PATCH", status=503)
    findings = _findings(T0) | {"gpu-z": _condition("False", "GpusHealthy", "all 8 GPUs healthy", T0)}
    outcome = publish_conditions(kube, findings, HEARTBEAT_REFRESH, SELECTOR)
    assert outcome.written == ["gpu-a", "gpu-c"] and outcome.missing == ["gpu-z"]
    assert list(outcome.failed) == ["gpu-b"] and "503" in outcome.failed["gpu-b"]
    assert outcome.summary() == "node conditions: 2 written, 0 unchanged, 1 not in the cluster, 1 failed"
    assert CONDITION_TYPE not in _on_node(emulator, "gpu-b")


def test_a_node_deleted_after_the_list_is_missing_not_failed(emulator: KubeApiEmulator, kube: KubeNodes) -> None:
    listed = {view.name: view for view in kube.list_nodes(SELECTOR)}
    emulator.remove_node("gpu-b")
    with pytest.raises(NodeMissingError, match="gpu-b"):
        kube.update_condition("gpu-b", CONDITION_TYPE, lambda _: _findings(T0)["gpu-b"], known=listed["gpu-b"])


def test_a_node_outside_the_selector_is_read_on_its_own(emulator: KubeApiEmulator, kube: KubeNodes) -> None:
    emulator.add_node("gpu-unlabelled", gpus=8)
    outcome = publish_conditions(kube, {"gpu-unlabelled": _findings(T0)["gpu-a"]}, HEARTBEAT_REFRESH, SELECTOR)
    assert outcome.written == ["gpu-unlabelled"]
    assert _on_node(emulator, "gpu-unlabelled")[CONDITION_TYPE]["status"] == "False"


def test_without_the_nodes_status_grant_the_first_refusal_stops_the_rest(emulator: KubeApiEmulator) -> None:
    rules = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]}]
    with KubeNodes(emulator.api_client(emulator.service_account("gpumedic", "gpumedic", rules))) as kube:
        outcome = publish_conditions(kube, _findings(T0), HEARTBEAT_REFRESH, SELECTOR)
    assert outcome.refused is not None and 'cannot patch resource "nodes/status"' in outcome.refused
    assert outcome.written == [] and outcome.not_tried == ["gpu-b", "gpu-c"]
    assert outcome.summary() == "node conditions: 0 written, 0 unchanged, 3 refused by the API server"
    assert len(_status_patches(emulator)) == 1


def test_a_lone_node_is_read_on_its_own_not_with_a_list_of_the_fleet(emulator: KubeApiEmulator,
                                                                      kube: KubeNodes) -> None:
    outcome = publish_conditions(kube, {"gpu-b": _findings(T0)["gpu-b"]}, HEARTBEAT_REFRESH, SELECTOR)
    assert outcome.written == ["gpu-b"]
    assert [(r.method, r.path) for r in emulator.request_log] == [
        ("GET", "/api/v1/nodes/gpu-b"), ("PATCH", "/api/v1/nodes/gpu-b/status")]
    assert _on_node(emulator, "gpu-b")[CONDITION_TYPE]["reason"] == "ReplaceGpu"
