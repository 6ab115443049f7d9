"""The remediation half of `gpumedic demo`: follow the triggered runs, finish what waits, report.

The sweep emits `gpumedic.node.unhealthy` for every node that needs remediation, and the
`remediate-node` deployment's trigger starts one run per event: the product's own path.
This module only watches and nudges:

- it reads the `remediate-node` runs from the Prefect API and the remediation record each
  run keeps on its Node (the annotations are the source of truth), and prints one line each
  time a node's record moves;
- a run that stopped because the disruption budget was spent is run again (`run_deployment`,
  same incident) once the budget has room; a readmitted node is looked at again when its
  probation is over (that run closes the incident); a run that failed is resumed from its
  record, at most twice;
- without `--auto-approve`, it prints the Prefect UI address of each run suspended (or paused)
  for a human decision: the approval form is that run's "Resume" button;
- a node whose event never produced a run within `TRIGGER_GRACE_S` is started by hand
  (`run_deployment`) and the report says so.

`remediate_demo_fleet` returns the JSON document of `gpumedic demo --json`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from gpumedic.adapters.jira_tickets import FORECAST_ORDER_LABEL
from gpumedic.domain.remediation import CorruptRecord, Decision, NodeRecord, RemediationState
from gpumedic.domain.verdict import Action
from gpumedic.run_names import REMEDIATION_RUN, run_name
from gpumedic.sim import node_state

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

    from gpumedic.demo import DemoCluster
    from gpumedic.sim.fleet import SimulatedFleet

REMEDIATION_DEPLOYMENT = "remediate-node/remediate-node"
APPROVAL_FLOW = "request-replacement-approval"
TRIGGER_GRACE_S = 90.0  # a node whose event started no run by then is started by hand
AUTO_DEADLINE_S = 8 * 60.0  # the whole remediation phase, non-interactive
HUMAN_DEADLINE_S = 32 * 60.0  # interactive: the approval forms wait 30 min, then time out
MAX_RESUMES = 2  # re-runs of a node whose run failed or crashed
POLL_S = 1.0


def _now() -> float:
    return time.monotonic()


@dataclass
class _Node:
    """What the demo knows of one node's remediation."""

    name: str
    runs: dict[UUID, FlowRun] = field(default_factory=dict)
    started_by: dict[UUID, str] = field(default_factory=dict)  # run id -> "event trigger" | "demo: ..."
    seen_history: set[tuple[str, str, str]] = field(default_factory=set)
    seen_run_states: dict[UUID, str] = field(default_factory=dict)
    results: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    pending: str | None = None  # why the demo will start a run for it again
    pending_at: float = 0.0
    requested_at: float | None = None  # the demo asked for a run and has not seen it yet
    resumes: int = 0
    settled: bool = False
    approval_urls: dict[UUID, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Follower:
    def __init__(self, client: SyncPrefectClient, *, cluster: DemoCluster, nodes: list[str], ui_url: str,
                 auto_approve: bool) -> None:
        self.client = client
        self.cluster = cluster
        self.ui_url = ui_url
        self.auto_approve = auto_approve
        self.nodes = {n: _Node(n) for n in nodes}
        self.started = _now()
        self.deployment = client.read_deployment_by_name(REMEDIATION_DEPLOYMENT)
        self.requested: set[UUID] = set()

    # -- output ------------------------------------------------------------------------

    def say(self, node: str, text: str) -> None:
        print(f"  [{_now() - self.started:6.1f}s] {node:<13} {text}", flush=True)

    # -- reading -----------------------------------------------------------------------

    def record(self, node: str) -> NodeRecord | None:
        annotations = self.cluster.kube.get_node(node)["metadata"].get("annotations") or {}
        try:
            return NodeRecord.from_annotations(annotations)
        except CorruptRecord as err:
            note = f"unreadable remediation record: {err}"
            if note not in self.nodes[node].notes:
                self.nodes[node].notes.append(note)
            return None

    def poll_runs(self) -> None:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        runs = self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment.id])), limit=200)
        for run in runs:
            node = str(run.parameters.get("node", ""))
            if node not in self.nodes:
                continue
            state = self.nodes[node]
            if run.id not in state.runs:
                by = "demo" if run.id in self.requested else _creator(run)
                state.started_by[run.id] = by
                if run.id in self.requested:
                    state.requested_at = None
                url = f"{self.ui_url}/runs/flow-run/{run.id}"
                if _scheduled_later(run) and run.state is not None and run.state.state_details.scheduled_time:
                    at = run.state.state_details.scheduled_time.astimezone(UTC)
                    self.say(node, f"run {run.name} ({by}) scheduled for {at:%H:%M:%S} UTC: {url}")
                else:
                    self.say(node, f"run {run.name} started by {by}: {url}")
            state.runs[run.id] = run

    def poll_approvals(self) -> None:
        """Interactive: where each paused approval form is."""
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        paused = self.client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[APPROVAL_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PAUSED]))),
        )
        for run in paused:
            node = str(run.parameters.get("node", ""))
            if node in self.nodes and run.id not in self.nodes[node].approval_urls:
                url = f"{self.ui_url}/runs/flow-run/{run.id}"
                self.nodes[node].approval_urls[run.id] = url
                kind = run.parameters.get("kind", "replace")
                self.say(node, f"WAITING FOR YOU: {kind} approval. Open {url}")
                print(f"{'':24}click \"Resume\", fill in approve, approver, reason (and an RMA reference), submit")

    def show_history(self, node: str, record: NodeRecord | None) -> None:
        if record is None:
            return
        state = self.nodes[node]
        for h in record.history:
            key = (h.time.isoformat(), h.step, h.note)
            if key in state.seen_history:
                continue
            state.seen_history.add(key)
            moved = h.from_state != h.to_state
            if moved or h.step.split(":")[0] in ("open", "diag", "approval", "ticket", "readmit", "close"):
                arrow = f"{h.from_state} -> {h.to_state}" if moved else str(h.to_state)
                self.say(node, f"{arrow:<28} {h.step:<17} {h.note[:110]}")

    # -- deciding ----------------------------------------------------------------------

    def result_of(self, run: FlowRun) -> dict[str, Any] | None:
        try:
            value = run.state.result() if run.state is not None else None
        except Exception:  # the result could not be read back: the record on the Node still tells
            return None
        return value if isinstance(value, dict) else None

    def step(self) -> None:
        self.poll_runs()
        if not self.auto_approve:
            self.poll_approvals()
        for name, state in self.nodes.items():
            record = self.record(name)
            self.show_history(name, record)
            if not state.settled:
                self._follow(state, record)
        self.rerun_budget_waiters()

    def _follow(self, state: _Node, record: NodeRecord | None) -> None:
        name = state.name
        # A run scheduled for later (the flow's own approval-timeout check) is not under way.
        runs = [r for r in state.runs.values() if not _scheduled_later(r)]
        for run in runs:
            type_name = run.state.type.value if run.state is not None else "PENDING"
            if state.seen_run_states.get(run.id) != type_name:
                state.seen_run_states[run.id] = type_name
                if type_name in ("FAILED", "CRASHED", "CANCELLED"):
                    message = run.state.message if run.state is not None else ""
                    self.say(name, f"run {run.name} ended {type_name}: {message}"[:170])
                elif type_name == "PAUSED" and not self.auto_approve:
                    self._show_paused(name, run)
        in_flight = [r for r in runs if r.state is None or not r.state.is_final()]
        if in_flight or state.requested_at is not None:
            return
        if record is not None and record.closed:
            state.settled = True
            return
        if state.pending is not None:
            if _now() >= state.pending_at and state.pending != "budget":
                self._rerun(state)
            return
        latest = max(runs, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC), default=None)
        if latest is None:
            self._no_run_yet(state)
            return
        assert latest.state is not None
        if not latest.state.is_completed():
            if state.resumes < MAX_RESUMES:
                state.resumes += 1
                self._plan(state, f"resume after a {latest.state.type.value} run", 3)
            else:
                state.settled = True
                state.notes.append(f"run {latest.name} ended {latest.state.type.value}; gave up after "
                                   f"{state.resumes} resumes")
            return
        result = state.results.get(latest.id)
        if result is None:
            result = self.result_of(latest) or {}
            state.results[latest.id] = result
            self._report_result(name, latest, result)
        self._after(state, record, result)

    def _show_paused(self, node: str, run: FlowRun) -> None:
        """Interactive: a run suspended (or paused) for a decision; say where to click."""
        state = self.nodes[node]
        if run.id in state.approval_urls:
            return
        url = f"{self.ui_url}/runs/flow-run/{run.id}"
        state.approval_urls[run.id] = url
        self.say(node, f"WAITING FOR YOU: approval. Open {url}")
        print(f"{'':24}click \"Resume\", fill in approve, approver, reason (and an RMA reference), submit")

    def _no_run_yet(self, state: _Node) -> None:
        if state.requested_at is not None or _now() - self.started < TRIGGER_GRACE_S:
            return
        state.notes.append(f"no run from the event trigger within {TRIGGER_GRACE_S:.0f} s: started by the demo")
        self.say(state.name, "no triggered run yet: starting remediate-node by hand (run_deployment)")
        self._start(state, incident=None)

    def _report_result(self, name: str, run: FlowRun, result: Mapping[str, Any]) -> None:
        waiting = result.get("waiting")
        if waiting:
            self.say(name, f"run {run.name} stopped: {waiting}"[:170])

    def _after(self, state: _Node, record: NodeRecord | None, result: Mapping[str, Any]) -> None:
        waiting = str(result.get("waiting") or "")
        if record is not None and record.closed:
            state.settled = True
        elif waiting.startswith("budget"):
            self._plan(state, "budget", 0)
        elif waiting.startswith("probation") and record is not None and record.probation_until is not None:
            wait = (record.probation_until - datetime.now(UTC)).total_seconds() + 1
            self._plan(state, "probation", max(wait, 0))
        elif waiting.startswith("evidence") and state.resumes < MAX_RESUMES:
            state.resumes += 1
            self._plan(state, "evidence", 10)
        else:
            state.settled = True
            if waiting:
                state.notes.append(waiting)

    def _plan(self, state: _Node, why: str, after_s: float) -> None:
        state.pending, state.pending_at = why, _now() + after_s
        if why == "probation":
            self.say(state.name, f"on probation: the demo looks again in {after_s:.0f} s")

    def rerun_budget_waiters(self) -> None:
        """One node at a time, when a slot is free and no run the demo started is still on its way:
        the demo never races itself (or the triggered runs) for the last slot."""
        waiting = sorted((s for s in self.nodes.values() if s.pending == "budget" and _now() >= s.pending_at),
                         key=lambda s: s.name)
        if not waiting or self._demo_run_in_flight() or self._free_slots() <= 0:
            return
        self._rerun(waiting[0])

    def _demo_run_in_flight(self) -> bool:
        for s in self.nodes.values():
            if s.requested_at is not None:
                return True
            for run in s.runs.values():
                # A run suspended for a human decision holds its slot, not the demo's attention.
                if run.id in self.requested and run.state is not None and not run.state.is_final() \
                        and not run.state.is_paused():
                    return True
        return False

    def _rerun(self, state: _Node) -> None:
        record = self.record(state.name)
        why = state.pending
        state.pending = None
        self.say(state.name, f"running remediate-node again ({why}) with run_deployment")
        self._start(state, incident=record.incident_id if record is not None and not record.closed else None)

    def _out_of_service(self) -> int:
        return sum(1 for n in self.cluster.kube.list_nodes() if n["spec"].get("unschedulable"))

    def _free_slots(self) -> int:
        return self.cluster.budget_limit - self._out_of_service()

    def _start(self, state: _Node, incident: str | None) -> None:
        from prefect.deployments import run_deployment

        parameters: dict[str, Any] = {"node": state.name}
        if incident:
            parameters["incident"] = incident
        if self.auto_approve:
            parameters["auto_approve"] = True
        run = run_deployment(REMEDIATION_DEPLOYMENT, parameters=parameters, timeout=0, tags=["gpumedic-demo"],
                             flow_run_name=run_name(REMEDIATION_RUN, parameters))
        self.requested.add(run.id)  # type: ignore[union-attr]
        state.requested_at = _now()

    def done(self) -> bool:
        return all(s.settled for s in self.nodes.values())


def _scheduled_later(run: FlowRun) -> bool:
    state = run.state
    if state is None or not state.is_scheduled() or state.state_details.scheduled_time is None:
        return False
    return state.state_details.scheduled_time.timestamp() > time.time() + 5


def _creator(run: FlowRun) -> str:
    created_by = run.created_by
    if created_by is not None and created_by.type == "AUTOMATION":
        return f"event trigger ({created_by.display_value or 'automation'})"
    if "approval-timeout-check" in (run.tags or []) or (run.idempotency_key or "").endswith("-timeout"):
        return "the flow's approval-timeout check"
    if created_by is not None:
        return f"{(created_by.type or '').lower()} {created_by.display_value or ''}".strip() or "another client"
    return "another client"


# --------------------------------------------------------------------------- the report


def remediate_demo_fleet(document: dict[str, Any], *, fleet: SimulatedFleet, cluster: DemoCluster, ui_url: str,
                         auto_approve: bool, deadline_s: float | None = None) -> dict[str, Any]:
    """Follow the remediation of every node the sweep flagged; the demo's JSON document."""
    from prefect import get_client

    sweep = {n["node"]: n for n in document["nodes"]}
    flagged = [n for n, e in sweep.items() if Action(e["action"]).needs_remediation and e["verdict"] != "unknown"]
    print(f"\n==> remediation: the sweep raised gpumedic.node.unhealthy for {len(flagged)} nodes "
          f"({', '.join(flagged) or 'none'});")
    print("    the remediate-node deployment's trigger starts one run per event"
          + ("; replacements are auto-approved (--auto-approve)" if auto_approve
             else "; replacements wait for YOUR approval in the Prefect UI (addresses below; Ctrl-C stops "
                  "waiting and reports)"))
    deadline = _now() + (deadline_s or (AUTO_DEADLINE_S if auto_approve else HUMAN_DEADLINE_S))
    interrupted = timed_out = False
    with get_client(sync_client=True) as client:
        follower = _Follower(client, cluster=cluster, nodes=flagged, ui_url=ui_url, auto_approve=auto_approve)
        try:
            while not follower.done():
                if _now() > deadline:
                    timed_out = True
                    print("==> stopped waiting at the deadline; reporting where things are")
                    break
                follower.step()
                if not follower.done():
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            interrupted = True
            print("\n==> stopped waiting (Ctrl-C); reporting where things are")
    report = build_report(document, fleet=fleet, cluster=cluster, follower=follower, ui_url=ui_url)
    report["remediation"]["interrupted"] = interrupted
    report["remediation"]["timed_out"] = timed_out
    _print_report(report)
    return report


def _evictions(cluster: DemoCluster) -> dict[str, dict[str, Any]]:
    by_node: dict[str, dict[str, Any]] = {}
    for r in cluster.kube.eviction_log:
        if r.node is None:
            continue
        entry = by_node.setdefault(r.node, {"evicted": [], "refused": {}})
        pod = f"{r.namespace}/{r.pod}"
        if r.outcome in ("evicted", "deleted"):
            entry["evicted"].append(pod)
        elif r.outcome == "refused":
            entry["refused"][pod] = entry["refused"].get(pod, 0) + 1
    return by_node


def _tickets(cluster: DemoCluster, records: Mapping[str, NodeRecord | None]) -> list[dict[str, Any]]:
    owner = {r.ticket_key: n for n, r in records.items() if r is not None and r.ticket_key}
    tickets = []
    for issue in cluster.jira.issues():
        fields = issue.get("fields") or {}
        labels = list(fields.get("labels") or [])
        if FORECAST_ORDER_LABEL in labels:
            continue  # an order the forecast raised, not a repair: the report's forecast part lists it
        node = owner.get(issue["key"]) or next(
            (lbl.removeprefix("gpumedic-node-") for lbl in labels if lbl.startswith("gpumedic-node-")), None)
        tickets.append({
            "key": issue["key"], "summary": fields.get("summary"), "labels": labels,
            "status": (fields.get("status") or {}).get("name"),
            "issue_type": (fields.get("issuetype") or {}).get("name"), "node": node,
        })
    return tickets


def _untouched_reason(entry: Mapping[str, Any]) -> str:
    action, verdict = entry["action"], entry["verdict"]
    first = (entry.get("reasons") or ["-"])[0]
    if verdict == "unknown":
        return (f"verdict unknown ({first}): gpumedic never acts on evidence it could not read; the node was left "
                "in service and needs a human look")
    if action == "restart_app":
        return f"{first}: an application fault; the workload is restarted by its owner, the node stays in service"
    if action == "none":
        return "healthy: nothing to do"
    return f"{action}: no remediation workflow for this action"


def _classify(record: NodeRecord | None, cordoned: bool) -> str:
    if record is None:
        return "untouched"
    diag_passed = any(k.startswith("diag:") and k.endswith(":pass") for k in record.steps_done)
    readmitted = any(k.startswith("readmit:") and ":" not in k[len("readmit:"):] for k in record.steps_done)
    if record.state is RemediationState.TICKETED:
        approval = record.approval
        return "ticketed" if approval is not None and approval.decision is Decision.APPROVE \
            else "ticketed_awaiting_decision"
    if diag_passed and readmitted and record.state in (RemediationState.READMITTED, RemediationState.IN_SERVICE):
        return "readmitted"
    if record.state is RemediationState.AWAITING_APPROVAL:
        return "awaiting_approval"
    if record.state in (RemediationState.FAILED, RemediationState.CANCELLED):
        return "kept_out_of_service" if cordoned else str(record.state)
    if record.closed:
        return "closed"
    return "in_progress"


def build_report(document: dict[str, Any], *, fleet: SimulatedFleet, cluster: DemoCluster, follower: _Follower,
                 ui_url: str) -> dict[str, Any]:
    kube = cluster.kube
    records: dict[str, NodeRecord | None] = {}
    for name in (n["node"] for n in document["nodes"]):
        try:
            records[name] = NodeRecord.from_annotations(kube.get_node(name)["metadata"].get("annotations") or {})
        except CorruptRecord:
            records[name] = None
    tickets = _tickets(cluster, records)
    evictions = _evictions(cluster)
    nodes: dict[str, Any] = {}
    for entry in document["nodes"]:
        name = entry["node"]
        record = records[name]
        obj = kube.get_node(name)
        cordoned = bool(obj["spec"].get("unschedulable"))
        taints = [f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in obj["spec"].get("taints") or []]
        followed = follower.nodes.get(name)
        outcome = _classify(record, cordoned)
        reasons: list[str] = []
        if record is None:
            reasons.append(_untouched_reason(entry))
        else:
            reasons.extend(record.reasons)
            if record.outcome:
                reasons.append(record.outcome)
        if followed is not None:
            reasons.extend(followed.notes)
        drained = evictions.get(name, {"evicted": [], "refused": {}})
        blocked = {pod: n for pod, n in drained["refused"].items() if pod not in drained["evicted"]}
        if outcome == "kept_out_of_service" and blocked:
            reasons.append("drain blocked by a PodDisruptionBudget (never bypassed): "
                           + ", ".join(f"{p} (refused {n} times)" for p, n in sorted(blocked.items())))
        runs = [] if followed is None else [
            {"id": str(r.id), "name": r.name, "state": r.state.type.value if r.state else None,
             "started_by": followed.started_by.get(r.id), "url": f"{ui_url}/runs/flow-run/{r.id}",
             "waiting": (followed.results.get(r.id) or {}).get("waiting")}
            for r in sorted(followed.runs.values(), key=lambda r: r.created or datetime.min.replace(tzinfo=UTC))
        ]
        nodes[name] = {
            "verdict": entry["verdict"],
            "action": entry["action"],
            "final_state": str(record.state) if record is not None else "in_service",
            "outcome": outcome,
            "in_service": not cordoned,
            "needs_human": outcome in ("kept_out_of_service", "awaiting_approval", "ticketed_awaiting_decision")
            or entry["verdict"] == "unknown",
            "incident": record.incident_id if record is not None else None,
            "detail": record.outcome if record is not None else None,
            "readmitted_after_passing_diagnostic": outcome == "readmitted",
            "approval": None if record is None or record.approval is None else {
                "kind": str(record.approval.kind), "decision": str(record.approval.decision),
                "approver": record.approval.approver, "reason": record.approval.reason, "rma": record.approval.rma},
            "actions": [] if record is None else [
                f"{h.time.astimezone(UTC):%H:%M:%S} {h.step}: {h.from_state} -> {h.to_state}: {h.note}"
                for h in record.history],
            "node_actions": [a for _, a in node_state.load(fleet.state_file(name))["actions"]],
            "evicted": drained["evicted"],
            "drain_blocked": blocked,
            "tickets": [t["key"] for t in tickets if t["node"] == name],
            "cordoned": cordoned,
            "taints": taints,
            "reasons": reasons,
            "flow_runs": runs,
        }
    started_by = {r["started_by"] for n in nodes.values() for r in n["flow_runs"]}
    first_runs = [n["flow_runs"][0]["started_by"] for n in nodes.values() if n["flow_runs"]]
    violations = [
        {"pod": f"{v.namespace}/{v.pod}", "node": v.node, "pdb": v.pdb, "via": v.via, "at": v.at}
        for v in kube.pdb_violations()
    ]
    return {
        "sweep": document,
        "nodes": nodes,
        "tickets": tickets,
        "budget": {
            "limit": cluster.budget_limit,
            "max_out_at_once": cluster.max_out_at_once,
            "timeline": [{"t": round(t - cluster.out_of_service[0][0], 2), "out": c, "nodes": ns}
                         for t, c, ns in cluster.out_of_service] if cluster.out_of_service else [],
            "how": "every Node change seen through a watch on the Kubernetes API emulator",
        },
        "pdb_violations": violations,
        "evictions": {"evicted": sum(len(e["evicted"]) for e in evictions.values()),
                      "refused_by_a_budget": sum(sum(e["refused"].values()) for e in evictions.values())},
        "policy": cluster.policy,
        "remediation": {
            "trigger": "event" if first_runs and all(s.startswith("event trigger") for s in first_runs)
            else "run_deployment fallback for some nodes",
            "started_by": sorted(s for s in started_by if s),
            "flagged": list(follower.nodes),
        },
    }


def _print_report(report: dict[str, Any]) -> None:
    print("\nremediation outcome:")
    print(f"  {'node':<13} {'final state':<18} {'outcome':<27} {'tickets':<10} detail")
    for name, n in report["nodes"].items():
        detail = n["detail"] or (n["reasons"][0] if n["reasons"] else "-")
        print(f"  {name:<13} {n['final_state']:<18} {n['outcome']:<27} {','.join(n['tickets']) or '-':<10} "
              f"{str(detail)[:90]}")
    budget = report["budget"]
    print(" ".join([f"\n  tickets filed: {len(report['tickets'])}",
                    *(f"{t['key']} ({t['node']}, {t['status']})" for t in report["tickets"])]))
    print(f"  disruption budget: at most {budget['max_out_at_once']} nodes out of service at once "
          f"(limit {budget['limit']})")
    print(f"  evictions: {report['evictions']['evicted']} pods evicted, "
          f"{report['evictions']['refused_by_a_budget']} refused by a PodDisruptionBudget (HTTP 429), "
          f"{len(report['pdb_violations'])} budget violations")
    print(f"  runs started by: {', '.join(report['remediation']['started_by']) or '-'}")
