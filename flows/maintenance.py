"""Proactive maintenance: a GPU the forecast expects to fail gets a replacement ordered, if a human agrees.

Triggered by the forecast's `gpumedic.gpu.failure_predicted` event. Nothing is taken out of
service here: the node keeps running until it really fails or the part arrives. The same approval
form and the same Jira outbox as a replacement are used, with the fleet's "order replacement"
issue type; the GPU's label deduplicates against any ticket already open for it.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.flow_runs import suspend_flow_run

from flows.remediation import ReplacementDecision, approval_key, approval_wait_mode, request_replacement_approval
from gpumedic.adapters.jira_tickets import FORECAST_ORDER_LABEL, Approval, TicketRequest, gpu_dedup_key
from gpumedic.adapters.store import TelemetryStore
from gpumedic.config import ConfigError, load_fleet_settings
from gpumedic.domain.risk_window import RiskWindow
from gpumedic.run_names import flow_run_named, order_name
from tasks.forecast import file_order_ticket

AUTO_APPROVER = "auto-approve (demo)"


def order_description(node: str, gpu: int | None, risk: float, window: RiskWindow, lead: float | None,
                      factors: list[str], uuid: str | None, serial: str | None) -> str:
    where = "the node" if gpu is None else f"GPU {gpu} (UUID {uuid or 'unknown'}, serial {serial or 'unknown'})"
    lines = [
        f"## Proactive replacement: {node} {where}",
        "",
        f"The failure forecast gives a **{risk:.0%}** probability of failure {window}"
        + (f", typically ~{lead:.0f} h ahead on this evidence." if lead else "."),
        "",
        "Evidence:",
        *[f"- {factor}" for factor in factors or ["(no single factor stands out)"]],
        "",
        "Approving files an *order replacement* ticket; the GPU stays in service until it fails or the part "
        "arrives. Rejecting files nothing.",
    ]
    return "\n".join(lines) + "\n"


@flow(name="proactive-maintenance", log_prints=True, flow_run_name=flow_run_named(order_name),
      description="Order a replacement for a GPU the failure forecast expects to fail, if a human approves: "
      "one Order Replacement ticket per GPU. Nothing is taken out of service.")
def proactive_maintenance(
    node: str, gpu: int | None, fleet_file: str, auto_approve: bool = False, approval_timeout_s: int = 86400,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Returns `{node, gpu, outcome, ticket}`; outcome: ticketed, rejected, no decision, no longer at risk, not in
    the latest forecast, left to remediation (the latest sweep sends the GPU to a human, whose remediation
    asks about it), or dry run (then also `would_file`: the ticket's summary).

    Args:
        node: The node whose GPU the forecast alarmed on.
        gpu: The GPU's index on the node; empty: the node as a whole.
        fleet_file: Path of the fleet YAML file on the worker: its telemetry store and `fleet.jira`.
        auto_approve: Order without asking a human. For demos and tests only.
        approval_timeout_s: Seconds a human has to approve or reject; without a decision nothing is ordered.
        dry_run: Read the forecast and say what would be asked and filed; ask nobody and file nothing.
    """
    logger = get_run_logger()
    fleet = load_fleet_settings(fleet_file)
    if fleet.jira is None:
        raise ConfigError(f"{fleet_file}: proactive maintenance needs a fleet file with a `jira:` block")
    store = TelemetryStore(fleet.store_url)
    forecast = store.latest_forecasts([node]).get((node, gpu))
    if forecast is None:
        logger.warning("node=%s gpu=%s not in the latest forecast (no telemetry lately, or not in the fleet): "
                       "nothing to order on a risk nobody can compute now", node, gpu)
        return {"node": node, "gpu": gpu, "outcome": "not in the latest forecast", "ticket": None}
    if not forecast.alarm:
        logger.info("node=%s gpu=%s no longer above the alarm threshold: nothing to order", node, gpu)
        return {"node": node, "gpu": gpu, "outcome": "no longer at risk", "ticket": None}
    if forecast.held is not None:
        logger.info("node=%s gpu=%s %s", node, gpu, forecast.held)
        return {"node": node, "gpu": gpu, "outcome": "left to remediation", "ticket": None}
    snapshot = store.last_snapshots([node]).get(node)
    identity = snapshot.gpu(gpu) if snapshot is not None and gpu is not None else None
    uuid, serial = (identity.uuid, identity.serial) if identity is not None else (None, None)
    try:
        dedup = gpu_dedup_key(uuid=uuid, serial=serial)
    except ValueError:
        dedup = f"gpumedic-node-{node.lower()}"
    incident = f"forecast-{node}-{'node' if gpu is None else gpu}-{forecast.computed_at:%Y%m%d}"
    description = order_description(node, gpu, forecast.risk, forecast.window, forecast.lead_time_h,
                                    list(forecast.factors), uuid, serial)
    summary = (f"Order replacement GPU for {node}" + ("" if gpu is None else f" GPU {gpu} ({uuid or serial})")
               + f": {forecast.risk:.0%} failure risk {forecast.window}")
    if dry_run:
        logger.info("node=%s gpu=%s dry run: would ask for approval, then file %s ticket %r in %s (label %s)",
                    node, gpu, fleet.jira.forecast_issue_type, summary, fleet.jira.project, dedup)
        return {"node": node, "gpu": gpu, "outcome": "dry run", "ticket": None, "would_file": summary}

    decision: dict[str, Any] | None
    if auto_approve:
        decision = {"approve": True, "approver": AUTO_APPROVER, "reason": "demo run with --auto-approve", "rma": None}
    else:
        decision = _ask(node, incident, description, approval_timeout_s)
    if decision is None:
        logger.warning("node=%s gpu=%s no decision within %ss: nothing ordered", node, gpu, approval_timeout_s)
        return {"node": node, "gpu": gpu, "outcome": "no decision", "ticket": None}
    if not decision["approve"]:
        logger.info("node=%s gpu=%s order rejected by %s: %s", node, gpu, decision["approver"], decision["reason"])
        return {"node": node, "gpu": gpu, "outcome": "rejected", "ticket": None}

    request = TicketRequest(
        dedup_key=dedup, incident_id=incident, project=fleet.jira.project, issue_type=fleet.jira.forecast_issue_type,
        summary=summary, description=description, node=node, labels=(FORECAST_ORDER_LABEL,), gpu_index=gpu,
        gpu_uuid=uuid, gpu_serial=serial, approval=Approval(decision["approver"], decision["reason"], decision["rma"]),
    )
    key = file_order_ticket(fleet_file, request)
    logger.info("node=%s gpu=%s order replacement ticket %s", node, gpu, key)
    return {"node": node, "gpu": gpu, "outcome": "ticketed", "ticket": key}


def _ask(node: str, incident: str, description: str, timeout_s: int) -> dict[str, Any] | None:
    """The replacement approval form: suspended where the server allows it, else a paused subflow."""
    key = approval_key(incident, "order")
    ctx = FlowRunContext.get()
    if approval_wait_mode(ctx.flow_run if ctx else None) == "suspend":
        d = suspend_flow_run(wait_for_input=ReplacementDecision.with_initial_data(description=description), key=key,
                             timeout=timeout_s)
        return {"approve": d.approve, "approver": d.approver, "reason": d.reason, "rma": d.rma_reference}
    state = request_replacement_approval(node, incident, "order", description, max(1, math.ceil(timeout_s)),
                                         key=key, return_state=True)
    if not state.is_completed():
        return None
    result: dict[str, Any] = state.result()
    return result
