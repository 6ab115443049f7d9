"""The `gpumedic` command line: demo, sweep, sim, serve, remediation, tickets, forecast."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpumedic.adapters.ticket_outbox import TicketOutbox
    from gpumedic.domain.budget import BreakerOverride

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEFAULT_SIM_DIR = Path(os.environ.get("GPUMEDIC_HOME", Path.home() / ".gpumedic")) / "sim"


def _print_sweep(document: dict[str, Any]) -> None:
    print(f"\nsweep {document['sweep_id']} ({document['started']})")
    print(f"{'node':<16} {'verdict':<9} {'action':<12} reasons")
    for node in document["nodes"]:
        reasons = "; ".join(node["reasons"]) or "-"
        if node["verdict"] == "unknown":
            seen = node.get("last_seen")
            when = f"last seen {datetime.fromisoformat(seen).astimezone(UTC):%Y-%m-%d %H:%M} UTC" if seen else \
                "never seen"
            reasons = f"{when}; {reasons}"
        print(f"{node['node']:<16} {node['verdict']:<9} {node['action']:<12} {reasons[:150]}")
        if node.get("remediation"):
            print(f"{'':<16} remediation: {node['remediation']}")


@contextlib.contextmanager
def fleet_inventory(fleet_file: str) -> Iterator[str]:
    """A sweepable fleet file: the file itself, or the inventory of a simulated fleet started for it."""
    from gpumedic.config import load_fleet_file
    from gpumedic.sim.fleet import SimulatedFleet

    loaded = load_fleet_file(fleet_file)
    if loaded.simulate is None:
        yield fleet_file
        return
    with tempfile.TemporaryDirectory(prefix="gpumedic-sim-") as root:
        fleet = SimulatedFleet(Path(root))
        fleet.create(loaded.simulate)
        print(f"starting a simulated fleet of {loaded.simulate.nodes} nodes (real sshd on 127.0.0.1)...",
              file=sys.stderr)
        fleet.start(exporter=loaded.simulate.exporter)
        try:
            yield str(fleet.inventory_file)
        finally:
            fleet.stop()


def cmd_sweep(args: argparse.Namespace) -> int:
    from flows.sweep import fleet_sweep

    with fleet_inventory(args.fleet) as inventory:
        document = fleet_sweep(fleet_file=inventory, depth=args.depth, emit_events=not args.no_events)
    _print_sweep(document)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def cmd_sim_up(args: argparse.Namespace) -> int:
    from gpumedic.config import load_fleet_file
    from gpumedic.sim.fleet import SimulatedFleet

    root = Path(args.dir).resolve()
    if (root / "supervisor.ready").exists():
        print(f"a simulated fleet is already running in {root}; `gpumedic sim down --dir {root}` first",
              file=sys.stderr)
        return 1
    loaded = load_fleet_file(args.fleet)
    if loaded.simulate is None:
        print(f"{args.fleet}: no `simulate:` block", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    SimulatedFleet(root).create(loaded.simulate)
    log = open(root / "supervisor.log", "ab")  # noqa: SIM115 - handed to the detached supervisor
    subprocess.Popen([sys.executable, "-m", "gpumedic.sim.fleet", str(root)], stdout=log, stderr=log,
                     stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (root / "supervisor.ready").exists():
        if time.monotonic() > deadline:
            print(f"the simulated fleet did not start; see {root / 'supervisor.log'}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"simulated fleet of {loaded.simulate.nodes} nodes is up")
    print(f"inventory:   {root / 'inventory.yaml'}")
    print(f"known_hosts: {root / 'known_hosts'}")
    print(f"sweep it:    gpumedic sweep --fleet {root / 'inventory.yaml'}")
    return 0


def cmd_sim_down(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    ready = root / "supervisor.ready"
    if not ready.exists():
        print(f"no simulated fleet is running in {root}")
        return 0
    pid = int(ready.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    print("simulated fleet stopped" if not ready.exists() else f"supervisor {pid} did not stop in time")
    return 0 if not ready.exists() else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import main as serve_main

    serve_main(["--fleet", args.fleet])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpumedic.demo import run_demo

    return run_demo(
        auto_approve=args.auto_approve,
        json_out=Path(args.json) if args.json else None,
        fleet_file=Path(args.fleet) if args.fleet else None,
        keep_running=args.keep_running if args.keep_running is not None else sys.stdin.isatty(),
    )


def cmd_remediation_status(args: argparse.Namespace) -> int:
    from gpumedic.adapters.errors import AdapterError
    from gpumedic.config import cluster_access, load_fleet_settings
    from gpumedic.remediation_status import render, to_json
    from tasks.remediation import remediation_status_now

    settings = load_fleet_settings(args.fleet)
    override, override_note = _breaker_override_if_reachable()
    cluster = cluster_access(settings.kubernetes, os.environ)
    if args.kubeconfig:  # read-only: looking at another cluster than the fleet's is allowed here
        cluster = replace(cluster, kubeconfig=args.kubeconfig, chosen_by="--kubeconfig")
    try:
        status = remediation_status_now(cluster, settings.remediation_policy(), include_closed=args.all,
                                        breaker_override=override)
    except AdapterError as err:
        print(f"gpumedic: cannot read the nodes' remediation records ({cluster}): {err}", file=sys.stderr)
        return 1
    lines = render(status)
    if override_note:  # beside the breaker's own line
        at = next(i for i, line in enumerate(lines) if line.startswith("circuit breaker ")) + 1
        lines.insert(at, override_note)
    lines.append(f"read from: {cluster}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(status), indent=2) + "\n")
    return 0


def _breaker_override_if_reachable() -> tuple[BreakerOverride | None, str]:
    """The fleet-wide breaker override from the Prefect server the deployments use; without one, say so."""
    if not os.environ.get("PREFECT_API_URL"):
        return None, "fleet-wide breaker override: not read (set PREFECT_API_URL to the deployments' Prefect server)"
    from gpumedic.adapters.breaker_override import read_breaker_override

    try:
        return read_breaker_override(), ""
    except Exception as err:  # the status is a report: the Nodes' records are read all the same
        return None, f"fleet-wide breaker override: could not be read from {os.environ['PREFECT_API_URL']}: {err}"


def _announce(event: str, payload: dict[str, str]) -> None:
    """An event in the Prefect UI's event feed: who changed the fleet's breaker, and when, stays on record."""
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": "gpumedic.breaker"}, payload=payload)


def cmd_breaker_override(args: argparse.Namespace) -> int:
    import getpass
    from datetime import UTC, datetime, timedelta

    from gpumedic.adapters.breaker_override import (
        clear_breaker_override,
        read_breaker_override,
        set_breaker_override,
    )
    from gpumedic.domain.budget import BreakerOverride

    if not os.environ.get("PREFECT_API_URL"):
        print("gpumedic: set PREFECT_API_URL to the Prefect server the remediation deployments use: the override "
              "is a Prefect Variable there", file=sys.stderr)
        return 2
    if args.clear:
        cleared = clear_breaker_override()
        if cleared:
            _announce("gpumedic.breaker.override-cleared", {"by": args.by or getpass.getuser()})
        print("breaker override cleared" if cleared else "there was no breaker override")
        return 0
    if args.hours is None:
        current = read_breaker_override()
        now = datetime.now(UTC)
        print("no fleet-wide breaker override" if current is None or not current.active(now) else
              f"breaker overridden by {current.by} until {current.until.isoformat()}: {current.reason}")
        return 0
    if not args.reason:
        print("gpumedic: --reason is required: the override is shown with it wherever the breaker is", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        override = BreakerOverride(now + timedelta(hours=args.hours), args.by or getpass.getuser(), args.reason, now)
    except ValueError as err:
        print(f"gpumedic: {err}", file=sys.stderr)
        return 2
    set_breaker_override(override)
    _announce("gpumedic.breaker.overridden", override.to_json())
    print(f"breaker overridden fleet-wide by {override.by} until {override.until.isoformat()}: {override.reason}\n"
          "the disruption budget still applies; `--clear` ends the override early")
    return 0


def _outbox(fleet_file: str) -> TicketOutbox:
    from gpumedic.adapters.ticket_outbox import TicketOutbox
    from gpumedic.config import load_fleet_settings

    return TicketOutbox(load_fleet_settings(fleet_file).store_url)


def cmd_tickets_status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gpumedic.ticket_queue import render, ticket_queue, to_json

    with _outbox(args.fleet) as outbox:
        queue = ticket_queue(outbox.entries(), datetime.now(UTC))
    print("\n".join(render(queue, retry_command=f"gpumedic tickets retry --fleet {args.fleet}")))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(queue), indent=2) + "\n")
    return 1 if queue.needs_a_human else 0


def cmd_tickets_retry(args: argparse.Namespace) -> int:
    with _outbox(args.fleet) as outbox:
        refused = {e.id for e in outbox.entries("failed")}
        unknown = sorted(set(args.ids) - refused)
        if unknown:
            print(f"gpumedic: not refused tickets in the outbox: {', '.join(f'#{i}' for i in unknown)} "
                  "(`gpumedic tickets status` lists them)", file=sys.stderr)
            return 2
        queued = outbox.retry_failed(args.ids or None)
    print(f"{queued} ticket(s) back in line: the file-pending-tickets deployment files them within 15 minutes "
          "(or run it now from the Prefect UI)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpumedic", description="GPU fleet health automation on Prefect")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="local Prefect server + simulated fleet: sweep, remediate, report")
    demo.add_argument("--auto-approve", action="store_true", help="approve replacements without waiting for a human")
    demo.add_argument("--json", metavar="OUT", help="write each node's final state, actions and tickets")
    demo.add_argument("--fleet", help="simulated fleet file (default: the packaged example fleet)")
    demo.add_argument("--keep-running", dest="keep_running", action="store_true", default=None,
                      help="keep the server and deployments up after the demo (default when interactive)")
    demo.add_argument("--exit", dest="keep_running", action="store_false", help="stop everything after the demo")
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser("sweep", help="run one fleet sweep and print each node's verdict")
    sweep.add_argument("--fleet", required=True, help="fleet file, or a `simulate:` file to start and sweep")
    sweep.add_argument("--json", metavar="OUT", help="write the sweep document as JSON")
    sweep.add_argument("--depth", choices=("full", "quick"), default="full")
    sweep.add_argument("--no-events", action="store_true", help="do not emit gpumedic.node.unhealthy events")
    sweep.set_defaults(func=cmd_sweep)

    sim = sub.add_parser("sim", help="start or stop a simulated fleet (real sshd per node)")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    up = sim_sub.add_parser("up", help="start a simulated fleet in the background")
    up.add_argument("--fleet", required=True, help="fleet file with a `simulate:` block")
    up.add_argument("--dir", default=str(DEFAULT_SIM_DIR), help=f"where its files live (default {DEFAULT_SIM_DIR})")
    up.set_defaults(func=cmd_sim_up)
    down = sim_sub.add_parser("down", help="stop the simulated fleet")
    down.add_argument("--dir", default=str(DEFAULT_SIM_DIR))
    down.set_defaults(func=cmd_sim_down)

    serve = sub.add_parser("serve", help="serve all deployments (schedules, triggers) in this process")
    serve.add_argument("--fleet", required=True)
    serve.set_defaults(func=cmd_serve)

    remediation = sub.add_parser("remediation", help="what remediation is doing to the fleet")
    remediation_sub = remediation.add_subparsers(dest="remediation_command", required=True)
    status = remediation_sub.add_parser(
        "status", help="nodes under remediation, what each waits for, the disruption budget and the breaker",
        description="Reads the gpumedic.io/* records on the Kubernetes Nodes: every open incident with its state, "
        "what it waits for (a drain, a human in the Prefect UI, a replacement), stalled workflows, records that "
        "cannot be read, the disruption budget in use and the circuit breaker.",
    )
    status.add_argument("--fleet", required=True, help="fleet file (its remediation policy sets the budget)")
    status.add_argument("--kubeconfig", help="default: the fleet's kubernetes.kubeconfig, $GPUMEDIC_KUBECONFIG, "
                        "the client's default ($KUBECONFIG, ~/.kube/config)")
    status.add_argument("--all", action="store_true", help="also list closed incidents still recorded on nodes")
    status.add_argument("--json", metavar="OUT", help="write the status as JSON")
    status.set_defaults(func=cmd_remediation_status)
    override = remediation_sub.add_parser(
        "breaker-override", help="keep the circuit breaker closed fleet-wide for a known event (at most 24 h)",
        description="During a known event (a driver rollout, a rack's power work) many nodes turn unhealthy at once "
        "and the circuit breaker stops remediation, asking for an override per incident. This overrides it "
        "fleet-wide for a while: a Prefect Variable (gpumedic-breaker-override) on the server in PREFECT_API_URL, "
        "read by every remediation decision. The disruption budget still applies. Without options it shows the "
        "override in place.",
    )
    override.add_argument("--hours", type=float, help="how long the override lasts (more than 0, at most 24)")
    override.add_argument("--reason", help="why: shown wherever the breaker's state is")
    override.add_argument("--by", help="who (default: the login name)")
    override.add_argument("--clear", action="store_true", help="end the override now")
    override.set_defaults(func=cmd_breaker_override)

    tickets = sub.add_parser("tickets", help="the ticket outbox: tickets waiting for Jira or refused by it")
    tickets_sub = tickets.add_subparsers(dest="tickets_command", required=True)
    outbox_status = tickets_sub.add_parser(
        "status", help="tickets waiting for Jira, refused by it, and filed in the last day",
        description="Every ticket is written to the outbox in the telemetry store before Jira is called. This lists "
        "the ones still waiting (Jira was down: the file-pending-tickets deployment files them), the ones Jira "
        "refused (parked until `gpumedic tickets retry`), and those filed in the last day. Exits 1 when a ticket "
        "was refused.",
    )
    outbox_status.add_argument("--fleet", required=True, help="fleet file (its store_url holds the outbox)")
    outbox_status.add_argument("--json", metavar="OUT", help="write the outbox as JSON")
    outbox_status.set_defaults(func=cmd_tickets_status)
    retry = tickets_sub.add_parser(
        "retry", help="put tickets Jira refused back in line, once the cause is fixed",
        description="Moves refused tickets back to waiting; the next file-pending-tickets run files them.",
    )
    retry.add_argument("--fleet", required=True, help="fleet file (its store_url holds the outbox)")
    retry.add_argument("ids", nargs="*", type=int, help="ticket ids from `gpumedic tickets status` (default: all "
                       "refused ones)")
    retry.set_defaults(func=cmd_tickets_retry)

    with contextlib.suppress(ImportError):
        from gpumedic.cli_forecast import add_forecast_commands

        add_forecast_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    from gpumedic.adapters.errors import AdapterError
    from gpumedic.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"gpumedic: {err}", file=sys.stderr)
        return 2
    except AdapterError as err:  # a system the command needed could not be used: the adapter's words say which
        print(f"gpumedic: {err}", file=sys.stderr)
        return 1
    except OperationalError as err:  # the driver's own words; never the URL, which may hold a password
        reason = str(err.orig).strip().splitlines()[0] if err.orig else "no reason given"
        print(f"gpumedic: the telemetry store (the fleet file's store_url) cannot be used: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
