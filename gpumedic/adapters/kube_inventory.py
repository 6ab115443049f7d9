"""A fleet's node list from Kubernetes: the nodes matching a label selector."""

from __future__ import annotations

import os

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.kube_nodes import api_client_from
from gpumedic.config import KubernetesSettings, NodeEntry, cluster_access


def nodes_from_kubernetes(inventory: KubernetesSettings) -> list[NodeEntry]:
    """Each node is reached at its InternalIP (falling back to its name)."""
    cluster = cluster_access(inventory, os.environ)
    api_client = api_client_from(cluster.kubeconfig, cluster.context)
    try:
        nodes = client.CoreV1Api(api_client).list_node(label_selector=inventory.label_selector, _request_timeout=30)
    except ApiException as err:
        kind = TransientError if err.status in (429, 500, 502, 503, 504) else PermanentError
        selector = inventory.label_selector
        raise kind(f"listing nodes with selector {selector!r} failed: {err.status} {err.reason}") from err
    finally:
        api_client.close()
    entries = []
    for node in nodes.items:
        addresses = {a.type: a.address for a in (node.status.addresses or [])} if node.status else {}
        if node.metadata is not None and node.metadata.name:
            entries.append(NodeEntry(name=node.metadata.name, host=addresses.get("InternalIP")))
    return entries
