"""The fleet_sweep flow under the Prefect test harness, against the simulated fleet."""

from __future__ import annotations

import binascii
import json
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gpumedic.domain.observation import Observation
from gpumedic.sim import node_state
from gpumedic.sim.fleet import SimulatedFleet
from tests.conftest import EXPECTED_EXAMPLE
from tests.flows.events import event_payloads
from tests.flows.prefect_runs import flow_runs_named, task_run_names
from tests.postgres import PostgresServer
from tests.waiting import eventually

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


def _inventory_with_store(fleet: SimulatedFleet, tmp_path: Path, **policy: float) -> str:
    data = yaml.safe_load(fleet.inventory_file.read_text())
    data["fleet"]["policy"] = policy
    data["fleet"]["store_url"] = f"sqlite:///{tmp_path / 'store.db'}"
    data["fleet"]["shard_size"] = 5  # several shards, as in production
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _naming_the_cluster(inventory: str, kubeconfig: Path, **settings: object) -> str:
    """The fleet file with a `kubernetes:` block for the cluster behind `kubeconfig` (its nodes stay listed)."""
    data = yaml.safe_load(Path(inventory).read_text())
    data["fleet"]["kubernetes"] = {"kubeconfig": str(kubeconfig), **settings}
    Path(inventory).write_text(yaml.safe_dump(data))
    return inventory


def _naming_a_cluster_gone(inventory: str, tmp_path: Path, **settings: object) -> str:
    """The fleet file naming a cluster whose API server has stopped: every call to it fails to connect."""
    from gpumedic.sim.kube_api import KubeApiEmulator

    with KubeApiEmulator() as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    return _naming_the_cluster(inventory, kubeconfig, **settings)


def _remediation_column() -> dict[str, str]:
    """What the latest sweep's unhealthy-nodes table says it did about each node's remediation."""
    from prefect.artifacts import Artifact

    table = Artifact.get("fleet-unhealthy-nodes")
    assert table is not None
    return {row["node"]: row["remediation"] for row in json.loads(str(table.data))}


@contextmanager
def _task_logs_in(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    task_logs = logging.getLogger("prefect.task_runs")  # Prefect's run loggers do not propagate to the root
    task_logs.addHandler(caplog.handler)
    try:
        yield
    finally:
        task_logs.removeHandler(caplog.handler)


def _gpu_node_01_down_and_dark_for_5_hours(inventory: str, tmp_path: Path) -> tuple[str, Observation]:
    """Point gpu-node-01 at a port nothing listens on, and have the store remember it last seen 7 h ago
    by a sweep and not assessed by the sweep 2 h ago (dark for 5 h then: under the 6 h alert).

    Returns the fleet file as it was (the node reachable) and the recorded observation."""
    from gpumedic.adapters.store import TelemetryStore

    reachable = Path(inventory).read_text()
    data = yaml.safe_load(reachable)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        data["fleet"]["nodes"][1]["port"] = probe.getsockname()[1]
    Path(inventory).write_text(yaml.safe_dump(data))
    now = datetime.now(UTC)
    recorded = Observation("gpu-node-01", now - timedelta(hours=2), now - timedelta(hours=7), now - timedelta(days=30))
    TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}").record_observations([recorded])
    return reachable, recorded


@pytest.mark.usefixtures("prefect_harness")
def test_sweep_of_the_reference_fleet_gives_the_catalog_verdicts(example_fleet: SimulatedFleet, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.sweep import fleet_sweep

    document = fleet_sweep(fleet_file=_inventory_with_store(example_fleet, tmp_path), emit_events=True)
    got = {n["node"]: (n["verdict"], n["action"]) for n in document["nodes"]}
    assert got == EXPECTED_EXAMPLE
    healthy = [n for n in document["nodes"] if n["verdict"] == "healthy"]
    assert all(n["reasons"] == [] for n in healthy)
    assert all(n["reasons"] for n in document["nodes"] if n["verdict"] != "healthy")
    report = Artifact.get("fleet-health-report")
    assert report is not None and "gpu-node-05" in str(report.data)
    assert Artifact.get("fleet-unhealthy-nodes") is not None
    # The GPUs it sends to a human are stored, so the forecast does not order their parts a second time.
    from gpumedic.adapters.store import TelemetryStore

    condemned = TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}").latest_condemned()
    to_a_human = {n["node"]: n["action"] for n in document["nodes"] if n["action"] in ("inspect", "replace")}
    assert {c.node: str(c.action) for c in condemned} == to_a_human and to_a_human
    assert all(c.sweep_id == document["sweep_id"] for c in condemned)
    for c in condemned:
        [entry] = [n for n in document["nodes"] if n["node"] == c.node]
        assert [g["action"] for g in entry["gpus"] if g["index"] == c.gpu] == [str(c.action)]


@pytest.mark.usefixtures("prefect_harness")
def test_a_condemned_node_that_goes_dark_stays_condemned(example_fleet: SimulatedFleet, tmp_path: Path) -> None:
    """Powered off for its part swap, gpu-node-05 is unknown to the next sweep, not a GPU to order again."""
    from flows.sweep import fleet_sweep
    from gpumedic.adapters.store import TelemetryStore

    inventory = _inventory_with_store(example_fleet, tmp_path)
    first = fleet_sweep(fleet_file=inventory, emit_events=False)
    store = TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}")
    before = [c for c in store.latest_condemned() if c.node == "gpu-node-05"]
    assert before and all(c.sweep_id == first["sweep_id"] for c in before)

    data = yaml.safe_load(Path(inventory).read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        [node] = [n for n in data["fleet"]["nodes"] if n["name"] == "gpu-node-05"]
        node["port"] = probe.getsockname()[1]
    Path(inventory).write_text(yaml.safe_dump(data))
    second = fleet_sweep(fleet_file=inventory, emit_events=False)
    assert {n["node"]: n["verdict"] for n in second["nodes"]}["gpu-node-05"] == "unknown"
    assert [c for c in store.latest_condemned() if c.node == "gpu-node-05"] == before


@pytest.mark.usefixtures("prefect_harness")
def test_each_verdict_lands_on_its_node_as_a_condition_with_the_shipped_rbac(
    example_fleet: SimulatedFleet, tmp_path: Path
) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.domain.node_condition import CONDITION_TYPE
    from gpumedic.sim.kube_api import KubeApiEmulator

    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    with KubeApiEmulator(seed=5) as kube:
        for node in example_fleet.nodes:
            kube.add_node(node, gpus=8, labels={"nvidia.com/gpu.present": "true"})
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig",
                                           token=kube.service_account("gpumedic", "gpumedic", role["rules"]))
        inventory = _naming_the_cluster(_inventory_with_store(example_fleet, tmp_path), kubeconfig)

        document = fleet_sweep(fleet_file=inventory, emit_events=False)
        on_nodes = {n: next(c for c in kube.get_node(n)["status"]["conditions"] if c["type"] == CONDITION_TYPE)
                    for n in example_fleet.nodes}
        kube.clear_logs()
        fleet_sweep(fleet_file=inventory, emit_events=False)
        written = {r.path.split("/")[-2] for r in kube.request_log
                   if r.method == "PATCH" and r.path.endswith("/status")}
        after = {n: next(c for c in kube.get_node(n)["status"]["conditions"] if c["type"] == CONDITION_TYPE)
                 for n in example_fleet.nodes}

    status = {"healthy": "False", "watch": "False", "unknown": "Unknown", "degraded": "True", "failed": "True"}
    reason = {"none": "GpusHealthy", "restart_app": "GpusWatched", "reboot": "RebootNode", "replace": "ReplaceGpu",
              "inspect": "InspectGpu", "reset_gpu": "ResetGpu"}
    for node in document["nodes"]:
        condition = on_nodes[node["node"]]
        assert condition["status"] == status[node["verdict"]], node
        assert condition["reason"] == ("NotAssessed" if node["verdict"] == "unknown" else reason[node["action"]])
        assert node["verdict"] == "healthy" or node["reasons"][0] in condition["message"]
    assert on_nodes["gpu-node-09"]["message"].startswith("never seen: unknown in every sweep since the first, "
                                                         f"{document['started'][:10]} {document['started'][11:16]} UTC")
    # Minutes later, only what the second sweep found different is written (a watched node's
    # rate, measured over a first interval now); the rest keeps the first sweep's heartbeat.
    def said(c: dict[str, str]) -> tuple[str, str, str]:
        return c["status"], c["reason"], c["message"]

    assert written == {n for n in on_nodes if said(on_nodes[n]) != said(after[n])}
    assert all(after[n] == on_nodes[n] for n in on_nodes if n not in written)


@pytest.mark.usefixtures("prefect_harness")
def test_no_remediation_event_is_raised_where_a_run_would_only_stop(
    example_fleet: SimulatedFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.domain.remediation import RemediationState
    from gpumedic.domain.verdict import Action
    from gpumedic.sim.kube_api import KubeApiEmulator
    from tests.remediation_walk import walk

    now = datetime.now(UTC)
    records = {
        "gpu-node-05": walk("gpu-node-05", Action.REPLACE, until=RemediationState.AWAITING_APPROVAL,
                            at=now - timedelta(hours=2)),
        "gpu-node-03": walk("gpu-node-03", Action.REPLACE, until=None, at=now - timedelta(days=3)),  # ticketed
        "gpu-node-07": walk("gpu-node-07", Action.RESET_GPU, until=RemediationState.READMITTED,
                            at=now - timedelta(hours=1), settled=True),
    }
    assert records["gpu-node-03"].state is RemediationState.TICKETED
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    with KubeApiEmulator(seed=7) as kube:
        for node in example_fleet.nodes:
            record = records.get(node)
            labels = {"nvidia.com/gpu.present": "true"} | ({"gpumedic.io/managed": "false"}
                                                            if node == "gpu-node-11" else {})
            kube.add_node(node, gpus=8, labels=labels, unschedulable=node in ("gpu-node-05", "gpu-node-03"),
                          annotations=record.to_annotations() if record is not None else None)
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig",
                                           token=kube.service_account("gpumedic", "gpumedic", role["rules"]))
        inventory = _naming_the_cluster(_inventory_with_store(example_fleet, tmp_path), kubeconfig,
                                        node_conditions=False)
        preview = fleet_sweep(fleet_file=inventory, emit_events=False)  # a report-only sweep: the dry run
        with _task_logs_in(caplog):
            document = fleet_sweep(fleet_file=inventory, emit_events=True)

    def raised() -> set[str]:
        return {str(p["node"]) for p in event_payloads("gpumedic.node.unhealthy")
                if p["sweep_id"] == document["sweep_id"]}

    needing = {n["node"] for n in document["nodes"] if n["action"] in ("reset_gpu", "reboot", "replace", "inspect")}
    left = {"gpu-node-05", "gpu-node-03", "gpu-node-11"}
    assert left | {"gpu-node-07"} <= needing  # all still look broken to the sweep
    # gpu-node-05's replacement awaits a human, gpu-node-03 its new board (cordoned, ticketed), gpu-node-11
    # is opted out: a run would find that and stop. gpu-node-07 failing on probation must reach its
    # incident, and every node without a record opens its own.
    assert eventually(lambda: raised() == needing - left, timeout_s=120), raised()
    said = [r.getMessage() for r in caplog.records if "no remediation event raised" in r.getMessage()]
    assert {m.split(":")[0] for m in said} == left, said  # (a record can reach caplog twice: a set)
    assert any(m.startswith("gpu-node-05: no remediation event raised: incident ") and
               m.endswith("awaits a human's decision (replace)") for m in said), said
    # The sweep's table says the same, node by node, and which open incident an event resumes; so does its document.
    shown = _remediation_column()
    assert {n["node"]: n["remediation"] for n in document["nodes"] if n["remediation"]} == {
        node: said for node, said in shown.items() if said != "-"}
    # The report-only sweep before it raised nothing and said the same, as what a sweep with events would do.
    assert not any(p["sweep_id"] == preview["sweep_id"] for p in event_payloads("gpumedic.node.unhealthy"))
    previewed = {n["node"]: n["remediation"] for n in preview["nodes"] if n["remediation"]}
    assert set(previewed) == needing
    assert previewed["gpu-node-05"].endswith(f"a run would only stop: {shown['gpu-node-05'].split(': ', 1)[1]}")
    assert previewed["gpu-node-07"].endswith(f"a run would be requested: it {shown['gpu-node-07'].split(': ', 1)[1]}")
    assert shown["gpu-node-05"] == (f"no run requested: incident {records['gpu-node-05'].incident_id} "
                                    "awaits a human's decision (replace)")
    assert shown["gpu-node-11"] == "no run requested: gpu-node-11 is opted out of automated remediation"
    assert shown["gpu-node-07"] == f"run requested: resumes incident {records['gpu-node-07'].incident_id} (readmitted)"
    assert {n for n, said in shown.items() if said.startswith("run requested")} == needing - left


@pytest.mark.usefixtures("prefect_harness")
def test_a_cluster_whose_records_cannot_be_read_holds_no_remediation_event_back(
    small_fleet: SimulatedFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.sweep import fleet_sweep

    inventory = _naming_a_cluster_gone(_inventory_with_store(small_fleet, tmp_path), tmp_path, node_conditions=False)
    with node_state.locked(small_fleet.state_file("gpu-node-01")) as state:
        state["gpus"][3]["dbe_vol"] = 2
    with _task_logs_in(caplog):
        document = fleet_sweep(fleet_file=inventory, emit_events=True)
    assert {n["node"]: n["action"] for n in document["nodes"]} == {"gpu-node-00": "none", "gpu-node-01": "reset_gpu"}
    # On the side of raising: the run reads the records itself, and decides.
    assert eventually(lambda: [p["node"] for p in event_payloads("gpumedic.node.unhealthy")
                               if p["sweep_id"] == document["sweep_id"]] == ["gpu-node-01"], timeout_s=120)
    assert any("remediation records not read" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert _remediation_column() == {"gpu-node-01": "run requested"}


@pytest.mark.usefixtures("prefect_harness")
def test_a_cluster_that_cannot_take_the_conditions_does_not_fail_the_sweep(
    small_fleet: SimulatedFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.sweep import fleet_sweep

    inventory = _naming_a_cluster_gone(_inventory_with_store(small_fleet, tmp_path), tmp_path)
    with _task_logs_in(caplog):
        document = fleet_sweep(fleet_file=inventory, emit_events=False)
    assert {n["node"] for n in document["nodes"]} == {"gpu-node-00", "gpu-node-01"}
    assert any("node conditions not published" in r.getMessage() and "cannot reach the API server" in r.getMessage()
               and r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.usefixtures("prefect_harness")
def test_a_fleet_taken_from_kubernetes_is_swept_at_its_nodes_internal_ips(
    small_fleet: SimulatedFleet, tmp_path: Path
) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.sim.kube_api import KubeApiEmulator

    path = Path(_inventory_with_store(small_fleet, tmp_path))
    data = yaml.safe_load(path.read_text())
    [first] = [n for n in data["fleet"].pop("nodes") if n["name"] == "gpu-node-00"]
    data["fleet"]["ssh"]["port"] = first["port"]  # one SSH port for every node, as in a real fleet
    gpu = {"nvidia.com/gpu.present": "true"}
    with KubeApiEmulator(seed=2) as kube:
        kube.add_node("gpu-node-00", gpus=4, labels=gpu, internal_ip=first["host"])
        kube.add_node("gpu-node-01", gpus=4, labels=gpu, internal_ip="127.0.0.2")  # no sshd listens there
        kube.add_node("cpu-node-00", gpus=0, internal_ip=first["host"])  # outside the label selector
        data["fleet"]["kubernetes"] = {"kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
                                       "node_conditions": False}
        path.write_text(yaml.safe_dump(data))
        document = fleet_sweep(fleet_file=str(path), emit_events=False)
    verdicts = {n["node"]: n for n in document["nodes"]}
    assert set(verdicts) == {"gpu-node-00", "gpu-node-01"}
    assert verdicts["gpu-node-00"]["verdict"] == "healthy"
    assert verdicts["gpu-node-01"]["verdict"] == "unknown"
    assert f"127.0.0.2:{first['port']}" in verdicts["gpu-node-01"]["reasons"][0]


@pytest.mark.usefixtures("prefect_harness")
def test_a_fleet_whose_cluster_cannot_be_read_fails_the_sweep_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a sweep of no nodes, which would report a healthy fleet; the command says why, without a traceback."""
    from flows.sweep import fleet_sweep
    from gpumedic.adapters.errors import TransientError
    from gpumedic.cli import main
    from gpumedic.sim.kube_api import KubeApiEmulator

    with KubeApiEmulator() as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"fleet": {
        "name": "t", "source": "ssh", "ssh": {"user": "u", "key_file": "k", "known_hosts": "kh"},
        "kubernetes": {"kubeconfig": str(kubeconfig)}, "store_url": f"sqlite:///{tmp_path / 'store.db'}"}}))
    with pytest.raises(TransientError, match="the fleet's nodes cannot be read from Kubernetes"):
        fleet_sweep(fleet_file=str(path), emit_events=False)
    capsys.readouterr()
    assert main(["sweep", "--fleet", str(path)]) == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith(f"gpumedic: the fleet's nodes cannot be read from Kubernetes ({kubeconfig}")
    assert "cannot reach the API server" in said


def _as_written_and_decoded(raw: bytes) -> list[bytes]:
    """A result file as written and its pickle decoded: Prefect writes a base64 pickle, or JSON whose `result`
    holds one."""
    try:
        payload: str | bytes = json.loads(raw)["result"]
    except (ValueError, KeyError, TypeError):
        payload = raw
    try:
        return [raw, binascii.a2b_base64(payload)]
    except (binascii.Error, ValueError):
        return [raw]


@pytest.mark.usefixtures("prefect_harness")
def test_a_sweep_persisting_its_results_writes_no_password_of_the_store_to_them(
    small_fleet: SimulatedFleet, tmp_path: Path, postgres: PostgresServer
) -> None:
    """Result persistence is a common Prefect setting; a fleet's settings carry `store_url`, which may hold
    the database's password, so no task hands them back as a result."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    from flows.sweep import fleet_sweep

    secret = "pw-" + tmp_path.name  # the test server trusts loopback, so any password connects
    store_url = postgres.new_database().replace("@127.0.0.1", f":{secret}@127.0.0.1", 1)
    path = Path(_inventory_with_store(small_fleet, tmp_path))
    data = yaml.safe_load(path.read_text())
    data["fleet"]["store_url"] = store_url
    path.write_text(yaml.safe_dump(data))
    storage = tmp_path / "results"
    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: storage}):
        document = fleet_sweep(fleet_file=str(path), emit_events=False)
    assert {n["node"] for n in document["nodes"]} == {"gpu-node-00", "gpu-node-01"}
    written = [f.read_bytes() for f in storage.rglob("*") if f.is_file()]
    assert written  # results were persisted (the flow's document, at least): the check below looked at something
    assert not [raw for raw in written if any(secret.encode() in text for text in _as_written_and_decoded(raw))]


@pytest.mark.usefixtures("prefect_harness")
def test_second_sweep_uses_rates_not_totals(small_fleet: SimulatedFleet, tmp_path: Path) -> None:
    from flows.sweep import fleet_sweep

    # Sweeps seconds apart: let the policy compute rates over any interval.
    inventory = _inventory_with_store(small_fleet, tmp_path, rate_min_interval_minutes=0)
    with node_state.locked(small_fleet.state_file("gpu-node-00")) as state:
        state["gpus"][0]["sbe_agg"] = 5000  # a large *total* from long ago is not an alarm
    first = fleet_sweep(fleet_file=inventory, emit_events=False)
    assert {n["node"]: n["verdict"] for n in first["nodes"]} == {"gpu-node-00": "healthy", "gpu-node-01": "healthy"}
    with node_state.locked(small_fleet.state_file("gpu-node-01")) as state:
        state["gpus"][2]["sbe_agg"] += 100_000  # a burst since the last sweep is
        state["gpus"][2]["sbe_vol"] += 100_000
    second = fleet_sweep(fleet_file=inventory, emit_events=False)
    verdicts = {n["node"]: n for n in second["nodes"]}
    assert verdicts["gpu-node-00"]["verdict"] == "healthy"
    assert verdicts["gpu-node-01"]["verdict"] == "watch"
    assert any("GPU 2" in r for r in verdicts["gpu-node-01"]["reasons"])


@pytest.mark.usefixtures("prefect_harness")
def test_quick_sweeps_keep_the_full_sweeps_word_and_full_sweeps_rate_links_between_them(
    small_fleet: SimulatedFleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.artifacts import Artifact

    from flows.sweep import fleet_sweep

    def report() -> str:
        return str(Artifact.get("fleet-health-report").data)  # type: ignore[union-attr]

    inventory = _inventory_with_store(small_fleet, tmp_path, rate_min_interval_minutes=0)
    with node_state.locked(small_fleet.state_file("gpu-node-00")) as state:
        state["gpus"][1]["sram_threshold"] = True  # only `nvidia-smi -q` says so
    # Before any full sweep a quick one cannot see the flag, and its report says where it is blind.
    flow_logs = logging.getLogger("prefect.flow_runs")  # Prefect's run loggers do not propagate
    flow_logs.addHandler(caplog.handler)
    try:
        blind = {n["node"]: n for n in fleet_sweep(fleet_file=inventory, depth="quick", emit_events=False)["nodes"]}
    finally:
        flow_logs.removeHandler(caplog.handler)
    assert any(r.levelname == "WARNING" and "no clean full sweep of 2 nodes in 48 h" in r.getMessage()
               and "gpu-node-00, gpu-node-01" in r.getMessage() for r in caplog.records)
    assert blind["gpu-node-00"]["verdict"] == "healthy"
    assert "2 nodes had no clean full sweep in that time, so nothing of this is judged there:** gpu-node-00, " \
           "gpu-node-01." in report()
    # The UI lists the run by what it was, and its collection by the nodes it reached.
    (quick_run,) = [r for r in flow_runs_named("quick-sweep-report-only") if r.parameters["fleet_file"] == inventory]
    assert eventually(lambda: "collect-gpu-node-00..gpu-node-01-2-nodes" in task_run_names(quick_run))
    full = fleet_sweep(fleet_file=inventory, depth="full", emit_events=False)
    by_node = {n["node"]: n for n in full["nodes"]}
    assert (by_node["gpu-node-00"]["verdict"], by_node["gpu-node-00"]["action"]) == ("failed", "replace")

    quick = {n["node"]: n for n in fleet_sweep(fleet_file=inventory, depth="quick", emit_events=False)["nodes"]}
    assert (quick["gpu-node-00"]["verdict"], quick["gpu-node-00"]["action"]) == ("failed", "replace")
    (reason,) = quick["gpu-node-00"]["gpus"][1]["reasons"]
    assert "SRAM Threshold Exceeded: Yes" in reason and reason.endswith(
        f"(as read by the full sweep at {datetime.fromisoformat(full['started']):%Y-%m-%d %H:%M} UTC)")
    assert quick["gpu-node-01"]["verdict"] == "healthy"
    assert "Quick sweep: `nvidia-smi -q` and the NVLink error counters were not read" in report()
    assert "no clean full sweep" not in report()

    # PCIe replays climb on gpu-node-01 after the full sweep; a quick sweep cannot read them, and the
    # next full sweep rates them against the last full one, not against the quick sweep in between.
    with node_state.locked(small_fleet.state_file("gpu-node-01")) as state:
        state["gpus"][3]["pcie_replay"] += 1_000_000
    fleet_sweep(fleet_file=inventory, depth="quick", emit_events=False)
    second_full = fleet_sweep(fleet_file=inventory, depth="full", emit_events=False)
    again, again_started = {n["node"]: n for n in second_full["nodes"]}, second_full["started"]
    assert again["gpu-node-01"]["verdict"] == "watch"
    assert any("PCIe replays per hour" in r for r in again["gpu-node-01"]["gpus"][3]["reasons"])
    assert not any("as read by" in r for n in again.values() for g in n["gpus"] for r in g["reasons"])
    assert "Quick sweep" not in report()
    # The quick sweeps after it cannot read the counter, and keep the full sweep's word on its rate.
    after = {n["node"]: n for n in fleet_sweep(fleet_file=inventory, depth="quick", emit_events=False)["nodes"]}
    assert after["gpu-node-01"]["verdict"] == "watch"
    (carried,) = [r for r in after["gpu-node-01"]["gpus"][3]["reasons"] if "PCIe replays per hour" in r]
    between = re.search(r"\(as measured between the full sweeps at (\S+ \S+) and (\S+ \S+) UTC\)$", carried)
    assert between is not None, carried
    # Each is when that full sweep read the node: within a minute of its start (to the minute, rounded down).
    for read, sweep in zip(between.groups(), (full["started"], again_started), strict=True):
        read_at = datetime.strptime(read, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        assert timedelta(minutes=-1) <= read_at - datetime.fromisoformat(sweep) <= timedelta(minutes=1), (read, sweep)


@pytest.mark.usefixtures("prefect_harness")
def test_full_sweeps_apply_the_retention_and_repeat_sweeps_store_only_what_changed(
    small_fleet: SimulatedFleet, tmp_path: Path
) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.adapters.store import TelemetryStore
    from gpumedic.domain.history import Sample

    inventory = _inventory_with_store(small_fleet, tmp_path)
    store = TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}")
    long_ago = datetime.now(UTC) - timedelta(days=181)
    store.append_samples([Sample(long_ago, "gpu-node-00", 0, "ecc_sbe_volatile", 1.0)])
    fleet_sweep(fleet_file=inventory, depth="quick", emit_events=False)
    assert any(s.time < datetime.now(UTC) - timedelta(days=180) for s in store.iter_samples())  # quick: no pruning
    fleet_sweep(fleet_file=inventory, depth="full", emit_events=False)
    assert all(s.time > datetime.now(UTC) - timedelta(days=180) for s in store.iter_samples())
    after_full = store.count_samples()
    assert after_full > 0
    # Seconds later nothing has changed and the gauges were just read: another sweep adds no reading.
    fleet_sweep(fleet_file=inventory, depth="full", emit_events=False)
    assert store.count_samples() == after_full


@pytest.mark.usefixtures("prefect_harness")
def test_a_node_no_sweep_can_assess_is_a_blind_spot_announced_once_and_its_return_too(
    small_fleet: SimulatedFleet, tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact
    from prefect.events import emit_event

    from flows.sweep import fleet_sweep

    inventory = _inventory_with_store(small_fleet, tmp_path)
    reachable, recorded = _gpu_node_01_down_and_dark_for_5_hours(inventory, tmp_path)
    last_seen = recorded.seen_at
    assert last_seen is not None

    document = fleet_sweep(fleet_file=inventory, depth="quick", emit_events=True)
    nodes = {n["node"]: n for n in document["nodes"]}
    assert nodes["gpu-node-01"]["verdict"] == "unknown" and nodes["gpu-node-01"]["action"] == "none"
    assert nodes["gpu-node-01"]["last_seen"] == last_seen.isoformat()
    assert nodes["gpu-node-00"]["last_seen"] == document["started"]
    report = str(Artifact.get("fleet-health-report").data)  # type: ignore[union-attr]
    assert "## Blind spots" in report and "| **gpu-node-01** | not seen since" in report

    def announced() -> list[dict[str, object]]:
        return [p for p in event_payloads("gpumedic.node.unseen") if p["sweep_id"] in sweeps]

    sweeps = {document["sweep_id"]}
    assert eventually(lambda: len(announced()) == 1, timeout_s=120)
    assert announced()[0]["node"] == "gpu-node-01" and announced()[0]["last_seen"] == last_seen.isoformat()
    assert float(announced()[0]["unseen_hours"]) >= 7  # type: ignore[arg-type]

    # The next sweep still lists it, and announces nothing new: one announcement per dark spell.
    second = fleet_sweep(fleet_file=inventory, depth="quick", emit_events=True)
    sweeps.add(second["sweep_id"])
    marker = f"after {second['sweep_id']}"
    emit_event(event="gpumedic.test.marker", resource={"prefect.resource.id": "gpumedic.test"},
               payload={"sweep_id": marker})
    assert eventually(lambda: any(p["sweep_id"] == marker for p in event_payloads("gpumedic.test.marker")),
                      timeout_s=120)
    assert len(announced()) == 1
    assert "| **gpu-node-01** | not seen since" in str(Artifact.get("fleet-health-report").data)  # type: ignore[union-attr]

    # The node answers again: its return is announced, with how long it was dark.
    Path(inventory).write_text(reachable)
    third = fleet_sweep(fleet_file=inventory, depth="quick", emit_events=True)
    assert {n["node"]: n["last_seen"] for n in third["nodes"]}["gpu-node-01"] == third["started"]

    def back() -> list[dict[str, object]]:
        return [p for p in event_payloads("gpumedic.node.seen-again") if p["sweep_id"] == third["sweep_id"]]

    assert eventually(lambda: len(back()) == 1, timeout_s=120)
    assert back()[0]["node"] == "gpu-node-01" and back()[0]["last_seen"] == last_seen.isoformat()
    assert float(back()[0]["unseen_hours"]) >= 7  # type: ignore[arg-type]
    assert "Blind spots" not in str(Artifact.get("fleet-health-report").data)  # type: ignore[union-attr]


@pytest.mark.usefixtures("prefect_harness")
def test_a_report_only_sweep_leaves_a_dark_spells_announcement_to_the_next_sweep(
    small_fleet: SimulatedFleet, tmp_path: Path
) -> None:
    from flows.sweep import fleet_sweep
    from gpumedic.adapters.store import TelemetryStore

    inventory = _inventory_with_store(small_fleet, tmp_path)
    _, recorded = _gpu_node_01_down_and_dark_for_5_hours(inventory, tmp_path)
    store = TelemetryStore(f"sqlite:///{tmp_path / 'store.db'}")

    # The spell passes the 6 h delay during a report-only sweep: the report lists it, nothing is
    # announced, and the store keeps the record that says it has not been announced.
    quiet = fleet_sweep(fleet_file=inventory, emit_events=False)
    assert {n["node"]: n["verdict"] for n in quiet["nodes"]}["gpu-node-01"] == "unknown"
    assert store.last_observations(["gpu-node-01"])["gpu-node-01"] == recorded
    assert store.last_observations(["gpu-node-00"])["gpu-node-00"].seen_at is not None  # the rest is recorded

    loud = fleet_sweep(fleet_file=inventory, emit_events=True)

    def announced() -> list[dict[str, object]]:
        return [p for p in event_payloads("gpumedic.node.unseen") if p["sweep_id"] == loud["sweep_id"]]

    assert eventually(lambda: len(announced()) == 1, timeout_s=120)
    assert announced()[0]["node"] == "gpu-node-01" and float(announced()[0]["unseen_hours"]) >= 7  # type: ignore[arg-type]
