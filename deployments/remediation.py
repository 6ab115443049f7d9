"""The remediation deployment: one `remediate-node` run per `gpumedic.node.unhealthy` event.

The sweep emits the event with `prefect.resource.id = gpumedic.node.<node>` and the node in
its payload; the trigger starts one run per event, with the node and the sweep id as the
incident hint. The same deployment can be run by hand from the UI with any parameters.

Default parameters from the environment: `GPUMEDIC_KUBECONFIG` (default `~/.kube/config`)
names the cluster; `GPUMEDIC_AUTO_APPROVE=1` approves every replacement by itself (for the
demo only: it skips the human). Jira and the remediation policy come from the fleet file
(`fleet.jira`, `fleet.remediation`), the Jira token from the variable `fleet.jira.token_env`
names. `GPUMEDIC_REMEDIATION_TRIGGER=0` serves the deployment without its trigger (by hand
only).

Runs of this deployment wait for an approval suspended (no process held; see
`flows.remediation`), and schedule their own approval-timeout check run on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect.events import DeploymentEventTrigger

from flows.remediation import DEFAULT_KUBECONFIG, remediate_node

UNHEALTHY_EVENT = "gpumedic.node.unhealthy"


def remediation_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="remediate-unhealthy-node",
        expect={UNHEALTHY_EVENT},
        match={"prefect.resource.id": "gpumedic.node.*"},
        # One run per event. The incident id is derived from the sweep and the node, so a
        # redelivered event re-runs the same (finished) incident instead of opening another.
        parameters={
            "node": "{{ event.payload.node }}",
            "incident": "{{ event.payload.sweep_id }}-{{ event.payload.node }}",
        },
    )


def default_parameters(fleet_file: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The deployment's parameters: the fleet file, and what the environment sets."""
    env = os.environ if environ is None else environ
    return {
        "fleet_file": fleet_file,
        "kubeconfig": env.get("GPUMEDIC_KUBECONFIG") or DEFAULT_KUBECONFIG,
        "auto_approve": env.get("GPUMEDIC_AUTO_APPROVE", "0") == "1",
    }


def remediation_deployments(fleet_file: str) -> list[Any]:
    triggers: list[Any] = [] if os.environ.get("GPUMEDIC_REMEDIATION_TRIGGER", "1") == "0" else [remediation_trigger()]
    return [
        remediate_node.to_deployment(
            name="remediate-node",
            triggers=triggers,
            parameters=default_parameters(fleet_file),
            description=(
                "Remediate one GPU node: cordon, drain, reset or reboot, diagnose, readmit; or ask for a "
                "replacement approval and file the ticket. Triggered by gpumedic.node.unhealthy."
            ),
            tags=["gpumedic", "remediation"],
        )
    ]
