"""The tests' throwaway PostgreSQL server cleans up after test runs that were killed."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.postgres import OWNER_FILE, ROOT_PREFIX, PostgresServer, reap_orphans


def _answers(url: str) -> bool:
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT 1")).scalar() == 1)
    except OperationalError:
        return False
    finally:
        engine.dispose()


def test_the_server_of_a_killed_test_run_is_stopped_and_removed(postgres: PostgresServer) -> None:
    orphan = PostgresServer().start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (orphan.root / OWNER_FILE).write_text(str(dead.pid))  # as if the run that started it was killed
        assert _answers(orphan.url())

        reaped = reap_orphans()

        assert reaped == [orphan.root]
        assert not orphan.root.exists()
        assert not _answers(orphan.url())
        # The server of a run that is still going (this one's) is left alone.
        assert postgres.root.exists() and _answers(postgres.url())
    finally:
        if orphan.root.exists():
            orphan.stop()


def test_a_folder_without_an_owner_is_not_touched() -> None:
    # A server still being set up has no owner file yet; so has anything else that happens to share the prefix.
    unowned = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    try:
        assert unowned not in reap_orphans()
        assert unowned.exists()
    finally:
        unowned.rmdir()
