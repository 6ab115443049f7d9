"""Resolve a fleet file into the settings and the list of nodes to visit."""

from __future__ import annotations

from gpumedic.adapters.targets import NodeTarget, targets_from_settings
from gpumedic.config import FleetSettings, load_fleet_settings


def resolve_fleet(fleet_file: str) -> tuple[FleetSettings, list[NodeTarget]]:
    """A `fleet:` file (real fleet, or the inventory a simulated fleet writes)."""
    fleet = load_fleet_settings(fleet_file)
    if fleet.kubernetes is not None and not fleet.nodes:
        from gpumedic.adapters.kube_inventory import nodes_from_kubernetes

        fleet = fleet.model_copy(update={"nodes": nodes_from_kubernetes(fleet.kubernetes)})
    return fleet, targets_from_settings(fleet)
