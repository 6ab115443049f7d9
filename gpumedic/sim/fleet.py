"""A simulated GPU fleet: one real OpenSSH sshd per node, plus dcgm-exporter endpoints.

Each node is an `sshd` on its own loopback port with its own ed25519 host key; its
ForceCommand is `gpumedic.sim.node_agent`, which answers nvidia-smi, journalctl -k and
dcgmi from the node's state file. The fleet writes a known_hosts file and an inventory
(a fleet file for real-fleet mode), so the sweep connects exactly as it would to real
machines: key auth, strict host-key checking, no special cases.
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ConfigDict, Field

from gpumedic.sim import node_render, node_state

LOOPBACK = "127.0.0.1"


class FleetSimulation(BaseModel):
    """The `simulate:` block of a fleet file (this format is a contract: keep it working)."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(ge=1, le=5000, description="nodes named gpu-node-00 .. gpu-node-NN")
    gpus_per_node: int = Field(default=8, ge=1, le=16)
    seed: int = 0
    faults: list[dict[str, Any]] = Field(default_factory=list)
    exporter: bool = Field(default=True, description="serve a dcgm-exporter endpoint per node")
    diag_seconds: float = Field(default=0.2, ge=0, description="how long a simulated dcgmi diag takes")

    def node_names(self) -> list[str]:
        width = max(2, len(str(self.nodes - 1)))
        return [f"gpu-node-{i:0{width}d}" for i in range(self.nodes)]


def find_sshd() -> str:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return str(Path(candidate).resolve())
    raise RuntimeError(
        "OpenSSH server (sshd) not found: the simulated fleet runs real sshd processes. "
        "Install it with `apt-get install openssh-server` (./dev does this for you)."
    )


def _keypair() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass
class SimNode:
    name: str
    state_file: Path
    ssh_port: int
    exporter_port: int | None = None
    process: subprocess.Popen[bytes] | None = None


class SimulatedFleet:
    """Create, start and stop a simulated fleet under `root` (a directory it owns)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.nodes: dict[str, SimNode] = {}
        self._exporter_loop: asyncio.AbstractEventLoop | None = None
        self._exporter_thread: threading.Thread | None = None

    # -- paths ----------------------------------------------------------------------------
    @property
    def inventory_file(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def client_key(self) -> Path:
        return self.root / "client_ed25519"

    def state_file(self, node: str) -> Path:
        return self.root / "nodes" / node / "state.json"

    # -- lifecycle ------------------------------------------------------------------------
    def create(self, spec: FleetSimulation, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        names = spec.node_names()
        for fault in spec.faults:
            if fault.get("node") not in names:
                raise ValueError(f"fault {fault!r} names a node that is not in the fleet ({names[0]}..{names[-1]})")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        private, public = _keypair()
        _write_private(self.client_key, private)
        (self.root / "authorized_keys").write_text(public + " gpumedic-sim\n")
        for name in names:
            state = node_state.new_node(name, spec.gpus_per_node, spec.seed, now)
            state["diag_seconds"] = spec.diag_seconds
            for fault in spec.faults:
                if fault["node"] == name:
                    node_state.apply_fault(state, fault, now)
            self.state_file(name).parent.mkdir(parents=True, exist_ok=True)
            node_state.save(self.state_file(name), state)
            self.nodes[name] = SimNode(name, self.state_file(name), ssh_port=0)
        (self.root / "spec.yaml").write_text(yaml.safe_dump({"simulate": spec.model_dump()}))

    def start(self, *, exporter: bool = True) -> None:
        sshd = find_sshd()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        public_keys: dict[str, str] = {}
        try:
            for node in self.nodes.values():
                state = node_state.load(node.state_file)
                private, public_keys[node.name] = _keypair()
                _write_private(node.state_file.parent / "ssh_host_ed25519_key", private)
                node.ssh_port = _free_port()
                if not state["unreachable"]:  # an unreachable node's port stays closed: connection refused
                    self._launch_sshd(sshd, node)
            if exporter:
                self._start_exporters()
            self._wait_ready(sshd)
        except BaseException:
            self.stop()  # a half-started fleet must not leave sshd processes behind
            raise
        # Written once every port is final (a node may have moved port while starting).
        self.known_hosts.write_text(
            "".join(f"[{LOOPBACK}]:{node.ssh_port} {public_keys[node.name]}\n" for node in self.nodes.values())
        )
        self._write_inventory()

    def _launch_sshd(self, sshd: str, node: SimNode) -> None:
        node_dir = node.state_file.parent
        config = node_dir / "sshd_config"
        config.write_text(self._sshd_config(node, node_dir))
        (node_dir / "sshd.log").unlink(missing_ok=True)
        (node_dir / "sshd.pid").unlink(missing_ok=True)
        node.process = subprocess.Popen(
            [sshd, "-D", "-f", str(config), "-E", str(node_dir / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _sshd_config(self, node: SimNode, node_dir: Path) -> str:
        agent = f"{sys.executable} -I -m gpumedic.sim.node_agent {node.state_file}"
        return "\n".join([
            f"ListenAddress {LOOPBACK}",
            f"Port {node.ssh_port}",
            f"HostKey {node_dir / 'ssh_host_ed25519_key'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            f"PidFile {node_dir / 'sshd.pid'}",
            f"AllowUsers {getpass.getuser()}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitTTY no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            "MaxStartups 100:30:200",
            "MaxSessions 32",
            # A clean HOME: root's .bashrc costs ~150 ms on every exec otherwise.
            f"SetEnv HOME={self.root / 'home'}",
            f"ForceCommand {agent}",
            "",
        ])

    def _wait_ready(self, sshd: str, timeout: float = 30.0, bind_retries: int = 5) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            retries = bind_retries
            while node.process is not None:
                if node.process.poll() is not None:
                    log = (node.state_file.parent / "sshd.log").read_text(errors="replace")[-500:]
                    if "Address already in use" in log and retries > 0:
                        # The port was free when chosen and taken before sshd bound it: choose again.
                        retries -= 1
                        node.ssh_port = _free_port()
                        self._launch_sshd(sshd, node)
                        continue
                    raise RuntimeError(f"sshd for {node.name} exited with {node.process.returncode}: {log}")
                # sshd writes its PidFile only once it listens: a port that merely answers could be
                # someone else's.
                with contextlib.suppress(OSError, ValueError):
                    if int((node.state_file.parent / "sshd.pid").read_text()) == node.process.pid:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd for {node.name} did not listen on port {node.ssh_port}")
                time.sleep(0.02)

    def _write_inventory(self) -> None:
        inventory = {
            "fleet": {
                "name": "simulated",
                "source": "ssh",
                "gpus_per_node": self._gpus_per_node(),
                "store_url": f"sqlite:///{self.root / 'telemetry.db'}",
                "ssh": {
                    "user": getpass.getuser(),
                    "key_file": str(self.client_key),
                    "known_hosts": str(self.known_hosts),
                },
                "nodes": [
                    {
                        "name": node.name,
                        "host": LOOPBACK,
                        "port": node.ssh_port,
                        **({"exporter_url": f"http://{LOOPBACK}:{node.exporter_port}/metrics"}
                           if node.exporter_port else {}),
                    }
                    for node in self.nodes.values()
                ],
            }
        }
        self.inventory_file.write_text(yaml.safe_dump(inventory, sort_keys=False))

    def _gpus_per_node(self) -> int:
        first = next(iter(self.nodes.values()))
        return len(node_state.load(first.state_file)["gpus"])

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes.values():
            if node.process is not None:
                try:
                    node.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                node.process = None
        if self._exporter_loop is not None:
            self._exporter_loop.call_soon_threadsafe(self._exporter_loop.stop)
            if self._exporter_thread is not None:
                self._exporter_thread.join(timeout=5)
            self._exporter_loop = None

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- dcgm-exporter endpoints ----------------------------------------------------------
    def _start_exporters(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        async def serve_all() -> None:
            for node in self.nodes.values():
                if node_state.load(node.state_file)["unreachable"]:
                    continue
                server = await asyncio.start_server(functools.partial(_serve_metrics, state_file=node.state_file),
                                                    LOOPBACK, 0)
                node.exporter_port = int(server.sockets[0].getsockname()[1])

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve_all())
            except BaseException as err:  # surfaced to the starting thread below
                errors.append(err)
            ready.set()
            if not errors:
                loop.run_forever()
            loop.close()

        self._exporter_loop = loop
        self._exporter_thread = threading.Thread(target=run, name="sim-exporters", daemon=True)
        self._exporter_thread.start()
        ready.wait(30)
        if errors:
            raise RuntimeError(f"could not start the simulated dcgm-exporters: {errors[0]}")


async def _serve_metrics(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state_file: Path) -> None:
    """A minimal HTTP/1.1 server for `GET /metrics` (one request per connection)."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method != "GET" or target.split("?")[0] != "/metrics":
            status, body = "404 Not Found", "404 page not found\n"
        else:
            state = node_state.load(state_file)
            if "dcgm-exporter" in state["garbled"]:
                status, body = "200 OK", "<html>upstream connect error or disconnect/reset</html>\n"
            else:
                status, body = "200 OK", node_render.render_prometheus(state)
        payload = body.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
        pass
    finally:
        writer.close()


# -- the `gpumedic sim up/down` supervisor ----------------------------------------------------
def load_simulation(path: Path) -> FleetSimulation:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or "simulate" not in data:
        raise ValueError(f"{path}: expected a `simulate:` block describing the simulated fleet")
    return FleetSimulation.model_validate(data["simulate"])


def serve(root: Path) -> None:
    """Run a created fleet until SIGTERM/SIGINT (the body of `gpumedic sim up`)."""
    fleet = SimulatedFleet(root)
    spec = load_simulation(root / "spec.yaml")
    for name in spec.node_names():
        fleet.nodes[name] = SimNode(name, fleet.state_file(name), ssh_port=0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        fleet.start(exporter=spec.exporter)
        (root / "supervisor.ready").write_text(str(os.getpid()))
        stop.wait()
    finally:
        fleet.stop()
        (root / "supervisor.ready").unlink(missing_ok=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
