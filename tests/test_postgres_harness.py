"""The tests' throwaway PostgreSQL server cleans up after test runs that were killed."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
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


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_the_server_of_a_killed_test_run_is_stopped_and_removed(postgres: PostgresServer) -> None:
    orphan = PostgresServer().start()
    try:
        (orphan.root / OWNER_FILE).write_text(str(_dead_pid()))  # as if the run that started it was killed
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


def test_the_folder_of_a_killed_run_whose_server_died_too_is_removed(postgres: PostgresServer) -> None:
    """A server killed with its run leaves postmaster.pid behind; pg_ctl then finds no such process."""
    orphan = PostgresServer().start()
    try:
        postmaster = int((orphan.data / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(postmaster, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while orphan._postmaster_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # the postmaster is the server user's child of init: reaped for us
        assert (orphan.data / "postmaster.pid").exists() and not orphan._postmaster_alive()
        (orphan.root / OWNER_FILE).write_text(str(_dead_pid()))

        assert reap_orphans() == [orphan.root]
        assert not orphan.root.exists()
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
