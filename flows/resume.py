"""Resume the remediations that no run will come back to by itself.

A `remediate-node` run ends whenever its incident has to wait: for probation to pass, for room in
the disruption budget, for fresh evidence, for the circuit breaker. The next run starts on the next
`gpumedic.node.unhealthy` event, and a node that now looks healthy raises none. A run whose worker
died leaves its record mid-step, a cordoned node out of service. This flow, every 15 minutes, reads
the records on the Nodes and starts a run for each such incident (never a second run for a node
that has one live). A run resumes from the record: every destructive step still needs fresh
evidence, the budget and a closed breaker, so starting one is always safe. A run that only waits
again leaves the record unchanged, so each start is keyed by the record's version and the quarter
hour: the next pass looks again instead of being answered with that old run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from gpumedic.remediation_status import due_for_resumption
from gpumedic.run_names import flow_run_named
from tasks.remediation import (
    build_fleet_view,
    fleet_cluster,
    nodes_with_live_runs,
    remediation_policy,
    start_remediation_run,
)

REMEDIATION_FLOW = "remediate-node"
REMEDIATION_DEPLOYMENT = f"{REMEDIATION_FLOW}/remediate-node"


@flow(
    name="resume-remediations",
    flow_run_name=flow_run_named("resume-remediations"),
    log_prints=True,
    description="Start a remediate-node run for every open incident no run will come back to by itself: "
    "probation over, a wait for the budget or evidence, a run that died mid-step.",
)
def resume_remediations(
    fleet_file: str,
    kubeconfig: str = "",
    deployment: str = REMEDIATION_DEPLOYMENT,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Resume stalled and waiting remediations.

    Args:
        fleet_file: Fleet file; its `remediation:` policy says how long a step may take before its run counts as dead.
        kubeconfig: Path of a kubeconfig on the worker (the incident records live on the Nodes). Empty: the fleet
            file's `kubernetes:` block, else $GPUMEDIC_KUBECONFIG, else the client's default; another file than the
            fleet file's is refused.
        deployment: The remediation deployment to start runs of, as `flow-name/deployment-name`.
        dry_run: Say which incidents would be resumed, and why; start nothing.
    """
    logger = get_run_logger()
    cluster = fleet_cluster(fleet_file, kubeconfig)
    logger.info("cluster: %s", cluster)
    due = due_for_resumption(build_fleet_view(cluster), remediation_policy(fleet_file), datetime.now(UTC))
    live = nodes_with_live_runs(deployment) if due else set()
    started: list[dict[str, str]] = []
    left: list[dict[str, str]] = []
    for resumption in due:
        entry = {"node": resumption.node, "incident": resumption.incident, "why": resumption.why}
        because = ""
        if resumption.node in live:
            because = "a remediate-node run for the node is live"
        elif dry_run:
            because = "dry run"
        if because:
            left.append({**entry, "because": because})
            done = f"not started: {because}"
        else:
            entry["run"] = start_remediation_run(deployment, resumption.node, resumption.incident, resumption.key)
            started.append(entry)
            done = f"started {entry['run']}"
        logger.info("node=%s incident=%s %s: %s", resumption.node, resumption.incident, resumption.why, done)
    create_markdown_artifact(
        key="resumed-remediations",
        markdown=_report(started, left, dry_run),
        description="Open incidents that no run would have come back to, and what was done",
    )
    return {"started": started, "left": left, "dry_run": dry_run}


def _report(started: list[dict[str, str]], left: list[dict[str, str]], dry_run: bool) -> str:
    if not started and not left:
        return "Every open incident has a run under way or a reason to wait (a human, probation, its step)."
    lines = ["| node | incident | why | done |", "|---|---|---|---|"]
    lines += [f"| {e['node']} | {e['incident']} | {e['why']} | started {e['run']} |" for e in started]
    lines += [f"| {e['node']} | {e['incident']} | {e['why']} | not started: {e['because']} |" for e in left]
    return ("**Dry run**: nothing started.\n\n" if dry_run else "") + "\n".join(lines)
