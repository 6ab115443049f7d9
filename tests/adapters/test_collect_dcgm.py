"""The DCGM-bindings collector: its reading of DCGM values, and its answer where DCGM is not installed."""

from __future__ import annotations

import pytest

from gpumedic.adapters.collect_dcgm import collect_from_dcgm, gpu_from_field_values
from gpumedic.adapters.targets import NodeTarget
from gpumedic.parsers import ParseError

INT32_BLANK = 0x7FFFFFF0  # DCGM_INT32_BLANK: "no value"


def test_values_map_to_telemetry_and_blanks_read_as_not_reported() -> None:
    gpu = gpu_from_field_values(3, {
        "DCGM_FI_DEV_UUID": "GPU-abc", "DCGM_FI_DEV_SERIAL": "1320", "DCGM_FI_DEV_PCI_BUSID": "00000000:3B:00.0",
        "DCGM_FI_DEV_NAME": "NVIDIA H100 80GB HBM3",
        "DCGM_FI_DEV_GPU_TEMP": 61, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 2, "DCGM_FI_DEV_ROW_REMAP_PENDING": 1,
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": INT32_BLANK, "DCGM_FI_DEV_POWER_USAGE": float(INT32_BLANK),
    })
    assert (gpu.index, gpu.uuid, gpu.serial, gpu.pci_bus_id) == (3, "GPU-abc", "1320", "0000:3b:00.0")
    assert gpu.temperature_c == 61
    assert gpu.ecc_dbe_volatile == 2
    assert gpu.row_remap_pending is True
    assert gpu.ecc_sbe_volatile is None  # a blank is "not reported", never zero
    assert gpu.power_w is None


def test_a_value_that_cannot_be_a_count_is_refused() -> None:
    with pytest.raises(ParseError):
        gpu_from_field_values(0, {"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": -4})


def test_without_the_dcgm_bindings_the_node_is_unknown_with_the_reason() -> None:
    telemetry = collect_from_dcgm(NodeTarget("gpu-node-00", 8, None, None))
    assert telemetry.gpus == ()
    assert telemetry.source == "dcgm"
    assert "DCGM Python bindings" in telemetry.collection_errors[0]
