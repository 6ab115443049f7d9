from __future__ import annotations

from collections.abc import Callable

import pytest

from gpumedic.domain.telemetry import RowRemapBanks
from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.nvidia_smi_csv import (
    QUERY_GPU_FIELDS,
    QUERY_GPU_FIELDS_NO_REMAP,
    QUERY_GPU_RECOVERY_FIELDS,
    canonical_field,
    parse_query_gpu_csv,
)

Corpus = Callable[[str], str]

H100_ALL = "nvidia-smi-query-gpu-csv_H100_80GB_HBM3_driver590.48.01_all-fields_under-load_01.txt"
H200_ALL = "nvidia-smi-query-gpu-csv_H200_driver590.48.01_all-fields_idle_01.txt"
L40S_ALL = "nvidia-smi-query-gpu-csv_L40S_driver595.80_all-fields_idle_01.txt"
RECOVERY = "nvidia-smi-query-gpu-csv-noheader_GPU-unstated-8gpu_index-gpu_recovery_action-Reset_01.txt"
INDEX_NAME_UUID = "nvidia-smi-query-gpu-csv-noheader_H100_80GB_HBM3_index-name-uuid_01.txt"
NAME_BUS_VBIOS = "nvidia-smi-query-gpu-csv_H100_80GB_HBM3_name-busid-vbios_01.txt"
RETIRED_PAGES = "nvidia-smi-query-retired-pages-csv_H100_80GB_HBM3_driver590.48.01_01.txt"


def test_header_with_units_reads_the_core_fields_of_an_h100_under_load(corpus: Corpus) -> None:
    (gpu,) = parse_query_gpu_csv(corpus(H100_ALL))
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.pci_bus_id == "0000:00:09.0"
    assert gpu.uuid == "GPU-00000000-0000-0000-0000-000000000000"
    assert gpu.temperature_c == 59.0
    assert gpu.power_w == 631.95  # "631.95 W" under the header "power.draw [W]"
    assert gpu.power_limit_w == 700.0
    assert gpu.sm_clock_mhz == 1980.0  # "clocks.current.sm [MHz]"
    assert gpu.throttle_reasons == frozenset()  # 0x0000000000000000
    assert (gpu.ecc_sbe_volatile, gpu.ecc_dbe_volatile, gpu.ecc_sbe_aggregate, gpu.ecc_dbe_aggregate) == (0, 0, 0, 0)
    assert (gpu.retired_pages_sbe, gpu.retired_pages_dbe, gpu.retired_pages_pending) == (None, None, None)
    assert (gpu.remapped_rows_correctable, gpu.remapped_rows_uncorrectable) == (0, 0)
    assert (gpu.row_remap_pending, gpu.row_remap_failure) == (False, False)
    assert gpu.remap_banks == RowRemapBanks(max=2560, high=0, partial=0, low=0, none=0)
    assert gpu.recovery_action == "None"


def test_idle_bitmask_decodes_to_gpu_idle(corpus: Corpus) -> None:
    (gpu,) = parse_query_gpu_csv(corpus(H200_ALL))
    assert gpu.throttle_reasons == {"gpu_idle"}  # 0x0000000000000001
    assert gpu.pci_bus_id == "0000:83:00.0"
    assert gpu.remap_banks == RowRemapBanks(max=3072, high=0, partial=0, low=0, none=0)
    assert (gpu.temperature_c, gpu.power_w, gpu.sm_clock_mhz) == (28.0, 77.71, 345.0)


def test_595_field_set_with_kmd_version_column(corpus: Corpus) -> None:
    (gpu,) = parse_query_gpu_csv(corpus(L40S_ALL))
    assert gpu.name == "NVIDIA L40S"
    assert (gpu.temperature_c, gpu.power_w, gpu.power_limit_w, gpu.sm_clock_mhz) == (63.0, 144.97, 350.0, 2520.0)
    assert gpu.remap_banks == RowRemapBanks(max=192, high=0, partial=0, low=0, none=0)


def test_noheader_recovery_action_query_names_the_gpu_that_needs_a_reset(corpus: Corpus) -> None:
    gpus = parse_query_gpu_csv(corpus(RECOVERY), fields=QUERY_GPU_RECOVERY_FIELDS)
    assert [(g.index, g.recovery_action) for g in gpus] == [(i, "Reset" if i == 1 else "None") for i in range(8)]
    assert all(g.temperature_c is None for g in gpus)


def test_noheader_index_name_uuid(corpus: Corpus) -> None:
    (gpu,) = parse_query_gpu_csv(corpus(INDEX_NAME_UUID), fields=("index", "name", "uuid"))
    assert (gpu.index, gpu.name, gpu.uuid) == (0, "NVIDIA H100 80GB HBM3", "GPU-ca1b8386-093b-60cc-349d-c4a38b9124c0")


@pytest.mark.parametrize("name", [NAME_BUS_VBIOS, RETIRED_PAGES])
def test_a_query_without_index_is_refused(corpus: Corpus, name: str) -> None:
    with pytest.raises(ParseError, match="no `index` field"):
        parse_query_gpu_csv(corpus(name))


def test_a_noheader_file_read_as_headed_is_refused(corpus: Corpus) -> None:
    with pytest.raises(ParseError, match="not a --query-gpu CSV header"):
        parse_query_gpu_csv(corpus(RECOVERY))


def test_a_row_with_the_wrong_column_count_is_refused(corpus: Corpus) -> None:
    with pytest.raises(ParseError, match="2 columns, the query has 3"):
        parse_query_gpu_csv(corpus(RECOVERY), fields=("index", "name", "uuid"))


def test_core_field_query_round_trip_with_units_and_not_reported_values() -> None:
    row = (
        "3, GPU-abc, 1650423013443, 00000000:3B:00.0, NVIDIA H100 80GB HBM3, 31 C, 73.93 W, 700.00 W, 1980 MHz, "
        "0x0000000000000048, 0, 2, 10, 2, [N/A], [N/A], [N/A], 1, 0, Yes, No\n"
    )
    (gpu,) = parse_query_gpu_csv(row, fields=QUERY_GPU_FIELDS)
    assert gpu.index == 3
    assert gpu.pci_bus_id == "0000:3b:00.0"
    assert (gpu.temperature_c, gpu.power_w, gpu.power_limit_w, gpu.sm_clock_mhz) == (31.0, 73.93, 700.0, 1980.0)
    assert gpu.throttle_reasons == {"hw_slowdown", "hw_thermal_slowdown"}
    assert (gpu.ecc_sbe_volatile, gpu.ecc_dbe_volatile, gpu.ecc_sbe_aggregate, gpu.ecc_dbe_aggregate) == (0, 2, 10, 2)
    assert gpu.retired_pages_sbe is None and gpu.retired_pages_pending is None
    assert (gpu.remapped_rows_correctable, gpu.row_remap_pending, gpu.row_remap_failure) == (1, True, False)


def test_nounits_values_parse_the_same() -> None:
    (gpu,) = parse_query_gpu_csv("0, 31, 73.93, 1980\n", fields=("index", "temperature.gpu", "power.draw", "clocks.sm"))
    assert (gpu.temperature_c, gpu.power_w, gpu.sm_clock_mhz) == (31.0, 73.93, 1980.0)


@pytest.mark.parametrize(
    "value", ["[N/A]", "N/A", "[Not Supported]", "[Requested functionality has been deprecated]", ""]
)
def test_not_reported_spellings_become_none(value: str) -> None:
    (gpu,) = parse_query_gpu_csv(f"0, {value}\n", fields=("index", "ecc.errors.uncorrected.volatile.total"))
    assert gpu.ecc_dbe_volatile is None


def test_a_non_numeric_count_is_refused() -> None:
    with pytest.raises(ParseError, match="not a whole number"):
        parse_query_gpu_csv("0, lots\n", fields=("index", "ecc.errors.uncorrected.volatile.total"))


def test_a_gpu_that_requires_reset_is_an_error_not_a_missing_value() -> None:
    with pytest.raises(ParseError, match="GPU requires reset"):
        parse_query_gpu_csv("1, [GPU requires reset]\n", fields=("index", "temperature.gpu"))


def test_unknown_field_refusal_is_reported_verbatim() -> None:
    with pytest.raises(ParseError, match='Field "gpu_recovery_action" is not a valid field'):
        parse_query_gpu_csv('Field "gpu_recovery_action" is not a valid field to query.\n', QUERY_GPU_RECOVERY_FIELDS)


def test_duplicate_gpu_index_is_refused() -> None:
    with pytest.raises(ParseError, match="appears twice"):
        parse_query_gpu_csv("0, 30\n0, 31\n", fields=("index", "temperature.gpu"))


def test_a_header_without_rows_is_refused() -> None:
    with pytest.raises(ParseError, match="no GPU rows"):
        parse_query_gpu_csv("index, temperature.gpu\n")


def test_old_and_new_throttle_field_names_are_one_field() -> None:
    assert canonical_field("clocks_throttle_reasons.active") == "clocks_event_reasons.active"
    assert canonical_field("clocks_event_reasons.active") == "clocks_event_reasons.active"
    assert canonical_field("power.draw [W]") == "power.draw"
    assert canonical_field("clocks.sm") == "clocks.current.sm"


def test_core_query_fields_are_the_r470_safe_set() -> None:
    assert QUERY_GPU_FIELDS[0] == "index"
    assert "clocks_throttle_reasons.active" in QUERY_GPU_FIELDS  # the spelling both R470 and R535+ accept
    assert "gpu_recovery_action" not in QUERY_GPU_FIELDS  # R570+ only; asked separately
    assert not any(f.startswith("remapped_rows.") for f in QUERY_GPU_FIELDS_NO_REMAP)


def test_output_cut_mid_row_is_refused_rather_than_read_as_a_smaller_number() -> None:
    with pytest.raises(ParseError, match="ends mid-line"):
        parse_query_gpu_csv("0, 631.9", fields=("index", "power.draw"))  # was "631.95 W"
