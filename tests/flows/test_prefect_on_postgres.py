"""The flows against a Prefect server whose database is PostgreSQL, as a fleet at scale runs it.

The other flow tests use Prefect's SQLite test harness. What depends on the server's database is
tested here on a real PostgreSQL: the global concurrency limit behind the disruption budget's lock
(one cordon decision at a time), and a flow's runs, task runs, artifacts and failed state.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gpumedic.prefect_server import start_local_server
from gpumedic.sim.jira_api import JiraEmulator
from tests.postgres import PostgresServer


@dataclass(frozen=True)
class PrefectOnPostgres:
    api_url: str
    database: str  # the server's database, for reading it directly


@pytest.fixture(scope="module")
def prefect_on_postgres(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectOnPostgres]:
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    database = postgres.new_database()
    server = start_local_server(tmp_path_factory.mktemp("prefect-pg"), timeout_s=180,
                                database_url=database.replace("postgresql+psycopg://", "postgresql+asyncpg://"))
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield PrefectOnPostgres(server.api_url, database)
            APILogWorker.drain_all(timeout=5)  # the runs' logs reach this server before it stops
    finally:
        server.stop()


def _rows(database: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def test_the_server_keeps_its_state_in_postgresql(prefect_on_postgres: PrefectOnPostgres) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        assert str(client.api_url).startswith(prefect_on_postgres.api_url)
        assert client.hello().status_code == 200
    tables = {name for (name,) in _rows(prefect_on_postgres.database, "SELECT tablename FROM pg_tables")}
    assert {"flow_run", "task_run", "artifact", "concurrency_limit_v2", "alembic_version"} <= tables


def test_the_budget_lock_admits_one_decision_at_a_time(prefect_on_postgres: PrefectOnPostgres) -> None:
    from prefect import get_client

    from tasks.remediation import BUDGET_LOCK, budget_lock

    holders, peak, done = 0, 0, 0
    count = threading.Lock()
    errors: list[BaseException] = []

    def decide() -> None:
        nonlocal holders, peak, done
        try:
            for _ in range(3):
                with budget_lock(timeout_s=120):
                    with count:
                        holders += 1
                        peak = max(peak, holders)
                    time.sleep(0.05)  # read the budget, write the record
                    with count:
                        holders -= 1
                        done += 1
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    # Each thread runs in a copy of this context: Prefect's settings (the server's URL) live in context variables.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(decide,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert errors == [] and done == 18
    assert peak == 1
    with get_client(sync_client=True) as client:
        lock = client.read_global_concurrency_limit_by_name(BUDGET_LOCK)
    assert lock.limit == 1 and lock.active and lock.active_slots == 0


def test_a_flow_fails_then_completes_and_its_artifact_is_kept(
    prefect_on_postgres: PrefectOnPostgres, tmp_path: Path, jira: JiraEmulator
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.tickets import file_pending_tickets
    from tests.flows.test_tickets_flow import _fleet, _raise_while_jira_is_down

    fleet = _fleet(tmp_path, jira)
    _raise_while_jira_is_down(fleet, jira)
    jira.outage("503")
    assert file_pending_tickets(fleet_file=fleet, return_state=True).is_failed()
    jira.outage(None)
    assert len(file_pending_tickets(fleet_file=fleet)["filed"]) == 1 and len(jira.issues()) == 1
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ticket-outbox"])))
    assert sorted(r.state.name for r in runs if r.state) == ["Completed", "Failed"]
    assert len(artifacts) == 2
    states = _rows(prefect_on_postgres.database, "SELECT state_name FROM flow_run ORDER BY state_name")
    assert states == [("Completed",), ("Failed",)]
