from __future__ import annotations

from collections.abc import Callable

import pytest

from gpumedic.domain.telemetry import NvLinkState
from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.nvlink import (
    NvLinkNotSupported,
    parse_dcgmi_nvlink_errors,
    parse_dcgmi_nvlink_status,
    parse_nvlink_errors,
    parse_nvlink_status,
)

Corpus = Callable[[str], str]


def test_v100_inactive_links_read_as_inactive(corpus: Corpus) -> None:
    links = parse_nvlink_status(corpus("nvidia-smi-nvlink-s_V100_SXM2_32GB_inactive-links_01.txt"))
    assert sorted(links) == list(range(7))  # the capture stops after GPU 6
    assert all(len(v) == 6 for v in links.values())
    inactive = {gpu: [s.link for s in states if not s.active] for gpu, states in links.items()}
    assert inactive == {0: [], 1: [], 2: [], 3: [3, 5], 4: [1], 5: [0, 4], 6: [1]}


def test_a100_twelve_active_links_per_gpu(corpus: Corpus) -> None:
    links = parse_nvlink_status(corpus("nvidia-smi-nvlink-status_A100_SXM4_80GB_01.txt"))
    assert sorted(links) == list(range(8))
    assert all(v == tuple(NvLinkState(link=i, active=True) for i in range(12)) for v in links.values())


def test_tab_indented_h200_links(corpus: Corpus) -> None:
    links = parse_nvlink_status(corpus("nvidia-smi-nvlink-s_H200_driver590.48.01_01.txt"))
    assert list(links) == [0]
    assert [s.link for s in links[0]] == list(range(18))
    assert all(s.active for s in links[0])


def test_mig_refusal_is_its_own_parse_error(corpus: Corpus) -> None:
    text = corpus("nvidia-smi-nvlink-s_H200_MIG-enabled_not-supported_01.txt")
    with pytest.raises(NvLinkNotSupported, match="MIG mode"):
        parse_nvlink_status(text)
    with pytest.raises(ParseError):
        parse_nvlink_errors(text)


def test_error_counters_fold_into_one_state_per_link(corpus: Corpus) -> None:
    links = parse_nvlink_errors(corpus("nvidia-smi-nvlink-e_H100_80GB_HBM3_excerpt_01.txt"))
    assert [s.link for s in links[0]] == [0, 1, 17]  # the poster elided links 2-16
    assert all(
        s == NvLinkState(link=s.link, active=None, crc_errors=0, replay_errors=0, recovery_errors=0) for s in links[0]
    )


def test_nonzero_error_counters() -> None:
    text = (
        "GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n"
        "         Link 4: Replay Errors: 7\n"
        "         Link 4: Recovery Errors: 1\n"
        "         Link 4: CRC Errors: 12\n"
    )
    assert parse_nvlink_errors(text) == {
        2: (NvLinkState(link=4, active=None, crc_errors=12, replay_errors=7, recovery_errors=1),)
    }


def test_status_output_is_not_error_output(corpus: Corpus) -> None:
    with pytest.raises(ParseError, match="unexpected line"):
        parse_nvlink_errors(corpus("nvidia-smi-nvlink-s_H200_driver590.48.01_01.txt"))


def test_dcgmi_all_links_down(corpus: Corpus) -> None:
    links = parse_dcgmi_nvlink_status(corpus("dcgmi-nvlink-link-status_H100_NVL_x2_all-links-down_01.txt"))
    assert sorted(links) == [0, 1]
    assert all(len(v) == 18 and not any(s.active for s in v) for v in links.values())


def test_dcgmi_all_links_up(corpus: Corpus) -> None:
    links = parse_dcgmi_nvlink_status(corpus("dcgmi-nvlink-s_8gpu-12links_all-up_01.txt"))
    assert sorted(links) == list(range(8))
    assert all(len(v) == 12 and all(s.active for s in v) for v in links.values())


def test_dcgmi_not_supported_links_are_left_out_and_disabled_ones_are_inactive() -> None:
    text = "GPUs:\n    gpuId 0:\n        U X _ D\nNvSwitches:\n    No NvSwitches found.\n"
    assert parse_dcgmi_nvlink_status(text) == {0: (NvLinkState(0, True), NvLinkState(1, False), NvLinkState(3, False))}


def test_dcgmi_error_counts_sum_flit_and_data_crc(corpus: Corpus) -> None:
    assert parse_dcgmi_nvlink_errors(corpus("dcgmi-nvlink-e-g0-head9_GPU-unstated_01.txt")) == {
        0: (NvLinkState(link=0, active=None, crc_errors=0, replay_errors=0, recovery_errors=0),)
    }


def test_error_counters_cut_mid_line_are_refused() -> None:
    with pytest.raises(ParseError, match="ends mid-line"):
        parse_nvlink_errors("GPU 0: NVIDIA H100 (UUID: GPU-1)\n         Link 0: CRC Errors: 1")  # of 12?
