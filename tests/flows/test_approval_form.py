"""The approval form an operator reads in the Prefect UI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flows.remediation import evidence_markdown
from gpumedic.adapters.store import StoredForecast
from gpumedic.domain.budget import RemediationPolicy
from gpumedic.domain.remediation import ApprovalKind, RequestApproval, open_incident
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _record():  # type: ignore[no-untyped-def]
    sick = NodeAssessment("n7", Verdict.FAILED, Action.REPLACE, (),
                          (GpuAssessment(2, Verdict.FAILED, Action.REPLACE, ("GPU 2: row remapping failed",)),))
    return open_incident(sick, incident_id="inc-1", now=NOW, policy=RemediationPolicy())


def test_the_form_shows_evidence_and_the_forecast_risk_of_the_nodes_gpus() -> None:
    step = RequestApproval(key="approval:replace", kind=ApprovalKind.REPLACE,
                           evidence=("GPU 2: row remapping failed",), timeout=timedelta(hours=24))
    window = RiskWindow(14.0, 24.0)
    forecast = [StoredForecast("n7", 2, 0.83, 40.0, True, ("4 rows remapped within 7 days",), NOW, window),
                StoredForecast("n7", 0, 0.02, None, False, (), NOW, window)]
    text = evidence_markdown(_record(), step, forecast)
    assert "## Failure forecast (risk of failure within 15 days of the forecast)" in text
    assert "replace its GPU hardware" in text
    assert "GPU 2: row remapping failed" in text
    assert "- GPU 2: 83% (4 rows remapped within 7 days)" in text
    assert "- GPU 0: 2%" in text
    assert "Resume this run with **approve**" in text


def test_the_form_does_not_guess_the_horizon_of_a_forecast_stored_without_one() -> None:
    step = RequestApproval(key="approval:replace", kind=ApprovalKind.REPLACE, evidence=(), timeout=timedelta(hours=1))
    text = evidence_markdown(_record(), step, [StoredForecast("n7", 2, 0.83, 40.0, True, (), NOW, UNRECORDED)])
    assert "within the forecast's horizon (not recorded" in text
    assert "7 days" not in text


def test_the_form_says_when_there_is_no_forecast_yet() -> None:
    step = RequestApproval(key="approval:replace", kind=ApprovalKind.REPLACE, evidence=(), timeout=timedelta(hours=1))
    assert "no forecast for this node yet" in evidence_markdown(_record(), step)
