"""Contract tests: the Kubernetes API emulator, driven only through the real `kubernetes` client.

Each test pins one documented behaviour of kube-apiserver (API concepts, the eviction API,
PodDisruptionBudgets, patch types, watch) that gpumedic's adapters rely on. If the emulator
and a real cluster disagree on one of these, the emulator is wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from gpumedic.sim.kube_api import GPU_RESOURCE, MIRROR_ANNOTATION, KubeApiEmulator
from tests.waiting import eventually

# The client's models declare every field Optional. These tests read objects the way the API
# guarantees them (a node has metadata and a spec), so the API handles are typed Any rather than
# asserting each level is not None.
Core = Any
Policy = Any


@pytest.fixture
def kube() -> Iterator[KubeApiEmulator]:
    with KubeApiEmulator(seed=3) as emulator:
        emulator.add_node("gpu-a", gpus=8, labels={"pool": "h100", "zone": "z1"})
        emulator.add_node("gpu-b", gpus=8, labels={"pool": "h100", "zone": "z2"})
        emulator.add_node("cpu-a", gpus=0, labels={"pool": "cpu"})
        yield emulator


@pytest.fixture
def api(kube: KubeApiEmulator) -> Iterator[client.ApiClient]:
    api_client = kube.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> Core:
    return client.CoreV1Api(api)


@pytest.fixture
def policy(api: client.ApiClient) -> Policy:
    return client.PolicyV1Api(api)


def status_of(error: ApiException) -> dict[str, Any]:
    assert error.body is not None
    body = json.loads(error.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == error.status
    return body


def evict(core: Core, namespace: str, name: str, **delete_options: Any) -> Any:
    body = client.V1Eviction(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        delete_options=client.V1DeleteOptions(**delete_options) if delete_options else None,
    )
    return core.create_namespaced_pod_eviction(name, namespace, body)


def names(items: list[Any]) -> list[str]:
    return [item.metadata.name for item in items]


# -- transport, authentication, discovery -------------------------------------------------------


def test_load_kube_config_from_the_written_kubeconfig_reaches_version(kube: KubeApiEmulator, tmp_path: Path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig")
    assert path.stat().st_mode & 0o077 == 0  # a kubeconfig holds a credential
    saved = client.Configuration.get_default_copy()
    try:
        config.load_kube_config(config_file=str(path))
        info = client.VersionApi().get_code()
    finally:
        client.Configuration.set_default(saved)
    assert info.git_version == kube.git_version
    assert (info.major, info.minor) == ("1", "33")
    assert info.platform == "linux/amd64" and info.go_version.startswith("go")


def test_a_wrong_token_is_401_with_an_unauthorized_status(kube: KubeApiEmulator, tmp_path: Path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig")
    path.write_text(path.read_text().replace(kube.token, "not-the-token"))
    with config.new_client_from_config(config_file=str(path)) as api_client, pytest.raises(ApiException) as caught:
        client.CoreV1Api(api_client).list_node()
    assert caught.value.status == 401
    assert status_of(caught.value)["reason"] == "Unauthorized"


def test_tls_is_verified_a_client_without_the_ca_cannot_connect(kube: KubeApiEmulator) -> None:
    cfg = client.Configuration(host=kube.url, api_key={"BearerToken": kube.token},
                               api_key_prefix={"BearerToken": "Bearer"})
    with client.ApiClient(cfg) as api_client, pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        client.CoreV1Api(api_client).list_node()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)

    cfg.ssl_ca_cert = str(kube.ca_path)
    with client.ApiClient(cfg) as api_client:
        assert len(client.CoreV1Api(api_client).list_node().items) == 3


def test_discovery_lists_the_core_resources_and_the_policy_group(api: client.ApiClient) -> None:
    resources = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"nodes", "pods", "pods/eviction", "namespaces"} <= resources.keys()
    assert resources["pods/eviction"].kind == "Eviction" and resources["pods/eviction"].group == "policy"
    assert resources["nodes"].namespaced is False and resources["pods"].namespaced is True
    groups: dict[str, Any] = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert groups["policy"].preferred_version.group_version == "policy/v1"
    pdb_resources = client.PolicyV1Api(api).get_api_resources().resources
    assert "poddisruptionbudgets" in {r.name for r in pdb_resources}


def test_unknown_objects_are_404_statuses_that_name_the_resource(
    core: Core, policy: Policy
) -> None:
    with pytest.raises(ApiException) as caught:
        core.read_node("nope")
    assert caught.value.status == 404
    assert status_of(caught.value) | {} == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'nodes "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "kind": "nodes"}, "code": 404,
    }
    with pytest.raises(ApiException) as caught:
        policy.read_namespaced_pod_disruption_budget("nope", "default")
    assert status_of(caught.value)["message"] == 'poddisruptionbudgets.policy "nope" not found'


# -- object metadata ----------------------------------------------------------------------------


def test_every_write_gets_a_new_higher_resource_version_and_uid_and_creation_time_stay(
    core: Core,
) -> None:
    before = core.read_node("gpu-a")
    after = core.patch_node("gpu-a", {"metadata": {"labels": {"touched": "yes"}}})
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.creation_timestamp == before.metadata.creation_timestamp
    listed = core.list_node()
    assert int(listed.metadata.resource_version) >= int(after.metadata.resource_version)


def test_a_patch_that_changes_nothing_keeps_the_resource_version(core: Core) -> None:
    version = core.read_node("gpu-a").metadata.resource_version
    unchanged = core.patch_node("gpu-a", {"metadata": {"labels": {"pool": "h100"}}})
    assert unchanged.metadata.resource_version == version


def test_list_items_are_typed_objects_with_the_list_resource_version(core: Core) -> None:
    nodes = core.list_node()
    assert nodes.kind == "NodeList" and nodes.api_version == "v1"
    assert names(nodes.items) == ["cpu-a", "gpu-a", "gpu-b"]


# -- selectors and paging -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("pool=h100", ["gpu-a", "gpu-b"]),
        ("pool==h100", ["gpu-a", "gpu-b"]),
        ("pool!=h100", ["cpu-a"]),
        ("zone!=z1", ["cpu-a", "gpu-b"]),  # != matches objects without the label
        ("zone in (z1, z2)", ["gpu-a", "gpu-b"]),
        ("zone notin (z1)", ["cpu-a", "gpu-b"]),
        ("zone", ["gpu-a", "gpu-b"]),
        ("!zone", ["cpu-a"]),
        ("pool=h100,zone=z2", ["gpu-b"]),
    ],
)
def test_label_selectors_on_list(core: Core, selector: str, expected: list[str]) -> None:
    assert names(core.list_node(label_selector=selector).items) == expected


def test_an_unparsable_label_selector_is_400(core: Core) -> None:
    with pytest.raises(ApiException) as caught:
        core.list_node(label_selector="pool h100")
    assert caught.value.status == 400
    assert status_of(caught.value)["reason"] == "BadRequest"


def test_field_selectors_on_nodes_and_pods(kube: KubeApiEmulator, core: Core) -> None:
    core.patch_node("gpu-b", {"spec": {"unschedulable": True}})
    assert names(core.list_node(field_selector="spec.unschedulable=true").items) == ["gpu-b"]
    assert names(core.list_node(field_selector="spec.unschedulable=false").items) == ["cpu-a", "gpu-a"]
    assert names(core.list_node(field_selector="metadata.name=gpu-a").items) == ["gpu-a"]

    kube.add_pod("train", "job-a", "gpu-a", gpus=8)
    kube.add_pod("train", "job-b", "gpu-b", gpus=8, phase="Pending")
    kube.add_pod("web", "api-a", "gpu-a")
    on_a = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-a")
    assert names(on_a.items) == ["job-a", "api-a"]  # ordered by namespace, then name
    running = core.list_namespaced_pod("train", field_selector="status.phase!=Pending")
    assert names(running.items) == ["job-a"]
    both = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-a,metadata.namespace=web")
    assert names(both.items) == ["api-a"]


def test_a_field_the_resource_does_not_index_is_400_field_label_not_supported(core: Core) -> None:
    with pytest.raises(ApiException) as caught:
        core.list_node(field_selector="status.phase=Running")
    assert caught.value.status == 400
    assert status_of(caught.value)["message"] == "field label not supported: status.phase"


def test_limit_and_continue_page_through_a_list(kube: KubeApiEmulator, core: Core) -> None:
    for i in range(5):
        kube.add_pod("batch", f"p-{i}", "gpu-a")
    first = core.list_namespaced_pod("batch", limit=2)
    assert names(first.items) == ["p-0", "p-1"] and first.metadata.remaining_item_count == 3
    second = core.list_namespaced_pod("batch", limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod("batch", limit=2, _continue=second.metadata._continue)
    assert names(second.items) == ["p-2", "p-3"] and names(third.items) == ["p-4"]
    assert third.metadata._continue is None


# -- the shape of nodes and pods ------------------------------------------------------------------


def test_nodes_report_ready_boot_id_unschedulable_and_gpu_capacity(kube: KubeApiEmulator, core: Core) -> None:
    node = core.read_node("gpu-a")
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason == "KubeletReady"
    assert node.status.capacity[GPU_RESOURCE] == "8" and node.status.allocatable[GPU_RESOURCE] == "8"
    assert node.spec.unschedulable is None and node.spec.taints is None
    assert GPU_RESOURCE not in core.read_node("cpu-a").status.capacity

    kube.set_node_ready("gpu-a", False)
    kube.set_boot_id("gpu-a", "boot-2")
    kube.set_node_gpus("gpu-a", allocatable=7)
    node = core.read_node("gpu-a")
    assert next(c for c in node.status.conditions if c.type == "Ready").status == "False"
    assert node.status.node_info.boot_id == "boot-2"
    assert node.status.allocatable[GPU_RESOURCE] == "7" and node.status.capacity[GPU_RESOURCE] == "8"


def test_pods_carry_containers_gpu_limits_phase_owners_and_mirror_annotations(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.add_pod("train", "job-1-abc", "gpu-a", owner_kind="Job", gpus=4)
    kube.add_pod("monitoring", "dcgm-exporter-x1", "gpu-a", owner_kind="DaemonSet")
    kube.add_pod("kube-system", "kube-proxy-gpu-a", "gpu-a", mirror=True)
    job = core.read_namespaced_pod("job-1-abc", "train")
    assert job.spec.node_name == "gpu-a" and job.status.phase == "Running"
    assert job.spec.containers[0].resources.limits[GPU_RESOURCE] == "4"
    assert job.metadata.owner_references[0].kind == "Job" and job.metadata.owner_references[0].controller

    ds = core.read_namespaced_pod("dcgm-exporter-x1", "monitoring")
    owner = ds.metadata.owner_references[0]
    assert (owner.kind, owner.api_version, owner.name) == ("DaemonSet", "apps/v1", "dcgm-exporter")
    assert any(t.key == "node.kubernetes.io/unschedulable" for t in ds.spec.tolerations)

    mirror = core.read_namespaced_pod("kube-proxy-gpu-a", "kube-system")
    assert MIRROR_ANNOTATION in mirror.metadata.annotations
    assert mirror.metadata.owner_references[0].kind == "Node"


def test_a_pod_created_over_the_api_starts_pending_in_an_existing_namespace(core: Core) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(generate_name="probe-"),
                       spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]))
    created = core.create_namespaced_pod("default", pod)
    assert created.metadata.name.startswith("probe-") and len(created.metadata.name) == len("probe-") + 5
    assert created.status.phase == "Pending" and created.metadata.uid
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod("no-such-ns", pod)
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "no-such-ns" not found'
    assert "default" in names(core.list_namespace().items)


# -- updates, optimistic concurrency, patch types -----------------------------------------------


def test_merge_patch_sets_unschedulable(core: Core) -> None:
    node = core.patch_node("gpu-a", {"spec": {"unschedulable": True}}, _content_type="application/merge-patch+json")
    assert node.spec.unschedulable is True
    assert core.read_node("gpu-a").spec.unschedulable is True


def test_merge_patch_null_removes_a_key(kube: KubeApiEmulator, core: Core) -> None:
    core.patch_node("gpu-a", {"metadata": {"annotations": {"a": "1", "b": "2"}}},
                    _content_type="application/merge-patch+json")
    core.patch_node("gpu-a", {"metadata": {"annotations": {"a": None}}}, _content_type="application/merge-patch+json")
    assert kube.get_node("gpu-a")["metadata"]["annotations"] == {"b": "2"}


def test_replace_with_a_stale_resource_version_is_409_conflict(core: Core) -> None:
    stale = core.read_node("gpu-a")
    core.patch_node("gpu-a", {"metadata": {"labels": {"x": "1"}}})
    stale.spec.unschedulable = True
    with pytest.raises(ApiException) as caught:
        core.replace_node("gpu-a", stale)
    assert caught.value.status == 409
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on nodes "gpu-a": the object has been modified; please apply '
                   "your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "gpu-a", "kind": "nodes"}, "code": 409,
    }
    assert not core.read_node("gpu-a").spec.unschedulable

    fresh = core.read_node("gpu-a")
    fresh.spec.unschedulable = True
    assert core.replace_node("gpu-a", fresh).spec.unschedulable is True


def test_a_patch_naming_a_stale_resource_version_is_409_conflict(core: Core) -> None:
    version = core.read_node("gpu-a").metadata.resource_version
    core.patch_node("gpu-a", {"metadata": {"resourceVersion": version, "labels": {"step": "1"}}})
    with pytest.raises(ApiException) as caught:
        core.patch_node("gpu-a", {"metadata": {"resourceVersion": version, "labels": {"step": "2"}}},
                        _content_type="application/merge-patch+json")
    assert caught.value.status == 409 and status_of(caught.value)["reason"] == "Conflict"
    assert core.read_node("gpu-a").metadata.labels["step"] == "1"


def test_the_main_resource_ignores_status_and_the_status_subresource_changes_only_status(
    core: Core,
) -> None:
    node = core.read_node("gpu-a")
    node.status.capacity[GPU_RESOURCE] = "99"
    node.metadata.labels["via-put"] = "yes"
    replaced = core.replace_node("gpu-a", node)
    assert replaced.status.capacity[GPU_RESOURCE] == "8" and replaced.metadata.labels["via-put"] == "yes"

    patched = core.patch_node_status("gpu-a", {"status": {"capacity": {GPU_RESOURCE: "7"}},
                                               "metadata": {"labels": {"via-status": "yes"}}})
    assert patched.status.capacity[GPU_RESOURCE] == "7"
    assert "via-status" not in patched.metadata.labels


def test_strategic_merge_patch_replaces_the_taints_list(core: Core) -> None:
    # Node.spec.taints has no patch merge key, so a strategic merge patch replaces it whole.
    core.patch_node("gpu-a", {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}})
    node = core.patch_node("gpu-a", {"spec": {"taints": [{"key": "b", "value": "1", "effect": "NoExecute"}]}})
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [("b", "1", "NoExecute")]


def test_strategic_merge_patch_merges_containers_and_conditions_by_their_keys(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.add_pod("web", "api-1", "gpu-a")
    pod = core.patch_namespaced_pod("api-1", "web", {"spec": {"containers": [{"name": "main", "image": "api:2"}]}})
    (container,) = pod.spec.containers
    assert container.image == "api:2" and container.termination_message_path == "/dev/termination-log"

    status = core.patch_namespaced_pod_status("api-1", "web", {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    by_type = {c.type: c.status for c in status.status.conditions}
    assert by_type["Ready"] == "False" and by_type["PodScheduled"] == "True"


def test_a_node_status_condition_is_merged_by_type_and_the_kubelets_stay(kube: KubeApiEmulator, core: Core) -> None:
    # What node-problem-detector does: PATCH nodes/{name}/status, strategic merge on conditions.
    body = {"status": {"conditions": [{"type": "GpuUnhealthy", "status": "True", "reason": "ReplaceGpu",
                                        "message": "GPU 3: row remap failure",
                                        "lastHeartbeatTime": "2026-11-23T04:00:00Z",
                                        "lastTransitionTime": "2026-11-23T04:00:00Z"}]}}
    node = core.patch_node_status("gpu-a", body, _content_type="application/strategic-merge-patch+json")
    by_type = {c.type: c for c in node.status.conditions}
    assert set(by_type) == {"MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "GpuUnhealthy"}
    assert by_type["GpuUnhealthy"].last_heartbeat_time.isoformat() == "2026-11-23T04:00:00+00:00"
    kube.set_node_ready("gpu-a", False)  # the kubelet's write leaves ours alone, too
    body["status"]["conditions"][0] |= {"status": "False", "reason": "GpusHealthy"}
    node = core.patch_node_status("gpu-a", body, _content_type="application/strategic-merge-patch+json")
    by_type = {c.type: (c.status, c.reason) for c in node.status.conditions}
    assert by_type["GpuUnhealthy"] == ("False", "GpusHealthy") and by_type["Ready"][0] == "False"
    assert len(node.status.conditions) == 5
    # A merge patch (RFC 7386) has no merge keys: the list is replaced, the kubelet's conditions with it.
    node = core.patch_node_status("gpu-a", body, _content_type="application/merge-patch+json")
    assert [c.type for c in node.status.conditions] == ["GpuUnhealthy"]


def test_a_status_patch_naming_an_old_resource_version_is_a_conflict(core: Core) -> None:
    version = core.read_node("gpu-a").metadata.resource_version
    core.patch_node("gpu-a", {"metadata": {"labels": {"touched": "yes"}}})
    with pytest.raises(ApiException) as caught:
        core.patch_node_status("gpu-a", {"metadata": {"resourceVersion": version}, "status": {"conditions": [
            {"type": "GpuUnhealthy", "status": "Unknown"}]}}, _content_type="application/strategic-merge-patch+json")
    assert caught.value.status == 409 and status_of(caught.value)["reason"] == "Conflict"


NODE_WRITER_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": []},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get"], "resourceNames": ["only-this"]},
]


@pytest.fixture
def limited(kube: KubeApiEmulator) -> Iterator[Core]:
    api_client = kube.api_client(kube.service_account("gpumedic", "gpumedic", NODE_WRITER_RULES))
    yield client.CoreV1Api(api_client)
    api_client.close()


def test_a_service_account_may_do_what_its_rules_allow(kube: KubeApiEmulator, limited: Core) -> None:
    kube.add_pod("web", "api-1", "gpu-a")
    assert {n.metadata.name for n in limited.list_node().items} == {"gpu-a", "gpu-b", "cpu-a"}
    assert limited.patch_node("gpu-a", {"metadata": {"labels": {"x": "1"}}}).metadata.labels["x"] == "1"
    assert [p.metadata.name for p in limited.list_pod_for_all_namespaces().items] == ["api-1"]
    assert client.VersionApi(limited.api_client).get_code().git_version  # discovery is open to every user


def test_a_request_no_rule_allows_is_forbidden_with_the_apiservers_message(kube: KubeApiEmulator,
                                                                         limited: Core) -> None:
    user = "system:serviceaccount:gpumedic:gpumedic"
    kube.add_pod("web", "api-1", "gpu-a")
    with pytest.raises(ApiException) as caught:
        limited.patch_node_status("gpu-a", {"status": {"conditions": [{"type": "X", "status": "True"}]}},
                                  _content_type="application/strategic-merge-patch+json")
    assert caught.value.status == 403
    assert status_of(caught.value) | {} == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": f'nodes "gpu-a" is forbidden: User "{user}" cannot patch resource "nodes/status" in API group "" '
                   "at the cluster scope",
        "details": {"name": "gpu-a", "kind": "nodes"},
    }
    assert limited.list_namespaced_pod("web").items  # a cluster-wide grant holds in every namespace
    with pytest.raises(ApiException) as caught:
        limited.delete_namespaced_pod("api-1", "web")
    assert status_of(caught.value)["message"] == (
        f'pods "api-1" is forbidden: User "{user}" cannot delete resource "pods" in API group "" '
        'in the namespace "web"')
    policy = client.PolicyV1Api(limited.api_client)
    with pytest.raises(ApiException) as caught:
        policy.list_pod_disruption_budget_for_all_namespaces()  # resourceNames never allow a list
    assert status_of(caught.value)["message"] == (
        f'poddisruptionbudgets.policy is forbidden: User "{user}" cannot list resource "poddisruptionbudgets" '
        'in API group "policy" at the cluster scope')
    assert status_of(caught.value)["details"] == {"group": "policy", "kind": "poddisruptionbudgets"}
    with pytest.raises(ApiException) as caught:
        policy.read_namespaced_pod_disruption_budget("other", "web")
    assert caught.value.status == 403
    kube.add_pdb("web", "only-this", {"app": "x"}, min_available=1)
    assert policy.read_namespaced_pod_disruption_budget("only-this", "web").metadata.name == "only-this"
    assert kube.get_node("gpu-a")["status"]["conditions"][-1]["type"] == "Ready"  # nothing was written


def test_pod_updates_may_only_change_the_mutable_fields(kube: KubeApiEmulator, core: Core) -> None:
    kube.add_pod("web", "api-1", "gpu-a")
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_pod("api-1", "web", {"spec": {"nodeName": "gpu-b"}})
    assert caught.value.status == 422
    assert "pod updates may not change fields" in status_of(caught.value)["message"]


def test_json_patch_applies_add_after_a_passing_test(core: Core) -> None:
    version = core.read_node("gpu-a").metadata.resource_version
    node = core.patch_node("gpu-a", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/metadata/labels/gpumedic.io~1state", "value": "quarantined"},
        {"op": "add", "path": "/spec/taints", "value": [{"key": "gpumedic.io/quarantine", "effect": "NoSchedule"}]},
    ])
    assert node.metadata.labels["gpumedic.io/state"] == "quarantined"
    assert node.spec.taints[0].key == "gpumedic.io/quarantine"


def test_a_failed_json_patch_test_is_422_invalid_and_changes_nothing(core: Core) -> None:
    before = core.read_node("gpu-a")
    with pytest.raises(ApiException) as caught:
        core.patch_node("gpu-a", [
            {"op": "add", "path": "/metadata/labels/x", "value": "y"},
            {"op": "test", "path": "/spec/unschedulable", "value": True},
        ])
    assert caught.value.status == 422
    body = status_of(caught.value)
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    after = core.read_node("gpu-a")
    assert after.metadata.resource_version == before.metadata.resource_version
    assert "x" not in after.metadata.labels


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"spec": {"taints": [{"key": "a", "effect": "NoScheduling"}]}}, "spec.taints[0].effect"),
        ({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}]}},
         "spec.taints[1]"),
        ({"metadata": {"labels": {"gpumedic.io/state": "draining:step 2"}}}, "metadata.labels"),
        ({"metadata": {"labels": {"bad key/x": "1"}}}, "metadata.labels"),
    ],
)
def test_invalid_taints_and_labels_are_422_naming_the_field(
    core: Core, patch: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as caught:
        core.patch_node("gpu-a", patch)
    assert caught.value.status == 422
    body = status_of(caught.value)
    assert body["reason"] == "Invalid" and body["message"].startswith('Node "gpu-a" is invalid: ')
    assert body["details"]["kind"] == "Node"
    assert field in [cause["field"] for cause in body["details"]["causes"]]


# -- eviction and PodDisruptionBudgets ----------------------------------------------------------


def test_evicting_an_unprotected_pod_is_201_success_and_the_pod_goes(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.add_pod("web", "api-1", "gpu-a", owner_kind="ReplicaSet")
    evict(core, "web", "api-1")
    assert kube.request_log[-1].status == 201
    assert core.list_namespaced_pod("web").items == []
    (record,) = kube.eviction_log
    assert (record.via, record.pod, record.outcome, record.pdb) == ("eviction", "api-1", "evicted", None)


def test_eviction_blocked_by_a_budget_is_429_with_a_disruption_budget_cause_and_the_pod_stays(
    kube: KubeApiEmulator, core: Core, policy: Policy
) -> None:
    kube.add_pod("db", "pg-0", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    kube.add_pod("db", "pg-1", "gpu-b", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    kube.add_pdb("db", "pg", {"app": "pg"}, min_available=2)
    pdb = policy.read_namespaced_pod_disruption_budget("pg", "db")
    assert (pdb.status.disruptions_allowed, pdb.status.current_healthy, pdb.status.desired_healthy) == (0, 2, 2)

    with pytest.raises(ApiException) as caught:
        evict(core, "db", "pg-0")
    assert caught.value.status == 429
    assert status_of(caught.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests",
        "details": {"causes": [{"reason": "DisruptionBudget",
                                "message": "The disruption budget pg needs 2 healthy pods and has 2 currently"}]},
        "code": 429,
    }
    pod = core.read_namespaced_pod("pg-0", "db")
    assert pod.metadata.deletion_timestamp is None and pod.status.phase == "Running"
    assert [(r.outcome, r.code, r.disruptions_allowed) for r in kube.eviction_log] == [("refused", 429, 0)]


def test_a_budget_lets_exactly_its_allowed_disruptions_through(
    kube: KubeApiEmulator, core: Core, policy: Policy
) -> None:
    for i in range(3):
        kube.add_pod("shop", f"web-6d-{i}", "gpu-a", owner_kind="ReplicaSet", owner_name="web-6d",
                     labels={"app": "web"})
    kube.add_pdb("shop", "web", {"app": "web"}, max_unavailable=1)
    evict(core, "shop", "web-6d-0")
    with pytest.raises(ApiException) as caught:
        evict(core, "shop", "web-6d-1")
    assert caught.value.status == 429
    # The evicted pod still counts as expected until its ReplicaSet replaces it.
    status = policy.read_namespaced_pod_disruption_budget("web", "shop").status
    assert (status.expected_pods, status.current_healthy, status.disruptions_allowed) == (3, 2, 0)

    kube.add_pod("shop", "web-6d-3", "gpu-b", owner_kind="ReplicaSet", owner_name="web-6d", labels={"app": "web"})
    evict(core, "shop", "web-6d-1")
    assert kube.pdb_violations() == []
    assert [(r.pod, r.outcome, r.disruptions_allowed) for r in kube.eviction_log] == [
        ("web-6d-0", "evicted", 1), ("web-6d-1", "refused", 0), ("web-6d-1", "evicted", 1),
    ]


def test_percentages_round_up_and_pods_without_a_scalable_controller_fail_safe(
    kube: KubeApiEmulator, core: Core, policy: Policy
) -> None:
    for i in range(4):
        kube.add_pod("a", f"rs-x-{i}", "gpu-a", owner_kind="ReplicaSet", owner_name="rs-x", labels={"app": "x"})
    kube.add_pdb("a", "half", {"app": "x"}, min_available="50%")
    assert policy.read_namespaced_pod_disruption_budget("half", "a").status.disruptions_allowed == 2

    kube.add_pod("b", "agent-1", "gpu-a", owner_kind="DaemonSet", owner_name="agent", labels={"app": "agent"})
    kube.add_pdb("b", "agent", {"app": "agent"}, max_unavailable=1)
    status = policy.read_namespaced_pod_disruption_budget("agent", "b").status
    assert status.disruptions_allowed == 0 and status.conditions[0].reason == "SyncFailed"
    with pytest.raises(ApiException) as caught:
        evict(core, "b", "agent-1")
    assert caught.value.status == 429
    cause = status_of(caught.value)["details"]["causes"][0]["message"]
    assert cause == ('The disruption budget agent does not allow evicting pods currently because it failed sync: '
                     'found no controllers for pod "agent-1"')


def test_evicting_a_missing_pod_is_404(core: Core) -> None:
    with pytest.raises(ApiException) as caught:
        evict(core, "default", "ghost")
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'pods "ghost" not found'


def test_an_eviction_naming_another_pod_is_400(kube: KubeApiEmulator, core: Core) -> None:
    kube.add_pod("web", "api-1", "gpu-a")
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod_eviction("api-1", "web", {"metadata": {"name": "api-2"}})
    assert caught.value.status == 400
    assert status_of(caught.value)["message"] == "name in URL does not match name in Eviction object"


def test_a_pod_under_two_budgets_cannot_be_evicted_500(kube: KubeApiEmulator, core: Core) -> None:
    kube.add_pod("web", "api-1", "gpu-a", owner_kind="ReplicaSet", labels={"app": "api", "tier": "front"})
    kube.add_pdb("web", "by-app", {"app": "api"}, max_unavailable=1)
    kube.add_pdb("web", "by-tier", {"tier": "front"}, max_unavailable=1)
    with pytest.raises(ApiException) as caught:
        evict(core, "web", "api-1")
    assert caught.value.status == 500
    body = status_of(caught.value)
    assert body["message"] == ("This pod has more than one PodDisruptionBudget, which the eviction subresource "
                               "does not support.")
    assert core.read_namespaced_pod("api-1", "web").metadata.deletion_timestamp is None


def test_pending_and_finished_pods_are_evicted_whatever_the_budget(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.add_pod("db", "pg-0", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    kube.add_pod("db", "pg-1", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"},
                 phase="Pending")
    kube.add_pod("db", "pg-2", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"},
                 phase="Succeeded")
    kube.add_pdb("db", "pg", {"app": "pg"}, min_available=3)
    evict(core, "db", "pg-1")
    evict(core, "db", "pg-2")
    assert names(core.list_namespaced_pod("db").items) == ["pg-0"]


def test_an_unready_pod_may_be_evicted_while_the_budget_is_otherwise_met(
    kube: KubeApiEmulator, core: Core
) -> None:
    for i in range(3):
        kube.add_pod("web", f"api-{i}", "gpu-a", owner_kind="ReplicaSet", owner_name="api", labels={"app": "api"})
    kube.set_pod_phase("web", "api-2", "Running", ready=False)
    kube.add_pdb("web", "api", {"app": "api"}, min_available=2)  # 2 healthy, 2 desired: 0 allowed
    with pytest.raises(ApiException):
        evict(core, "web", "api-0")
    evict(core, "web", "api-2")
    assert kube.pdb_violations() == []


def test_with_an_eviction_delay_the_pod_is_terminating_then_gone(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.eviction_delay = 1.0  # long enough to read the terminating pod on a loaded machine
    kube.add_pod("web", "api-1", "gpu-a", owner_kind="ReplicaSet")
    evict(core, "web", "api-1")
    pod = core.read_namespaced_pod("api-1", "web")
    assert pod.metadata.deletion_timestamp is not None and pod.metadata.deletion_grace_period_seconds == 30
    assert any(c.type == "DisruptionTarget" and c.reason == "EvictionByEvictionAPI" for c in pod.status.conditions)
    # Evicting a terminating pod again is accepted and changes nothing.
    evict(core, "web", "api-1")

    def gone() -> bool:
        try:
            core.read_namespaced_pod("api-1", "web")
        except ApiException as err:
            if err.status != 404:
                raise
            return True
        return False

    assert eventually(gone)


def test_delete_with_grace_period_zero_removes_at_once_and_bypasses_budgets(
    kube: KubeApiEmulator, core: Core
) -> None:
    kube.eviction_delay = 60.0
    kube.add_pod("db", "pg-0", "gpu-a", owner_kind="StatefulSet", owner_name="pg", labels={"app": "pg"})
    kube.add_pdb("db", "pg", {"app": "pg"}, min_available=1)
    graceful = core.delete_namespaced_pod("pg-0", "db")
    assert graceful.metadata.deletion_timestamp is not None  # still there, terminating
    gone = core.delete_namespaced_pod("pg-0", "db", grace_period_seconds=0)
    assert gone.metadata.name == "pg-0"
    assert core.list_namespaced_pod("db").items == []
    # DELETE is not eviction: the budget was not consulted, and the record says so.
    assert [(r.via, r.outcome, r.disruptions_allowed) for r in kube.pdb_violations()] == [("delete", "deleted", 0)]


# -- watch ----------------------------------------------------------------------------------------


def test_watch_yields_modified_after_a_patch_and_ends_after_timeout_seconds(
    kube: KubeApiEmulator, core: Core
) -> None:
    version = core.list_node().metadata.resource_version
    core.patch_node("gpu-a", {"spec": {"unschedulable": True}})
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_node, resource_version=version, timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert [(e["type"], e["object"].metadata.name, e["object"].spec.unschedulable) for e in events] == [
        ("MODIFIED", "gpu-a", True)
    ]
    assert isinstance(events[0]["object"], client.V1Node)
    assert 0.9 <= elapsed < 15  # it waited out timeout_seconds, then ended (the bound only catches a hang)


def test_a_watch_without_resource_version_starts_with_the_current_state(core: Core) -> None:
    watcher = watch.Watch()
    events = []
    for event in watcher.stream(core.list_node, label_selector="pool=h100", timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 2:
            watcher.stop()
    assert events == [("ADDED", "gpu-a"), ("ADDED", "gpu-b")]


def test_watch_streams_live_changes_and_reports_objects_leaving_the_selector_as_deleted(
    kube: KubeApiEmulator, core: Core
) -> None:
    version = core.list_node().metadata.resource_version
    watcher = watch.Watch()
    seen: list[tuple[str, str]] = []
    import threading

    def changes() -> None:
        time.sleep(0.2)
        core.patch_node("gpu-a", {"metadata": {"labels": {"pool": "retired"}}})
        kube.add_node("gpu-c", labels={"pool": "h100"})

    threading.Thread(target=changes, daemon=True).start()
    for event in watcher.stream(core.list_node, label_selector="pool=h100", resource_version=version,
                                timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            watcher.stop()
    assert seen == [("DELETED", "gpu-a"), ("ADDED", "gpu-c")]


def test_watching_pods_sees_an_eviction_end_in_deleted(kube: KubeApiEmulator, core: Core) -> None:
    kube.eviction_delay = 0.2
    kube.add_pod("web", "api-1", "gpu-a")
    version = core.list_namespaced_pod("web").metadata.resource_version
    evict(core, "web", "api-1")
    events = [(e["type"], e["object"].metadata.deletion_timestamp is not None) for e in
              watch.Watch().stream(core.list_namespaced_pod, "web", resource_version=version, timeout_seconds=1)]
    assert events == [("MODIFIED", True), ("DELETED", True)]


def test_a_watch_from_an_expired_resource_version_fails_with_410_gone(core: Core) -> None:
    with KubeApiEmulator(watch_history=2) as small:
        small.add_node("n")
        for i in range(5):
            small.set_boot_id("n", f"boot-{i}")
        with small.api_client() as api_client, pytest.raises(ApiException) as caught:
            list(watch.Watch().stream(client.CoreV1Api(api_client).list_node, resource_version="1",
                                      timeout_seconds=1))
    assert caught.value.status == 410 and "too old resource version" in caught.value.reason


# -- faults ---------------------------------------------------------------------------------------


def test_an_injected_503_is_a_service_exception_and_the_next_call_succeeds(
    kube: KubeApiEmulator, core: Core
) -> None:
    fault = kube.fault("/api/v1/nodes/gpu-a", 1, status=503)
    with pytest.raises(ApiException) as caught:
        core.read_node("gpu-a")
    assert caught.value.status == 503
    assert status_of(caught.value)["reason"] == "ServiceUnavailable"
    assert core.read_node("gpu-a").metadata.name == "gpu-a"
    assert fault.hits == 1 and fault.remaining == 0


def test_the_real_client_waits_out_a_503_with_retry_after_on_a_get(
    kube: KubeApiEmulator, core: Core
) -> None:
    # urllib3's default Retry honours Retry-After on 413/429/503 for idempotent requests.
    fault = kube.fault("/api/v1/nodes/gpu-a", 1, status=503, retry_after=1)
    started = time.monotonic()
    assert core.read_node("gpu-a").metadata.name == "gpu-a"
    assert fault.hits == 1 and time.monotonic() - started >= 0.9
    assert [r.status for r in kube.request_log[-2:]] == [503, 200]


def test_the_real_client_retries_gets_over_connection_resets_but_not_posts(
    kube: KubeApiEmulator, core: Core
) -> None:
    # urllib3's default Retry (3) re-sends idempotent requests whose connection drops.
    kube.fault("/api/v1/nodes", 2, mode="reset")
    assert len(core.list_node().items) == 3
    kube.fault("/api/v1/nodes", 4, mode="reset")
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_node()
    kube.clear_faults()

    kube.add_pod("web", "api-1", "gpu-a")
    kube.fault("*/pods/api-1/eviction", 1, mode="reset")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        evict(core, "web", "api-1")
    assert core.read_namespaced_pod("api-1", "web").metadata.deletion_timestamp is None


# -- the emulator outlives its clients ----------------------------------------------------------


def test_snapshot_and_restore_carry_the_cluster_across_emulators(kube: KubeApiEmulator, core: Core) -> None:
    kube.add_pod("train", "job-1", "gpu-a", gpus=8)
    core.patch_node("gpu-a", {"spec": {"unschedulable": True}})
    before = core.read_node("gpu-a")
    state = kube.snapshot()
    with KubeApiEmulator() as successor:
        successor.restore(state)
        with successor.api_client() as api_client:
            other: Core = client.CoreV1Api(api_client)
            node = other.read_node("gpu-a")
            assert node.spec.unschedulable is True
            assert (node.metadata.uid, node.metadata.resource_version) == (
                before.metadata.uid, before.metadata.resource_version)
            assert names(other.list_pod_for_all_namespaces().items) == ["job-1"]
            after = other.patch_node("gpu-a", {"spec": {"unschedulable": False}})
            assert int(after.metadata.resource_version) > int(before.metadata.resource_version)


def test_a_restarted_emulator_serves_the_same_cluster_to_the_same_client(kube: KubeApiEmulator, core: Core) -> None:
    kube.add_pod("train", "job-1", "gpu-a", gpus=8)
    port, version = kube.port, core.read_node("gpu-a").metadata.resource_version
    kube.stop()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_node("gpu-a")  # connection refused, after urllib3's retries
    kube.start()
    assert kube.port == port
    assert core.read_node("gpu-a").metadata.resource_version == version  # same CA: the old client still trusts it
    assert names(core.list_namespaced_pod("train").items) == ["job-1"]
