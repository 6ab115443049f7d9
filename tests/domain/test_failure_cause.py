"""What broke: the failure class a verdict's evidence names, and what an incident records from it.

The forecaster learns per class (memory, NVLink, PCIe, thermal, other) from the incidents
remediation records, so an incident must carry the class its evidence named, not only the
action it started.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpumedic.domain.assess import assess_node, likely_cause
from gpumedic.domain.failure_class import FailureClass
from gpumedic.domain.forecast import DEFAULT_MODEL
from gpumedic.domain.remediation import incident_kinds
from gpumedic.domain.telemetry import NodeTelemetry, NvLinkState
from gpumedic.domain.verdict import Action, Finding, Verdict
from gpumedic.domain.xid_catalog import XID_CATALOG, XID_CAUSES
from tests.domain.test_assess import NOW, POLICY, gpu, gpu_result, node, xid

HBM, NVLINK, BUS = FailureClass.HBM, FailureClass.NVLINK, FailureClass.FALLEN_OFF_BUS


@pytest.mark.parametrize(
    ("telemetry", "index", "cause"),
    [
        (node(gpu(3, ecc_dbe_volatile=2)), 3, HBM),
        (node(gpu(2, row_remap_failure=True)), 2, HBM),
        (node(gpu(2, row_remap_pending=True)), 2, HBM),
        (node(gpu(0, temperature_c=97.0, temp_slowdown_c=87.0)), 0, FailureClass.THERMAL),
        (node(gpu(6, nvlinks=tuple(NvLinkState(link=i, active=i != 2) for i in range(18)))), 6, NVLINK),
        (node(xids=(xid(79, 5),)), 5, BUS),
        (node(xids=(xid(74, 4),)), 4, NVLINK),
        (node(xids=(xid(119, 1),)), 1, FailureClass.GSP),
        (node(xids=(xid(48, 1), xid(63, 1))), 1, HBM),
        # An SRAM uncorrectable error still counts in the DBE total; the threshold flag names SRAM.
        (node(gpu(4, ecc_dbe_volatile=1, sram_threshold_exceeded=True)), 4, FailureClass.SRAM),
    ],
)
def test_a_gpus_evidence_names_what_broke(telemetry: NodeTelemetry, index: int, cause: FailureClass) -> None:
    result = assess_node(telemetry, POLICY)
    assert gpu_result(result, index).cause is cause
    assert all(g.cause is None for g in result.gpus if g.index != index)


def test_the_strongest_action_decides_and_a_part_beats_a_bare_driver_action() -> None:
    # Xid 79 (reboot) outranks the DBE (reset): the GPU fell off the bus.
    both = assess_node(node(gpu(5, ecc_dbe_volatile=1), xids=(xid(79, 5),)), POLICY)
    assert gpu_result(both, 5).action is Action.REBOOT
    assert gpu_result(both, 5).cause is BUS
    # The driver's recovery action names no part; the DBE beside it does.
    driver = assess_node(node(gpu(1, recovery_action="Reset", ecc_dbe_volatile=1)), POLICY)
    assert gpu_result(driver, 1).cause is HBM
    alone = assess_node(node(gpu(1, recovery_action="Reset")), POLICY)
    assert gpu_result(alone, 1).action is Action.RESET_GPU
    assert gpu_result(alone, 1).cause is None


def test_rates_name_their_part() -> None:
    previous = node(gpu(2, ecc_sbe_volatile=0, pcie_replay=0), at=NOW - timedelta(hours=1))
    result = assess_node(node(gpu(2, ecc_sbe_volatile=500, pcie_replay=0)), POLICY, previous=previous)
    assert gpu_result(result, 2).cause is HBM
    result = assess_node(node(gpu(2, ecc_sbe_volatile=0, pcie_replay=5000)), POLICY, previous=previous)
    assert gpu_result(result, 2).cause is FailureClass.PCIE


def test_a_healthy_node_and_an_application_fault_name_nothing() -> None:
    assert assess_node(node(), POLICY).cause is None
    assert all(g.cause is None for g in assess_node(node(), POLICY).gpus)
    app = assess_node(node(xids=(xid(13, 1),)), POLICY)
    assert gpu_result(app, 1).cause is None


def test_a_node_missing_a_gpu_names_the_bus_and_a_fabric_fault_names_nvlink() -> None:
    assert assess_node(node(drop=(7,)), POLICY).cause is BUS
    down = tuple(NvLinkState(link=i, active=False) for i in range(18))
    fabric = assess_node(node(*(gpu(i, nvlinks=down) for i in range(4))), POLICY)
    assert fabric.action is Action.REBOOT
    assert fabric.cause is NVLINK
    assert assess_node(node(count=0), POLICY).cause is None  # no GPU at all: the driver, not a part


def test_likely_cause_ignores_healthy_findings() -> None:
    ignored = Finding(Verdict.HEALTHY, Action.NONE, "Xid 63 recorded", cause=HBM)
    assert likely_cause([ignored]) is None
    assert likely_cause([]) is None


def test_every_xid_with_a_cause_is_in_the_catalog_and_memory_xids_are_memory_failures() -> None:
    assert set(XID_CAUSES) <= XID_CATALOG.codes
    # The forecaster's memory cause answers for what these Xids record.
    assert {DEFAULT_MODEL.cause_of(XID_CAUSES[c]) for c in (48, 64, 94, 95)} == {"memory"}
    assert DEFAULT_MODEL.cause_of(XID_CAUSES[74]) == "nvlink"


def test_an_incident_records_each_failing_gpus_cause_else_the_remediation_it_started() -> None:
    result = assess_node(node(gpu(3, ecc_dbe_volatile=2), gpu(4, recovery_action="Reset")), POLICY)
    assert incident_kinds(result, result.action) == {3: "hbm", 4: "remediation:reset_gpu"}
    # Only GPUs that need remediation are recorded: a watched GPU is not part of the incident.
    previous = node(at=NOW - timedelta(hours=1))
    watched = assess_node(node(gpu(3, ecc_dbe_volatile=2), gpu(2, ecc_sbe_volatile=500)), POLICY, previous=previous)
    assert incident_kinds(watched, watched.action) == {3: "hbm"}
    # A node-level incident is recorded against the node.
    missing = assess_node(node(drop=(7,)), POLICY)
    assert incident_kinds(missing, missing.action) == {None: "fallen_off_bus"}
    none_found = assess_node(node(count=0), POLICY)
    assert incident_kinds(none_found, none_found.action) == {None: "remediation:reboot"}
