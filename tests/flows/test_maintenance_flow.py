"""Proactive maintenance: forecast alarm -> approval -> one "Order Replacement" ticket per GPU (real jira client)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.forecast import CondemnedGpu
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry
from gpumedic.domain.verdict import Action
from gpumedic.sim.jira_api import JiraEmulator
from tests.flows.test_forecast_flow import _degrading_history

UUID3 = "GPU-3a7e0000-0000-4000-8000-000000000003"


def _fleet(tmp_path: Path, jira: JiraEmulator) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TelemetryStore(url)
    store.append_samples(_degrading_history(datetime.now(UTC)))
    gpus = tuple(GpuTelemetry(index=i, uuid=UUID3 if i == 3 else f"GPU-{i}", serial=f"13200{i}") for i in range(4))
    store.record([NodeTelemetry(node="n1", collected_at=datetime.now(UTC), source="exporter", gpus=gpus)])
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"fleet:\n  source: exporter\n  nodes: [{{name: n1}}]\n  store_url: {url}\n"
        f"  jira: {{url: '{jira.url}', user: {jira.username}, project: GPU}}\n"
    )
    return str(path)


@pytest.mark.usefixtures("prefect_harness")
def test_an_approved_alarm_orders_one_replacement_for_that_gpu(tmp_path: Path, jira: JiraEmulator) -> None:
    from flows.forecast import failure_forecast
    from flows.maintenance import proactive_maintenance

    fleet = _fleet(tmp_path, jira)
    assert failure_forecast(fleet_file=fleet, emit_events=False)["alarms"]
    first = proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, auto_approve=True)
    again = proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, auto_approve=True)
    assert first["outcome"] == again["outcome"] == "ticketed"
    assert first["ticket"] == again["ticket"]
    issues = jira.issues()
    assert len(issues) == 1
    fields = issues[0]["fields"]
    assert fields["issuetype"]["name"] == "Order Replacement"
    assert "gpumedic-gpu-" + UUID3.lower() in fields["labels"]
    assert "n1" in fields["summary"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_gpu_below_the_alarm_threshold_orders_nothing(tmp_path: Path, jira: JiraEmulator) -> None:
    from flows.forecast import failure_forecast
    from flows.maintenance import proactive_maintenance

    fleet = _fleet(tmp_path, jira)
    failure_forecast(fleet_file=fleet, emit_events=False)
    result = proactive_maintenance(node="n1", gpu=0, fleet_file=fleet, auto_approve=True)
    assert result["outcome"] == "no longer at risk"
    assert jira.issues() == []
    # A GPU the latest forecast did not score (silent since, or gone from the fleet) is not ordered either.
    gone = proactive_maintenance(node="n1", gpu=7, fleet_file=fleet, auto_approve=True)
    assert gone["outcome"] == "not in the latest forecast"
    assert jira.issues() == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_gpu_the_latest_sweep_sends_to_a_human_is_left_to_remediation(tmp_path: Path, jira: JiraEmulator) -> None:
    from flows.forecast import failure_forecast
    from flows.maintenance import proactive_maintenance

    fleet = _fleet(tmp_path, jira)
    store = TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.record_sweep("sweep-a", datetime.now(UTC), {"summary": "1 failed", "condemned": [
        CondemnedGpu("n1", 3, Action.REPLACE, "sweep-a").to_json()]})
    assert failure_forecast(fleet_file=fleet, emit_events=False)["alarms"][0]["held"]
    # Started by hand, or by an event raised before the sweep condemned the GPU: no second approval, no order.
    result = proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, auto_approve=True)
    assert result["outcome"] == "left to remediation" and result["ticket"] is None
    assert jira.issues() == []


@pytest.mark.usefixtures("prefect_harness")
def test_the_order_states_the_risk_over_the_horizon_the_forecast_was_run_with(tmp_path: Path, jira: JiraEmulator
                                                                               ) -> None:
    from flows.forecast import failure_forecast
    from flows.maintenance import proactive_maintenance

    fleet = _fleet(tmp_path, jira)
    week = {a["gpu"]: a["risk"] for a in failure_forecast(fleet_file=fleet, emit_events=False)["alarms"]}
    fortnight = {a["gpu"]: a["risk"] for a in failure_forecast(fleet_file=fleet, horizon_days=14,
                                                                 emit_events=False)["alarms"]}
    assert fortnight[3] > week[3]  # a longer horizon is a larger probability: the text must say which
    assert proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, auto_approve=True)["outcome"] == "ticketed"
    fields = jira.issues()[0]["fields"]
    assert fields["summary"].endswith(f"{fortnight[3]:.0%} failure risk within 15 days of the forecast")
    assert f"**{fortnight[3]:.0%}** probability of failure within 15 days of the forecast" in fields["description"]
    assert "7 days" not in fields["summary"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_dry_run_says_what_it_would_order_and_asks_and_files_nothing(tmp_path: Path, jira: JiraEmulator) -> None:
    from flows.forecast import failure_forecast
    from flows.maintenance import proactive_maintenance

    fleet = _fleet(tmp_path, jira)
    failure_forecast(fleet_file=fleet, emit_events=False)
    # Not auto-approved: a dry run that asked would wait for a human here.
    result = proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, dry_run=True, approval_timeout_s=5)
    assert result["outcome"] == "dry run" and result["ticket"] is None
    assert result["would_file"].startswith(f"Order replacement GPU for n1 GPU 3 ({UUID3})")
    assert jira.issues() == []
    real = proactive_maintenance(node="n1", gpu=3, fleet_file=fleet, auto_approve=True)
    assert jira.issues()[0]["fields"]["summary"] == result["would_file"]
    assert real["outcome"] == "ticketed"
