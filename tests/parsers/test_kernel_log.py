from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gpumedic.domain.telemetry import XidEvent
from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.kernel_log import parse_kernel_log

Corpus = Callable[[str], str]


def test_dmesg_ctime_stamps_and_pci_ids(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-T-xid43-31-94_GPU-unstated_driver535.183.01_01.log"))
    assert [(e.code, e.pci_bus_id) for e in events] == [
        (43, "0000:00:05.0"),
        (43, "0000:00:05.0"),
        (31, "0000:00:07.0"),
        (94, "0000:00:08.0"),
    ]
    assert events[0].time == datetime(2024, 7, 31, 23, 14, 18, tzinfo=UTC)
    assert events[2].time == datetime(2024, 8, 5, 3, 54, 13, tzinfo=UTC)  # "Mon Aug  5", double space
    assert events[0].text == "pid=1045242, name=pt_main_thread, Ch 00000008"
    assert events[3].text == "pid='<unknown>', name=<unknown>, Contained: SM (0x1). RST: No, D-RST: No"


def test_a_real_xid_79_is_not_duplicated_by_the_fallen_off_message(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-T-xid79-fallen-off-bus_GPU-unstated_driver535.161.07_01.log"))
    assert events == [
        XidEvent(
            code=79,
            pci_bus_id="0000:a1:00.0",
            time=datetime(2024, 4, 5, 21, 29, 39, tzinfo=UTC),
            text="pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
        )
    ]


def test_fallen_off_the_bus_without_xid_line_is_inferred_as_xid_79(corpus: Corpus) -> None:
    (event,) = parse_kernel_log(corpus("dmesg-fallen-off-bus-no-xid_L40-pciid-26b5_driver570.158.01_01.log"))
    assert event.code == 79
    assert event.pci_bus_id == "0000:b3:00.0"
    assert event.time is None  # uptime stamp
    assert event.text.startswith("inferred from the driver's fallen-off-the-bus message")
    assert "(PCI ID: 10de:26b5) installed in this system has fallen off the bus" in event.text


def test_gsp_boot_failure_without_xid_yields_nothing(corpus: Corpus) -> None:
    assert parse_kernel_log(corpus("dmesg-gsp-boot-fail-rminitadapter-0x62_GPU6-unstated_01.log")) == []


def test_iso_stamps_with_comma_fractions(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-iso-xid48-63-94_GPU-unstated_01.log"))
    assert Counter(e.code for e in events) == {48: 1, 63: 1, 94: 9}
    assert events[0].time == datetime(2024, 11, 15, 12, 2, 3, 470068, tzinfo=UTC)
    assert "physAddr 0x12bac1c3e0" in events[0].text
    assert all(e.pci_bus_id == "0000:19:00.0" for e in events)


def test_decoded_facility_prefix_and_hundreds_of_xid_13(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-decode-iso-xid13-43_GPU-unstated_01.log"))
    assert Counter(e.code for e in events) == {13: 629, 43: 7}
    assert events[0].time == datetime(2025, 1, 21, 2, 21, 33, 498559, tzinfo=UTC)


def test_gsp_timeouts_and_their_rpc_dumps(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-ctime-xid119_GPU-unstated_XE9680_01.log"))
    assert [e.code for e in events] == [119] * 5
    assert events[-1].time == datetime(2025, 2, 23, 16, 30, 13, tzinfo=UTC)
    assert events[0].text.endswith("Expected function 103 (GSP_RM_ALLOC) (0x2081 0x4).")


def test_xid_13_triple_then_109(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-ctime-xid13-109_GPU-unstated_01.log"))
    assert [e.code for e in events] == [13, 13, 13, 109]
    assert events[-1].text.endswith("errorString CTX SWITCH TIMEOUT, Info 0x58005")


def test_uptime_stamps_have_no_wall_time(corpus: Corpus) -> None:
    (event,) = parse_kernel_log(corpus("dmesg-xid120-gsp-task-exception-riscv-dump_GPU-unstated_01.log"))
    assert (event.code, event.pci_bus_id, event.time) == (120, "0000:06:00.0", None)
    assert event.text.startswith("GSP task exception: store access page fault")


def test_legacy_format_without_pid(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("dmesg-xid31-13-32-legacy-format_GeForce_driver418_01.log"))
    assert [e.code for e in events] == [31, 13, 13, 13, 13, 32]
    assert events[-1].text == "Channel ID 00000052 intr 02000000"


def test_new_channel_format(corpus: Corpus) -> None:
    (event,) = parse_kernel_log(corpus("dmesg-xid31-mmu-fault-board-serial_RTX5070Ti_driver595.71.05_01.log"))
    assert event.code == 31
    assert "channel 0x0000000c" in event.text


def test_journalctl_syslog_stamps_need_the_year(corpus: Corpus) -> None:
    text = corpus("journalctl-k-xid31-mmu-fault_RTX2080_driver450.80.02_01.log")
    assert all(e.time is None for e in parse_kernel_log(text))
    events = parse_kernel_log(text, year=2020)
    assert [e.code for e in events] == [31, 31]
    assert events[0].time == datetime(2020, 11, 29, 11, 28, 11, tzinfo=UTC)
    assert events[0].pci_bus_id == "0000:c1:00.0"


def test_syslog_stamps_are_read_in_the_given_zone(corpus: Corpus) -> None:
    cest = timezone(timedelta(hours=2))
    text = corpus("journalctl-pl-locale-xid38-109_GPU-unstated_01.log")
    events = parse_kernel_log(text, year=2025, tz=cest)
    assert [e.code for e in events] == [38, 109, 109, 109, 109, 109]
    assert events[0].time == datetime(2025, 4, 15, 7, 56, 59, tzinfo=cest)  # Polish "kwi" is April


def test_talos_prefix_with_nanosecond_stamp(corpus: Corpus) -> None:
    (event,) = parse_kernel_log(corpus("talos-kern-log-xid154-gsp-rpc-timeout_GPU-unstated_01.log"))
    assert (event.code, event.pci_bus_id) == (154, "0000:0b:00.0")
    assert event.time == datetime(2026, 4, 22, 21, 30, 51, 870495, tzinfo=UTC)
    assert event.text == "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"


def test_redacted_pci_id_is_unknown_not_invented(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("kernel-xid145-137-nvlink_B200_pci-redacted_01.log"))
    assert [(e.code, e.pci_bus_id) for e in events] == [(145, None), (137, None)]


def test_kernel_prefix_lines_and_caused_by_suffix(corpus: Corpus) -> None:
    events = parse_kernel_log(corpus("kernel-xid45-caused-by-xid149-145_GPU-unstated_driver590.48.01_01.log"))
    assert [e.code for e in events] == [45] * 7
    assert {e.pci_bus_id for e in events} == {"0000:dc:00.0", "0000:ed:00.0", "0000:ba:00.0", "0000:97:00.0"}
    assert events[0].text.endswith("caused by previous Xid 149")


def test_a_bare_line(corpus: Corpus) -> None:
    (event,) = parse_kernel_log(corpus("kernel-xid63-line_A100_SXM4_80GB_01.log"))
    assert (event.code, event.pci_bus_id, event.time) == (63, "0000:10:1c.0", None)


def test_dmesg_permission_failure_is_not_an_empty_log() -> None:
    with pytest.raises(ParseError, match="read kernel buffer failed"):
        parse_kernel_log("dmesg: read kernel buffer failed: Operation not permitted\n")


def test_a_log_without_xids_is_empty() -> None:
    assert parse_kernel_log("[    0.000000] Linux version 6.8.0\n[    1.0] usb 1-1: new device\n") == []


def test_journalctl_short_iso_with_host_prefix() -> None:
    text = "2024-03-02T10:00:00+0100 gpu-node-7 kernel: NVRM: Xid (PCI:0000:3B:00): 74, pid=1, NVLink: fatal\n"
    (event,) = parse_kernel_log(text)
    assert (event.code, event.pci_bus_id) == (74, "0000:3b:00.0")
    assert event.time == datetime(2024, 3, 2, 9, 0, tzinfo=UTC)


def test_fallen_off_message_for_another_gpu_is_still_inferred() -> None:
    text = (
        "[  10.0] NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
        "[  10.1] NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.\n"
        "[  11.0] NVRM: GPU 0000:5e:00.0: GPU has fallen off the bus.\n"
    )
    events = parse_kernel_log(text)
    assert [(e.code, e.pci_bus_id, e.text.startswith("inferred")) for e in events] == [
        (79, "0000:3b:00.0", False),
        (79, "0000:5e:00.0", True),
    ]
