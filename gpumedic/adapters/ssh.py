"""Run commands on GPU nodes over SSH (paramiko), safely and with hard deadlines.

- Strict host-key checking by default: keys come from a known_hosts file and an unknown
  or changed key is refused (paramiko's RejectPolicy), never silently accepted.
- TCP_NODELAY on the socket: paramiko leaves Nagle on, which costs ~40 ms per exec.
- Every command has a wall-clock deadline enforced here, not only a socket timeout, so a
  node that keeps a channel open without finishing is a failed step, not a hung sweep.
- One connection per node, reused for every command of a sweep or a remediation step.
- Node names and hosts are validated; commands are built from argument lists and quoted.
"""

from __future__ import annotations

import re
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import paramiko

from gpumedic.adapters.errors import PermanentError, TransientError

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9a-fA-F:.]+\]?)$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def validate_node_name(name: str) -> str:
    if not _NAME.match(name):
        raise PermanentError(f"invalid node name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


@dataclass(frozen=True, slots=True)
class SshEndpoint:
    host: str
    port: int = 22
    user: str = "root"

    def __post_init__(self) -> None:
        if not _HOST.match(self.host):
            raise PermanentError(f"invalid host {self.host!r}")
        if not 0 < self.port < 65536:
            raise PermanentError(f"invalid port {self.port}")
        if not _USER.match(self.user):
            raise PermanentError(f"invalid SSH user {self.user!r}")


@dataclass(frozen=True, slots=True)
class SshSettings:
    key_file: Path
    known_hosts: Path
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0
    strict_host_keys: bool = True
    jump: SshEndpoint | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str
    stdout: str
    exit_status: int

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


_known_hosts_lock = threading.Lock()
_known_hosts_cache: dict[Path, tuple[tuple[int, int], paramiko.HostKeys]] = {}


def known_hosts(path: Path) -> paramiko.HostKeys:
    """The parsed known_hosts file, read again only when it changes (a sweep opens one per node)."""
    try:
        stat = path.stat()
    except FileNotFoundError as err:
        raise PermanentError(f"known_hosts file {path} does not exist") from err
    version = (stat.st_mtime_ns, stat.st_size)
    with _known_hosts_lock:
        cached = _known_hosts_cache.get(path)
        if cached is None or cached[0] != version:
            cached = (version, paramiko.HostKeys(str(path)))
            _known_hosts_cache[path] = cached
        return cached[1]


def quote_command(argv: Sequence[str]) -> str:
    """One shell-quoted command line from an argument list."""
    return shlex.join(argv)


class SshConnection:
    """An authenticated SSH connection to one node; use as a context manager."""

    def __init__(self, node: str, endpoint: SshEndpoint, settings: SshSettings) -> None:
        self.node = validate_node_name(node)
        self.endpoint = endpoint
        self.settings = settings
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_client(self, endpoint: SshEndpoint) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.settings.strict_host_keys:
            # Only this host's keys: parsing the whole file for every connection costs O(fleet) each.
            name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
            for keytype, key in (known_hosts(self.settings.known_hosts).lookup(name) or {}).items():
                client.get_host_keys().add(name, keytype, key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            # Opt-in only (fleet file `strict_host_keys: false`), for first contact with new nodes.
            client.set_missing_host_key_policy(paramiko.WarningPolicy())  # noqa: S507 - explicit opt-in
        return client

    def _socket(self, endpoint: SshEndpoint) -> socket.socket | paramiko.Channel:
        timeout = self.settings.connect_timeout_s
        if self.settings.jump is not None:
            self._jump = self._connect_client(self.settings.jump, self._tcp(self.settings.jump, timeout))
            transport = self._jump.get_transport()
            assert transport is not None
            try:
                return transport.open_channel(
                    "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0), timeout=timeout
                )
            except (paramiko.SSHException, OSError) as err:
                raise TransientError(f"{self.node}: jump host could not reach {endpoint.host}: {err}") from err
        return self._tcp(endpoint, timeout)

    def _tcp(self, endpoint: SshEndpoint, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except TimeoutError as err:
            raise TransientError(f"{self.node}: connection to {endpoint.host}:{endpoint.port} timed out") from err
        except OSError as err:
            raise TransientError(f"{self.node}: cannot connect to {endpoint.host}:{endpoint.port}: {err}") from err
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect_client(self, endpoint: SshEndpoint, sock: socket.socket | paramiko.Channel) -> paramiko.SSHClient:
        client = self._new_client(endpoint)
        try:
            client.connect(
                endpoint.host,
                port=endpoint.port,
                username=endpoint.user,
                key_filename=str(self.settings.key_file),
                sock=sock,
                timeout=self.settings.connect_timeout_s,
                banner_timeout=self.settings.connect_timeout_s,
                auth_timeout=self.settings.connect_timeout_s,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException as err:
            client.close()
            raise PermanentError(
                f"{self.node}: host key for {endpoint.host}:{endpoint.port} does not match known_hosts "
                "(possible man-in-the-middle, or the node was reinstalled): refusing to connect"
            ) from err
        except paramiko.SSHException as err:
            client.close()
            if "not found in known_hosts" in str(err):
                raise PermanentError(
                    f"{self.node}: host {endpoint.host}:{endpoint.port} is not in {self.settings.known_hosts} "
                    "(strict host-key checking)"
                ) from err
            if isinstance(err, paramiko.AuthenticationException):
                raise PermanentError(f"{self.node}: SSH authentication failed as {endpoint.user}") from err
            raise TransientError(f"{self.node}: SSH handshake failed: {err}") from err
        except (OSError, EOFError) as err:
            client.close()
            raise TransientError(f"{self.node}: SSH connection dropped during handshake: {err}") from err
        return client

    def connect(self) -> None:
        if self._client is not None:
            return
        self._client = self._connect_client(self.endpoint, self._socket(self.endpoint))

    def close(self) -> None:
        for client in (self._client, self._jump):
            if client is not None:
                client.close()
        self._client = self._jump = None

    def run(self, command: str | Sequence[str], *, timeout_s: float | None = None) -> CommandResult:
        """Run one command; stdout and stderr come back merged, as an operator would see them."""
        line = command if isinstance(command, str) else quote_command(command)
        limit = timeout_s or self.settings.command_timeout_s
        deadline = time.monotonic() + limit
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self.close()
            raise TransientError(f"{self.node}: SSH connection is closed")
        try:
            channel = transport.open_session(timeout=self.settings.connect_timeout_s)
            channel.set_combine_stderr(True)
            channel.settimeout(0.5)
            channel.exec_command(line)
            chunks: list[bytes] = []
            while True:
                if time.monotonic() > deadline:
                    channel.close()
                    raise TransientError(
                        f"{self.node}: command did not finish within {limit:g}s: {line[:80]}"
                    )
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                chunks.append(data)
            while not channel.exit_status_ready():
                if time.monotonic() > deadline:
                    channel.close()
                    raise TransientError(f"{self.node}: no exit status before the deadline: {line[:80]}")
                time.sleep(0.005)
            status = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as err:
            self.close()
            raise TransientError(f"{self.node}: SSH command failed: {err}") from err
        # -1: the server closed the channel without an exit status (the node went down).
        return CommandResult(line, b"".join(chunks).decode("utf-8", errors="replace"), status)
