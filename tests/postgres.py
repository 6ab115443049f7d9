"""A throwaway PostgreSQL server for the tests: its own data directory, loopback only, stopped at the end.

The telemetry store and the ticket outbox run on PostgreSQL in production; these tests run them on a
real one, not on SQLite alone. PostgreSQL refuses to run as root, so under root the server runs as
the `postgres` account Debian's package creates. Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

SERVER_USER = "postgres"  # the account Debian's postgresql package creates
DB_USER = "gpumedic"


class PostgresMissing(RuntimeError):
    pass


def server_binaries() -> Path:
    """The directory of initdb and pg_ctl (Debian keeps them out of PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not versions:
        raise PostgresMissing("PostgreSQL's server is required (apt-get install postgresql; ./dev test installs it)")
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROOT_PREFIX = "gpumedic-pg-"
OWNER_FILE = "owner.pid"  # the pid of the test run that started the server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresServer:
    def __init__(self, root: Path | None = None) -> None:
        """A server in a new folder, or (given `root`) the one an earlier test run left there."""
        self.bin = server_binaries()
        self.as_root = os.geteuid() == 0
        if root is None:
            reap_orphans()
            # Not under pytest's tmp dirs: those are private to root, and the server may run as another user.
            root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
            (root / OWNER_FILE).write_text(str(os.getpid()))
            if self.as_root:
                account = pwd.getpwnam(SERVER_USER)
                os.chown(root, account.pw_uid, account.pw_gid)
        self.root = root
        self.data = root / "data"
        self.port = _free_port()

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
                except RuntimeError:
                    # A server that died without removing its pid file (killed, or gone with a machine
                    # restored from a snapshot) makes pg_ctl fail with "No such process": it is stopped.
                    if self._postmaster_alive():
                        raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_alive(self) -> bool:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return _alive(pid)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


def reap_orphans() -> list[Path]:
    """Stop the servers of test runs killed before their teardown; returns their folders.

    A pytest killed mid-run never stops its server, which then holds a port and memory until the
    machine restarts. Only servers whose owning process is gone are touched.
    """
    reaped = []
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if _alive(owner):
            continue
        PostgresServer(root).stop()
        reaped.append(root)
    return reaped
