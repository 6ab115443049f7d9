"""Collectors against the simulated fleet: real sshd, real HTTP, real parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from gpumedic.adapters.collect_exporter import collect_from_exporter
from gpumedic.adapters.collect_ssh import collect_over_ssh, composite_command, split_sections, tool_commands
from gpumedic.adapters.targets import ssh_settings
from gpumedic.inventory import resolve_fleet
from gpumedic.sim import node_state
from gpumedic.sim.fleet import SimulatedFleet


def _targets(fleet: SimulatedFleet):  # type: ignore[no-untyped-def]
    settings, targets = resolve_fleet(str(fleet.inventory_file))
    return settings, {t.name: t for t in targets}


def test_healthy_node_reports_every_gpu_with_its_thresholds(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    t = collect_over_ssh(targets["gpu-node-00"], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                         lookback=timedelta(hours=24))
    assert t.collection_errors == ()
    assert [g.index for g in t.gpus] == list(range(8))
    state = node_state.load(example_fleet.state_file("gpu-node-00"))
    for gpu, truth in zip(t.gpus, state["gpus"], strict=True):
        assert gpu.uuid == truth["uuid"]
        assert gpu.temperature_c == truth["temp"]
        assert gpu.temp_slowdown_c == truth["slowdown"]
        assert gpu.remap_banks is not None and gpu.remap_banks.max == truth["banks"][0]
        assert len(gpu.nvlinks) == 12 and all(link.active for link in gpu.nvlinks)
        assert gpu.ecc_sbe_aggregate == truth["sbe_agg"]


def test_a_quick_reading_lacks_only_what_the_last_full_one_is_asked_for(example_fleet: SimulatedFleet) -> None:
    """Pins the collector and the domain's CARRIED_FIELDS together: every state field a quick
    sweep cannot read is carried; what else it lacks are counters (rated between full sweeps)."""
    import dataclasses

    from gpumedic.domain.deep_readings import CARRIED_FIELDS

    settings, targets = _targets(example_fleet)
    target, ssh = targets["gpu-node-00"], ssh_settings(settings)
    full = collect_over_ssh(target, ssh, since=None, lookback=timedelta(hours=24))  # type: ignore[arg-type]
    quick = collect_over_ssh(target, ssh, since=None, lookback=timedelta(hours=24), depth="quick")  # type: ignore[arg-type]
    assert (full.depth, quick.depth) == ("full", "quick")
    assert quick.collection_errors == () and len(quick.gpus) == len(full.gpus) == 8
    for q, f in zip(quick.gpus, full.gpus, strict=True):
        lacking = {field.name for field in dataclasses.fields(q)
                   if getattr(q, field.name) is None and getattr(f, field.name) is not None}
        assert lacking <= set(CARRIED_FIELDS) | {"pcie_replay"}, lacking
        assert {"sram_threshold_exceeded", "remap_banks", "temp_slowdown_c"} <= lacking
        assert all(link.crc_errors is None for link in q.nvlinks) and all(link.crc_errors == 0 for link in f.nvlinks)


def test_xid_lines_are_collected_with_their_pci_id(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    t = collect_over_ssh(targets["gpu-node-03"], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                         lookback=timedelta(hours=24))
    assert [(e.code, e.pci_bus_id) for e in t.xid_events if e.code == 79][:1] == [(79, "0000:90:00.0")]
    assert len(t.gpus) == 7  # the GPU that fell off the bus is gone from nvidia-smi


def test_kernel_log_window_excludes_xids_before_the_last_sweep(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    t = collect_over_ssh(targets["gpu-node-03"], ssh_settings(settings),  # type: ignore[arg-type]
                         since=datetime.now(UTC) - timedelta(seconds=30), lookback=timedelta(hours=24))
    assert t.collection_errors == ()
    assert t.xid_events == ()


def test_garbled_nvidia_smi_is_a_collection_error_not_data(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    t = collect_over_ssh(targets["gpu-node-10"], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                         lookback=timedelta(hours=24))
    assert t.gpus == ()
    assert any("nvidia-smi --query-gpu" in e for e in t.collection_errors)


def test_unreachable_node_is_a_collection_error(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    t = collect_over_ssh(targets["gpu-node-09"], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                         lookback=timedelta(hours=24))
    assert t.gpus == () and "connect" in t.collection_errors[0]


def test_exporter_and_ssh_agree_on_the_same_node(example_fleet: SimulatedFleet) -> None:
    settings, targets = _targets(example_fleet)
    over_ssh = collect_over_ssh(targets["gpu-node-07"], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                                lookback=timedelta(hours=24))
    with httpx.Client() as client:
        scraped = collect_from_exporter(targets["gpu-node-07"], client=client, timeout_s=5)
    assert scraped.collection_errors == ()
    pairs = zip(over_ssh.gpus, scraped.gpus, strict=True)
    assert all(a.uuid == b.uuid and a.ecc_dbe_volatile == b.ecc_dbe_volatile for a, b in pairs)
    assert scraped.gpus[3].ecc_dbe_volatile == 2


def test_a_failing_tool_does_not_hide_the_others() -> None:
    text = ("0, GPU-x\n@@gpumedic:end:query:0\nNVIDIA-SMI has failed because it couldn't communicate with the "
            "NVIDIA driver.\n@@gpumedic:end:q:9\n")
    sections = split_sections(text)
    assert sections["query"][0] == 0 and sections["q"] == (9, sections["q"][1])
    assert "couldn't communicate" in sections["q"][1]


def test_the_composite_command_carries_each_exit_status() -> None:
    line = composite_command(tool_commands(datetime(2026, 1, 1, tzinfo=UTC), "quick"))
    assert line.count("@@gpumedic:end:") == 3 and "$?" in line and "-q" not in line.split()


def test_the_exporters_last_xid_gauge_counts_once(example_fleet: SimulatedFleet) -> None:
    from gpumedic.adapters.collect_exporter import new_gauge_xids
    from gpumedic.domain.telemetry import XidEvent

    _, targets = _targets(example_fleet)
    with httpx.Client() as client:
        first = collect_from_exporter(targets["gpu-node-00"], client=client, timeout_s=5)
    xid = XidEvent(code=48, pci_bus_id="00000000:07:00.0", time=None, text="last Xid reported by DCGM")
    import dataclasses

    before = dataclasses.replace(first, xid_events=(xid,))
    again = dataclasses.replace(first, xid_events=(xid,))
    assert new_gauge_xids(before, None).xid_events == (xid,)
    assert new_gauge_xids(again, before).xid_events == ()
    other = XidEvent(code=79, pci_bus_id="00000000:07:00.0", time=None, text="last Xid reported by DCGM")
    assert new_gauge_xids(dataclasses.replace(first, xid_events=(other,)), before).xid_events == (other,)


def test_a_mig_node_without_nvlink_queries_is_not_unknown() -> None:
    from gpumedic.adapters.collect_ssh import parse_sections
    from tests.parsers.corpus import CORPUS_DIR  # the real-outputs corpus beside the repo

    mig = (CORPUS_DIR / "nvidia-smi-nvlink-s_H200_MIG-enabled_not-supported_01.txt").read_text()
    query = "0, GPU-1, 1, 00000000:83:00.0, NVIDIA H200, 30, 80.0, 700.0, 1980, 0x0000000000000001, " \
            "0, 0, 0, 0, [N/A], [N/A], [N/A], 0, 0, No, No\n"
    t = parse_sections("n", {"query": (0, query), "nvlink_status": (0, mig), "kernel_log": (0, "-- No entries --\n")},
                       now=datetime.now(UTC), expected_gpus=1, expected=("query", "nvlink_status", "kernel_log"))
    assert t.collection_errors == ()
    assert t.gpus[0].nvlinks == ()


def test_the_sram_threshold_flag_travels_from_nvidia_smi_q_over_ssh_to_a_replacement(
    small_fleet: SimulatedFleet,
) -> None:
    from gpumedic.domain.assess import assess_node
    from gpumedic.domain.policy import HealthPolicy
    from gpumedic.domain.verdict import Action

    with node_state.locked(small_fleet.state_file("gpu-node-01")) as state:
        node_state.apply_fault(state, {"gpu": 2, "sram_threshold_exceeded": True}, now=0.0)
    settings, targets = _targets(small_fleet)
    collected = {
        name: collect_over_ssh(targets[name], ssh_settings(settings), since=None,  # type: ignore[arg-type]
                               lookback=timedelta(hours=1))
        for name in ("gpu-node-00", "gpu-node-01")
    }
    assert all(t.collection_errors == () for t in collected.values())
    assert {name: [g.sram_threshold_exceeded for g in t.gpus] for name, t in collected.items()} == {
        "gpu-node-00": [False] * 4, "gpu-node-01": [False, False, True, False]}
    assessed = assess_node(collected["gpu-node-01"], HealthPolicy())
    assert assessed.action is Action.REPLACE
    assert any("SRAM Threshold Exceeded: Yes" in r for g in assessed.gpus for r in g.reasons)
    assert assess_node(collected["gpu-node-00"], HealthPolicy()).action is Action.NONE
