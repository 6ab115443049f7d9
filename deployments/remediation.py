"""The remediation deployments: one `remediate-node` run per `gpumedic.node.unhealthy` event,
`resume-remediations` every 15 minutes for the open incidents no event will bring back (see
`flows.resume`), and `file-pending-tickets` every 15 minutes for the tickets Jira was down for
(see `flows.tickets`).

The sweep emits the event with `prefect.resource.id = gpumedic.node.<node>` and the node in
its payload; the trigger starts one run per event, with the node and the sweep id as the
incident hint. The same deployment can be run by hand from the UI with any parameters.

The cluster is the fleet file's (`fleet.kubernetes`, else `GPUMEDIC_KUBECONFIG` in the worker's
environment, else the Kubernetes client's default), resolved by each run, the same one the sweeps
read and write. Default parameters from the environment: `GPUMEDIC_AUTO_APPROVE=1` approves every
replacement by itself (for the demo only: it skips the human). Jira and the remediation policy come from the fleet file
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
from prefect.schedules import Interval

from flows.remediation import remediate_node
from flows.resume import resume_remediations
from flows.tickets import file_pending_tickets

UNHEALTHY_EVENT = "gpumedic.node.unhealthy"
RESUME_EVERY_SECONDS = 15 * 60
FILE_TICKETS_EVERY_SECONDS = 15 * 60


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
        "auto_approve": env.get("GPUMEDIC_AUTO_APPROVE", "0") == "1",
    }


def remediation_deployments(fleet_file: str) -> list[Any]:
    triggers: list[Any] = [] if os.environ.get("GPUMEDIC_REMEDIATION_TRIGGER", "1") == "0" else [remediation_trigger()]
    parameters = default_parameters(fleet_file)
    return [
        resume_remediations.to_deployment(
            name="resume-remediations",
            schedules=[Interval(RESUME_EVERY_SECONDS)],
            parameters={"fleet_file": fleet_file},
            description=(
                "Every 15 minutes: start a remediate-node run for each open incident no run will come back to "
                "by itself (probation over, a wait for the budget or evidence, a run that died mid-step)."
            ),
            tags=["gpumedic", "remediation"],
        ),
        file_pending_tickets.to_deployment(
            name="file-pending-tickets",
            schedules=[Interval(FILE_TICKETS_EVERY_SECONDS)],
            parameters={"fleet_file": fleet_file},
            description=(
                "Every 15 minutes: file the tickets waiting in the outbox (Jira was down when they were raised) "
                "and list the ones Jira refused."
            ),
            tags=["gpumedic", "tickets"],
        ),
        remediate_node.to_deployment(
            name="remediate-node",
            triggers=triggers,
            parameters=parameters,
            description=(
                "Remediate one GPU node: cordon, drain, reset or reboot, diagnose, readmit; or ask for a "
                "replacement approval and file the ticket. Triggered by gpumedic.node.unhealthy."
            ),
            tags=["gpumedic", "remediation"],
        )
    ]
