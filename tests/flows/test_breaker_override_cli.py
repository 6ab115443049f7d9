"""`gpumedic remediation breaker-override`: a fleet-wide override, kept as a Prefect Variable on the server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpumedic.cli import main
from gpumedic.domain.budget import BreakerOverride, FleetView, RemediationPolicy, UnhealthyObservation
from gpumedic.remediation_status import fleet_status, render, to_json
from tests.flows.events import event_payloads
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def prefect_api(monkeypatch: pytest.MonkeyPatch) -> str:
    """The harness's server, named in the environment as an operator's shell names it."""
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value())
    monkeypatch.setenv("PREFECT_API_URL", url)
    return url


def test_an_override_is_set_shown_read_by_remediation_and_cleared(
    prefect_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpumedic.adapters.breaker_override import VARIABLE, read_breaker_override

    assert main(["remediation", "breaker-override"]) == 0
    assert capsys.readouterr().out.strip() == "no fleet-wide breaker override"
    before = datetime.now(UTC)
    assert main(["remediation", "breaker-override", "--hours", "2", "--reason", "driver rollout", "--by", "alice"]) == 0
    assert "breaker overridden fleet-wide by alice until" in capsys.readouterr().out
    override = read_breaker_override()
    assert override is not None and (override.by, override.reason) == ("alice", "driver rollout")
    assert timedelta(hours=2) <= override.until - before < timedelta(hours=2, minutes=1)
    assert main(["remediation", "breaker-override"]) == 0
    assert capsys.readouterr().out.startswith("breaker overridden by alice until ")

    from prefect.variables import Variable

    assert Variable.get(VARIABLE)["reason"] == "driver rollout"  # what the Prefect UI's Variables page shows
    # Who changed the fleet's breaker stays on record in the event feed.
    assert eventually(lambda: event_payloads("gpumedic.breaker.overridden") == [override.to_json()], timeout_s=120)
    assert main(["remediation", "breaker-override", "--clear", "--by", "bob"]) == 0
    assert eventually(lambda: event_payloads("gpumedic.breaker.override-cleared") == [{"by": "bob"}], timeout_s=120)
    assert read_breaker_override() is None
    capsys.readouterr()
    assert main(["remediation", "breaker-override", "--clear"]) == 0
    assert capsys.readouterr().out.strip() == "there was no breaker override"


def test_an_override_that_is_unbounded_unexplained_or_unreachable_is_refused(
    prefect_api: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpumedic.adapters.breaker_override import read_breaker_override

    assert main(["remediation", "breaker-override", "--hours", "30", "--reason", "a long weekend"]) == 2
    assert "at most 1d" in capsys.readouterr().err
    assert main(["remediation", "breaker-override", "--hours", "1"]) == 2
    assert "--reason is required" in capsys.readouterr().err
    assert read_breaker_override() is None
    monkeypatch.delenv("PREFECT_API_URL")
    assert main(["remediation", "breaker-override", "--hours", "1", "--reason", "x"]) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err


def test_a_value_that_is_not_an_override_is_no_override(prefect_api: str) -> None:
    from prefect.variables import Variable

    from gpumedic.adapters.breaker_override import VARIABLE, read_breaker_override

    Variable.set(VARIABLE, {"until": "tomorrow"}, overwrite=True)  # edited by hand in the UI
    try:
        assert read_breaker_override() is None  # the breaker decides as if none were set: the safe side
    finally:
        Variable.unset(VARIABLE)


def test_the_status_says_who_overrode_the_breaker_why_and_until_when() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    override = BreakerOverride(now + timedelta(minutes=30), "alice", "driver rollout on rack 7", now)
    storm = tuple(UnhealthyObservation(f"n{i}", now) for i in range(4))
    status = fleet_status(FleetView(gpu_nodes=10, unhealthy=storm, breaker_override=override),
                          RemediationPolicy(), now)
    lines = render(status)
    assert any(line.startswith("circuit breaker closed: 4 of 10 nodes (40%) turned unhealthy") and
               line.endswith("overridden by alice until 2026-11-22T12:30:00+00:00: driver rollout on rack 7")
               for line in lines)
    assert ("fleet-wide breaker override by alice until 2026-11-22 12:30 UTC: driver rollout on rack 7 "
            "(gpumedic remediation breaker-override --clear ends it)") in lines
    assert to_json(status)["breaker"]["override"]["by"] == "alice"
    expired = fleet_status(FleetView(gpu_nodes=10, unhealthy=storm, breaker_override=override),
                           RemediationPolicy(), now + timedelta(minutes=30))
    assert expired.breaker.open and expired.breaker_override is None  # the storm goes on, the override is over
