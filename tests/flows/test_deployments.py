"""prefect.yaml and the serve entry point declare what the product promises."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def _deployments() -> list[dict]:  # type: ignore[type-arg]
    return list(yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"])


def test_every_entrypoint_is_a_flow_that_takes_the_declared_parameters() -> None:
    for deployment in _deployments():
        module, _, name = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        accepted = set(inspect.signature(flow.fn).parameters)
        declared = set(deployment.get("parameters", {}))
        for trigger in deployment.get("triggers", []):
            declared |= set(trigger.get("parameters", {}))
        assert declared <= accepted, (deployment["name"], declared - accepted)


def test_the_run_form_explains_every_parameter_of_every_flow() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.remediation import request_replacement_approval

    flows = [request_replacement_approval]
    for deployment in _deployments():
        module, _, name = deployment["entrypoint"].partition(":")
        flows.append(getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name))
    for flow in flows:
        assert flow.description and "Args:" not in flow.description, flow.name
        schema = parameter_schema(flow.fn)
        assert set(schema.properties) == set(inspect.signature(flow.fn).parameters)
        undescribed = [p for p, field in schema.properties.items() if not field.get("description")]
        assert not undescribed, (flow.name, undescribed)


def test_nightly_full_sweep_at_two_with_a_timezone_and_a_quarter_hourly_quick_sweep() -> None:
    by_name = {d["name"]: d for d in _deployments()}
    nightly = by_name["nightly-full-sweep"]["schedules"][0]
    assert nightly["cron"] == "0 2 * * *"
    assert nightly["timezone"]
    assert by_name["nightly-full-sweep"]["parameters"]["depth"] == "full"
    assert by_name["quick-sweep"]["schedules"][0]["interval"] == 900
    assert by_name["quick-sweep"]["parameters"]["depth"] == "quick"


def test_remediation_is_triggered_by_the_sweeps_unhealthy_event() -> None:
    from tasks.sweep import UNHEALTHY_EVENT

    trigger = {d["name"]: d for d in _deployments()}["remediate-node"]["triggers"][0]
    assert trigger["expect"] == [UNHEALTHY_EVENT]
    assert trigger["parameters"]["node"] == "{{ event.payload.node }}"


def test_stalled_and_waiting_remediations_are_resumed_every_quarter_hour_in_both_places() -> None:
    from deployments.serve import build_deployments
    from flows.resume import REMEDIATION_FLOW

    declared = {d["name"]: d for d in _deployments()}
    resume = declared["resume-remediations"]
    assert resume["entrypoint"] == "flows/resume.py:resume_remediations"
    assert resume["schedules"][0]["interval"] == 900
    # Neither names a kubeconfig: each run takes the fleet file's cluster, the one its sweeps read and write.
    assert "kubeconfig" not in resume["parameters"] and "kubeconfig" not in declared["remediate-node"]["parameters"]
    built = {d.name: d for d in build_deployments("/tmp/fleet.yaml")}
    assert built["resume-remediations"].schedules[0].schedule.interval.total_seconds() == 900
    assert not any("kubeconfig" in built[name].parameters for name in ("resume-remediations", "remediate-node"))
    # It starts runs of the deployment the sweeps' events start.
    assert built["remediate-node"].flow_name == REMEDIATION_FLOW


def test_serve_builds_the_same_schedules_without_a_work_pool() -> None:
    from deployments.serve import build_deployments

    built = {d.name: d for d in build_deployments("/tmp/fleet.yaml", timezone="Europe/Paris")}
    nightly = built["nightly-full-sweep"].schedules[0].schedule
    assert nightly.cron == "0 2 * * *"
    assert nightly.timezone == "Europe/Paris"
    assert built["quick-sweep"].schedules[0].schedule.interval.total_seconds() == 900
    assert "remediate-node" in built
    assert built["remediate-node"].triggers


def test_the_daily_forecast_follows_the_nightly_sweep_and_alarms_trigger_maintenance() -> None:
    from deployments.serve import build_deployments
    from tasks.forecast import FAILURE_PREDICTED_EVENT

    by_name = {d["name"]: d for d in _deployments()}
    assert by_name["daily-failure-forecast"]["schedules"][0]["cron"] == "0 3 * * *"
    assert by_name["proactive-maintenance"]["triggers"][0]["expect"] == [FAILURE_PREDICTED_EVENT]
    built = {d.name: d for d in build_deployments("/tmp/fleet.yaml")}
    assert built["proactive-maintenance"].triggers
    assert built["daily-failure-forecast"].schedules[0].schedule.cron == "0 3 * * *"


def test_the_weekly_refit_runs_after_sundays_forecast_in_both_places() -> None:
    from deployments.serve import build_deployments

    by_name = {d["name"]: d for d in _deployments()}
    assert by_name["weekly-forecast-refit"]["schedules"][0]["cron"] == "0 4 * * 0"
    assert by_name["weekly-forecast-refit"]["entrypoint"] == "flows/refit.py:refit_forecast_model"
    built = {d.name: d for d in build_deployments("/tmp/fleet.yaml")}
    assert built["weekly-forecast-refit"].schedules[0].schedule.cron == "0 4 * * 0"


def test_tickets_jira_was_down_for_are_filed_every_quarter_hour_in_both_places() -> None:
    from deployments.serve import build_deployments

    declared = {d["name"]: d for d in _deployments()}["file-pending-tickets"]
    assert declared["entrypoint"] == "flows/tickets.py:file_pending_tickets"
    assert declared["schedules"][0]["interval"] == 900
    built = {d.name: d for d in build_deployments("/tmp/fleet.yaml")}["file-pending-tickets"]
    assert built.schedules[0].schedule.interval.total_seconds() == 900
    assert built.parameters == {"fleet_file": "/tmp/fleet.yaml"}


def test_serve_refuses_a_fleet_file_every_run_would_fail_on_before_serving_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpumedic.cli import main

    missing = tmp_path / "typo.yaml"
    assert main(["serve", "--fleet", str(missing)]) == 2
    assert capsys.readouterr().err.endswith(f"{missing}: no such fleet file\n")
    assert main(["serve", "--fleet", str(REPO / "examples" / "simulated-fleet.yaml")]) == 2
    assert "describes a fleet to start, not one in service" in capsys.readouterr().err
