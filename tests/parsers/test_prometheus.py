from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from gpumedic.domain.telemetry import NvLinkState
from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.prometheus import parse_dcgm_exporter, parse_dcgm_exporter_xids, parse_exposition

Corpus = Callable[[str], str]

GREP = "dcgm-exporter-metrics-grep_H100_80GB_HBM3_x8_driver580.105.08_eks_01.txt"
EXCERPT = "dcgm-exporter-metrics_H100_80GB_HBM3_driver535.183.01_excerpt_01.txt"
LABELS = 'gpu="{gpu}",UUID="GPU-{gpu}",pci_bus_id="00000000:{gpu}B:00.0",device="nvidia{gpu}",modelName="NVIDIA H100"'


def test_grep_sample_reads_temperature_and_power_for_eight_gpus(corpus: Corpus) -> None:
    gpus = parse_dcgm_exporter(corpus(GREP))
    assert [g.index for g in gpus] == list(range(8))
    assert [g.temperature_c for g in gpus] == [26, 27, 27, 28, 28, 26, 31, 27]
    assert gpus[0].power_w == 67.268
    assert gpus[6].power_w == 115.22  # the GPU with pod labels
    assert gpus[0].uuid == "GPU-22dbdd79-f55a-92a8-aa39-322198e72ed6"
    assert gpus[0].pci_bus_id == "0000:53:00.0"
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert all(g.ecc_dbe_volatile is None and g.row_remap_pending is None for g in gpus)  # not in the grep


def test_help_and_type_lines_and_author_elision(corpus: Corpus) -> None:
    (gpu,) = parse_dcgm_exporter(corpus(EXCERPT))
    assert gpu.sm_clock_mhz == 345.0
    assert gpu.uuid == "GPU-927d7444-b45a-7c49-8402-5e686e46a026"
    assert gpu.temperature_c is None


def test_health_fields_map_to_telemetry() -> None:
    lines = [
        "# TYPE DCGM_FI_DEV_ECC_DBE_VOL_TOTAL counter",
        f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{LABELS.format(gpu=1)}}} 2",
        f"DCGM_FI_DEV_ECC_SBE_AGG_TOTAL{{{LABELS.format(gpu=1)}}} 54700000000",
        f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{LABELS.format(gpu=1)}}} 3",
        f"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{{{LABELS.format(gpu=1)}}} 8",
        f"DCGM_FI_DEV_ROW_REMAP_PENDING{{{LABELS.format(gpu=1)}}} 1",
        f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{LABELS.format(gpu=1)}}} 0",
        f"DCGM_FI_DEV_RETIRED_PENDING{{{LABELS.format(gpu=1)}}} 0",
        f"DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{LABELS.format(gpu=1)}}} 120 1700000000000",
        f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{LABELS.format(gpu=1)}}} 72",
        f"DCGM_FI_DEV_SLOWDOWN_TEMP{{{LABELS.format(gpu=1)}}} 87",
        f"DCGM_FI_DEV_SHUTDOWN_TEMP{{{LABELS.format(gpu=1)}}} 92",
        f"DCGM_FI_DEV_POWER_MGMT_LIMIT{{{LABELS.format(gpu=1)}}} 700",
        f"DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L3{{{LABELS.format(gpu=1)}}} 5",
        f"DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L3{{{LABELS.format(gpu=1)}}} 1",
        f"DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL{{{LABELS.format(gpu=1)}}} 6",
        f"DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION{{{LABELS.format(gpu=1)}}} 1",
    ]
    (gpu,) = parse_dcgm_exporter("\n".join(lines) + "\n")
    assert gpu.index == 1
    assert (gpu.ecc_dbe_volatile, gpu.ecc_sbe_aggregate) == (2, 54_700_000_000)
    assert (gpu.remapped_rows_uncorrectable, gpu.remapped_rows_correctable) == (3, 8)
    assert (gpu.row_remap_pending, gpu.row_remap_failure, gpu.retired_pages_pending) == (True, False, False)
    assert gpu.pcie_replay == 120
    assert gpu.throttle_reasons == {"hw_slowdown", "hw_thermal_slowdown"}  # 0x48
    assert (gpu.temp_slowdown_c, gpu.temp_shutdown_c, gpu.power_limit_w) == (87, 92, 700)
    assert gpu.nvlinks == (NvLinkState(link=3, active=None, crc_errors=6),)
    assert gpu.recovery_action == "Reset"


def test_nan_and_dcgm_blank_sentinels_are_not_reported() -> None:
    text = (
        f"DCGM_FI_DEV_GPU_TEMP{{{LABELS.format(gpu=0)}}} NaN\n"
        f"DCGM_FI_DEV_POWER_USAGE{{{LABELS.format(gpu=0)}}} 140737488355328\n"
        f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{LABELS.format(gpu=0)}}} 9223372036854775792\n"
    )
    (gpu,) = parse_dcgm_exporter(text)
    assert (gpu.temperature_c, gpu.power_w, gpu.ecc_dbe_volatile) == (None, None, None)


def test_xid_errors_per_gpu() -> None:
    text = "".join(f"DCGM_FI_DEV_XID_ERRORS{{{LABELS.format(gpu=g)}}} {x}\n" for g, x in [(0, 0), (1, 120)])
    assert parse_dcgm_exporter_xids(text) == {0: 0, 1: 120}


def test_no_xid_series_means_no_entries_not_zero(corpus: Corpus) -> None:
    assert parse_dcgm_exporter_xids(corpus(GREP)) == {}


def test_tokenizer_handles_escapes_timestamps_and_special_values() -> None:
    text = (
        '# HELP x A "quoted" help\n'
        'm{a="x\\"y",b="back\\\\slash",c="new\\nline",} +Inf 1700000000000\n'
        "n -Inf\n"
        'o{ a = "1" } NaN\n'
        "p 1.5e3\n"
    )
    samples = parse_exposition(text)
    assert [s.name for s in samples] == ["m", "n", "o", "p"]
    assert dict(samples[0].labels) == {"a": 'x"y', "b": "back\\slash", "c": "new\nline"}
    assert samples[0].value == math.inf and samples[0].timestamp_ms == 1700000000000
    assert samples[1].value == -math.inf
    assert math.isnan(samples[2].value)
    assert samples[3].value == 1500.0


@pytest.mark.parametrize(
    "line",
    [
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-',  # cut inside the label set
        'DCGM_FI_DEV_GPU_TEMP{gpu="0"}',  # no value
        'DCGM_FI_DEV_GPU_TEMP{gpu="0"} hot',
        "DCGM_FI_DEV_GPU_TEMP{gpu=0} 31",
        "0, None",
    ],
)
def test_a_line_that_is_not_exposition_text_fails_the_parse(line: str) -> None:
    with pytest.raises(ParseError, match="not Prometheus exposition text"):
        parse_dcgm_exporter(f'DCGM_FI_DEV_GPU_TEMP{{gpu="1"}} 30\n{line}\n')


def test_a_page_without_dcgm_device_fields_is_refused() -> None:
    with pytest.raises(ParseError, match="no DCGM_FI_DEV"):
        parse_dcgm_exporter("# HELP go_goroutines x\ngo_goroutines 12\n")


def test_a_page_cut_mid_line_is_refused(corpus: Corpus) -> None:
    text = corpus(GREP)
    with pytest.raises(ParseError, match="ends mid-line"):
        parse_dcgm_exporter(text[: text.index("67.268000") + 4])  # "67.2"
