"""Prefect task that writes verdicts to the Nodes as the `GpuUnhealthy` condition: after each
sweep, and after a remediation readmits a node."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gpumedic.adapters.errors import AdapterError
from gpumedic.adapters.kube_conditions import publish_conditions
from gpumedic.adapters.kube_nodes import KubeNodes
from gpumedic.config import ClusterAccess, KubernetesSettings
from gpumedic.domain.node_condition import HEARTBEAT_REFRESH, condition_for
from gpumedic.domain.observation import Observation
from gpumedic.domain.verdict import NodeAssessment


@task(name="publish-node-conditions", cache_policy=NO_CACHE)
def publish_node_conditions(
    kubernetes: KubernetesSettings, cluster: ClusterAccess, assessments: Sequence[NodeAssessment],
    observations: Sequence[Observation], at: datetime,
) -> str:
    """Each node's verdict, read at `at`, as its `GpuUnhealthy` condition; returns what became of
    them, in words.

    Best effort: a cluster that cannot be reached or refuses the write is logged as an error and
    the caller goes on (a sweep's report and events are out already; a readmitted node stays
    readmitted); the next sweep writes again.
    """
    logger = get_run_logger()
    seen = {o.node: o for o in observations}
    found = {a.node: condition_for(a, seen.get(a.node), at) for a in assessments}
    try:
        with KubeNodes.for_cluster(cluster) as kube:
            outcome = publish_conditions(kube, found, HEARTBEAT_REFRESH, kubernetes.label_selector)
    except AdapterError as err:
        logger.error("node conditions not published: %s", err)
        return f"node conditions: not published ({err})"
    if outcome.refused:
        logger.error("node conditions refused: %s (deploy/rbac.yaml grants patch on nodes/status)", outcome.refused)
    for node, why in list(outcome.failed.items())[:10]:
        logger.warning("%s: condition not written: %s", node, why)
    if outcome.missing:
        logger.warning("no Node for %s in the cluster: their conditions were not written",
                       ", ".join(outcome.missing[:10]) + (" …" if len(outcome.missing) > 10 else ""))
    logger.info(outcome.summary())
    return outcome.summary()
