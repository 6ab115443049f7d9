"""Resolve a fleet file into the settings and the nodes to visit.

A fleet file lists its nodes, or leaves them to Kubernetes: the Nodes its `kubernetes:` block's
label selector matches, each reached at its InternalIP. A cluster that cannot be read is an
`AdapterError` (transient or not) that says which cluster; an inventory that comes back empty is
an error too, never a sweep of nothing that reports a healthy fleet.
"""

from __future__ import annotations

import os
from dataclasses import replace

from gpumedic.adapters.errors import AdapterError, PermanentError
from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.adapters.ssh import validate_node_name
from gpumedic.adapters.targets import NodeTarget, targets_from_settings
from gpumedic.config import FleetSettings, NodeEntry, cluster_access, load_fleet_settings


def resolve_fleet(fleet_file: str) -> tuple[FleetSettings, list[NodeTarget]]:
    """A `fleet:` file (real fleet, or the inventory a simulated fleet writes) and every node in it."""
    return _resolved(load_fleet_settings(fleet_file))


def resolve_node(fleet_file: str, node: str) -> tuple[FleetSettings, NodeTarget]:
    """The fleet file and one of its nodes: from Kubernetes, that Node alone is read, not the fleet's list.

    Raises `PermanentError` for a node that is not in the fleet: no step acts on a node outside it."""
    fleet, targets = _resolved(load_fleet_settings(fleet_file), only=validate_node_name(node))
    target = next((t for t in targets if t.name == node), None)
    if target is None:
        raise PermanentError(f"{node} is not in the fleet of {fleet_file}")
    return fleet, target


def _resolved(fleet: FleetSettings, only: str | None = None) -> tuple[FleetSettings, list[NodeTarget]]:
    kubernetes = fleet.kubernetes
    if kubernetes is None or fleet.nodes:
        return fleet, targets_from_settings(fleet)
    cluster = cluster_access(kubernetes, os.environ)
    selector = kubernetes.label_selector
    try:
        with KubeNodes.for_cluster(cluster, request_timeout_s=30.0) as kube:
            views = kube.list_nodes(selector, name=only)
    except AdapterError as err:
        raise type(err)(f"the fleet's nodes cannot be read from Kubernetes ({cluster}): {err}") from err
    if not views and only is None:
        raise PermanentError(f"no Node matches the fleet file's kubernetes.label_selector {selector!r} ({cluster}): "
                             "nothing to sweep; check the selector and the kubeconfig")
    label = kubernetes.expected_gpus_label
    declared = {v.name: v.labels[label] for v in views if label and label in v.labels}
    # A label that is not a count says nothing: that node expects no figure, rather than the fleet-wide one,
    # which may be wrong for it (a GPU "missing" from a smaller node would be rebooted for).
    unreadable = {name for name, value in declared.items() if not (value.isascii() and value.isdigit())}
    fleet = fleet.model_copy(update={"nodes": [
        NodeEntry(name=v.name, host=v.internal_ip,
                  gpus=int(declared[v.name]) if v.name in declared and v.name not in unreadable else None)
        for v in views]})
    return fleet, [replace(t, expected_gpus=None) if t.name in unreadable else t for t in targets_from_settings(fleet)]
