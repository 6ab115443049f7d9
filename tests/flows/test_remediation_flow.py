"""The remediate_node flow under the Prefect harness: simulated nodes over real sshd, the
Kubernetes API emulator, and the Jira emulator behind the real `jira` client and the outbox."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gpumedic.adapters import store as store_tables
from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.jira_tickets import GPU_LABEL_PREFIX
from gpumedic.adapters.store import TelemetryStore
from gpumedic.adapters.ticket_outbox import OutboxEntry, TicketOutbox
from gpumedic.config import ClusterAccess, ConflictingClusters
from gpumedic.sim import node_state
from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet
from gpumedic.sim.jira_api import JiraEmulator
from gpumedic.sim.kube_api import KubeApiEmulator
from tests.conftest import require_sshd
from tests.flows.prefect_runs import flow_runs_named, task_run_names
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")

# What the fleet file's `fleet.remediation` block says (the runs pass no `policy` unless a test overrides).
FLEET_POLICY: dict[str, Any] = {"drain_timeout": 10, "reboot_timeout": 30, "diag_level": 2,
                                "breaker_min_nodes": 3}
TOKEN_ENV = "GPUMEDIC_TEST_JIRA_TOKEN"


@dataclass
class Rig:
    fleet: SimulatedFleet
    kube: KubeApiEmulator
    kubeconfig: str
    jira: JiraEmulator
    fleet_file: str  # the simulated fleet's inventory with `remediation`, `jira` and `store_url`
    store_url: str

    def run(self, node: str, **kwargs: Any) -> dict[str, Any]:
        from flows.remediation import remediate_node

        params: dict[str, Any] = {"fleet_file": self.fleet_file, "kubeconfig": self.kubeconfig,
                                  "evidence_retry_s": 0.5}
        params.update(kwargs)
        return remediate_node(node=node, **params)

    @property
    def cluster(self) -> ClusterAccess:
        return ClusterAccess(self.kubeconfig, None, "the test's emulator")

    def actions(self, node: str) -> list[str]:
        return [a for _, a in node_state.load(self.fleet.state_file(node))["actions"]]

    def evictions(self, node: str) -> list[str]:
        return [f"{r.namespace}/{r.pod}" for r in self.kube.eviction_log if r.node == node and r.outcome == "evicted"]

    def node(self, name: str) -> dict[str, Any]:
        return self.kube.get_node(name)

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.node(name)["metadata"].get("annotations") or {})

    def issues(self) -> list[dict[str, Any]]:
        return self.jira.issues("GPU")

    def outbox(self) -> list[OutboxEntry]:
        outbox = TicketOutbox(self.store_url)
        try:
            return outbox.entries()
        finally:
            outbox.close()


def _rig(tmp_path: Path, faults: list[dict[str, Any]], nodes: int = 2) -> Iterator[Rig]:
    require_sshd()
    fleet = SimulatedFleet(tmp_path / "fleet")
    fleet.create(FleetSimulation(nodes=nodes, gpus_per_node=4, seed=3, faults=faults, exporter=False,
                                 diag_seconds=0.05))
    fleet.start(exporter=False)
    kube = KubeApiEmulator(eviction_delay=0.0).start()
    jira = JiraEmulator().start()
    for name in fleet.nodes:
        kube.add_node(name, gpus=4)
        kube.add_pod("ml", f"train-{name}", name, owner_kind="ReplicaSet", owner_name="train",
                     labels={"app": "train"}, gpus=4)
        kube.add_pod("kube-system", f"dcgm-exporter-{name}", name, owner_kind="DaemonSet",
                     owner_name="dcgm-exporter")
    kube.add_pdb("ml", "train", {"app": "train"}, max_unavailable=1)
    document = yaml.safe_load(fleet.inventory_file.read_text())
    store_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    document["fleet"].update({
        "store_url": store_url,
        "remediation": FLEET_POLICY,
        "jira": {"url": jira.url, "user": jira.username, "token_env": TOKEN_ENV, "project": "GPU"},
    })
    fleet_file = tmp_path / "fleet-remediation.yaml"
    fleet_file.write_text(yaml.safe_dump(document, sort_keys=False))
    os.environ[TOKEN_ENV] = jira.password
    try:
        yield Rig(fleet, kube, str(kube.write_kubeconfig(tmp_path / "kubeconfig")), jira, str(fleet_file),
                  store_url)
    finally:
        os.environ.pop(TOKEN_ENV, None)
        jira.stop()
        kube.stop()
        fleet.stop()


@pytest.fixture
def dbe_rig(tmp_path: Path) -> Iterator[Rig]:
    """gpu-node-00 GPU 1 has a volatile DBE (a reset clears it); gpu-node-01 is healthy."""
    yield from _rig(tmp_path, [{"node": "gpu-node-00", "gpu": 1, "ecc_dbe_volatile": 2}])


@pytest.fixture
def broken_rig(tmp_path: Path) -> Iterator[Rig]:
    """gpu-node-00 GPU 1 has a row-remap failure (hardware): replace."""
    yield from _rig(tmp_path, [{"node": "gpu-node-00", "gpu": 1, "row_remap_failure": True}])


@pytest.fixture
def hw_reset_rig(tmp_path: Path) -> Iterator[Rig]:
    """gpu-node-00 GPU 1 fell off the bus (Xid 79) and has a hardware fault: reboot, diag fails, replace."""
    yield from _rig(tmp_path, [{"node": "gpu-node-00", "gpu": 1, "xid": 79}])


@pytest.fixture
def fast_ticket_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticket task's retries without their production backoff (1, 2, 4 s)."""
    from tasks.remediation import file_ticket

    monkeypatch.setattr(file_ticket, "retry_delay_seconds", [0.1, 0.1, 0.1])


# --------------------------------------------------------------------------- settings


def test_the_policy_comes_from_the_fleet_file_with_the_run_parameter_on_top(dbe_rig: Rig) -> None:
    from datetime import timedelta

    from tasks.remediation import remediation_policy

    policy = remediation_policy(dbe_rig.fleet_file, {"max_nodes_out": 2, "drain_timeout": 20})
    assert policy.max_nodes_out == 2 and policy.drain_timeout == timedelta(seconds=20)  # the run's overrides
    assert policy.reboot_timeout == timedelta(seconds=30) and policy.breaker_min_nodes == 3  # the fleet file's
    assert policy.approval_timeout == timedelta(hours=24)  # the default


def test_deployment_parameters_come_from_the_environment() -> None:
    from deployments.remediation import UNHEALTHY_EVENT, default_parameters, remediation_trigger

    # No kubeconfig: each run takes the cluster from the fleet file, as the sweeps do.
    params = default_parameters("/etc/fleet.yaml", {"GPUMEDIC_KUBECONFIG": "/k", "GPUMEDIC_AUTO_APPROVE": "1"})
    assert params == {"fleet_file": "/etc/fleet.yaml", "auto_approve": True}
    assert default_parameters("/f", {})["auto_approve"] is False
    assert remediation_trigger().expect == {UNHEALTHY_EVENT}


# --------------------------------------------------------------------------- happy path


def _latest_table_artifact(key: str) -> tuple[list[dict[str, Any]], str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return data, artifact.description or ""


def _naming_the_cluster(rig: Rig, **kubernetes: Any) -> None:
    """The rig's fleet file with a `kubernetes:` block (its nodes stay listed)."""
    document = yaml.safe_load(Path(rig.fleet_file).read_text())
    document["fleet"]["kubernetes"] = kubernetes
    Path(rig.fleet_file).write_text(yaml.safe_dump(document, sort_keys=False))


def _two_contexts(path: Path, **clusters: KubeApiEmulator) -> Path:
    """One kubeconfig with a context per emulator, named as given; the last is the current one."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for name, kube in clusters.items():
        one = kube.kubeconfig()
        merged["clusters"].append({"name": name, "cluster": one["clusters"][0]["cluster"]})
        merged["users"].append({"name": name, "user": one["users"][0]["user"]})
        merged["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
        merged["current-context"] = name
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def test_a_readmitted_node_says_so_on_its_condition_without_waiting_for_the_next_sweep(dbe_rig: Rig) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.domain.node_condition import CONDITION_TYPE

    _naming_the_cluster(dbe_rig, kubeconfig=dbe_rig.kubeconfig)  # nodes stay listed: conditions only

    def condition(node: str) -> dict[str, str]:
        return next(c for c in dbe_rig.node(node)["status"]["conditions"] if c["type"] == CONDITION_TYPE)

    fleet_sweep(fleet_file=dbe_rig.fleet_file, emit_events=False)
    swept, other = condition("gpu-node-00"), condition("gpu-node-01")
    assert (swept["status"], swept["reason"]) == ("True", "ResetGpu")
    assert dbe_rig.run("gpu-node-00", incident="inc-condition")["final_state"] == "readmitted"
    readmitted = condition("gpu-node-00")
    assert (readmitted["status"], readmitted["reason"]) == ("False", "GpusHealthy")
    assert readmitted["lastTransitionTime"] > swept["lastTransitionTime"]
    assert readmitted["lastHeartbeatTime"] > swept["lastHeartbeatTime"]
    assert condition("gpu-node-01") == other  # only the readmitted node is written


def test_remediation_acts_on_the_cluster_and_context_the_fleet_file_names(dbe_rig: Rig, tmp_path: Path) -> None:
    # Another cluster with nodes of the same names is the kubeconfig's current context (an SRE's
    # staging cluster, say). The sweeps read and write the fleet file's context; so must remediation.
    with KubeApiEmulator() as staging:
        for name in dbe_rig.fleet.nodes:
            staging.add_node(name, gpus=4)
        kubeconfig = _two_contexts(tmp_path / "two-clusters", fleet=dbe_rig.kube, staging=staging)
        _naming_the_cluster(dbe_rig, kubeconfig=str(kubeconfig), context="fleet")
        result = dbe_rig.run("gpu-node-00", kubeconfig="", incident="inc-context")
        assert result["final_state"] == "readmitted", result
        assert dbe_rig.annotations("gpu-node-00")["gpumedic.io/state"] == "readmitted"
        assert dbe_rig.evictions("gpu-node-00") == ["ml/train-gpu-node-00"]
        readmitted = next(c for c in dbe_rig.node("gpu-node-00")["status"]["conditions"] if c["type"] == "GpuUnhealthy")
        assert readmitted["reason"] == "GpusHealthy"  # the condition went to the same cluster
        assert staging.request_log == []  # nothing read or written on the current context's cluster
        assert not staging.get_node("gpu-node-00")["spec"].get("unschedulable")


def test_a_run_given_another_kubeconfig_than_the_fleet_files_changes_nothing(dbe_rig: Rig, tmp_path: Path) -> None:
    _naming_the_cluster(dbe_rig, kubeconfig=dbe_rig.kubeconfig)
    other = tmp_path / "another-kubeconfig"
    other.write_text(Path(dbe_rig.kubeconfig).read_text())
    dbe_rig.kube.clear_logs()
    with pytest.raises(ConflictingClusters, match="must act on one cluster"):
        dbe_rig.run("gpu-node-00", kubeconfig=str(other), incident="inc-conflict")
    assert dbe_rig.kube.request_log == []
    assert dbe_rig.actions("gpu-node-00") == []
    # The same file, named by the run and the fleet file alike, is one cluster.
    assert dbe_rig.run("gpu-node-00", incident="inc-agreed")["final_state"] == "readmitted"


def test_reset_then_passing_diagnostics_readmits_the_node(dbe_rig: Rig) -> None:
    result = dbe_rig.run("gpu-node-00", incident="inc-happy")
    assert result["final_state"] == "readmitted", result
    assert result["waiting"].startswith("probation")
    assert [a.split(":")[0] for a in result["actions"]] == ["cordon", "drain", "reset", "diag", "readmit"]
    actions = dbe_rig.actions("gpu-node-00")
    assert len(actions) == 2 and actions[0].startswith("reset_gpu:") and actions[1] == "diag:2"
    node = dbe_rig.node("gpu-node-00")
    assert not node["spec"].get("unschedulable")
    assert not any(t["key"] == "gpumedic.io/unhealthy" for t in node["spec"].get("taints") or [])
    assert node["metadata"]["annotations"]["gpumedic.io/state"] == "readmitted"
    assert dbe_rig.evictions("gpu-node-00") == ["ml/train-gpu-node-00"]  # the DaemonSet pod stays
    assert dbe_rig.kube.pdb_violations() == []
    assert dbe_rig.actions("gpu-node-01") == []  # the healthy node is untouched
    assert "gpumedic.io/state" not in dbe_rig.annotations("gpu-node-01")
    # The UI's fleet table says what the node waits for, and the budget in use.
    table, description = _latest_table_artifact("fleet-remediation")
    (row,) = table
    assert (row["node"], row["state"], row["out_of_service"]) == ("gpu-node-00", "readmitted", "no")
    assert row["waiting_for"].startswith("probation until ")
    assert "out of service by gpumedic: 0 of at most" in description and "circuit breaker closed" in description
    # A re-run of the same incident changes nothing.
    again = dbe_rig.run("gpu-node-00", incident="inc-happy")
    assert again["actions"] == []
    assert len(dbe_rig.actions("gpu-node-00")) == 2
    assert dbe_rig.issues() == []
    # The daily forecast will read the incident as a prior incident of that GPU, and the weekly refit
    # learns from it as a memory failure: the DBE named the part.
    store = TelemetryStore(dbe_rig.store_url)
    incidents = store.prior_incidents(datetime.now(UTC) - timedelta(days=1))
    assert [(f.node, f.gpu, f.kind) for f in incidents] == [("gpu-node-00", 1, "hbm")]
    # Had the orchestrator died between opening the incident and recording it, a later run records it.
    with store.engine.begin() as conn:
        conn.execute(store_tables.incidents.delete())
    dbe_rig.run("gpu-node-00", incident="inc-happy")
    assert [f.node for f in store.prior_incidents(datetime.now(UTC) - timedelta(days=1))] == ["gpu-node-00"]


def test_a_fleet_taken_from_kubernetes_is_remediated_at_its_nodes_internal_ip(dbe_rig: Rig) -> None:
    """No `nodes:` in the fleet file: each step that needs the node's address reads that one Node."""
    from kubernetes import client, config

    document = yaml.safe_load(Path(dbe_rig.fleet_file).read_text())
    [entry] = [n for n in document["fleet"].pop("nodes") if n["name"] == "gpu-node-00"]
    document["fleet"]["ssh"]["port"] = entry["port"]  # one SSH port for every node, as in a real fleet
    document["fleet"]["kubernetes"] = {"kubeconfig": dbe_rig.kubeconfig, "label_selector": "kubernetes.io/os=linux"}
    Path(dbe_rig.fleet_file).write_text(yaml.safe_dump(document, sort_keys=False))
    with config.new_client_from_config(dbe_rig.kubeconfig) as api_client:  # as the kubelet reports its address
        client.CoreV1Api(api_client).patch_node_status(
            "gpu-node-00", {"status": {"addresses": [{"type": "InternalIP", "address": entry["host"]}]}})
    dbe_rig.kube.clear_logs()

    result = dbe_rig.run("gpu-node-00", incident="inc-from-kubernetes")
    assert result["final_state"] == "readmitted", result
    assert [a.split(":")[0] for a in result["actions"]] == ["cordon", "drain", "reset", "diag", "readmit"]
    actions = dbe_rig.actions("gpu-node-00")  # over SSH, at the address the Node gave
    assert len(actions) == 2 and actions[0].startswith("reset_gpu:") and actions[1] == "diag:2"
    inventory = [r for r in dbe_rig.kube.request_log if r.path == "/api/v1/nodes" and "labelSelector" in r.query]
    assert inventory and all("fieldSelector=metadata.name%3Dgpu-node-00" in r.query for r in inventory)


def test_the_run_and_its_steps_are_named_after_the_node_in_the_ui(dbe_rig: Rig) -> None:
    assert dbe_rig.run("gpu-node-00", incident="inc-named")["final_state"] == "readmitted"
    assert dbe_rig.run("gpu-node-01", dry_run=True)["incident"] is None  # healthy: nothing to simulate
    (run,) = [r for r in flow_runs_named("remediate-gpu-node-00") if r.parameters["incident"] == "inc-named"]
    steps = {"assess-gpu-node-00", "read-record-gpu-node-00", "write-record-gpu-node-00", "cordon-gpu-node-00",
             "drain-gpu-node-00", "reset-gpus-gpu-node-00", "diagnose-gpu-node-00", "readmit-gpu-node-00"}
    assert eventually(lambda: steps <= task_run_names(run)), task_run_names(run)
    dry_runs = flow_runs_named("remediate-gpu-node-01-dry-run")
    assert any(r.parameters["fleet_file"] == dbe_rig.fleet_file for r in dry_runs)


def test_healthy_node_opens_no_incident(dbe_rig: Rig) -> None:
    result = dbe_rig.run("gpu-node-01")
    assert result["incident"] is None and result["actions"] == []
    assert "does not need remediation" in result["waiting"]


def test_dry_run_logs_every_step_and_changes_nothing(dbe_rig: Rig) -> None:
    result = dbe_rig.run("gpu-node-00", dry_run=True)
    assert [a.split(":")[0] for a in result["actions"]] == ["cordon", "drain", "reset", "diag", "readmit", "close"]
    assert dbe_rig.actions("gpu-node-00") == []
    node = dbe_rig.node("gpu-node-00")
    assert not node["spec"].get("unschedulable")
    assert "gpumedic.io/state" not in node["metadata"]["annotations"]
    assert dbe_rig.evictions("gpu-node-00") == []
    assert TelemetryStore(dbe_rig.store_url).prior_incidents(datetime.now(UTC) - timedelta(days=1)) == []


# --------------------------------------------------------------------------- escalation, approval, Jira


def test_hardware_fault_escalates_reboot_then_replace_and_files_one_jira_ticket(hw_reset_rig: Rig) -> None:
    result = hw_reset_rig.run("gpu-node-00", incident="inc-hw", auto_approve=True)
    assert result["final_state"] == "ticketed", result
    keys = [a.split(":")[0] for a in result["actions"]]
    assert keys == ["cordon", "drain", "bootid", "reboot", "diag", "approval", "ticket"]
    assert hw_reset_rig.actions("gpu-node-00") == ["reboot", "diag:2"]
    (issue,) = hw_reset_rig.issues()
    assert result["ticket"] == issue["key"]
    fields = issue["fields"]
    assert fields["issuetype"]["name"] == "Hardware Replacement"
    assert fields["summary"].startswith("gpu-node-00: GPU 1 (UUID GPU-")
    assert {"gpumedic", "gpumedic-incident-inc-hw", "gpumedic-replace", "gpumedic-node-gpu-node-00"} <= set(
        fields["labels"])
    assert any(label.startswith(GPU_LABEL_PREFIX) for label in fields["labels"])  # deduplicated by the GPU
    assert "auto-approve (demo)" in fields["description"] and "RMA-inc-hw" in fields["description"]
    assert "## Evidence" in fields["description"]
    assert hw_reset_rig.node("gpu-node-00")["spec"]["unschedulable"] is True  # left quarantined
    assert hw_reset_rig.run("gpu-node-00", incident="inc-hw")["actions"] == []
    assert len(hw_reset_rig.issues()) == 1
    assert [e.status for e in hw_reset_rig.outbox()] == ["filed"]


def _run_in_thread(rig: Rig, node: str, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = rig.run(node, **kwargs)
        except BaseException as err:
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# Prefect's SQLite test server can stall a request for up to its 60 s busy timeout under load (PrefectHQ/prefect
# #18934): deadlines that only catch hangs wait longer than that.
HANG_S = 180


def _paused_approval_run(incident: str, timeout_s: float = HANG_S) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            runs = [r for r in runs if r.parameters.get("incident") == incident and r.state and r.state.is_paused()]
            if runs:
                return runs[0]
            time.sleep(0.3)
    raise AssertionError("no paused approval run appeared")


def _resume(run_id: Any, run_input: dict[str, Any]) -> None:
    """Resume once the run's input schema is stored (it is saved just after the pause)."""
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        try:
            resume_flow_run(run_id, run_input=run_input)
            return
        except RuntimeError as err:
            if "schema not found" not in str(err):
                raise
            time.sleep(0.2)
    raise AssertionError("the approval form was never stored")


def test_an_approved_replacement_waits_for_the_human_in_the_ui_then_files_the_ticket(broken_rig: Rig) -> None:
    thread, out = _run_in_thread(broken_rig, "gpu-node-00", incident="inc-alice", approval_timeout_s=HANG_S,
                                 approval_poll_s=1)
    paused = _paused_approval_run("inc-alice")
    assert paused.state.state_details.pause_key == "inc-alice-replace"
    # Another run for the node (the next sweep's event) does not ask a second time.
    other = broken_rig.run("gpu-node-00", incident="inc-next-sweep", approval_timeout_s=HANG_S)
    assert other["incident"] == "inc-alice" and other["actions"] == []
    assert other["waiting"].startswith("approval: a replace decision is awaited in flow run"), other
    _resume(paused.id, {"approve": True, "approver": "alice", "reason": "dead GPU", "rma_reference": "RMA-42"})
    thread.join(HANG_S)
    assert "error" not in out, out
    result = out["result"]
    assert result["final_state"] == "ticketed", result
    (issue,) = broken_rig.issues()
    assert "RMA-42" in issue["fields"]["description"] and "alice" in issue["fields"]["description"]
    assert "alice" in " ".join(result["history"])
    assert broken_rig.node("gpu-node-00")["spec"]["unschedulable"] is True  # left for the hardware swap
    assert broken_rig.actions("gpu-node-00") == []  # replace: no reset or reboot was tried


def test_invalid_approval_input_is_refused_by_the_server_then_a_rejection_fails_the_incident(
    broken_rig: Rig,
) -> None:
    from prefect.flow_runs import resume_flow_run

    thread, out = _run_in_thread(broken_rig, "gpu-node-00", incident="inc-invalid", approval_timeout_s=HANG_S,
                                 approval_poll_s=1)
    paused = _paused_approval_run("inc-invalid")
    deadline, message = time.monotonic() + HANG_S, ""
    while not message and time.monotonic() < deadline:  # wait until the form's schema is stored
        try:
            resume_flow_run(paused.id, run_input={"approve": "perhaps", "approver": 7})
        except RuntimeError as err:
            if "schema not found" in str(err):
                time.sleep(0.2)
                continue
            message = str(err)
    assert message, "invalid input was never refused"
    assert "Cannot resume this run" in message
    with pytest.raises(RuntimeError, match="Cannot resume this run"):
        resume_flow_run(paused.id, run_input={"reason": "no approve field"})
    _resume(paused.id, {"approve": False, "approver": "bob", "reason": "try a reseat first"})
    thread.join(HANG_S)
    assert "error" not in out, out
    result = out["result"]
    assert result["final_state"] == "failed", result
    assert "bob" in " ".join(result["history"])
    assert broken_rig.issues() == [] and broken_rig.outbox() == []
    assert broken_rig.node("gpu-node-00")["spec"]["unschedulable"] is True  # left cordoned for bob
    assert broken_rig.actions("gpu-node-00") == []


def test_approval_timeout_files_the_ticket_as_awaiting_decision(broken_rig: Rig) -> None:
    result = broken_rig.run("gpu-node-00", approval_timeout_s=1, approval_poll_s=1)
    assert result["final_state"] == "ticketed", result
    (issue,) = broken_rig.issues()
    assert issue["fields"]["summary"].endswith("(awaiting decision)")
    assert "gpumedic-awaiting-decision" in issue["fields"]["labels"]
    assert "Awaiting decision" in issue["fields"]["description"]


class OrchestratorDied(BaseException):
    """The orchestrating process is gone (not an Exception: nothing may catch it)."""


def _die_at(*points: tuple[str, str]) -> Any:
    """A crash hook that kills the run once at each of `points`, in any order."""
    pending = set(points)

    def die(at: str, step: str) -> None:
        if (at, step) in pending:
            pending.discard((at, step))
            raise OrchestratorDied(f"killed {at} {step}")

    return die


def test_a_request_found_past_its_timeout_by_a_later_run_is_ticketed_as_awaiting_decision(
    broken_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What follows a suspension the server failed on timeout: the next run applies the timeout."""
    import flows.remediation as module

    monkeypatch.setattr(module, "crash_hook", _die_at(("begun", "approval:replace")))
    with pytest.raises(OrchestratorDied):
        broken_rig.run("gpu-node-00", incident="inc-late", approval_timeout_s=1)
    assert broken_rig.annotations("gpu-node-00")["gpumedic.io/state"] == "awaiting_approval"
    time.sleep(1.2)
    started = time.monotonic()
    result = broken_rig.run("gpu-node-00", incident="inc-late", approval_timeout_s=1, approval_poll_s=1)
    assert time.monotonic() - started < 15
    assert result["final_state"] == "ticketed", result
    assert [a.split(":")[0] for a in result["actions"]] == ["approval", "ticket"]
    assert "no decision within" in " ".join(result["history"])
    (issue,) = broken_rig.issues()
    assert issue["fields"]["summary"].endswith("(awaiting decision)")


# --------------------------------------------------------------------------- suspension (deployment runs)


def test_only_a_top_level_deployment_run_suspends() -> None:
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    from flows.remediation import approval_key, approval_wait_mode

    flow_id = uuid4()
    assert approval_wait_mode(FlowRun(flow_id=flow_id, deployment_id=uuid4())) == "suspend"
    assert approval_wait_mode(FlowRun(flow_id=flow_id)) == "pause"  # no deployment: the server refuses
    assert approval_wait_mode(FlowRun(flow_id=flow_id, deployment_id=uuid4(), parent_task_run_id=uuid4())) == "pause"
    assert approval_wait_mode(None) == "pause"
    # Flow-run input keys take lower-case letters, digits and dashes only.
    assert approval_key("gpu.node:00-20260101T020000Z-ab12", "replace") == "gpu-node-00-20260101t020000z-ab12-replace"


def test_a_deployment_run_suspends_with_a_stable_key_and_resumes_from_the_top(broken_rig: Rig) -> None:
    """The run exits while waiting (no process held); resumed, it re-reads the record and gets the answer."""
    from uuid import UUID, uuid4

    from prefect import get_client
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow
    from prefect.flow_runs import resume_flow_run

    from flows.remediation import remediate_node

    deployment = cast(RunnerDeployment, remediate_node.to_deployment(name=f"remediate-{uuid4().hex[:8]}"))
    deployment_id = cast(UUID, deployment.apply())
    params = {"node": "gpu-node-00", "incident": "inc-suspend", "fleet_file": broken_rig.fleet_file,
              "kubeconfig": broken_rig.kubeconfig, "approval_timeout_s": 600}
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=params)
        with pytest.raises(Pause):  # what the engine raises in the run's process, which then exits
            run_flow(remediate_node, flow_run=flow_run, parameters=params)
        suspended = client.read_flow_run(flow_run.id)
        assert suspended.state is not None and suspended.state.name == "Suspended", suspended.state
        assert suspended.state.state_details.pause_key == "inc-suspend-replace"
        assert suspended.state.state_details.pause_reschedule is True
        check = [r for r in client.read_flow_runs() if r.idempotency_key == "inc-suspend-replace-timeout"]
        assert len(check) == 1 and check[0].state is not None and check[0].state.is_scheduled()
        assert check[0].parameters["incident"] == "inc-suspend"
        assert check[0].name == "remediate-gpu-node-00"  # named in the UI while it waits, not only once it starts
        expected = datetime.now(UTC).timestamp() + 600
        scheduled = check[0].state.state_details.scheduled_time
        assert scheduled is not None and abs(scheduled.timestamp() - expected) < 60
    record = broken_rig.annotations("gpu-node-00")
    assert record["gpumedic.io/state"] == "awaiting_approval"
    assert broken_rig.issues() == []
    # Another run for the node (the next sweep's event) neither asks again nor times the request out.
    other = broken_rig.run("gpu-node-00", incident="inc-next-sweep")
    assert other["waiting"].startswith("approval: a replace decision is awaited in flow run"), other

    for _ in range(50):  # the form's schema is stored just after the suspension
        try:
            resume_flow_run(flow_run.id, run_input={"approve": True, "approver": "dana", "reason": "RMA it",
                                                    "rma_reference": "RMA-7"})
            break
        except RuntimeError as err:
            if "schema not found" not in str(err):
                raise
            time.sleep(0.2)
    with get_client(sync_client=True) as client:
        resumed = client.read_flow_run(flow_run.id)
        assert resumed.state is not None and resumed.state.is_scheduled()  # rescheduled: it starts from the top
    # Until the resumed run has started and applied the answer, no other run decides in its place.
    other = broken_rig.run("gpu-node-00", incident="inc-next-sweep", approval_timeout_s=1)
    assert other["waiting"].startswith("approval: the replace decision was given to flow run"), other
    result = cast(dict[str, Any], run_flow(remediate_node, flow_run=resumed, parameters=params))
    assert result["final_state"] == "ticketed", result
    assert [a.split(":")[0] for a in result["actions"]] == ["approval", "ticket"]
    assert "dana" in " ".join(result["history"])
    (issue,) = broken_rig.issues()
    assert "RMA-7" in issue["fields"]["description"]


# --------------------------------------------------------------------------- crash and resume


@pytest.mark.parametrize(
    "points",
    [
        # after cordon, after drain, before the reboot, during diagnostics, while awaiting
        # approval, after the ticket call
        [("executed", "cordon:1"), ("executed", "drain:1"), ("begun", "reboot:1"), ("executed", "diag:1"),
         ("begun", "approval:replace"), ("executed", "ticket")],
        # a cordon decided but not confirmed, a reboot that took effect unrecorded (and the boot id
        # it is checked against), an approval given but not recorded
        [("begun", "cordon:1"), ("executed", "bootid:1"), ("executed", "reboot:1"),
         ("executed", "approval:replace")],
    ],
    ids=["after-each-step", "unrecorded-outcomes"],
)
def test_a_crash_at_any_step_resumes_without_repeating_a_destructive_step(
    hw_reset_rig: Rig, points: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One incident, killed at each point in turn and re-run each time."""
    import flows.remediation as module

    monkeypatch.setattr(module, "crash_hook", _die_at(*points))
    for point in points:
        with pytest.raises(OrchestratorDied, match=f"killed {point[0]} {point[1]}"):
            hw_reset_rig.run("gpu-node-00", incident="inc-crash", auto_approve=True)
    result = hw_reset_rig.run("gpu-node-00", incident="inc-crash", auto_approve=True)
    assert result["final_state"] == "ticketed", result
    assert hw_reset_rig.actions("gpu-node-00").count("reboot") == 1
    assert len(hw_reset_rig.evictions("gpu-node-00")) == 1
    assert len(hw_reset_rig.issues()) == 1
    assert [e.status for e in hw_reset_rig.outbox()] == ["filed"]


@pytest.mark.parametrize(
    "points",
    [[("begun", "reset:1")],
     [("executed", "reset:1"), ("begun", "diag:1"), ("executed", "diag:1"), ("executed", "readmit:1")]],
    ids=["before-reset", "after-reset-during-diag-after-readmit"],
)
def test_a_crash_around_the_reset_never_resets_twice(
    dbe_rig: Rig, points: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.remediation as module

    monkeypatch.setattr(module, "crash_hook", _die_at(*points))
    for point in points:
        with pytest.raises(OrchestratorDied, match=f"killed {point[0]} {point[1]}"):
            dbe_rig.run("gpu-node-00", incident="inc-crash")
    result = dbe_rig.run("gpu-node-00", incident="inc-crash")
    actions = dbe_rig.actions("gpu-node-00")
    assert sum(a.startswith("reset_gpu") for a in actions) <= 1
    assert len(dbe_rig.evictions("gpu-node-00")) == 1
    if points == [("begun", "reset:1")]:  # the reset never ran: measured, found broken, escalated
        assert not any(a.startswith("reset_gpu") for a in actions)
    else:
        assert result["final_state"] == "readmitted", result
        assert not dbe_rig.node("gpu-node-00")["spec"].get("unschedulable")


def test_a_run_that_died_after_the_reset_is_resumed_once_and_readmits_the_node(
    dbe_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No event will come for it: the reset cleared the DBE, so the next sweep finds the node healthy."""
    from uuid import uuid4

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    import flows.remediation as module
    from flows.remediation import remediate_node
    from flows.resume import resume_remediations

    monkeypatch.setattr(module, "crash_hook", _die_at(("executed", "reset:1")))
    with pytest.raises(OrchestratorDied):
        dbe_rig.run("gpu-node-00", incident="inc-died")
    assert dbe_rig.annotations("gpu-node-00")["gpumedic.io/state"] == "resetting"
    assert dbe_rig.node("gpu-node-00")["spec"]["unschedulable"]
    deployment = cast(RunnerDeployment, remediate_node.to_deployment(
        name=f"remediate-{uuid4().hex[:8]}",
        parameters={"fleet_file": dbe_rig.fleet_file, "kubeconfig": dbe_rig.kubeconfig, "evidence_retry_s": 0.5}))
    deployment_id = deployment.apply()
    resume = {"fleet_file": dbe_rig.fleet_file, "kubeconfig": dbe_rig.kubeconfig,
              "deployment": f"remediate-node/{deployment.name}"}

    def runs() -> list[Any]:
        with get_client(sync_client=True) as client:
            ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            return client.read_flow_runs(deployment_filter=ours)

    # Just after the crash the run may be alive still (its step has a 10 s drain, 30 s reboot deadline).
    assert resume_remediations(**resume)["started"] == []
    # Once twice the longest step deadline has passed, it is stalled: shorten the deadlines to see it now.
    document = yaml.safe_load(Path(dbe_rig.fleet_file).read_text())
    document["fleet"]["remediation"].update({"drain_timeout": 1, "reboot_timeout": 1, "diag_timeout": 1})
    Path(dbe_rig.fleet_file).write_text(yaml.safe_dump(document, sort_keys=False))
    time.sleep(2.2)
    dry = resume_remediations(**resume, dry_run=True)
    assert dry["started"] == [] and [e["because"] for e in dry["left"]] == ["dry run"] and runs() == []
    # A run of the node scheduled for tomorrow (as an approval's timeout check is) is not at work now.
    with get_client(sync_client=True) as client:
        tomorrow = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1))
        client.create_flow_run_from_deployment(deployment_id, parameters={"node": "gpu-node-00", "incident": "old"},
                                               state=tomorrow)

    (started,) = resume_remediations(**resume)["started"]
    assert (started["node"], started["incident"]) == ("gpu-node-00", "inc-died")
    assert started["why"].startswith("no progress for")
    (run,) = [r for r in runs() if r.parameters["incident"] == "inc-died"]
    assert run.state is not None and run.state.is_scheduled() and "resumed" in run.tags
    assert run.name == "remediate-gpu-node-00" and started["run"] == f"{run.name} ({run.id})"
    assert (run.parameters["node"], run.parameters["incident"]) == ("gpu-node-00", "inc-died")
    # While that run is live, another pass starts none.
    again = resume_remediations(**resume)
    assert again["started"] == [] and again["left"][0]["because"] == "a remediate-node run for the node is live"

    result = cast(dict[str, Any], run_flow(remediate_node, flow_run=run, parameters=run.parameters))
    assert result["final_state"] == "readmitted", result
    assert sum(a.startswith("reset_gpu") for a in dbe_rig.actions("gpu-node-00")) == 1  # measured, not reset again
    assert not dbe_rig.node("gpu-node-00")["spec"].get("unschedulable")
    assert resume_remediations(**resume)["started"] == []  # on probation now: nothing to resume


def test_a_resumption_key_starts_one_run_and_a_new_quarter_hour_starts_another() -> None:
    """What the resumer's keys rely on: Prefect answers a reused idempotency key with the run it started."""
    from uuid import uuid4

    from prefect.deployments.runner import RunnerDeployment

    from flows.remediation import remediate_node
    from tasks.remediation import start_remediation_run

    deployment = cast(RunnerDeployment, remediate_node.to_deployment(name=f"remediate-{uuid4().hex[:8]}"))
    deployment.apply()
    name = f"remediate-node/{deployment.name}"

    def start(key: str) -> str:
        return start_remediation_run.fn(name, "gpu-node-00", "inc-w", f"resume-inc-w-2026-11-22T08:00:00+00:00-{key}")

    first = start("1")
    assert start("1") == first
    assert start("2") != first


# --------------------------------------------------------------------------- fleet safety


@pytest.fixture
def storm_rig(tmp_path: Path) -> Iterator[Rig]:
    faults = [{"node": f"gpu-node-0{i}", "gpu": 0, "row_remap_failure": True} for i in range(4)]
    yield from _rig(tmp_path, faults, nodes=5)


def test_a_fault_storm_never_takes_more_than_the_budget_out_of_service(storm_rig: Rig) -> None:
    """Four broken nodes remediated at once, budget two: the lock makes the decisions one at a time."""
    from prefect import get_client

    from tasks.remediation import BUDGET_LOCK

    # Two drains at once meet the shared PDB: the second waits out its (short) drain timeout.
    policy = {"max_nodes_out": 2, "max_fraction_out": 1.0, "breaker_fraction": 1.0, "drain_timeout": 2}
    runs = {n: _run_in_thread(storm_rig, n, policy=policy, auto_approve=True) for n in sorted(storm_rig.fleet.nodes)}
    for thread, _ in runs.values():
        thread.join(HANG_S)
    assert all("result" in out for _, out in runs.values()), runs
    results: dict[str, dict[str, Any]] = {n: out["result"] for n, (_, out) in runs.items()}
    out = [n for n in storm_rig.fleet.nodes if storm_rig.node(n)["spec"].get("unschedulable")]
    assert len(out) == 2, results
    waiting = [n for n, r in results.items() if r["waiting"] and r["waiting"].startswith("budget")]
    assert len(waiting) == 2 and not set(waiting) & set(out), results
    assert results["gpu-node-04"]["incident"] is None
    assert {results[n]["final_state"] for n in out} <= {"ticketed", "failed"}, results
    assert storm_rig.kube.pdb_violations() == []
    with get_client(sync_client=True) as client:
        lock = client.read_global_concurrency_limit_by_name(BUDGET_LOCK)
    assert lock.limit == 1 and lock.active and lock.active_slots == 0


def test_a_widened_budget_lock_is_refused() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from tasks.remediation import ensure_budget_lock

    name = f"gpumedic-budget-test-{os.getpid()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=3))
    with pytest.raises(PermanentError, match="must be active with limit 1"):
        ensure_budget_lock(name)


STORM_POLICY = {"max_nodes_out": 5, "max_fraction_out": 1.0, "breaker_fraction": 0.5}


def _storm(rig: Rig) -> None:
    """Three of the five nodes turned unhealthy just now: the breaker is open."""
    from gpumedic.domain.budget import RemediationPolicy
    from gpumedic.domain.remediation import open_incident
    from gpumedic.domain.verdict import Action, NodeAssessment, Verdict
    from tasks.remediation import write_node_record

    for n in ("gpu-node-00", "gpu-node-01", "gpu-node-02"):
        broken = NodeAssessment(n, Verdict.FAILED, Action.REPLACE, ("row remap failure",), ())
        record = open_incident(broken, incident_id=f"inc-storm-{n}", now=datetime.now(UTC),
                               policy=RemediationPolicy.model_validate(STORM_POLICY))
        write_node_record.fn(rig.cluster, n, record, None)


def test_the_breaker_asks_a_human_and_a_timeout_halts_the_node(storm_rig: Rig) -> None:
    _storm(storm_rig)
    last = storm_rig.run("gpu-node-03", policy=STORM_POLICY, approval_timeout_s=1, approval_poll_s=1)
    assert last["waiting"] and last["waiting"].startswith("halted: circuit breaker open"), last
    history = " ".join(last["history"])
    assert "approval:breaker" in history and "no decision within" in history
    assert not storm_rig.node("gpu-node-03")["spec"].get("unschedulable")


def test_an_operators_fleet_wide_override_lets_remediation_go_on_in_a_storm_without_asking(storm_rig: Rig) -> None:
    from gpumedic.adapters.breaker_override import clear_breaker_override, set_breaker_override
    from gpumedic.domain.budget import BreakerOverride

    _storm(storm_rig)
    now = datetime.now(UTC)
    set_breaker_override(BreakerOverride(now + timedelta(hours=1), "alice", "driver rollout on rack 7", now))
    try:
        last = storm_rig.run("gpu-node-03", policy=STORM_POLICY, auto_approve=True)
    finally:
        clear_breaker_override()
    history = " ".join(last["history"])
    assert "approval:breaker" not in history, last  # nobody was asked: the override answers for the fleet
    assert last["final_state"] == "ticketed", last
    assert storm_rig.node("gpu-node-03")["spec"].get("unschedulable")


# --------------------------------------------------------------------------- Jira down, Jira misconfigured


@pytest.mark.usefixtures("fast_ticket_retries")
def test_without_a_token_or_jira_the_ticket_waits_and_a_later_run_files_it_exactly_once(broken_rig: Rig) -> None:
    # No token: a clear error naming the variable (never the token); nothing queued, the record waits.
    token = os.environ.pop(TOKEN_ENV)
    with pytest.raises(PermanentError, match=TOKEN_ENV) as raised:
        broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    assert token not in str(raised.value)
    assert broken_rig.outbox() == []
    os.environ[TOKEN_ENV] = token
    # Jira refuses connections: the ticket is kept in the outbox, the node waits at its ticket step.
    broken_rig.jira.outage("refuse")
    with pytest.raises(TransientError, match="queued in the outbox"):
        broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    (entry,) = broken_rig.outbox()
    assert entry.status == "pending" and entry.attempts == 4  # one try and three retries, kept
    state = broken_rig.annotations("gpu-node-00")
    assert state["gpumedic.io/state"] == "awaiting_approval" and state["gpumedic.io/step"] == "ticket"
    # Jira is back: the next run files it once; another run files nothing more.
    broken_rig.jira.outage(None)
    assert broken_rig.issues() == []
    result = broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    (issue,) = broken_rig.issues()
    assert result["final_state"] == "ticketed" and result["ticket"] == issue["key"]
    broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    assert len(broken_rig.issues()) == 1
    assert [(e.status, e.issue_key) for e in broken_rig.outbox()] == [("filed", issue["key"])]


def test_a_drain_blocked_by_a_pod_disruption_budget_hands_the_node_to_a_human_with_one_ticket(dbe_rig: Rig) -> None:
    # A single-replica service under a budget that allows no disruption sits on the broken node.
    dbe_rig.kube.add_pod("db", "ledger-0", "gpu-node-00", owner_kind="StatefulSet", owner_name="ledger",
                         labels={"app": "ledger"})
    dbe_rig.kube.add_pdb("db", "ledger", {"app": "ledger"}, min_available=1)
    result = dbe_rig.run("gpu-node-00", incident="inc-blocked", policy={"drain_timeout": "PT2S"})
    assert result["final_state"] == "failed", result
    assert "drain did not complete" in result["outcome"]
    assert dbe_rig.kube.get_pod("db", "ledger-0") is not None  # the budget was respected, not bypassed
    assert dbe_rig.kube.pdb_violations() == []
    assert dbe_rig.actions("gpu-node-00") == []  # no reset on a node that could not be drained
    assert dbe_rig.node("gpu-node-00")["spec"].get("unschedulable") is True  # left out of service
    issues = dbe_rig.issues()
    assert len(issues) == 1
    assert "a human must take over" in issues[0]["fields"]["description"]
    assert result["ticket"] == issues[0]["key"]
    # Running it again files nothing more.
    dbe_rig.run("gpu-node-00", incident="inc-blocked")
    assert len(dbe_rig.issues()) == 1
