"""Which nodes a sweep visits, and how to reach each one."""

from __future__ import annotations

from dataclasses import dataclass

from gpumedic.adapters.ssh import SshEndpoint, SshSettings, validate_node_name
from gpumedic.config import FleetSettings


@dataclass(frozen=True, slots=True)
class NodeTarget:
    name: str
    expected_gpus: int | None
    ssh: SshEndpoint | None
    exporter_url: str | None


def ssh_settings(fleet: FleetSettings) -> SshSettings | None:
    if fleet.ssh is None:
        return None
    jump = None
    if fleet.ssh.jump_host:
        user, _, hostport = fleet.ssh.jump_host.rpartition("@")
        host, _, port = hostport.partition(":")
        jump = SshEndpoint(host=host, port=int(port or 22), user=user or fleet.ssh.user)
    return SshSettings(
        key_file=fleet.ssh.key_file,
        known_hosts=fleet.ssh.known_hosts,
        connect_timeout_s=fleet.ssh.connect_timeout_s,
        command_timeout_s=fleet.ssh.command_timeout_s,
        strict_host_keys=fleet.ssh.strict_host_keys,
        jump=jump,
    )


def targets_from_settings(fleet: FleetSettings) -> list[NodeTarget]:
    """The fleet file's node list (a Kubernetes label selector is resolved by the caller)."""
    targets = []
    for entry in fleet.nodes:
        name = validate_node_name(entry.name)
        host = entry.host or name
        ssh = None
        if fleet.ssh is not None:
            ssh = SshEndpoint(host=host, port=entry.port or fleet.ssh.port, user=fleet.ssh.user)
        exporter = entry.exporter_url or f"http://{host}:{fleet.exporter_port}/metrics"
        targets.append(NodeTarget(name, entry.gpus if entry.gpus is not None else fleet.gpus_per_node, ssh, exporter))
    return targets
