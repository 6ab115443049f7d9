"""The SSH adapter against real sshd processes: host keys, auth, deadlines, quoting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.ssh import SshConnection, SshEndpoint, SshSettings, validate_node_name
from gpumedic.sim.fleet import SimulatedFleet, _keypair


def _endpoint(fleet: SimulatedFleet, index: int = 0) -> tuple[str, SshEndpoint]:
    node = yaml.safe_load(fleet.inventory_file.read_text())["fleet"]["nodes"][index]
    return node["name"], SshEndpoint(host=node["host"], port=node["port"], user=fleet_user(fleet))


def fleet_user(fleet: SimulatedFleet) -> str:
    return str(yaml.safe_load(fleet.inventory_file.read_text())["fleet"]["ssh"]["user"])


def _settings(fleet: SimulatedFleet, **overrides: object) -> SshSettings:
    values: dict[str, object] = {"key_file": fleet.client_key, "known_hosts": fleet.known_hosts,
                                 "connect_timeout_s": 5.0, "command_timeout_s": 10.0}
    values.update(overrides)
    return SshSettings(**values)  # type: ignore[arg-type]


def test_runs_a_command_and_reuses_the_connection(small_fleet: SimulatedFleet) -> None:
    name, endpoint = _endpoint(small_fleet)
    with SshConnection(name, endpoint, _settings(small_fleet)) as conn:
        first = conn.run(["hostname"])
        transport = conn._client.get_transport()  # type: ignore[union-attr]
        second = conn.run(["cat", "/proc/sys/kernel/random/boot_id"])
        assert conn._client.get_transport() is transport  # type: ignore[union-attr]
        sock = transport.sock  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert first.ok and first.stdout.strip() == name
    assert len(second.stdout.strip()) == 36


def test_unknown_host_key_is_refused(small_fleet: SimulatedFleet, tmp_path: Path) -> None:
    name, endpoint = _endpoint(small_fleet)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(PermanentError, match="not in .*known_hosts"):
        SshConnection(name, endpoint, _settings(small_fleet, known_hosts=empty)).connect()


def test_changed_host_key_is_refused(small_fleet: SimulatedFleet, tmp_path: Path) -> None:
    name, endpoint = _endpoint(small_fleet)
    _, other_public = _keypair()
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[{endpoint.host}]:{endpoint.port} {other_public}\n")
    with pytest.raises(PermanentError, match="does not match known_hosts"):
        SshConnection(name, endpoint, _settings(small_fleet, known_hosts=forged)).connect()


def test_wrong_key_is_an_authentication_failure(small_fleet: SimulatedFleet, tmp_path: Path) -> None:
    name, endpoint = _endpoint(small_fleet)
    private, _ = _keypair()
    stranger = tmp_path / "stranger"
    stranger.write_bytes(private)
    stranger.chmod(0o600)
    with pytest.raises(PermanentError, match="authentication failed"):
        SshConnection(name, endpoint, _settings(small_fleet, key_file=stranger)).connect()


def test_a_hung_command_is_cut_at_its_deadline(small_fleet: SimulatedFleet) -> None:
    name, endpoint = _endpoint(small_fleet)
    with SshConnection(name, endpoint, _settings(small_fleet)) as conn, \
            pytest.raises(TransientError, match="did not finish within 0.5s"):
        conn.run(["sleep", "5"], timeout_s=0.5)


def test_a_closed_port_is_a_transient_error(small_fleet: SimulatedFleet) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = SshEndpoint(host="127.0.0.1", port=port, user=fleet_user(small_fleet))
    with pytest.raises(TransientError, match="cannot connect"):
        SshConnection("gpu-node-x", endpoint, _settings(small_fleet)).connect()


@pytest.mark.parametrize("bad", ["node; rm -rf /", "$(reboot)", "-oProxyCommand=x", "", "a" * 300, "node name"])
def test_node_names_that_could_inject_are_refused(bad: str) -> None:
    with pytest.raises(PermanentError):
        validate_node_name(bad)


def test_arguments_are_quoted_not_interpreted(small_fleet: SimulatedFleet) -> None:
    name, endpoint = _endpoint(small_fleet)
    with SshConnection(name, endpoint, _settings(small_fleet)) as conn:
        result = conn.run(["echo", "a; hostname"])
    assert result.stdout == "a; hostname\n"  # one argument, not a second command


def test_an_edited_known_hosts_file_is_read_again(small_fleet: SimulatedFleet, tmp_path: Path) -> None:
    name, endpoint = _endpoint(small_fleet)
    path = tmp_path / "known_hosts"
    path.write_text(small_fleet.known_hosts.read_text())
    with SshConnection(name, endpoint, _settings(small_fleet, known_hosts=path)) as conn:
        assert conn.run(["hostname"]).ok
    _, other_public = _keypair()
    path.write_text(f"[{endpoint.host}]:{endpoint.port} {other_public}\n")  # the node's key changed
    with pytest.raises(PermanentError, match="does not match known_hosts"):
        SshConnection(name, endpoint, _settings(small_fleet, known_hosts=path)).connect()
