"""Shared fixtures: simulated fleets over real sshd, a real PostgreSQL server, and the Prefect test harness."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet
from tests.postgres import PostgresMissing, PostgresServer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FLEET = REPO / "examples" / "simulated-fleet.yaml"

# What the reference fleet must yield, node by node.
EXPECTED_EXAMPLE = {
    "gpu-node-00": ("healthy", "none"),
    "gpu-node-01": ("healthy", "none"),
    "gpu-node-02": ("healthy", "none"),
    "gpu-node-03": ("failed", "reboot"),
    "gpu-node-04": ("watch", "restart_app"),
    "gpu-node-05": ("failed", "replace"),
    "gpu-node-06": ("degraded", "inspect"),
    "gpu-node-07": ("failed", "reset_gpu"),
    "gpu-node-08": ("degraded", "reset_gpu"),
    "gpu-node-09": ("unknown", "none"),
    "gpu-node-10": ("unknown", "none"),
    "gpu-node-11": ("failed", "reboot"),
}


def require_sshd() -> None:
    if not (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()):
        pytest.fail("sshd is required (apt-get install openssh-server; ./dev test installs it)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresMissing as err:
        pytest.fail(str(err))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The telemetry store's database: a SQLite file (the default), and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'telemetry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


def example_spec() -> FleetSimulation:
    import yaml

    return FleetSimulation.model_validate(yaml.safe_load(EXAMPLE_FLEET.read_text())["simulate"])


@pytest.fixture(scope="session")
def example_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedFleet]:
    """The issue's reference fleet, started once per session; tests must not change its state."""
    require_sshd()
    fleet = SimulatedFleet(tmp_path_factory.mktemp("example-fleet"))
    fleet.create(example_spec())
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[SimulatedFleet]:
    """A private 2-node fleet a test may change."""
    require_sshd()
    fleet = SimulatedFleet(tmp_path / "fleet")
    fleet.create(FleetSimulation(nodes=2, gpus_per_node=4, seed=1))
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import os

    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(storage)
    with prefect_test_harness(server_startup_timeout=120):
        yield
