"""assess_node: every rule, and the reference fleet scenario (the product's acceptance test)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpumedic.domain.assess import assess_node, summarise, unknown_node
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, RowRemapBanks, XidEvent
from gpumedic.domain.verdict import Action, Finding, GpuAssessment, NodeAssessment, Verdict

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = HealthPolicy()
H, W, D, U, F = Verdict.HEALTHY, Verdict.WATCH, Verdict.DEGRADED, Verdict.UNKNOWN, Verdict.FAILED


def bus(index: int) -> str:
    """nvidia-smi's spelling: 8-digit domain, upper-case hex."""
    return f"00000000:{0x18 + 0x11 * index:02X}:00.0"


def kernel_bus(index: int) -> str:
    """The Xid parser's spelling: 4-digit domain, lower-case hex."""
    return f"0000:{0x18 + 0x11 * index:02x}:00.0"


def gpu(index: int, **changes: Any) -> GpuTelemetry:
    """A healthy H100 as nvidia-smi -q reports it on an idle node."""
    healthy = GpuTelemetry(
        index=index,
        uuid=f"GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd",
        serial=f"165322000000{index}",
        pci_bus_id=bus(index),
        name="NVIDIA H100 80GB HBM3",
        temperature_c=38.0,
        temp_slowdown_c=87.0,
        temp_shutdown_c=92.0,
        power_w=70.0,
        power_limit_w=700.0,
        sm_clock_mhz=345.0,
        throttle_reasons=frozenset({"gpu_idle"}),
        ecc_sbe_volatile=0,
        ecc_dbe_volatile=0,
        ecc_sbe_aggregate=0,
        ecc_dbe_aggregate=0,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=0,
        row_remap_pending=False,
        row_remap_failure=False,
        remap_banks=RowRemapBanks(max=2560, high=0, partial=0, low=0, none=0),
        nvlinks=tuple(
            NvLinkState(link=i, active=True, crc_errors=0, replay_errors=0, recovery_errors=0) for i in range(18)
        ),
        pcie_replay=58,
        recovery_action="None",
    )
    return dataclasses.replace(healthy, **changes)


def node(
    *changed: GpuTelemetry,
    count: int = 8,
    expected: int | None = 8,
    xids: tuple[XidEvent, ...] = (),
    errors: tuple[str, ...] = (),
    at: datetime = NOW,
    drop: tuple[int, ...] = (),
) -> NodeTelemetry:
    gpus = {i: gpu(i) for i in range(count) if i not in drop}
    gpus |= {g.index: g for g in changed}
    return NodeTelemetry(
        node="gpu-node-01",
        collected_at=at,
        source="ssh",
        gpus=tuple(gpus[i] for i in sorted(gpus)),
        expected_gpu_count=expected,
        xid_events=xids,
        collection_errors=errors,
    )


def xid(code: int, index: int | None, text: str = "") -> XidEvent:
    return XidEvent(code=code, pci_bus_id=kernel_bus(index) if index is not None else None, time=None, text=text)


def gpu_result(result: NodeAssessment, index: int) -> GpuAssessment:
    return next(g for g in result.gpus if g.index == index)


def assert_only(result: NodeAssessment, index: int, verdict: Verdict, action: Action) -> None:
    """GPU `index` carries the verdict and action; every other GPU is untouched."""
    target = gpu_result(result, index)
    assert (target.verdict, target.action) == (verdict, action), target.reasons
    for other in result.gpus:
        if other.index != index:
            assert (other.verdict, other.action, other.reasons) == (H, Action.NONE, ())


# --- the reference fleet scenario ------------------------------------------------------------------


def test_reference_xid79_on_gpu5_fails_the_node_and_reboots_it() -> None:
    result = assess_node(
        node(xids=(xid(79, 5, "pid='<unknown>', name=<unknown>, GPU has fallen off the bus."),)), POLICY
    )
    assert (result.verdict, result.action) == (F, Action.REBOOT)
    assert result.needs_remediation
    assert_only(result, 5, F, Action.REBOOT)


def test_reference_xid13_on_gpu1_is_an_application_fault_not_a_node_fault() -> None:
    text = "pid='<unknown>', name=<unknown>, Graphics SM Warp Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction"
    result = assess_node(node(xids=(xid(13, 1, text),)), POLICY)
    assert (result.verdict, result.action) == (W, Action.RESTART_APP)
    assert not result.needs_remediation
    assert_only(result, 1, W, Action.RESTART_APP)


def test_reference_row_remap_failure_on_gpu2_replaces() -> None:
    result = assess_node(node(gpu(2, row_remap_failure=True)), POLICY)
    assert (result.verdict, result.action) == (F, Action.REPLACE)
    assert_only(result, 2, F, Action.REPLACE)


def test_reference_97c_against_an_87c_slowdown_on_gpu0_goes_to_a_human() -> None:
    result = assess_node(node(gpu(0, temperature_c=97.0, temp_slowdown_c=87.0)), POLICY)
    assert (result.verdict, result.action) == (D, Action.INSPECT)
    assert_only(result, 0, D, Action.INSPECT)
    assert gpu_result(result, 0).reasons == ("GPU 0: 97 C is at or above the slowdown threshold 87 C",)


def test_reference_two_volatile_dbe_on_gpu3_reset_the_gpu() -> None:
    result = assess_node(node(gpu(3, ecc_dbe_volatile=2, ecc_dbe_aggregate=2)), POLICY)
    assert (result.verdict, result.action) == (F, Action.RESET_GPU)
    assert_only(result, 3, F, Action.RESET_GPU)
    assert gpu_result(result, 3).reasons == (
        "GPU 3: 2 volatile uncorrectable (DBE) ECC errors since the last driver load",
    )


def test_reference_nvlink2_down_on_gpu6_resets_the_gpu() -> None:
    links = tuple(NvLinkState(link=i, active=i != 2, crc_errors=0) for i in range(18))
    result = assess_node(node(gpu(6, nvlinks=links)), POLICY)
    assert (result.verdict, result.action) == (D, Action.RESET_GPU)
    assert_only(result, 6, D, Action.RESET_GPU)
    assert "NVLink 2 down (1 of 18 links)" in gpu_result(result, 6).reasons[0]


def test_reference_unreachable_node_is_unknown_and_left_alone() -> None:
    error = "ssh gpu-node-01: connection timed out after 10 s"
    result = assess_node(node(count=0, errors=(error,)), POLICY)
    assert (result.verdict, result.action, result.reasons, result.gpus) == (U, Action.NONE, (error,), ())


def test_reference_seven_of_eight_gpus_fails_the_node_and_reboots_it() -> None:
    result = assess_node(node(drop=(7,)), POLICY)
    assert (result.verdict, result.action) == (F, Action.REBOOT)
    assert result.reasons == ("expected 8 GPUs, found 7: indices 0-6 present, 7 missing",)


def test_reference_untouched_node_is_healthy_with_no_reasons() -> None:
    result = assess_node(node(), POLICY)
    assert (result.verdict, result.action, result.reasons) == (H, Action.NONE, ())
    assert all((g.verdict, g.action, g.reasons) == (H, Action.NONE, ()) for g in result.gpus)
    assert not result.needs_remediation
    assert not result.field_diagnostics


# --- GPU count -----------------------------------------------------------------------------------


def test_missing_gpu_in_the_middle_is_named() -> None:
    result = assess_node(node(drop=(3, 5)), POLICY)
    assert result.reasons == ("expected 8 GPUs, found 6: indices 0-2, 4, 6-7 present, 3, 5 missing",)


def test_zero_gpus_when_eight_are_expected_reboots() -> None:
    result = assess_node(node(count=0), POLICY)
    assert (result.verdict, result.action, result.reasons) == (F, Action.REBOOT, ("expected 8 GPUs, found none",))


def test_more_gpus_than_expected_is_watched() -> None:
    result = assess_node(node(count=9), POLICY)
    assert (result.verdict, result.action) == (W, Action.MONITOR)
    assert "expected 8 GPUs, found 9" in result.reasons[0]


def test_no_expected_count_means_no_count_rule() -> None:
    assert assess_node(node(count=3, expected=None), POLICY).verdict is H


# --- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "verdict", "action", "reason"),
    [
        ({"ecc_dbe_volatile": 1}, F, Action.RESET_GPU, "GPU 4: 1 volatile uncorrectable (DBE) ECC error since"),
        (
            {"row_remap_pending": True},
            D,
            Action.RESET_GPU,
            "GPU 4: pending row remap: takes effect at the next GPU reset",
        ),
        ({"row_remap_failure": True}, F, Action.REPLACE, "GPU 4: row remapping failed"),
        (
            {"sram_threshold_exceeded": True},
            F,
            Action.REPLACE,
            "GPU 4: SRAM uncorrectable errors exceed the field diagnostic's threshold",
        ),
        (
            {"remap_banks": RowRemapBanks(max=2557, low=0, none=3)},
            F,
            Action.REPLACE,
            "GPU 4: 3 banks have no spare rows left",
        ),
        (
            {"remap_banks": RowRemapBanks(max=2558, low=2, none=0)},
            W,
            Action.MONITOR,
            "GPU 4: 2 banks have few spare rows",
        ),
        ({"retired_pages_pending": True}, D, Action.RESET_GPU, "GPU 4: pending page retirement"),
        (
            {"retired_pages_sbe": 40, "retired_pages_dbe": 20},
            F,
            Action.REPLACE,
            "GPU 4: 60 retired pages, at or above 60",
        ),
        ({"retired_pages_sbe": 15, "retired_pages_dbe": 0}, W, Action.MONITOR, "GPU 4: 15 retired pages (watch at 15)"),
    ],
)
def test_memory_rules(changes: dict[str, Any], verdict: Verdict, action: Action, reason: str) -> None:
    result = assess_node(node(gpu(4, **changes)), POLICY)
    assert_only(result, 4, verdict, action)
    assert gpu_result(result, 4).reasons[0].startswith(reason)


def test_past_dbe_already_repaired_by_a_row_remap_is_healthy() -> None:
    # GH200 in the corpus: aggregate DRAM uncorrectable 1, one uncorrectable remapped row, not pending.
    repaired = gpu(
        0,
        ecc_dbe_aggregate=1,
        ecc_dbe_volatile=0,
        remapped_rows_uncorrectable=1,
        row_remap_pending=False,
        remap_banks=RowRemapBanks(max=3071, high=1, partial=0, low=0, none=0),
    )
    assert assess_node(node(repaired), POLICY).verdict is H


def test_low_bank_threshold_follows_the_policy() -> None:
    banks = RowRemapBanks(max=2558, low=2, none=0)
    assert assess_node(node(gpu(4, remap_banks=banks)), HealthPolicy(banks_low_spare_watch=3)).verdict is H


# --- thermal and power ---------------------------------------------------------------------------


def test_temperature_margin_brings_the_threshold_forward() -> None:
    warm = node(gpu(0, temperature_c=84.0, temp_slowdown_c=87.0))
    assert assess_node(warm, POLICY).verdict is H
    result = assess_node(warm, HealthPolicy(temperature_margin_c=5))
    assert_only(result, 0, D, Action.INSPECT)
    assert "minus a 5 C margin" in gpu_result(result, 0).reasons[0]


def test_unreported_slowdown_uses_the_policy_default_and_says_so() -> None:
    result = assess_node(node(gpu(0, temperature_c=88.0, temp_slowdown_c=None)), POLICY)
    assert_only(result, 0, D, Action.INSPECT)
    assert "87 C (not reported; assumed)" in gpu_result(result, 0).reasons[0]
    assert assess_node(node(gpu(0, temperature_c=80.0, temp_slowdown_c=None)), POLICY).verdict is H


@pytest.mark.parametrize(
    "reason", ["hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown", "hw_slowdown"]
)
def test_thermal_and_power_slowdowns_go_to_a_human(reason: str) -> None:
    result = assess_node(node(gpu(2, throttle_reasons=frozenset({reason, "sw_power_cap"}))), POLICY)
    assert_only(result, 2, D, Action.INSPECT)
    assert reason in gpu_result(result, 2).reasons[0]


def test_power_cap_and_idle_are_normal() -> None:
    # A40 in the corpus: 'SW Power Cap : Active' while idle in P8.
    normal = gpu(2, throttle_reasons=frozenset({"sw_power_cap", "gpu_idle", "applications_clocks_setting"}))
    assert assess_node(node(normal), POLICY).verdict is H


# --- NVLink --------------------------------------------------------------------------------------


def _links(down: set[int], count: int = 18) -> tuple[NvLinkState, ...]:
    return tuple(NvLinkState(link=i, active=i not in down) for i in range(count))


def test_all_links_of_a_gpu_down_reboots() -> None:
    result = assess_node(node(gpu(6, nvlinks=_links(set(range(18))))), POLICY)
    assert_only(result, 6, D, Action.REBOOT)
    assert "all 18 NVLinks down" in gpu_result(result, 6).reasons[0]


def test_links_down_on_several_gpus_reboots_the_node_for_the_fabric() -> None:
    result = assess_node(node(gpu(0, nvlinks=_links({1})), gpu(5, nvlinks=_links({4, 5}))), POLICY)
    assert (result.verdict, result.action) == (D, Action.REBOOT)
    assert "NVLinks down on 2 GPUs (0, 5)" in result.reasons[0]
    assert gpu_result(result, 0).action is Action.RESET_GPU


def test_inactive_links_are_not_faults_where_the_policy_says_so() -> None:
    pcie_fleet = HealthPolicy(nvlink_inactive_is_fault=False)
    assert assess_node(node(gpu(6, nvlinks=_links(set(range(18))))), pcie_fleet).verdict is H


def test_unreported_link_state_is_not_a_fault() -> None:
    unknown_links = tuple(NvLinkState(link=i, active=None) for i in range(18))
    assert assess_node(node(gpu(6, nvlinks=unknown_links)), POLICY).verdict is H


# --- driver recovery action -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "verdict", "action"),
    [
        ("Reset", F, Action.RESET_GPU),
        ("Reboot", F, Action.REBOOT),
        ("Drain_P2P", F, Action.RESET_GPU),
        ("Drain_And_Reset", F, Action.RESET_GPU),
        ("drain and reset", F, Action.RESET_GPU),
        ("Something_New", W, Action.MONITOR),
    ],
)
def test_driver_recovery_action(value: str, verdict: Verdict, action: Action) -> None:
    result = assess_node(node(gpu(1, recovery_action=value)), POLICY)
    assert_only(result, 1, verdict, action)
    assert repr(value) in gpu_result(result, 1).reasons[0]


@pytest.mark.parametrize("value", ["None", "N/A", "[N/A]", None])
def test_no_recovery_action_is_nothing(value: str | None) -> None:
    assert assess_node(node(gpu(1, recovery_action=value)), POLICY).verdict is H


# --- rates ----------------------------------------------------------------------------------------


def _two_sweeps(before: dict[str, Any], after: dict[str, Any], hours: float = 1.0) -> NodeAssessment:
    previous = node(gpu(2, **before), at=NOW - timedelta(hours=hours))
    return assess_node(node(gpu(2, **after)), POLICY, previous=previous)


def test_sbe_rate_above_threshold_is_watched() -> None:
    result = _two_sweeps({"ecc_sbe_volatile": 100}, {"ecc_sbe_volatile": 400}, hours=2)
    assert_only(result, 2, W, Action.MONITOR)
    assert gpu_result(result, 2).reasons[0] == (
        "GPU 2: 150 correctable (SBE) ECC errors per hour (volatile counter, over 2 h), above 100/h"
    )


def test_sbe_rate_falls_back_to_the_aggregate_counter() -> None:
    result = _two_sweeps(
        {"ecc_sbe_volatile": None, "ecc_sbe_aggregate": 10}, {"ecc_sbe_volatile": None, "ecc_sbe_aggregate": 500}
    )
    assert "aggregate counter" in gpu_result(result, 2).reasons[0]


def test_sbe_rate_below_threshold_is_healthy() -> None:
    assert _two_sweeps({"ecc_sbe_volatile": 100}, {"ecc_sbe_volatile": 150}).verdict is H


def test_a_counter_that_went_down_was_reset_and_raises_no_alarm() -> None:
    assert (
        _two_sweeps(
            {"ecc_sbe_volatile": 90_000, "pcie_replay": 9_000}, {"ecc_sbe_volatile": 3, "pcie_replay": 0}
        ).verdict
        is H
    )


def test_totals_alone_never_trigger_a_rate_finding() -> None:
    # GB200 in the corpus: 54.7e9 lifetime corrected errors; with no previous sweep there is no rate.
    assert assess_node(node(gpu(2, ecc_sbe_aggregate=54_700_000_000, pcie_replay=10**9)), POLICY).verdict is H


def test_sweeps_too_close_together_give_no_rate() -> None:
    assert _two_sweeps({"ecc_sbe_volatile": 0}, {"ecc_sbe_volatile": 50}, hours=1 / 60).verdict is H


def test_pcie_replay_rate_above_threshold_is_watched() -> None:
    result = _two_sweeps({"pcie_replay": 58}, {"pcie_replay": 1058})
    assert_only(result, 2, W, Action.MONITOR)
    assert "1000 PCIe replays per hour" in gpu_result(result, 2).reasons[0]


def test_nvlink_crc_rate_above_threshold_is_watched_per_link() -> None:
    before = tuple(NvLinkState(link=i, active=True, crc_errors=10) for i in range(18))
    after = tuple(NvLinkState(link=i, active=True, crc_errors=10 + (400_000 if i == 7 else 5)) for i in range(18))
    result = _two_sweeps({"nvlinks": before}, {"nvlinks": after})
    assert_only(result, 2, W, Action.MONITOR)
    assert "NVLink CRC errors link 7 400000/h" in gpu_result(result, 2).reasons[0]


def test_previous_gpu_is_matched_by_uuid_not_index() -> None:
    previous = node(gpu(2, ecc_sbe_volatile=0, uuid="GPU-old"), at=NOW - timedelta(hours=1))
    replaced = gpu(2, ecc_sbe_volatile=5000, uuid="GPU-new")
    assert assess_node(node(replaced), POLICY, previous=previous).verdict is H


# --- Xid attribution ------------------------------------------------------------------------------


def test_xid_is_attributed_across_pci_spellings() -> None:
    event = XidEvent(code=48, pci_bus_id="PCI:0000:3A:00", time=None, text="")
    result = assess_node(node(xids=(event,)), POLICY)  # GPU 2 is 00000000:3A:00.0
    assert_only(result, 2, F, Action.RESET_GPU)
    assert result.reasons == ()


def test_xid79_of_a_gpu_missing_from_the_list_is_a_node_finding() -> None:
    result = assess_node(node(drop=(5,), xids=(xid(79, 5, "GPU has fallen off the bus."),)), POLICY)
    assert (result.verdict, result.action) == (F, Action.REBOOT)
    assert result.reasons == (
        "expected 8 GPUs, found 7: indices 0-4, 6-7 present, 5 missing",
        "PCI 0000:6d:00.0 (not in the GPU list): Xid 79 (GPU has fallen off the bus): "
        "reboot the node; replace the GPU if it falls off the bus again",
    )


def test_xid_without_a_pci_address_is_a_node_finding() -> None:
    result = assess_node(node(xids=(xid(13, None), xid(13, None))), POLICY)
    assert (result.verdict, result.action) == (W, Action.RESTART_APP)
    assert result.reasons[0].startswith("Xid without a PCI address: Xid 13 (Graphics Engine Exception) x2")


def test_ignored_xid_keeps_the_node_healthy_but_is_reported() -> None:
    result = assess_node(node(xids=(xid(43, 1, "pid=1045242, name=pt_main_thread, Ch 00000008"),)), POLICY)
    assert (result.verdict, result.action) == (H, Action.NONE)
    assert gpu_result(result, 1).reasons == ("GPU 1: Xid 43 (GPU stopped processing): ignored, application-level",)


@pytest.mark.parametrize(
    "prior",
    [
        {"GPU-00000005-AAAA-BBBB-CCCC-DDDDDDDDDDDD": {79}},  # UUID, other case
        {"0000:6d:00.0": [79, 13]},  # PCI, kernel spelling
        {"00000000:6D:00.0": (79,)},  # PCI, nvidia-smi spelling
        {5: {79}},  # GPU index (what the telemetry store keeps)
    ],
)
def test_xid79_again_on_the_same_gpu_replaces_it(prior: dict[Any, Any]) -> None:
    result = assess_node(node(xids=(xid(79, 5),)), POLICY, prior_xids=prior)
    assert_only(result, 5, F, Action.REPLACE)


def test_xid79_history_of_another_gpu_does_not_count() -> None:
    result = assess_node(node(xids=(xid(79, 5),)), POLICY, prior_xids={"0000:7e:00.0": {79}})
    assert gpu_result(result, 5).action is Action.REBOOT


def test_xid79_again_on_a_gpu_missing_from_the_list_replaces_it() -> None:
    result = assess_node(node(drop=(5,), xids=(xid(79, 5),)), POLICY, prior_xids={"0000:6D:00.0": {79}})
    assert (result.verdict, result.action) == (F, Action.REPLACE)


def test_xid48_with_63_asks_the_remediation_for_field_diagnostics() -> None:
    result = assess_node(node(xids=(xid(48, 3), xid(63, 3), xid(94, 3))), POLICY)
    assert (result.action, result.field_diagnostics) == (Action.RESET_GPU, True)
    assert gpu_result(result, 3).field_diagnostics
    assert not gpu_result(result, 2).field_diagnostics


def test_xid154_follows_the_driver() -> None:
    text = "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
    result = assess_node(node(xids=(xid(119, 4), xid(154, 4, text))), POLICY)
    assert_only(result, 4, F, Action.REBOOT)


# --- collection errors and missing data ------------------------------------------------------------


def test_collection_error_with_a_parsed_xid79_still_reboots() -> None:
    result = assess_node(
        node(
            errors=("nvidia-smi: Unable to determine the device handle for GPU0000:6D:00.0: Unknown Error",),
            xids=(xid(79, 5),),
        ),
        POLICY,
    )
    assert (result.verdict, result.action) == (F, Action.REBOOT)
    assert "Unable to determine the device handle" in result.reasons[0]


def test_collection_error_with_an_empty_gpu_list_never_reboots() -> None:
    result = assess_node(node(count=0, errors=("nvidia-smi -q: output could not be parsed",)), POLICY)
    assert (result.verdict, result.action) == (U, Action.NONE)
    assert result.reasons == ("nvidia-smi -q: output could not be parsed",)


def test_collection_error_outranks_degraded_but_keeps_its_findings() -> None:
    hot = gpu(0, temperature_c=95.0)
    result = assess_node(node(hot, errors=("journalctl: permission denied",)), POLICY)
    assert (result.verdict, result.action) == (U, Action.INSPECT)
    assert (gpu_result(result, 0).verdict, gpu_result(result, 0).action) == (D, Action.INSPECT)


def test_a_gpu_that_reported_nothing_is_unknown() -> None:
    blank = GpuTelemetry(index=3, uuid="GPU-3", pci_bus_id=bus(3), name="NVIDIA H100 80GB HBM3")
    result = assess_node(node(blank), POLICY)
    assert (result.verdict, result.action) == (U, Action.NONE)
    assert gpu_result(result, 3).reasons == ("GPU 3: no health data reported",)


def test_unknown_node_helper() -> None:
    result = unknown_node("gpu-node-09", "not in the inventory's SSH targets")
    assert result == NodeAssessment("gpu-node-09", U, Action.NONE, ("not in the inventory's SSH targets",), ())
    assert not result.needs_remediation


def test_summarise_takes_the_worst_and_keeps_every_reason() -> None:
    findings = [
        Finding(W, Action.MONITOR, "a"),
        Finding(F, Action.RESET_GPU, "b", field_diagnostics=True),
        Finding(U, Action.NONE, "c"),
    ]
    assert summarise(findings) == (F, Action.RESET_GPU, ("a", "b", "c"), True)
    assert summarise([]) == (H, Action.NONE, (), False)
