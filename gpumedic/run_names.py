"""Run names that say what each run is about.

The Prefect UI lists runs by name, and its default is a random adjective and animal ("maize-swift"):
a fleet's hundred remediation runs would all read alike until opened. A run is named after what it
acts on ("remediate-gpu-node-03", "replace-decision-gpu-node-03", "quick-sweep") and says when it
changes nothing ("-dry-run") or raises no events ("-report-only").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefect.runtime import flow_run, task_run

Naming = str | Callable[[Mapping[str, Any]], str]

REMEDIATION_RUN = "remediate-{node}"  # also given to runs created for later, so the UI names them before they start


def run_name(naming: Naming, parameters: Mapping[str, Any]) -> str:
    """`naming` (a template formatted with the parameters, or a function of them), then what the run
    holds back: "-dry-run" for `dry_run`, "-report-only" for `emit_events` off."""
    name = naming.format_map(parameters) if isinstance(naming, str) else naming(parameters)
    if parameters.get("dry_run"):
        name += "-dry-run"
    if parameters.get("emit_events") is False:
        name += "-report-only"
    return name


def flow_run_named(naming: Naming) -> Callable[[], str]:
    """A `flow_run_name` for `@flow`: `run_name` of the run's parameters (defaults included)."""
    return lambda: run_name(naming, flow_run.parameters)


def order_name(parameters: Mapping[str, Any]) -> str:
    """A proactive-maintenance order: the node, and the GPU where the forecast named one."""
    gpu = parameters.get("gpu")
    return f"order-{parameters['node']}" + (f"-gpu{gpu}" if gpu is not None else "")


def shard_name(nodes: Sequence[str]) -> str:
    """A sweep's shard by the nodes it collects: where a failed collection is, at a glance."""
    if not nodes:
        return "collect-no-nodes"
    if len(nodes) == 1:
        return f"collect-{nodes[0]}"
    return f"collect-{nodes[0]}..{nodes[-1]}-{len(nodes)}-nodes"


def shard_run_name() -> str:
    """The `task_run_name` of a sweep's collect-shard task."""
    return shard_name([t.name for t in task_run.parameters.get("targets", ())])
