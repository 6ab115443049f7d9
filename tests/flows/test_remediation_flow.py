"""The remediate_node flow under the Prefect harness: simulated nodes over real sshd, the
Kubernetes API emulator, and a ticket desk that can go down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpumedic.adapters.errors import TransientError
from gpumedic.sim import node_state
from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet
from gpumedic.sim.kube_api import KubeApiEmulator
from tests.conftest import require_sshd

pytestmark = pytest.mark.usefixtures("prefect_harness")

POLICY: dict[str, Any] = {"drain_timeout": 10, "reboot_timeout": 30, "diag_level": 2, "breaker_min_nodes": 3}


@dataclass
class FakeDesk:
    """A ticket system that dedupes by key and can be down (TransientError)."""

    down: bool = False
    created: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def file(self, request: Any) -> str:
        self.calls += 1
        if self.down:
            raise TransientError("jira: 503 Service Unavailable")
        for t in self.created:
            if t["dedupe"] == request.dedupe_key:
                return str(t["key"])
        key = f"GPU-{len(self.created) + 1}"
        self.created.append({"key": key, "dedupe": request.dedupe_key, "node": request.node,
                             "summary": request.summary, "awaiting": request.awaiting_decision})
        return key


@dataclass
class Rig:
    fleet: SimulatedFleet
    kube: KubeApiEmulator
    kubeconfig: str
    desk: FakeDesk
    desk_name: str

    def run(self, node: str, **kwargs: Any) -> dict[str, Any]:
        from flows.remediation import remediate_node

        params: dict[str, Any] = {"fleet_file": str(self.fleet.inventory_file), "kubeconfig": self.kubeconfig,
                                  "policy": POLICY, "tickets": self.desk_name, "evidence_retry_s": 0.5}
        params.update(kwargs)
        return remediate_node(node=node, **params)

    def actions(self, node: str) -> list[str]:
        return [a for _, a in node_state.load(self.fleet.state_file(node))["actions"]]

    def evictions(self, node: str) -> list[str]:
        return [f"{r.namespace}/{r.pod}" for r in self.kube.eviction_log if r.node == node and r.outcome == "evicted"]

    def node(self, name: str) -> dict[str, Any]:
        return self.kube.get_node(name)


def _rig(tmp_path: Path, faults: list[dict[str, Any]], nodes: int = 2) -> Iterator[Rig]:
    from tasks.remediation import register_ticket_desk

    require_sshd()
    fleet = SimulatedFleet(tmp_path / "fleet")
    fleet.create(FleetSimulation(nodes=nodes, gpus_per_node=4, seed=3, faults=faults, exporter=False,
                                 diag_seconds=0.05))
    fleet.start(exporter=False)
    kube = KubeApiEmulator(eviction_delay=0.0).start()
    for name in fleet.nodes:
        kube.add_node(name, gpus=4)
        kube.add_pod("ml", f"train-{name}", name, owner_kind="ReplicaSet", owner_name="train",
                     labels={"app": "train"}, gpus=4)
        kube.add_pod("kube-system", f"dcgm-exporter-{name}", name, owner_kind="DaemonSet",
                     owner_name="dcgm-exporter")
    kube.add_pdb("ml", "train", {"app": "train"}, max_unavailable=1)
    desk = FakeDesk()
    desk_name = f"desk-{tmp_path.name}"
    register_ticket_desk(desk_name, lambda: desk)
    try:
        yield Rig(fleet, kube, str(kube.write_kubeconfig(tmp_path / "kubeconfig")), desk, desk_name)
    finally:
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


# --------------------------------------------------------------------------- happy path


def test_reset_then_passing_diagnostics_readmits_the_node(dbe_rig: Rig) -> None:
    result = dbe_rig.run("gpu-node-00", incident="inc-happy")
    assert result["final_state"] == "readmitted", result
    assert result["waiting"].startswith("probation")
    assert [a.split(":")[0] for a in result["actions"]] == ["cordon", "drain", "reset", "diag", "readmit"]
    assert dbe_rig.actions("gpu-node-00") == ["reset_gpu:0000:00:05.0", "diag:2"] or (
        dbe_rig.actions("gpu-node-00")[0].startswith("reset_gpu:") and dbe_rig.actions("gpu-node-00")[1] == "diag:2"
    )
    node = dbe_rig.node("gpu-node-00")
    assert not node["spec"].get("unschedulable")
    assert not any(t["key"] == "gpumedic.io/unhealthy" for t in node["spec"].get("taints") or [])
    assert node["metadata"]["annotations"]["gpumedic.io/state"] == "readmitted"
    assert dbe_rig.evictions("gpu-node-00") == ["ml/train-gpu-node-00"]  # the DaemonSet pod stays
    assert dbe_rig.kube.pdb_violations() == []
    assert dbe_rig.actions("gpu-node-01") == []  # the healthy node is untouched
    assert "gpumedic.io/state" not in dbe_rig.node("gpu-node-01")["metadata"]["annotations"]
    # A re-run of the same incident changes nothing.
    again = dbe_rig.run("gpu-node-00", incident="inc-happy")
    assert again["actions"] == []
    assert len(dbe_rig.actions("gpu-node-00")) == 2


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


# --------------------------------------------------------------------------- escalation and approval


def test_hardware_fault_escalates_reboot_then_replace_and_files_one_ticket(hw_reset_rig: Rig) -> None:
    result = hw_reset_rig.run("gpu-node-00", incident="inc-hw", auto_approve=True)
    assert result["final_state"] == "ticketed", result
    keys = [a.split(":")[0] for a in result["actions"]]
    assert keys == ["cordon", "drain", "bootid", "reboot", "diag", "approval", "ticket"]
    assert hw_reset_rig.actions("gpu-node-00") == ["reboot", "diag:2"]
    assert len(hw_reset_rig.desk.created) == 1
    assert hw_reset_rig.node("gpu-node-00")["spec"]["unschedulable"] is True  # left quarantined
    history = " ".join(result["history"])
    assert "auto-approve (demo)" in history
    assert hw_reset_rig.run("gpu-node-00", incident="inc-hw")["actions"] == []
    assert len(hw_reset_rig.desk.created) == 1


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


def _paused_approval_run(incident: str, timeout_s: float = 60) -> Any:
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

    for _ in range(50):
        try:
            resume_flow_run(run_id, run_input=run_input)
            return
        except RuntimeError as err:
            if "schema not found" not in str(err):
                raise
            time.sleep(0.2)
    raise AssertionError("the approval form was never stored")


@pytest.mark.parametrize(
    ("decision", "state", "tickets"),
    [({"approve": True, "approver": "alice", "reason": "dead GPU", "rma_reference": "RMA-42"}, "ticketed", 1),
     ({"approve": False, "approver": "bob", "reason": "try a reseat first"}, "failed", 0)],
    ids=["approve", "reject"],
)
def test_replacement_waits_for_a_human_decision_in_the_ui(
    broken_rig: Rig, decision: dict[str, Any], state: str, tickets: int
) -> None:
    incident = f"inc-{decision['approver']}"
    thread, out = _run_in_thread(broken_rig, "gpu-node-00", incident=incident, approval_timeout_s=60,
                                 approval_poll_s=1)
    paused = _paused_approval_run(incident)
    _resume(paused.id, decision)
    thread.join(60)
    assert "error" not in out, out
    result = out["result"]
    assert result["final_state"] == state, result
    assert len(broken_rig.desk.created) == tickets
    assert decision["approver"] in " ".join(result["history"])
    assert broken_rig.node("gpu-node-00")["spec"]["unschedulable"] is True
    assert broken_rig.actions("gpu-node-00") == []  # replace: no reset or reboot was tried


def test_invalid_approval_input_is_refused_by_the_server_then_a_valid_one_resumes(broken_rig: Rig) -> None:
    from prefect.flow_runs import resume_flow_run

    thread, out = _run_in_thread(broken_rig, "gpu-node-00", incident="inc-invalid", approval_timeout_s=60,
                                 approval_poll_s=1)
    paused = _paused_approval_run("inc-invalid")
    for _ in range(50):  # wait until the form's schema is stored, then try a bad input
        try:
            resume_flow_run(paused.id, run_input={"approve": "perhaps", "approver": 7})
        except RuntimeError as err:
            if "schema not found" in str(err):
                time.sleep(0.2)
                continue
            message = str(err)
            break
    else:
        raise AssertionError("invalid input was never refused")
    assert "Cannot resume this run" in message
    with pytest.raises(RuntimeError, match="Cannot resume this run"):
        resume_flow_run(paused.id, run_input={"reason": "no approve field"})
    _resume(paused.id, {"approve": True, "approver": "carol", "reason": "ok"})
    thread.join(60)
    assert out["result"]["final_state"] == "ticketed", out


def test_approval_timeout_files_the_ticket_as_awaiting_decision(broken_rig: Rig) -> None:
    result = broken_rig.run("gpu-node-00", approval_timeout_s=2, approval_poll_s=1)
    assert result["final_state"] == "ticketed", result
    assert len(broken_rig.desk.created) == 1 and broken_rig.desk.created[0]["awaiting"] is True


# --------------------------------------------------------------------------- crash and resume


class OrchestratorDied(BaseException):
    """The orchestrating process is gone (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize(
    ("point", "key"),
    [("begun", "cordon:1"), ("executed", "cordon:1"), ("executed", "drain:1"), ("executed", "bootid:1"),
     ("begun", "reboot:1"), ("executed", "reboot:1"), ("applied", "reboot:1"), ("executed", "diag:1"),
     ("begun", "approval:replace"), ("executed", "approval:replace"), ("begun", "ticket"),
     ("executed", "ticket")],
)
def test_a_crash_at_any_step_resumes_without_repeating_a_destructive_step(
    hw_reset_rig: Rig, point: str, key: str
) -> None:
    import flows.remediation as module

    def die(at: str, step: str) -> None:
        if (at, step) == (point, key):
            raise OrchestratorDied(f"killed {at} {step}")

    module.crash_hook = die
    try:
        with pytest.raises(OrchestratorDied):
            hw_reset_rig.run("gpu-node-00", incident="inc-crash", auto_approve=True)
    finally:
        module.crash_hook = None
    result = hw_reset_rig.run("gpu-node-00", incident="inc-crash", auto_approve=True)
    assert result["final_state"] == "ticketed", result
    actions = hw_reset_rig.actions("gpu-node-00")
    assert actions.count("reboot") == 1
    assert len(hw_reset_rig.evictions("gpu-node-00")) == 1
    assert len(hw_reset_rig.desk.created) == 1


# --------------------------------------------------------------------------- fleet safety and Jira


@pytest.fixture
def storm_rig(tmp_path: Path) -> Iterator[Rig]:
    faults = [{"node": f"gpu-node-0{i}", "gpu": 0, "row_remap_failure": True} for i in range(4)]
    yield from _rig(tmp_path, faults, nodes=5)


def test_a_fault_storm_never_takes_more_than_the_budget_out_of_service(storm_rig: Rig) -> None:
    policy = {**POLICY, "max_nodes_out": 2, "max_fraction_out": 1.0, "breaker_fraction": 1.0}
    results = {n: storm_rig.run(n, policy=policy, auto_approve=True) for n in sorted(storm_rig.fleet.nodes)}
    out = [n for n in storm_rig.fleet.nodes if storm_rig.node(n)["spec"].get("unschedulable")]
    assert len(out) == 2
    waiting = [n for n, r in results.items() if r["waiting"] and r["waiting"].startswith("budget")]
    assert waiting == ["gpu-node-02", "gpu-node-03"]
    assert results["gpu-node-04"]["incident"] is None


def test_the_breaker_asks_a_human_and_a_timeout_halts_the_node(storm_rig: Rig) -> None:
    policy = {**POLICY, "max_nodes_out": 5, "max_fraction_out": 1.0, "breaker_fraction": 0.5}
    for n in ("gpu-node-00", "gpu-node-01", "gpu-node-02"):
        storm_rig.run(n, policy=policy, auto_approve=False, approval_timeout_s=1, approval_poll_s=1)
    last = storm_rig.run("gpu-node-03", policy=policy, approval_timeout_s=1, approval_poll_s=1)
    assert last["waiting"] and last["waiting"].startswith("halted: circuit breaker open"), last
    assert not storm_rig.node("gpu-node-03")["spec"].get("unschedulable")


def test_jira_outage_then_recovery_files_the_ticket_exactly_once(broken_rig: Rig) -> None:
    broken_rig.desk.down = True
    with pytest.raises(TransientError):
        broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    assert broken_rig.desk.created == [] and broken_rig.desk.calls == 4  # one try and three retries
    state = broken_rig.node("gpu-node-00")["metadata"]["annotations"]
    assert state["gpumedic.io/state"] == "awaiting_approval" and state["gpumedic.io/step"] == "ticket"
    broken_rig.desk.down = False
    result = broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    assert result["final_state"] == "ticketed" and result["ticket"] == "GPU-1"
    broken_rig.run("gpu-node-00", incident="inc-jira", auto_approve=True)
    assert len(broken_rig.desk.created) == 1


@pytest.mark.parametrize(
    ("point", "key"),
    [("begun", "reset:1"), ("executed", "reset:1"), ("applied", "reset:1"), ("begun", "diag:1"),
     ("executed", "diag:1"), ("executed", "readmit:1")],
)
def test_a_crash_around_the_reset_never_resets_twice(dbe_rig: Rig, point: str, key: str) -> None:
    import flows.remediation as module

    def die(at: str, step: str) -> None:
        if (at, step) == (point, key):
            raise OrchestratorDied(f"killed {at} {step}")

    module.crash_hook = die
    try:
        with pytest.raises(OrchestratorDied):
            dbe_rig.run("gpu-node-00", incident="inc-crash")
    finally:
        module.crash_hook = None
    result = dbe_rig.run("gpu-node-00", incident="inc-crash")
    actions = dbe_rig.actions("gpu-node-00")
    assert sum(a.startswith("reset_gpu") for a in actions) <= 1
    assert len(dbe_rig.evictions("gpu-node-00")) == 1
    if key == "reset:1" and point == "begun":  # the reset never ran: measured, found broken, escalated
        assert not any(a.startswith("reset_gpu") for a in actions)
    else:
        assert result["final_state"] == "readmitted", result
        assert not dbe_rig.node("gpu-node-00")["spec"].get("unschedulable")
