"""KubeNodes against the Kubernetes API emulator, through the real `kubernetes` client (no mocks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.kube_nodes import (
    CORDON_OWNER_ANNOTATION,
    EXTERNAL_CORDON,
    TAINT_KEY,
    ConflictError,
    KubeNodes,
    NodeNotBackError,
    NodeView,
    Taint,
    is_managed,
    operator_uncordoned,
)
from gpumedic.domain.node_condition import CONDITION_TYPE, NodeCondition
from gpumedic.sim.kube_api import KubeApiEmulator

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
FOREIGN_TAINT = {"key": "example.com/maintenance", "value": "true", "effect": "NoSchedule"}


class FakeClock:
    """A drain's clock and sleep: sleeping advances time at once; `on_sleep` plays the cluster."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


@pytest.fixture
def emulator() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(seed=7) as emu:
        emu.add_node("gpu-a", gpus=8, labels={"gpumedic.io/pool": "h100"})
        emu.add_node("gpu-b", gpus=8, labels={"gpumedic.io/pool": "h100", "gpumedic.io/managed": "false"})
        yield emu


@pytest.fixture
def kubeconfig(emulator: KubeApiEmulator, tmp_path: Path) -> Path:
    return emulator.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def nodes(kubeconfig: Path) -> Iterator[KubeNodes]:
    with KubeNodes.from_kubeconfig(kubeconfig, request_timeout_s=5) as kube:
        yield kube


# -- reading -----------------------------------------------------------------------------------


def test_get_node_reads_readiness_boot_id_gpus_and_version(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    view = nodes.get_node("gpu-a")
    raw = emulator.get_node("gpu-a")
    assert view.name == "gpu-a"
    assert view.ready is True
    assert view.unschedulable is False
    assert view.gpu_capacity == 8
    assert view.boot_id == raw["status"]["nodeInfo"]["bootID"]
    assert view.resource_version == raw["metadata"]["resourceVersion"]
    emulator.set_node_ready("gpu-a", False)
    assert nodes.get_node("gpu-a").ready is False


def test_missing_node_is_a_permanent_error(nodes: KubeNodes) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        nodes.get_node("nope")


def test_list_nodes_honours_the_label_selector_and_the_opt_out_label(nodes: KubeNodes) -> None:
    assert [v.name for v in nodes.list_nodes()] == ["gpu-a", "gpu-b"]
    managed = [v.name for v in nodes.list_nodes("gpumedic.io/pool=h100") if is_managed(v)]
    assert managed == ["gpu-a"]
    assert nodes.list_nodes("gpumedic.io/pool=a100") == []


# -- cordon / uncordon -------------------------------------------------------------------------


def test_cordon_sets_unschedulable_and_our_taint_and_is_idempotent(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    first = nodes.cordon("gpu-a", taint_value="reset_gpu")
    assert first.changed and not first.already_cordoned_by_other
    raw = emulator.get_node("gpu-a")
    assert raw["spec"]["unschedulable"] is True
    assert {"key": TAINT_KEY, "value": "reset_gpu", "effect": "NoSchedule"} in raw["spec"]["taints"]
    assert raw["metadata"]["annotations"][CORDON_OWNER_ANNOTATION] == "gpumedic"

    version = raw["metadata"]["resourceVersion"]
    again = nodes.cordon("gpu-a", taint_value="reset_gpu")
    assert not again.changed and not again.already_cordoned_by_other
    assert emulator.get_node("gpu-a")["metadata"]["resourceVersion"] == version


def test_cordon_keeps_foreign_taints_and_updates_our_taint_value(emulator: KubeApiEmulator) -> None:
    emulator.add_node("gpu-c", taints=[FOREIGN_TAINT])
    with KubeNodes(emulator.api_client()) as kube:
        kube.cordon("gpu-c", taint_value="reset_gpu")
        assert kube.cordon("gpu-c", taint_value="reboot").changed
        view = kube.get_node("gpu-c")
    assert Taint(FOREIGN_TAINT["key"], "NoSchedule", "true") in view.taints
    assert [t for t in view.taints if t.key == TAINT_KEY] == [Taint(TAINT_KEY, "NoSchedule", "reboot")]


def test_uncordon_releases_a_node_we_cordoned_and_is_idempotent(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    nodes.cordon("gpu-a", taint_value="reset_gpu")
    assert nodes.uncordon("gpu-a", we_cordoned=True) is True
    raw = emulator.get_node("gpu-a")
    assert not raw["spec"].get("unschedulable")
    assert not any(t["key"] == TAINT_KEY for t in raw["spec"].get("taints") or [])
    assert CORDON_OWNER_ANNOTATION not in raw["metadata"].get("annotations", {})
    version = raw["metadata"]["resourceVersion"]
    assert nodes.uncordon("gpu-a", we_cordoned=True) is False
    assert emulator.get_node("gpu-a")["metadata"]["resourceVersion"] == version


def test_a_node_cordoned_by_someone_else_is_never_uncordoned(emulator: KubeApiEmulator) -> None:
    emulator.add_node("gpu-c", unschedulable=True, taints=[FOREIGN_TAINT])
    with KubeNodes(emulator.api_client()) as kube:
        result = kube.cordon("gpu-c", taint_value="replace")
        assert result.already_cordoned_by_other and result.changed
        # A re-run after a crash (the caller never stored the flag) still learns it from the node.
        rerun = kube.cordon("gpu-c", taint_value="replace")
        assert rerun.already_cordoned_by_other and not rerun.changed
        assert kube.get_node("gpu-c").annotations[CORDON_OWNER_ANNOTATION] == EXTERNAL_CORDON

        # Even a caller that wrongly claims the cordon cannot undo the operator's.
        assert kube.uncordon("gpu-c", we_cordoned=True) is True
        view = kube.get_node("gpu-c")
    assert view.unschedulable is True
    assert view.taint(TAINT_KEY) is None
    assert view.taint(FOREIGN_TAINT["key"]) is not None
    assert CORDON_OWNER_ANNOTATION not in view.annotations


def test_operator_uncordon_is_detected(nodes: KubeNodes, emulator: KubeApiEmulator) -> None:
    nodes.cordon("gpu-a", taint_value="reset_gpu")
    assert not operator_uncordoned(nodes.get_node("gpu-a"), record_said_cordoned=True)
    # `kubectl uncordon` is a patch of spec.unschedulable only.
    other = KubeNodes(emulator.api_client())
    other.core.patch_node("gpu-a", {"spec": {"unschedulable": False}},
                          _content_type="application/strategic-merge-patch+json")
    other.close()
    view = nodes.get_node("gpu-a")
    assert operator_uncordoned(view, record_said_cordoned=True)
    assert not operator_uncordoned(view, record_said_cordoned=False)


class RacingKubeNodes(KubeNodes):
    """Between our read and our write, another writer changes the node `races` times."""

    def __init__(self, emulator: KubeApiEmulator, races: int, **kwargs: object) -> None:
        super().__init__(emulator.api_client(), **kwargs)  # type: ignore[arg-type]
        self.other = KubeNodes(emulator.api_client())
        self.races = races
        self.reads = 0

    def get_node(self, name: str) -> NodeView:
        view = super().get_node(name)
        self.reads += 1
        if self.races > 0:
            self.races -= 1
            taints = [{"key": f"example.com/t{self.races}", "effect": "NoSchedule"}]
            taints += [{"key": t.key, "effect": t.effect, **({"value": t.value} if t.value else {})}
                       for t in self.other.get_node(name).taints]
            self.other.core.patch_node(name, {"spec": {"taints": taints}},
                                       _content_type="application/merge-patch+json")
        return view


def test_a_write_race_on_taints_is_retried_and_loses_no_taint(emulator: KubeApiEmulator) -> None:
    kube = RacingKubeNodes(emulator, races=1)
    try:
        assert kube.cordon("gpu-a", taint_value="reset_gpu").changed
    finally:
        kube.close()
        kube.other.close()
    assert kube.reads == 2  # one 409, one successful retry
    keys = {t["key"] for t in emulator.get_node("gpu-a")["spec"]["taints"]}
    assert keys == {TAINT_KEY, "example.com/t0"}


def test_endless_conflicts_give_up_with_a_transient_conflict_error(emulator: KubeApiEmulator) -> None:
    kube = RacingKubeNodes(emulator, races=100, max_conflict_retries=2)
    try:
        with pytest.raises(ConflictError, match="after 2 retries") as caught:
            kube.cordon("gpu-a", taint_value="reset_gpu")
    finally:
        kube.close()
        kube.other.close()
    assert isinstance(caught.value, TransientError)
    assert kube.reads == 3
    assert not emulator.get_node("gpu-a")["spec"].get("unschedulable")


# -- annotations -------------------------------------------------------------------------------


def test_annotations_are_written_merged_deleted_and_read_by_prefix(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    emulator.add_node("gpu-c", annotations={"example.com/keep": "1"})
    rv = nodes.write_annotations("gpu-c", {"gpumedic.io/state": "quarantined", "gpumedic.io/incident": "i-1"})
    assert rv == emulator.get_node("gpu-c")["metadata"]["resourceVersion"]
    nodes.write_annotations("gpu-c", {"gpumedic.io/incident": None, "gpumedic.io/step": "drain"},
                            expected_resource_version=rv)
    assert nodes.read_annotations("gpu-c") == {"gpumedic.io/state": "quarantined", "gpumedic.io/step": "drain"}
    assert nodes.read_annotations("gpu-c", prefix="example.com/") == {"example.com/keep": "1"}


def test_a_stale_expected_resource_version_is_a_conflict_and_writes_nothing(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    rv = nodes.write_annotations("gpu-a", {"gpumedic.io/state": "quarantined"})
    nodes.write_annotations("gpu-a", {"gpumedic.io/state": "draining"}, expected_resource_version=rv)
    with pytest.raises(ConflictError):
        nodes.write_annotations("gpu-a", {"gpumedic.io/state": "readmitted"}, expected_resource_version=rv)
    assert nodes.read_annotations("gpu-a")["gpumedic.io/state"] == "draining"


# -- errors ------------------------------------------------------------------------------------


def test_server_errors_and_outages_are_transient_bad_credentials_permanent(
    emulator: KubeApiEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    with KubeNodes.from_kubeconfig(kubeconfig) as kube:
        emulator.fault("/api/v1/nodes/gpu-a", 1, status=503)
        with pytest.raises(TransientError, match="503"):
            kube.get_node("gpu-a")
        assert kube.get_node("gpu-a").name == "gpu-a"

    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(kubeconfig.read_text().replace(emulator.token, "wrong-token"))
    with KubeNodes.from_kubeconfig(bad) as kube, pytest.raises(PermanentError, match="401") as caught:
        kube.get_node("gpu-a")
    assert "wrong-token" not in str(caught.value)

    with KubeNodes.from_kubeconfig(kubeconfig, request_timeout_s=2) as kube:
        emulator.stop()
        with pytest.raises(TransientError, match="cannot reach"):
            kube.get_node("gpu-a")


def test_a_missing_kubeconfig_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="kubeconfig"):
        KubeNodes.from_kubeconfig(tmp_path / "absent")


# -- drain -------------------------------------------------------------------------------------


def add_workloads(emu: KubeApiEmulator, node: str = "gpu-a") -> None:
    emu.add_pod("kube-system", "nvidia-device-plugin-x1", node, owner_kind="DaemonSet")
    emu.add_pod("monitoring", "dcgm-exporter-x1", node, owner_kind="DaemonSet")
    emu.add_pod("kube-system", f"kube-proxy-{node}", node, mirror=True)
    emu.add_pod("default", "static-web", node, mirror=True)
    emu.add_pod("kube-system", "coredns-5d-abc", node, owner_kind="ReplicaSet")
    emu.add_pod("train", "job-1-xyz", node, owner_kind="Job", gpus=8)
    emu.add_pod("train", "job-0-done", node, owner_kind="Job", gpus=8, phase="Succeeded")
    emu.add_pod("web", "api-7f-aaa", node, owner_kind="ReplicaSet")
    emu.add_pod("web", "api-7f-bbb", "gpu-b", owner_kind="ReplicaSet")


def test_drain_evicts_workloads_and_skips_daemonsets_mirrors_system_and_finished_pods(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    add_workloads(emulator)
    clock = FakeClock()
    report = nodes.drain("gpu-a", deadline_s=60, clock=clock, sleep=clock.sleep)
    assert report.complete
    assert sorted(report.evicted) == ["train/job-1-xyz", "web/api-7f-aaa"]
    assert report.blocked == {} and report.remaining == [] and report.deleted == []
    assert set(report.skipped) == {
        "kube-system/nvidia-device-plugin-x1", "monitoring/dcgm-exporter-x1", "kube-system/kube-proxy-gpu-a",
        "default/static-web", "kube-system/coredns-5d-abc", "train/job-0-done",
    }
    assert "DaemonSet" in report.skipped["monitoring/dcgm-exporter-x1"]
    assert "mirror" in report.skipped["default/static-web"]
    assert {p["metadata"]["name"] for p in emulator.list_pods("gpu-b")} == {"api-7f-bbb"}
    assert all(r.via == "eviction" for r in emulator.eviction_log)

    # Draining a drained node does nothing.
    emulator.clear_logs()
    again = nodes.drain("gpu-a", deadline_s=60, clock=clock, sleep=clock.sleep)
    assert again.complete and again.evicted == []
    assert emulator.eviction_log == []


def test_drain_of_gpu_pods_only_leaves_cpu_pods(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    add_workloads(emulator)
    clock = FakeClock()
    report = nodes.drain("gpu-a", deadline_s=60, gpu_pods_only=True, clock=clock, sleep=clock.sleep)
    assert report.evicted == ["train/job-1-xyz"]
    assert "nvidia.com/gpu" in report.skipped["web/api-7f-aaa"]
    assert report.complete


def test_a_budget_at_zero_blocks_until_the_deadline_and_the_pod_is_never_deleted(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    emulator.add_pod("db", "pg-0", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    emulator.add_pod("db", "pg-1", "gpu-b", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    emulator.add_pdb("db", "pg", {"app": "pg"}, min_available=2)
    emulator.add_pod("db", "cache-5c-aaa", "gpu-a", owner_kind="ReplicaSet")
    assert emulator.get_pdb("db", "pg")["status"]["disruptionsAllowed"] == 0

    clock = FakeClock()
    report = nodes.drain("gpu-a", deadline_s=30, namespace_policy={"db": "delete_after_timeout"},
                         backoff=(1, 2, 4, 8), clock=clock, sleep=clock.sleep)
    assert not report.complete
    assert report.evicted == ["db/cache-5c-aaa"]
    assert list(report.blocked) == ["db/pg-0"]
    assert "needs 2 healthy pods and has 2 currently" in report.blocked["db/pg-0"]
    assert report.remaining == ["db/pg-0"]
    assert report.deleted == []
    assert emulator.get_pod("db", "pg-0")["metadata"].get("deletionTimestamp") is None
    assert emulator.pdb_violations() == []
    assert not any(r.via == "delete" for r in emulator.eviction_log)
    refusals = [r for r in emulator.eviction_log if r.pod == "pg-0"]
    assert len(refusals) >= 4 and all(r.outcome == "refused" and r.code == 429 for r in refusals)
    assert clock.now <= 1000.0 + 30 + 1e-9  # never slept past the deadline
    assert max(clock.sleeps) <= 8


def test_a_budget_that_allows_one_lets_exactly_one_pod_go_at_a_time(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    for pod in ("web-6d-a", "web-6d-b"):
        emulator.add_pod("shop", pod, "gpu-a", owner_kind="ReplicaSet", owner_name="web-6d", labels={"app": "web"})
    emulator.add_pod("shop", "web-6d-c", "gpu-b", owner_kind="ReplicaSet", owner_name="web-6d", labels={"app": "web"})
    emulator.add_pdb("shop", "web", {"app": "web"}, max_unavailable=1)
    assert emulator.get_pdb("shop", "web")["status"]["disruptionsAllowed"] == 1

    replaced: list[str] = []

    def replicaset_controller(_now: float) -> None:
        # The ReplicaSet controller replaces each evicted pod on another node, once per sleep.
        live = {p["metadata"]["name"] for p in emulator.list_pods(namespace="shop")}
        for gone in sorted({"web-6d-a", "web-6d-b"} - live - set(replaced))[:1]:
            replaced.append(gone)
            emulator.add_pod("shop", f"{gone}-new", "gpu-b", owner_kind="ReplicaSet", owner_name="web-6d",
                             labels={"app": "web"})

    clock = FakeClock()
    clock.on_sleep = replicaset_controller
    report = nodes.drain("gpu-a", deadline_s=120, backoff=(1,), clock=clock, sleep=clock.sleep)
    assert report.complete
    assert report.evicted == ["shop/web-6d-a", "shop/web-6d-b"]
    assert emulator.pdb_violations() == []
    outcomes = [(r.pod, r.outcome, r.disruptions_allowed) for r in emulator.eviction_log]
    assert outcomes[0] == ("web-6d-a", "evicted", 1)
    assert ("web-6d-b", "refused", 0) in outcomes  # had to wait for the replacement
    assert outcomes[-1] == ("web-6d-b", "evicted", 1)


def test_delete_after_timeout_removes_a_stuck_pod_without_a_budget_and_wait_only_reports(
    nodes: KubeNodes, emulator: KubeApiEmulator
) -> None:
    emulator.eviction_delay = 300.0  # evicted pods hang in Terminating for their grace period
    emulator.add_pod("batch", "stuck-1", "gpu-a", owner_kind="Job", termination_grace_period_s=120)
    emulator.add_pod("train", "stuck-2", "gpu-a", owner_kind="Job", termination_grace_period_s=120)
    clock = FakeClock()
    report = nodes.drain("gpu-a", deadline_s=10, namespace_policy={"batch": "delete_after_timeout"},
                         delete_grace_period_s=0, clock=clock, sleep=clock.sleep)
    assert sorted(report.evicted) == ["batch/stuck-1", "train/stuck-2"]
    assert report.deleted == ["batch/stuck-1"]
    assert report.blocked == {"train/stuck-2": "evicted, still terminating at the drain deadline"}
    assert report.remaining == ["train/stuck-2"] and not report.complete
    assert [p["metadata"]["name"] for p in emulator.list_pods("gpu-a")] == ["stuck-2"]


def test_a_server_error_on_eviction_is_retried(nodes: KubeNodes, emulator: KubeApiEmulator) -> None:
    emulator.add_pod("web", "api-7f-aaa", "gpu-a", owner_kind="ReplicaSet")
    emulator.fault("*/pods/api-7f-aaa/eviction", 2, status=503)
    clock = FakeClock()
    report = nodes.drain("gpu-a", deadline_s=60, clock=clock, sleep=clock.sleep)
    assert report.complete and report.evicted == ["web/api-7f-aaa"]


# -- reboot ------------------------------------------------------------------------------------


def test_wait_until_ready_with_new_boot_sees_the_reboot(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    old = nodes.get_node("gpu-a").boot_id
    emulator.set_node_ready("gpu-a", False)
    clock = FakeClock()
    steps = iter([lambda: emulator.set_boot_id("gpu-a", "new-boot"), lambda: emulator.set_node_ready("gpu-a", True)])
    clock.on_sleep = lambda _now: next(steps, lambda: None)()
    view = nodes.wait_until_ready_with_new_boot("gpu-a", old, timeout_s=60, clock=clock, sleep=clock.sleep)
    assert view.boot_id == "new-boot" and view.ready is True
    assert len(clock.sleeps) == 2


def test_a_node_that_does_not_come_back_is_a_failed_step(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    old = nodes.get_node("gpu-a").boot_id
    clock = FakeClock()
    with pytest.raises(NodeNotBackError, match="within 10s") as caught:
        nodes.wait_until_ready_with_new_boot("gpu-a", old, timeout_s=10, clock=clock, sleep=clock.sleep)
    assert isinstance(caught.value, PermanentError)
    assert clock.now == pytest.approx(1010.0)


def test_an_opted_out_node_is_never_cordoned(emulator: KubeApiEmulator, nodes: KubeNodes) -> None:
    with pytest.raises(PermanentError, match="opted out"):
        nodes.cordon("gpu-b", taint_value="reset_gpu")
    assert not emulator.get_node("gpu-b")["spec"].get("unschedulable")


# -- RBAC --------------------------------------------------------------------------------------

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


def _rbac_rule(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of a request, as the API server's authorizer sees it."""
    parts = [p for p in path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "PATCH": "patch", "PUT": "update", "DELETE": "delete",
            "POST": "create"}[method]
    return group, resource, verb


def test_the_cluster_role_grants_exactly_the_calls_the_adapter_makes(emulator: KubeApiEmulator) -> None:
    import yaml

    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}

    emulator.eviction_delay = 300.0
    emulator.add_pod("db", "pg-0", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    emulator.add_pdb("db", "pg", {"app": "pg"}, min_available=1)
    emulator.add_pod("batch", "stuck-1", "gpu-a", owner_kind="Job")
    # As the ServiceAccount the role is bound to: a call the role does not grant is a 403 here.
    token = emulator.service_account("gpumedic", "gpumedic", role["rules"])
    with KubeNodes(emulator.api_client(token)) as kube:
        kube.list_nodes()
        found = NodeCondition(CONDITION_TYPE, "True", "ReplaceGpu", "GPU 1: row remap failure", NOW, NOW)
        assert kube.update_condition("gpu-a", CONDITION_TYPE, lambda _on_node: found) == found
        kube.cordon("gpu-a", taint_value="reset_gpu")
        kube.write_annotations("gpu-a", {"gpumedic.io/state": "draining"})
        clock = FakeClock()
        kube.drain("gpu-a", deadline_s=3, namespace_policy={"batch": "delete_after_timeout"},
                   delete_grace_period_s=0, clock=clock, sleep=clock.sleep)
        kube.uncordon("gpu-a", we_cordoned=True)
        kube.get_node("gpu-a")
    used = {_rbac_rule(r.method, r.path) for r in emulator.request_log}
    assert used == granted


def test_a_drain_rerun_waits_for_terminating_pods_without_evicting_them_again(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    emulator.eviction_delay = 300.0
    emulator.add_pod("train", "slow-1", "gpu-a", owner_kind="Job", termination_grace_period_s=120)
    clock = FakeClock()
    first = nodes.drain("gpu-a", deadline_s=5, clock=clock, sleep=clock.sleep)
    assert first.evicted == ["train/slow-1"] and first.remaining == ["train/slow-1"]

    emulator.clear_logs()
    rerun = nodes.drain("gpu-a", deadline_s=5, clock=clock, sleep=clock.sleep)
    assert rerun.evicted == [] and rerun.remaining == ["train/slow-1"]
    assert rerun.blocked == {"train/slow-1": "evicted, still terminating at the drain deadline"}
    assert emulator.eviction_log == []

    emulator.remove_pod("train", "slow-1")  # the kubelet finishes it
    assert nodes.drain("gpu-a", deadline_s=5, clock=clock, sleep=clock.sleep).complete


def test_a_pod_that_finishes_during_the_drain_no_longer_blocks_it(
    emulator: KubeApiEmulator, nodes: KubeNodes
) -> None:
    emulator.add_pod("train", "job-2-abc", "gpu-a", owner_kind="Job", gpus=8, labels={"job": "2"})
    emulator.add_pdb("train", "job-2", {"job": "2"}, min_available=1)  # a Job has no scale: never evictable
    clock = FakeClock()
    clock.on_sleep = lambda now: emulator.set_pod_phase("train", "job-2-abc", "Succeeded") if now > 1010 else None
    report = nodes.drain("gpu-a", deadline_s=60, clock=clock, sleep=clock.sleep)
    assert report.complete and report.evicted == [] and report.blocked == {}
    assert clock.now < 1030
    assert emulator.pdb_violations() == []
