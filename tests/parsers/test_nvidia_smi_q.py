from __future__ import annotations

from collections.abc import Callable

import pytest

from gpumedic.domain.telemetry import GpuTelemetry, RowRemapBanks
from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.nvidia_smi_q import parse_nvidia_smi_q

Corpus = Callable[[str], str]

A10 = "nvidia-smi-q_A10_driver535.129.03_remap-pending_01.txt"
GH200 = "nvidia-smi-q_GH200_480GB_driver550.127.05_aggregate-DBE-1-row-remapped_01.txt"
H100_535_183 = "nvidia-smi-q_H100_80GB_HBM3_driver535.183.01_8gpu_01.txt"
H100_535_161 = "nvidia-smi-q_H100_80GB_HBM3_driver535.161.08_8gpu_01.txt"
H100_590 = "nvidia-smi-q_H100_80GB_HBM3_driver590.48.01_under-load_01.txt"
H200_MIG = "nvidia-smi-q_H200_MIG-enabled_driver590.48.01_01.txt"
H200_IDLE = "nvidia-smi-q_H200_driver590.48.01_idle_01.txt"
H100_565 = "nvidia-smi-q_H100_80GB_HBM3_driver565.57.01_8gpu_01.txt"
V100 = "nvidia-smi-q_V100_SXM2_16GB_driver550.127.05_8gpu_retired-pages-sbe_01.txt"
A100_460 = "nvidia-smi-q_A100_SXM4_40GB_driver460.32.03_8gpu_azure-ndv4_01.txt"
A100_555 = "nvidia-smi-q_A100_SXM4_80GB_driver555.42.02_remap-pending_4gpu_01.txt"
A100_510_EXCERPT = "nvidia-smi-q_A100_SXM4_80GB_driver510.73.08_xid63-remap-pending_excerpt_01.txt"
A40 = "nvidia-smi-q_A40_driver550.127.05_10gpu_01.txt"
H100_NVL = "nvidia-smi-q_H100_NVL_driver550.54.14_2gpu_01.txt"
ECC_EXCERPT = "nvidia-smi-q-ecc-section_GPU-unstated_sram-uncorrectable_excerpt_01.txt"
RETIRED_EXCERPT = "nvidia-smi-q-retired-pages_GPU-unstated_pending-blacklist-yes_excerpt_01.txt"


def only(gpus: list[GpuTelemetry]) -> GpuTelemetry:
    assert len(gpus) == 1
    return gpus[0]


def with_value(text: str, label: str, value: str) -> str:
    """`text` with the value of the first `label : ...` line replaced."""
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith(label + " ") and " : " in ln)
    lines[at] = lines[at].split(" : ", 1)[0] + " : " + value
    return "\n".join(lines) + "\n"


def test_a10_pending_row_remap_with_four_uncorrectable_rows_and_absolute_thresholds(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(A10)))
    assert gpu.index == 0
    assert gpu.pci_bus_id == "0000:07:00.0"
    assert gpu.uuid == "GPU-73d12ef7-f589-f867-4259-c7090ab44736"
    assert gpu.serial == "1324521052681"
    assert gpu.name == "NVIDIA A10"
    assert gpu.remapped_rows_uncorrectable == 4
    assert gpu.remapped_rows_correctable == 0
    assert gpu.row_remap_pending is True
    assert gpu.row_remap_failure is False
    assert gpu.remap_banks == RowRemapBanks(max=192, high=0, partial=0, low=0, none=0)
    assert (gpu.temperature_c, gpu.temp_slowdown_c, gpu.temp_shutdown_c) == (33, 98, 101)
    assert (gpu.power_w, gpu.power_limit_w, gpu.sm_clock_mhz) == (43.89, 150.0, 225.0)
    assert (gpu.ecc_sbe_volatile, gpu.ecc_dbe_volatile, gpu.ecc_sbe_aggregate, gpu.ecc_dbe_aggregate) == (0, 0, 0, 0)
    assert gpu.retired_pages_sbe is None and gpu.retired_pages_pending is None
    assert gpu.throttle_reasons == {"gpu_idle"}
    assert gpu.pcie_replay == 0
    assert gpu.recovery_action is None  # no `GPU Recovery Action` before R570


def test_gh200_past_uncorrectable_error_reads_as_one_aggregate_dbe_and_one_remapped_row(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(GH200)))
    assert gpu.ecc_dbe_aggregate == 1
    assert gpu.ecc_dbe_volatile == 0
    assert gpu.ecc_sbe_aggregate == 0
    assert gpu.remapped_rows_uncorrectable == 1
    assert gpu.row_remap_pending is False
    assert gpu.remap_banks == RowRemapBanks(max=3071, high=1, partial=0, low=0, none=0)


def test_gh200_power_comes_from_the_gpu_readings_not_the_module(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(GH200)))
    assert gpu.power_w == 87.88  # Module Power Draw is 169.77 W
    assert gpu.power_limit_w == 700.0  # Module limit is 1000 W, requested 900 W


def test_tlimit_relative_thresholds_convert_to_absolute_degrees(corpus: Corpus) -> None:
    # GH200: current 31 C, margin to T.Limit 55 C -> T.Limit 86 C; slowdown -2, shutdown -8.
    gpu = only(parse_nvidia_smi_q(corpus(GH200)))
    assert (gpu.temperature_c, gpu.temp_slowdown_c, gpu.temp_shutdown_c) == (31, 88, 94)
    # H100 under load: 59 C + 26 C margin -> T.Limit 85 C.
    loaded = only(parse_nvidia_smi_q(corpus(H100_590)))
    assert (loaded.temperature_c, loaded.temp_slowdown_c, loaded.temp_shutdown_c) == (59, 87, 93)


def test_tlimit_thresholds_stay_unknown_without_the_current_margin(corpus: Corpus) -> None:
    text = with_value(corpus(GH200), "GPU T.Limit Temp", "N/A")
    gpu = only(parse_nvidia_smi_q(text))
    assert gpu.temperature_c == 31
    assert gpu.temp_slowdown_c is None and gpu.temp_shutdown_c is None


def test_h100_535_eight_gpus_in_bus_order_with_pcie_replays(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(H100_535_183))
    assert [g.index for g in gpus] == list(range(8))
    assert [g.pci_bus_id for g in gpus] == [
        "0000:53:00.0",
        "0000:64:00.0",
        "0000:75:00.0",
        "0000:86:00.0",
        "0000:97:00.0",
        "0000:a8:00.0",
        "0000:b9:00.0",
        "0000:ca:00.0",
    ]
    assert [g.pcie_replay for g in gpus] == [120, 111, 58, 60, 63, 93, 69, 78]
    assert all(g.remap_banks == RowRemapBanks(max=2560, high=0, partial=0, low=0, none=0) for g in gpus)


def test_h100_clock_event_reasons_list_every_active_reason(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(H100_535_183))
    assert gpus[2].throttle_reasons == {"sw_power_cap", "sw_thermal_slowdown", "hw_power_brake_slowdown"}
    assert gpus[0].throttle_reasons == {"gpu_idle"}
    braked = parse_nvidia_smi_q(corpus(H100_535_161))
    assert all(g.throttle_reasons == {"hw_slowdown", "hw_power_brake_slowdown"} for g in braked)
    assert [g.pcie_replay for g in braked] == [67, 63, 52, 43, 49, 53, 82, 67]


def test_hopper_ecc_sums_parity_and_secded_into_uncorrected_totals(corpus: Corpus) -> None:
    text = with_value(corpus(H100_590), "SRAM Uncorrectable SEC-DED", "2")  # the Volatile one
    gpu = only(parse_nvidia_smi_q(text))
    assert gpu.ecc_dbe_volatile == 2
    assert gpu.ecc_dbe_aggregate == 0


@pytest.mark.parametrize("name", [A100_555, A40, GH200, H100_535_161, H100_535_183, H100_565, H100_590, H100_NVL,
                                  H200_IDLE, H200_MIG])
def test_the_sram_threshold_flag_reads_no_on_every_gpu_that_prints_it(corpus: Corpus, name: str) -> None:
    text = corpus(name)
    gpus = parse_nvidia_smi_q(text)
    assert len(gpus) == text.count("SRAM Threshold Exceeded") > 0
    assert all(g.sram_threshold_exceeded is False for g in gpus)


def test_the_sram_threshold_flag_set_reads_yes_and_is_unknown_where_the_driver_has_none(corpus: Corpus) -> None:
    exceeded = only(parse_nvidia_smi_q(with_value(corpus(H100_590), "SRAM Threshold Exceeded", "Yes")))
    assert exceeded.sram_threshold_exceeded is True
    # Before R510-ish, and in the ECC excerpt of a user's A100/H100, there is no such line.
    assert all(g.sram_threshold_exceeded is None for g in parse_nvidia_smi_q(corpus(A100_460)))
    assert only(parse_nvidia_smi_q(corpus(ECC_EXCERPT))).sram_threshold_exceeded is None


def test_ecc_total_is_unknown_when_a_counter_of_its_layout_is_cut_off(corpus: Corpus) -> None:
    lines = corpus(H100_590).splitlines()
    cut = next(i for i, ln in enumerate(lines) if "SRAM Uncorrectable Parity" in ln)
    gpu = only(parse_nvidia_smi_q("\n".join(lines[: cut + 1])))
    assert gpu.ecc_sbe_volatile is None  # DRAM Correctable never arrived
    assert gpu.ecc_dbe_volatile is None  # SEC-DED never arrived


def test_55_char_label_layout_reads_recovery_action_and_average_power(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(H100_590)))
    assert gpu.recovery_action == "None"
    assert gpu.power_w == 629.45  # "Average Power Draw"; the instantaneous reading is 588.39
    assert gpu.power_limit_w == 700.0
    assert gpu.sm_clock_mhz == 1980.0
    assert gpu.pcie_replay == 9
    assert gpu.throttle_reasons == frozenset()
    assert gpu.pci_bus_id == "0000:00:09.0"


def test_mig_mode_reads_gpu_level_sections_and_one_line_remapped_rows_as_unknown(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(H200_MIG)))
    assert gpu.name == "NVIDIA H200"
    assert gpu.remapped_rows_correctable is None
    assert gpu.remapped_rows_uncorrectable is None
    assert gpu.row_remap_pending is None
    assert gpu.remap_banks is None
    # The MIG Device blocks carry their own one-counter ECC sections; the GPU's own wins.
    assert (gpu.ecc_sbe_volatile, gpu.ecc_dbe_volatile) == (0, 0)
    assert (gpu.temp_slowdown_c, gpu.temp_shutdown_c) == (89, 95)


def test_volta_single_and_double_bit_totals_and_retired_pages(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(V100))
    assert len(gpus) == 8
    fifth = gpus[4]
    assert fifth.pci_bus_id == "0000:00:08.0"
    assert fifth.ecc_sbe_aggregate == 4
    assert fifth.ecc_dbe_aggregate == 0
    assert fifth.ecc_sbe_volatile == 0
    assert (fifth.retired_pages_sbe, fifth.retired_pages_dbe, fifth.retired_pages_pending) == (1, 0, False)
    assert all(g.remapped_rows_correctable is None and g.remap_banks is None for g in gpus)
    assert all((g.temp_slowdown_c, g.temp_shutdown_c) == (87, 90) for g in gpus)
    assert gpus[0].retired_pages_sbe == 0


def test_r460_throttle_reasons_power_limit_and_per_domain_bus_ids(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(A100_460))
    assert [g.pci_bus_id for g in gpus] == [
        "0001:00:00.0",
        "0002:00:00.0",
        "0003:00:00.0",
        "0004:00:00.0",
        "000b:00:00.0",
        "000c:00:00.0",
        "000d:00:00.0",
        "000e:00:00.0",
    ]
    first = gpus[0]
    assert first.name == "A100-SXM4-40GB"
    assert first.throttle_reasons == {"gpu_idle"}  # "Clocks Throttle Reasons" section
    assert (first.power_w, first.power_limit_w) == (55.63, 400.0)  # "Power Readings" / "Power Limit"
    assert (first.temp_slowdown_c, first.temp_shutdown_c) == (89, 92)
    assert first.remap_banks == RowRemapBanks(max=640, high=0, partial=0, low=0, none=0)


def test_a100_555_pending_remap_on_one_gpu_and_settled_remap_on_another(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(A100_555))
    by_bus = {g.pci_bus_id: g for g in gpus}
    pending = by_bus["0000:9e:00.0"]
    assert (pending.remapped_rows_correctable, pending.row_remap_pending) == (1, True)
    assert pending.remap_banks == RowRemapBanks(max=639, high=1, partial=0, low=0, none=0)
    assert (pending.ecc_sbe_volatile, pending.ecc_sbe_aggregate) == (353, 353)
    settled = by_bus["0000:c2:00.0"]
    assert (settled.remapped_rows_correctable, settled.row_remap_pending) == (1, False)
    assert all(g.temp_shutdown_c == 92 for g in gpus)


def test_author_elisions_and_a_timestamp_start_still_parse(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(A100_510_EXCERPT)))
    assert gpu.pci_bus_id == "0000:10:1c.0"
    assert gpu.name == "NVIDIA A100-SXM4-80GB"
    assert (gpu.ecc_sbe_volatile, gpu.ecc_sbe_aggregate, gpu.ecc_dbe_volatile) == (177, 177, 0)
    assert (gpu.remapped_rows_correctable, gpu.row_remap_pending) == (1, True)
    assert gpu.remap_banks == RowRemapBanks(max=639, high=1, partial=0, low=0, none=0)
    assert gpu.temperature_c is None  # elided by the poster, not zero


def test_a40_aggregate_dram_correctable_counts(corpus: Corpus) -> None:
    gpus = parse_nvidia_smi_q(corpus(A40))
    assert len(gpus) == 10
    assert [(g.index, g.ecc_sbe_aggregate, g.remapped_rows_correctable) for g in gpus if g.ecc_sbe_aggregate] == [
        (0, 10, 2),
        (6, 10289, 1),
        (9, 198, 1),
    ]
    assert gpus[0].throttle_reasons == {"sw_power_cap"}
    assert gpus[0].sm_clock_mhz == 0.0  # idle in P8: a real zero, not "not reported"
    assert (gpus[0].temp_slowdown_c, gpus[0].temp_shutdown_c) == (95, 98)


def test_h100_nvl_histogram_and_per_gpu_tlimit(corpus: Corpus) -> None:
    first, second = parse_nvidia_smi_q(corpus(H100_NVL))
    assert first.remap_banks == RowRemapBanks(max=3072, high=0, partial=0, low=0, none=0)
    assert (first.temp_slowdown_c, first.temp_shutdown_c) == (89, 95)  # 32 + 55 + 2 / + 8
    assert (second.temp_slowdown_c, second.temp_shutdown_c) == (88, 94)  # 31 + 55 + 2 / + 8


def test_ecc_section_without_gpu_header_is_gpu_zero(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(ECC_EXCERPT)))
    assert gpu.index == 0
    assert (gpu.ecc_dbe_volatile, gpu.ecc_dbe_aggregate) == (1, 5)
    assert (gpu.ecc_sbe_volatile, gpu.ecc_sbe_aggregate) == (0, 0)
    assert gpu.temperature_c is None


def test_retired_pages_section_without_gpu_header_reads_pending_blacklist(corpus: Corpus) -> None:
    gpu = only(parse_nvidia_smi_q(corpus(RETIRED_EXCERPT)))
    assert (gpu.retired_pages_sbe, gpu.retired_pages_dbe, gpu.retired_pages_pending) == (2, 0, True)


def test_an_inline_device_handle_failure_fails_the_whole_report(corpus: Corpus) -> None:
    text = corpus(A10) + "\nUnable to determine the device handle for GPU0000:A1:00.0: Unknown Error\n"
    with pytest.raises(ParseError, match="Unable to determine the device handle"):
        parse_nvidia_smi_q(text)


@pytest.mark.parametrize("value", ["GPU is lost", "[GPU requires reset]"])
def test_a_lost_gpu_value_is_an_error_not_a_missing_reading(corpus: Corpus, value: str) -> None:
    text = with_value(corpus(A10), "Uncorrectable Error", value)
    with pytest.raises(ParseError, match="GPU 0"):
        parse_nvidia_smi_q(text)


def test_a_non_numeric_counter_is_refused(corpus: Corpus) -> None:
    text = with_value(corpus(A10), "Uncorrectable Error", "four")
    with pytest.raises(ParseError, match="not a whole number"):
        parse_nvidia_smi_q(text)


@pytest.mark.parametrize("text", ["", "\n\n", "==============NVSMI LOG==============\n", "Product Name : X\n"])
def test_text_without_a_gpu_section_is_refused(text: str) -> None:
    with pytest.raises(ParseError):
        parse_nvidia_smi_q(text)


def test_an_unterminated_last_line_is_not_read(corpus: Corpus) -> None:
    lines = corpus(A10).splitlines()
    at = next(i for i, ln in enumerate(lines) if "GPU Current Temp" in ln)
    cut = "\n".join(lines[:at]) + "\n" + lines[at][:-3]  # "33 C" cut to "3"
    gpu = only(parse_nvidia_smi_q(cut))
    assert gpu.temperature_c is None
    assert gpu.remapped_rows_uncorrectable == 4


def sections(text: str, *names: str) -> str:
    """A `-q -d ...` style report: the header, the GPU line and only the named 4-space sections."""
    kept: list[str] = []
    keep = True
    for line in text.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            keep = line.strip().split(" :")[0].strip() in names
        elif not line.startswith(" "):
            keep = True
        if keep:
            kept.append(line)
    return "\n".join(kept) + "\n"


def test_display_filtered_report_with_only_some_sections(corpus: Corpus) -> None:
    text = sections(corpus(A10), "Remapped Rows", "Temperature", "Retired Pages")
    assert "Product Name" not in text and "ECC Errors" not in text
    gpu = only(parse_nvidia_smi_q(text))
    assert gpu.pci_bus_id == "0000:07:00.0"
    assert (gpu.remapped_rows_uncorrectable, gpu.row_remap_pending) == (4, True)
    assert (gpu.temp_slowdown_c, gpu.temp_shutdown_c) == (98, 101)
    assert gpu.name is None and gpu.ecc_dbe_volatile is None and gpu.power_w is None
