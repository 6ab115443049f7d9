"""Fixtures shared by the flow tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpumedic.sim.jira_api import JiraEmulator


@pytest.fixture
def jira(monkeypatch: pytest.MonkeyPatch) -> Iterator[JiraEmulator]:
    """A Jira emulator on loopback whose password is the token a fleet file's `fleet.jira` reads by default."""
    with JiraEmulator() as emulator:
        monkeypatch.setenv("GPUMEDIC_JIRA_TOKEN", emulator.password)
        yield emulator
