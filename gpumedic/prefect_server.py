"""Run a local Prefect server (SQLite, or PostgreSQL) in the background, for the demo and the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no outside network; it also caused "database is locked"
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@dataclass
class LocalPrefectServer:
    home: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_local_server(
    home: Path, port: int | None = None, timeout_s: float = 90.0, database_url: str | None = None
) -> LocalPrefectServer:
    """`database_url`: the server's database (`postgresql+asyncpg://...` at scale); default SQLite under `home`."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(home / "server.log", "ab")  # noqa: SIM115 - owned by the server process
    env = {**os.environ, **prefect_env(home)}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    server = LocalPrefectServer(home, port, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited ({process.returncode}); see {home / 'server.log'}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the Prefect server did not become healthy in {timeout_s:.0f}s; see {home / 'server.log'}")
