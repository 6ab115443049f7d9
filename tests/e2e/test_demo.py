"""`gpumedic demo --auto-approve --exit --json OUT` on a fresh machine: the issue's "Done when".

One subprocess runs the whole product (Prefect server, served deployments, the simulated
fleet over real sshd, the Kubernetes and Jira emulators); the assertions read the JSON it
writes. Expected outcomes for the packaged example fleet, and why:

- gpu-node-07 (volatile DBE) and gpu-node-08 (NVLink down): `reset_gpu`; the reset clears the
  transient fault, `dcgmi diag` passes, the node is readmitted and closes after probation.
- gpu-node-11 (a GPU missing, no hardware fault): `reboot`; the GPU is enumerated again, the
  diagnostic passes, readmitted.
- gpu-node-05 (row-remap failure): `replace` straight away; approval, one ticket.
- gpu-node-03 (Xid 79, fallen off the bus): `reboot` brings the GPU back, but it carries a
  hardware fault, so the diagnostic after the reboot fails and the ladder climbs to
  `replace`: approval, one ticket.
- gpu-node-06 (97 C, `inspect`): no automated repair; quarantined and drained, then a human
  approves the inspection and one ticket is filed. (`ledger-0`, whose PodDisruptionBudget allows
  no disruption, runs on a healthy node and is never touched.)
- gpu-node-04 (`restart_app`) and gpu-node-09/10 (`unknown`) open no incident; 01-02 are healthy.
- gpu-node-00 GPU 4 has been running out of spare rows for nine days (the demo writes a month of
  history before the sweep): the sweep says `monitor` (a bank low on spares), the daily forecast
  alarms on it, and its proactive-maintenance run files one "Order Replacement" ticket; the node is
  never taken out of service. The forecast may alarm on the GPUs the sweep already condemned
  (gpu-node-05's remap failure), but holds those: no order, remediation's ticket is the only one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import REPO, require_sshd

FORESEEN = ("gpu-node-00", 4)
READMITTED = ("gpu-node-07", "gpu-node-08", "gpu-node-11")
REPLACED = ("gpu-node-03", "gpu-node-05")
INSPECTED = "gpu-node-06"
UNTOUCHED = ("gpu-node-00", "gpu-node-01", "gpu-node-02", "gpu-node-04", "gpu-node-09", "gpu-node-10")
DEMO_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_sshd()
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo.json"
    env = {**os.environ, "HOME": str(tmp), "GPUMEDIC_HOME": str(tmp / "gpumedic"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "GPUMEDIC_KUBECONFIG",
                      "GPUMEDIC_AUTO_APPROVE", "GPUMEDIC_JIRA_TOKEN", "GPUMEDIC_TICKETS"):
        env.pop(inherited, None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gpumedic.cli", "demo", "--auto-approve", "--exit", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
    )
    logs = sorted((tmp / "gpumedic").glob("demo/*/serve.log"))
    tail = proc.stdout[-6000:] + proc.stderr[-3000:] + (logs[-1].read_text()[-4000:] if logs else "")
    assert proc.returncode == 0, tail
    assert out.exists(), tail
    report: dict[str, Any] = json.loads(out.read_text())
    report["_stdout"] = proc.stdout
    report["_tail"] = tail
    report["_wall_s"] = time.monotonic() - started
    return report


def _why(demo: dict[str, Any], node: str) -> str:
    return json.dumps(demo["nodes"][node], indent=1)[:3000] + "\n" + demo["_tail"][-3000:]


def test_the_demo_runs_remediation_through_the_event_trigger(demo: dict[str, Any]) -> None:
    assert demo["remediation"]["trigger"] == "event", demo["remediation"]
    assert set(demo["remediation"]["flagged"]) == {*READMITTED, *REPLACED, INSPECTED}
    assert not demo["remediation"]["timed_out"]
    for node in demo["remediation"]["flagged"]:
        first = demo["nodes"][node]["flow_runs"][0]
        assert first["started_by"].startswith("event trigger"), _why(demo, node)


@pytest.mark.parametrize("node", READMITTED)
def test_a_repairable_node_is_readmitted_after_a_passing_diagnostic(demo: dict[str, Any], node: str) -> None:
    n = demo["nodes"][node]
    assert n["outcome"] == "readmitted", _why(demo, node)
    assert n["readmitted_after_passing_diagnostic"] and n["in_service"], _why(demo, node)
    assert n["final_state"] in ("readmitted", "in_service"), _why(demo, node)
    assert not n["cordoned"] and not any(t.startswith("gpumedic.io/") for t in n["taints"]), _why(demo, node)
    assert n["tickets"] == []
    repair = "reset_gpu:" if n["action"] == "reset_gpu" else "reboot"
    assert any(a.startswith(repair) for a in n["node_actions"]), _why(demo, node)
    assert n["node_actions"][-1].startswith("diag:2"), _why(demo, node)  # the last word is a diagnostic
    assert any("diagnostics passed" in a for a in n["actions"]), _why(demo, node)


@pytest.mark.parametrize("node", REPLACED)
def test_a_broken_gpu_is_ticketed_after_approval_and_stays_out_of_service(demo: dict[str, Any], node: str) -> None:
    n = demo["nodes"][node]
    assert n["outcome"] == "ticketed" and n["final_state"] == "ticketed", _why(demo, node)
    assert n["approval"]["decision"] == "approve" and n["approval"]["kind"] == "replace", _why(demo, node)
    assert len(n["tickets"]) == 1, _why(demo, node)
    assert n["cordoned"] and not n["in_service"]
    if node == "gpu-node-03":  # Xid 79: the reboot was tried, and the diagnostic after it failed
        assert "reboot" in n["node_actions"], _why(demo, node)
        assert any("diagnostics failed" in a for a in n["actions"]), _why(demo, node)
    else:  # a row-remap failure needs no repair attempt
        assert n["node_actions"] == [], _why(demo, node)


def test_exactly_one_ticket_per_replaced_gpu_and_one_for_the_inspection(demo: dict[str, Any]) -> None:
    tickets = demo["tickets"]
    assert sorted(t["node"] for t in tickets) == sorted([*REPLACED, INSPECTED]), tickets
    assert len({t["key"] for t in tickets}) == len(tickets)
    for ticket in tickets:
        assert demo["nodes"][ticket["node"]]["tickets"] == [ticket["key"]]


def test_a_thermal_fault_is_quarantined_and_ticketed_for_inspection_after_approval(demo: dict[str, Any]) -> None:
    n = demo["nodes"][INSPECTED]
    assert n["outcome"] == "ticketed" and n["final_state"] == "ticketed", _why(demo, INSPECTED)
    assert n["approval"]["decision"] == "approve" and n["approval"]["kind"] == "inspect", _why(demo, INSPECTED)
    assert n["node_actions"] == []  # inspect: no automated repair on a thermal fault
    assert n["cordoned"] and not n["in_service"]
    (ticket,) = [t for t in demo["tickets"] if t["node"] == INSPECTED]
    assert "gpumedic-inspect" in ticket["labels"]


def test_the_sweep_put_each_verdict_on_its_node_as_a_condition(demo: dict[str, Any]) -> None:
    conditions = demo["node_conditions"]
    assert conditions["gpu-node-01"] == {"status": "False", "reason": "GpusHealthy"}
    assert conditions["gpu-node-05"] == {"status": "True", "reason": "ReplaceGpu"}
    assert conditions["gpu-node-07"] == {"status": "True", "reason": "ResetGpu"}
    assert conditions["gpu-node-09"] == conditions["gpu-node-10"] == {"status": "Unknown", "reason": "NotAssessed"}
    assert len(conditions) == 12


def test_the_pod_no_budget_lets_go_was_never_evicted(demo: dict[str, Any]) -> None:
    assert demo["pdb_violations"] == []
    assert all("ml/ledger-0" not in n["evicted"] for n in demo["nodes"].values())


@pytest.mark.parametrize("node", UNTOUCHED)
def test_nodes_without_a_remediation_are_untouched(demo: dict[str, Any], node: str) -> None:
    n = demo["nodes"][node]
    assert n["outcome"] == "untouched" and n["final_state"] == "in_service", _why(demo, node)
    assert n["in_service"] and not n["cordoned"] and n["taints"] == []
    assert n["actions"] == [] and n["node_actions"] == [] and n["evicted"] == [] and n["tickets"] == []
    assert n["flow_runs"] == [] and n["incident"] is None
    assert n["reasons"], "every node says why it was left alone"
    if n["verdict"] == "unknown":
        assert n["needs_human"] and "needs a human" in n["reasons"][0]


def test_no_pod_was_evicted_in_violation_of_its_budget(demo: dict[str, Any]) -> None:
    assert demo["pdb_violations"] == []
    assert demo["evictions"]["evicted"] > 0 and demo["evictions"]["refused_by_a_budget"] > 0


def test_the_disruption_budget_was_never_exceeded(demo: dict[str, Any]) -> None:
    budget = demo["budget"]
    assert budget["limit"] == 4
    assert 1 <= budget["max_out_at_once"] <= budget["limit"], budget
    assert all(point["out"] <= budget["limit"] for point in budget["timeline"]), budget["timeline"]


def test_the_forecast_foresees_the_degrading_gpu_and_orders_its_replacement_once(demo: dict[str, Any]) -> None:
    forecast = demo["forecast"]
    assert (forecast["degrading"]["node"], forecast["degrading"]["gpu"]) == FORESEEN
    assert forecast["run"]["gpus"] == 96
    alarms = {(a["node"], a["gpu"]): a["held"] for a in forecast["run"]["alarms"]}
    assert alarms.pop(FORESEEN, "no alarm") is None, forecast["run"]
    # Any other alarm is on a GPU the sweep sends to a human: held, as its remediation files the ticket.
    assert all(node in (*REPLACED, INSPECTED) and held for (node, _), held in alarms.items()), forecast["run"]
    assert forecast["run"]["requested"] == ["{}/{}".format(*FORESEEN)], forecast["run"]
    (order,) = forecast["orders"]
    assert (order["node"], order["gpu"]) == FORESEEN
    assert (order["state"], order["outcome"], order["issue_type"]) == ("Completed", "ticketed", "Order Replacement"), \
        order
    assert order["ticket"] not in {t["key"] for t in demo["tickets"]}  # an order, not a repair ticket
    node = demo["nodes"][FORESEEN[0]]
    assert node["action"] == "monitor" and node["in_service"] and node["flow_runs"] == [], _why(demo, FORESEEN[0])


def test_the_remediation_status_agrees_with_the_cluster_and_jira(demo: dict[str, Any]) -> None:
    status = demo["remediation_status"]
    assert {n["node"] for n in status["nodes"]} == set(demo["remediation"]["flagged"])  # --all: closed ones too
    out = {n["node"] for n in status["nodes"] if n["out_of_service"]}
    assert out == {*REPLACED, INSPECTED}
    assert status["out_of_service"] == len(out) <= status["budget_limit"] == demo["budget"]["limit"]
    for n in status["nodes"]:
        assert not n["stalled"], n
        if n["node"] in out:
            (ticket,) = demo["nodes"][n["node"]]["tickets"]
            work = "inspection" if n["node"] == INSPECTED else "replacement"
            assert n["needs"] == f"the {work}: {ticket}", n
    assert "out of service by gpumedic:" in demo["_stdout"]
    assert "read from: " in demo["_stdout"]  # which cluster the status was read from, as the command says


def test_the_served_resume_deployment_runs_and_finds_every_incident_settled(demo: dict[str, Any]) -> None:
    resume = demo["resume"]
    assert resume["state"] == "Completed" and not resume["dry_run"], resume
    assert resume["started"] == [] and resume["left"] == [], resume


def test_the_served_ticket_deployment_runs_and_finds_every_ticket_filed(demo: dict[str, Any]) -> None:
    outbox = demo["ticket_outbox"]
    assert outbox["state"] == "Completed" and not outbox["dry_run"], outbox
    # Jira was up throughout: the remediation runs filed their own tickets, so nothing waits.
    assert (outbox["filed"], outbox["waiting"], outbox["refused"]) == ([], 0, 0), outbox


def test_the_demo_prints_its_progress_and_stays_reasonably_fast(demo: dict[str, Any]) -> None:
    stdout = demo["_stdout"]
    for text in ("gpumedic.node.unhealthy", "remediation outcome:", "disruption budget", "circuit breaker",
                 "running the daily failure forecast", "gpumedic.gpu.failure_predicted", "Order Replacement ticket"):
        assert text in stdout
    assert demo["_wall_s"] < DEMO_TIMEOUT_S
