"""The remediation deployment: one `remediate-node` run per `gpumedic.node.unhealthy` event.

The sweep emits the event with `prefect.resource.id = gpumedic.node.<node>` and the node in
its payload; the trigger starts one run per event, with the node and the sweep id as the
incident hint. The same deployment can be run by hand from the UI with any parameters.

`GPUMEDIC_KUBECONFIG` (default `~/.kube/config`) names the cluster; `GPUMEDIC_TICKETS` the
ticket desk (the Jira outbox settings); `GPUMEDIC_REMEDIATION_TRIGGER=0` serves the
deployment without its trigger (by hand only).
"""

from __future__ import annotations

import os
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


def remediation_deployments(fleet_file: str) -> list[Any]:
    triggers: list[Any] = [] if os.environ.get("GPUMEDIC_REMEDIATION_TRIGGER", "1") == "0" else [remediation_trigger()]
    return [
        remediate_node.to_deployment(
            name="remediate-node",
            triggers=triggers,
            parameters={
                "fleet_file": fleet_file,
                "kubeconfig": os.environ.get("GPUMEDIC_KUBECONFIG", DEFAULT_KUBECONFIG),
                "tickets": os.environ.get("GPUMEDIC_TICKETS", "jira"),
            },
            description=(
                "Remediate one GPU node: cordon, drain, reset or reboot, diagnose, readmit; or ask for a "
                "replacement approval and file the ticket. Triggered by gpumedic.node.unhealthy."
            ),
            tags=["gpumedic", "remediation"],
        )
    ]
