"""The demo's failure forecast: a month of telemetry history in the store, then the daily forecast.

A fleet brought up a minute ago has no history to forecast from, so the demo writes one: 30 days
of the degradation simulator's telemetry for every GPU (with its failures switched off: harmless
correctable-error bursts, link and PCIe noise, temperature and power), and one GPU that has been
running out of spare rows for nine days. That GPU's simulated node reports the same counters now,
so the sweep reads what the history says. The forecast then runs as its deployment does; its alarm
raises the proactive-maintenance request (approval, then an "Order Replacement" ticket).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.forecast import HistoryFrame, to_epoch
from gpumedic.domain.history import Sample
from gpumedic.domain.risk_window import RiskWindow
from gpumedic.sim import node_state
from gpumedic.sim.degradation import DEFAULT_PARAMS, simulate

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

    from gpumedic.sim.fleet import FleetSimulation, SimulatedFleet
    from gpumedic.sim.jira_api import JiraEmulator

HISTORY_DAYS = 30
FORECAST_DEPLOYMENT = "failure-forecast/daily-failure-forecast"
MAINTENANCE_DEPLOYMENT = "proactive-maintenance/proactive-maintenance"
ORDER_WAIT_S = 90.0  # for the trigger to start each order's run, and (auto-approved) for it to finish


@dataclass(frozen=True)
class DegradingGpu:
    """A GPU running out of spare rows: correctable-error bursts that grow, then rows remapped (Xid 63)
    until a bank is low on spares. It has not failed: nothing in it asks for a repair today."""

    node: str
    gpu: int
    days: float = 9.0
    remaps: int = 3

    def history(self, now: datetime) -> Iterator[Sample]:
        start = now - timedelta(days=self.days)
        hours = self.days * 24
        sbe, remapped = 0.0, 0.0
        # Bursts at a rate growing from one every two days to about six a day, each larger than the last.
        t = 0.0
        while True:
            rate_per_h = (0.5 / 24) * math.exp(math.log(12) * t / hours)
            t += 1.0 / rate_per_h
            if t >= hours - 1:
                break
            sbe += round(2 + 30 * (t / hours) ** 2)
            at = start + timedelta(hours=t)
            yield Sample(at, self.node, self.gpu, "ecc_sbe_volatile", sbe)
            yield Sample(at, self.node, self.gpu, "ecc_sbe_aggregate", sbe)
        for i in range(self.remaps):
            at = start + timedelta(hours=hours * (0.5 + 0.45 * i / self.remaps))
            remapped += 1
            yield Sample(at, self.node, self.gpu, "remapped_rows_correctable", remapped)
            yield Sample(at, self.node, self.gpu, "xid", 63.0)
            if i == 2:  # the third remap leaves a bank low on spares
                yield Sample(at, self.node, self.gpu, "remap_banks_low", 1.0)

    def counters_now(self, now: datetime) -> dict[str, Any]:
        """The simulated node's state for this GPU, as the history leaves it (node_state's keys)."""
        last: dict[str, float] = {}
        for s in self.history(now):
            last[s.field] = s.value
        low = int(last.get("remap_banks_low", 0))
        return {
            "sbe_vol": int(last["ecc_sbe_volatile"]),
            "sbe_agg": int(last["ecc_sbe_aggregate"]),
            "remap_corr": int(last.get("remapped_rows_correctable", 0)),
            "banks": [0, 631 - low, 9, low, 0],  # banks with max, high, partial, low, no spare rows
        }


def background_history(nodes: list[str], gpus_per_node: int, now: datetime, seed: int) -> HistoryFrame:
    """`HISTORY_DAYS` of the degradation simulator's telemetry, renamed to `nodes` and ending at `now`.

    The simulator's failures are switched off: the demo's one degrading GPU is `DegradingGpu`, so what
    the forecast says about the rest is what it says about healthy GPUs with the usual noise.
    """
    params = dataclasses.replace(DEFAULT_PARAMS, failures_per_gpu_day=0.0)
    frame = simulate(len(nodes) * gpus_per_node, HISTORY_DAYS, seed, params).frame
    if len(frame) == 0:
        return frame
    shift = to_epoch(now) - 3600 - int(frame.time.max())
    names = {f"node-{i:04d}": node for i, node in enumerate(nodes)}
    keys = tuple((names[node], gpu) for node, gpu in frame.keys)
    return HistoryFrame.build(
        keys, (frame.time + shift).tolist(), frame.key.tolist(), frame.field.tolist(), frame.value.tolist()
    )


def demo_history(
    nodes: list[str], gpus_per_node: int, degrading: DegradingGpu | None, now: datetime, seed: int
) -> list[Sample]:
    """The background for every GPU; the degrading GPU keeps only its temperature and power from it."""
    mine = None if degrading is None else (degrading.node, degrading.gpu)
    rows = [
        s
        for s in background_history(nodes, gpus_per_node, now, seed).to_samples()
        if (s.node, s.gpu) != mine or s.field in ("temperature_c", "power_w")
    ]
    return rows + ([] if degrading is None else list(degrading.history(now)))


def prepare_history(fleet: SimulatedFleet, spec: FleetSimulation, now: datetime) -> dict[str, Any]:
    """Write the month of history, and make the degrading GPU's node report what that history ends on."""
    from gpumedic.config import load_fleet_settings

    nodes = list(fleet.nodes)
    faulty = {f["node"] for f in spec.faults}
    spare = [n for n in nodes if n not in faulty]
    degrading = DegradingGpu(spare[0], min(4, spec.gpus_per_node - 1)) if spare else None
    rows = demo_history(nodes, spec.gpus_per_node, degrading, now, spec.seed)
    if degrading is not None:
        with node_state.locked(fleet.state_file(degrading.node)) as state:
            state["gpus"][degrading.gpu].update(degrading.counters_now(now))
    written = TelemetryStore(load_fleet_settings(str(fleet.inventory_file)).store_url).append_samples(rows)
    gpus = len(nodes) * spec.gpus_per_node
    print(
        f"==> telemetry history: {HISTORY_DAYS} days for {gpus} GPUs ({written:,} rows) from the degradation "
        "simulator, its failures switched off"
    )
    if degrading is not None:
        print(
            f"    {degrading.node} GPU {degrading.gpu} has been running out of spare rows for "
            f"{degrading.days:g} days (growing correctable-error bursts, {degrading.remaps} rows remapped with "
            "Xid 63, a bank low on spares): nothing asks for a repair yet; the forecast should see it coming"
        )
    return {
        "history_days": HISTORY_DAYS,
        "history_rows": written,
        "degrading": None if degrading is None else {"node": degrading.node, "gpu": degrading.gpu},
    }


def run_forecast_deployment(timeout_s: float = 300) -> dict[str, Any]:
    from prefect.deployments import run_deployment

    flow_run = cast("FlowRun", run_deployment(FORECAST_DEPLOYMENT, timeout=timeout_s, tags=["gpumedic-demo"]))
    state = flow_run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"the forecast run {flow_run.name} ended in state {state}")
    return cast(dict[str, Any], state.result())


def forecast_demo_fleet(
    setup: dict[str, Any], *, jira: JiraEmulator, ui_url: str, auto_approve: bool
) -> dict[str, Any]:
    """Run the daily forecast through the server, show its riskiest GPUs, and follow the orders it raised."""
    from prefect import get_client

    print("==> running the daily failure forecast through the server")
    result = run_forecast_deployment()
    alarms = result["alarms"]
    print(f"  {result['gpus']} GPUs scored; {len(alarms)} above the alarm threshold (model: {result['model']})")
    for a in alarms[:5]:
        print(
            f"  ALARM {a['node']} GPU {a['gpu']}: {a['risk']:.1%} probability of failure "
            f"{RiskWindow(result['horizon_days'], result['window_starts_after_hours'])}: {'; '.join(a['factors'][:3])}"
        )
        if a["held"]:
            print(f"{'':8}{a['held']}")
    ordered = [a for a in alarms if not a["held"]]
    if ordered:
        print(
            "  each new alarm on a GPU in service raised gpumedic.gpu.failure_predicted; the proactive-maintenance "
            "deployment's trigger asks for approval, then files an Order Replacement ticket"
            + (" (auto-approved: --auto-approve)" if auto_approve else "")
        )
    wanted = [(str(a["node"]), str(a["gpu"])) for a in ordered]
    with get_client(sync_client=True) as client:
        runs = wait_for_orders(client, wanted, ui_url=ui_url, settled=_final if auto_approve else _asked)
    orders = order_entries(wanted, runs, jira=jira, ui_url=ui_url)
    for order in orders:
        if order["ticket"]:
            print(
                f"  {order['node']} GPU {order['gpu']}: {order['issue_type']} ticket {order['ticket']} filed "
                f"(run {order['run']})"
            )
        elif order["run"] is None:
            print(
                f"  {order['node']} GPU {order['gpu']}: no proactive-maintenance run seen within {ORDER_WAIT_S:.0f} s"
            )
    return {**setup, "run": result, "orders": orders}


def refresh_orders(forecast: dict[str, Any], *, jira: JiraEmulator, ui_url: str) -> dict[str, Any]:
    """The forecast's part of the demo report, with each order as it stands now (approved since, or not)."""
    from prefect import get_client

    wanted = [(o["node"], str(o["gpu"])) for o in forecast["orders"]]
    with get_client(sync_client=True) as client:
        runs = _maintenance_runs(client)
    orders = order_entries(wanted, runs, jira=jira, ui_url=ui_url)
    print(
        f"  forecast: {len(forecast['run']['alarms'])} alarm(s); orders: "
        + (
            ", ".join(
                f"{o['node']} GPU {o['gpu']} {o['state'] or 'not started'}"
                + (" (awaiting approval in the UI)" if o["state"] in ("Suspended", "Paused") else "")
                + (f" ({o['issue_type']} ticket {o['ticket']})" if o["ticket"] else "")
                for o in orders
            )
            or "none"
        )
    )
    return {**forecast, "orders": orders}


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def _asked(run: FlowRun) -> bool:
    return _final(run) or (run.state is not None and run.state.is_paused())


def _maintenance_runs(client: SyncPrefectClient) -> dict[tuple[str, str], FlowRun]:
    """The latest proactive-maintenance run per (node, gpu), keyed as the trigger renders its parameters."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deployment = client.read_deployment_by_name(MAINTENANCE_DEPLOYMENT)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )
    return {(str(r.parameters.get("node")), str(r.parameters.get("gpu"))): r for r in runs}


def wait_for_orders(
    client: SyncPrefectClient,
    wanted: list[tuple[str, str]],
    *,
    ui_url: str,
    settled: Callable[[FlowRun], bool],
    timeout_s: float = ORDER_WAIT_S,
) -> dict[tuple[str, str], FlowRun]:
    """Each alarm's proactive-maintenance run, once `settled` (or at `timeout_s`); says where a human is asked."""
    deadline = time.monotonic() + timeout_s
    shown: set[UUID] = set()
    while True:
        runs = _maintenance_runs(client)
        for key in wanted:
            run = runs.get(key)
            if run is not None and run.id not in shown and run.state is not None and run.state.is_paused():
                shown.add(run.id)
                print(
                    f"  WAITING FOR YOU: order approval for {key[0]} GPU {key[1]}. Open {ui_url}/runs/flow-run/{run.id}"
                )
                print(
                    f'{"":4}click "Resume", fill in approve, approver and reason, submit: approving files an '
                    "Order Replacement ticket; nothing is taken out of service"
                )
        if all(k in runs and settled(runs[k]) for k in wanted) or time.monotonic() > deadline:
            return runs
        time.sleep(1.0)


def order_entries(
    wanted: list[tuple[str, str]], runs: dict[tuple[str, str], FlowRun], *, jira: JiraEmulator, ui_url: str
) -> list[dict[str, Any]]:
    orders = []
    for node, gpu in wanted:
        run = runs.get((node, gpu))
        state = None if run is None else run.state
        result = cast(dict[str, Any], state.result()) if state is not None and state.is_completed() else {}
        ticket = result.get("ticket")
        orders.append(
            {
                "node": node,
                "gpu": int(gpu) if gpu.isdigit() else None,
                "run": None if run is None else run.name,
                "url": None if run is None else f"{ui_url}/runs/flow-run/{run.id}",
                "state": None if state is None else state.name,
                "outcome": result.get("outcome"),
                "ticket": ticket,
                "issue_type": jira.issue(ticket)["fields"]["issuetype"]["name"] if ticket else None,
            }
        )
    return orders
