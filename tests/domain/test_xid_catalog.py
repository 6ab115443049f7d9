"""The Xid catalog: every code's NVIDIA buckets and our action, and the batch workflows.

The expected table below is written from NVIDIA's published catalog and our mapping rules,
not from the implementation's table.
"""

from __future__ import annotations

import pytest

from gpumedic.domain.telemetry import XidEvent
from gpumedic.domain.verdict import Action, Finding, Verdict, worst_action
from gpumedic.domain.xid_catalog import (
    XID_CATALOG,
    XidBucket,
    XidCatalog,
    XidEntry,
    nvlink5_severity,
    xid154_action,
)

B = XidBucket
H, W, D, F = Verdict.HEALTHY, Verdict.WATCH, Verdict.DEGRADED, Verdict.FAILED

# code -> (immediate bucket, our action, our verdict)
EXPECTED: dict[int, tuple[XidBucket, Action, Verdict]] = {}


def _expect(codes: list[int] | range, bucket: XidBucket, action: Action, verdict: Verdict) -> None:
    for code in codes:
        assert code not in EXPECTED, code
        EXPECTED[code] = (bucket, action, verdict)


_APP = (B.RESTART_APP, Action.RESTART_APP, W)
_IGN = (B.IGNORE, Action.NONE, H)
_RESET = (B.RESET_GPU, Action.RESET_GPU, F)

_expect([8, 11, 25, 32], *_APP)
_expect([13], B.RESTART_APP, Action.RESTART_APP, W)
_expect([14], *_IGN)
_expect([31], B.RESTART_APP, Action.RESTART_APP, W)
_expect([37, 38], *_IGN)
_expect([39, 40, 41, 70, 71, 72, 75, 76, 77, 85, *range(126, 136)], *_APP)
_expect([43, 44], *_IGN)
_expect([45], B.WORKFLOW_XID_45, Action.NONE, H)
_expect([46], *_RESET)
_expect([48], B.WORKFLOW_XID_48, Action.RESET_GPU, F)
_expect([54], B.CHECK_MECHANICALS, Action.INSPECT, D)
_expect([60], *_APP)
_expect([62], *_RESET)
_expect([63], *_IGN)
_expect([64], B.RESET_GPU, Action.REPLACE, F)  # replacement criterion: investigatory CONTACT_SUPPORT
_expect([66, 67], *_IGN)
_expect([68, 69, 80, 82, 83, 84, 86, 88, 89, *range(96, 106), 139], *_APP)
_expect([74], B.WORKFLOW_NVLINK_ERR, Action.RESET_GPU, F)
_expect([78], B.UPDATE_SWFW, Action.INSPECT, D)
_expect([79], B.RESTART_BM, Action.REBOOT, F)
_expect([92], B.IGNORE, Action.MONITOR, W)
_expect([93], *_IGN)
_expect([94], *_APP)
_expect([95], *_RESET)
_expect([106, 107], *_IGN)
_expect([109, 110, 119, 120, 136, 140, 143, 155, 156, 158], *_RESET)
_expect([121, 137, 141], *_IGN)
_expect([142], B.CONTACT_SUPPORT, Action.REPLACE, F)
_expect([144, 145, 146, 149, 150], B.WORKFLOW_NVLINK5_ERR, Action.RESET_GPU, F)  # text unreadable
_expect([147, 148], B.WORKFLOW_NVLINK5_ERR, Action.MONITOR, W)  # every decode row non-fatal
_expect([151], B.RESTART_VM, Action.REBOOT, F)
_expect([152, 153], *_IGN)
_expect([154], B.XID_154, Action.MONITOR, W)  # text unreadable
_expect([157], B.IGNORE, Action.REPLACE, F)  # no spare resources left: replacement criterion
_expect([159], B.CHECK_UVM, Action.INSPECT, D)
_expect([160, 161], *_IGN)

# Investigatory buckets where NVIDIA names one that changes the story.
EXPECTED_INVESTIGATORY = {
    8: B.CONTACT_SUPPORT,
    13: B.WORKFLOW_XID_13,
    31: B.WORKFLOW_XID_31,
    45: B.WORKFLOW_XID_45,
    48: B.WORKFLOW_XID_48,
    64: B.CONTACT_SUPPORT,
    79: B.CONTACT_SUPPORT,
    92: B.CONTACT_SUPPORT,
    157: B.CONTACT_SUPPORT,
    39: B.CONTACT_SUPPORT,
    126: B.CONTACT_SUPPORT,
}

NAMES = {
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    48: "Double Bit ECC Error",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    154: "GPU recovery action changed",
}


def ev(code: int, text: str = "", pci: str | None = "0000:3b:00.0") -> XidEvent:
    return XidEvent(code=code, pci_bus_id=pci, time=None, text=text)


def judge(*events: XidEvent, prior: set[int] | None = None) -> tuple[Finding, ...]:
    return XID_CATALOG.assess_events(events, subject="GPU 3", prior_codes=prior or set())


def by_code(findings: tuple[Finding, ...], code: int) -> Finding:
    return next(f for f in findings if f.reason.startswith((f"GPU 3: Xid {code} ", f"GPU 3: Xid {code}:")))


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_every_catalog_code_has_its_bucket_action_and_verdict(code: int) -> None:
    entry = XID_CATALOG.entry(code)
    assert entry is not None
    bucket, action, verdict = EXPECTED[code]
    assert (entry.code, entry.immediate, entry.action, entry.verdict) == (code, bucket, action, verdict)
    assert entry.name
    assert entry.note
    assert XID_CATALOG.action_for(code) is action


TEXT_DEPENDENT = {154, *range(144, 151)}  # covered by the Xid 154 and NVLink5 tests below


@pytest.mark.parametrize("code", sorted(set(EXPECTED) - TEXT_DEPENDENT))
def test_a_lone_xid_is_judged_as_its_entry_says(code: int) -> None:
    _, action, verdict = EXPECTED[code]
    (finding,) = judge(ev(code))
    assert (finding.verdict, finding.action) == (verdict, action)
    assert finding.reason.startswith(f"GPU 3: Xid {code} (")


def test_the_catalog_holds_exactly_the_published_codes() -> None:
    assert XID_CATALOG.codes == frozenset(EXPECTED)
    assert len(XID_CATALOG) == len(EXPECTED)


@pytest.mark.parametrize(("code", "bucket"), sorted(EXPECTED_INVESTIGATORY.items()))
def test_investigatory_buckets_follow_nvidia(code: int, bucket: XidBucket) -> None:
    entry = XID_CATALOG.entry(code)
    assert entry is not None
    assert entry.investigatory is bucket


@pytest.mark.parametrize(("code", "name"), sorted(NAMES.items()))
def test_entries_carry_short_human_names(code: int, name: str) -> None:
    entry = XID_CATALOG.entry(code)
    assert entry is not None
    assert entry.name == name


def test_restart_app_and_ignore_are_not_node_faults() -> None:
    for code, (bucket, action, _) in EXPECTED.items():
        if bucket in (B.RESTART_APP, B.IGNORE) and code not in (64, 157):
            assert not action.needs_remediation, code


@pytest.mark.parametrize("code", [0, 1, 2, 9, 12, 162, 171, 999, -1])
def test_unknown_codes_are_watched_never_dropped(code: int) -> None:
    assert XID_CATALOG.entry(code) is None
    assert XID_CATALOG.action_for(code) is Action.MONITOR
    (finding,) = judge(ev(code), ev(code))
    assert (finding.verdict, finding.action) == (W, Action.MONITOR)
    assert f"Xid {code}: not in the catalog" in finding.reason


def test_ignored_xid_is_still_reported_as_application_level() -> None:
    (finding,) = judge(ev(43))
    assert finding == Finding(H, Action.NONE, "GPU 3: Xid 43 (GPU stopped processing): ignored, application-level")


def test_repeats_are_counted_in_one_finding() -> None:
    findings = judge(ev(13), ev(13), ev(13))
    assert len(findings) == 1
    assert "Xid 13 (Graphics Engine Exception) x3:" in findings[0].reason


# --- Xid 45 --------------------------------------------------------------------------------------


def test_xid45_alone_is_benign_cleanup() -> None:
    (finding,) = judge(ev(45, "pid=1, name=python3, Ch 00000001"))
    assert (finding.verdict, finding.action) == (H, Action.NONE)
    assert "benign" in finding.reason


def test_xid45_with_other_xids_is_ignored_and_the_others_decide() -> None:
    findings = judge(ev(45, "caused by previous Xid 79"), ev(79, "GPU has fallen off the bus."))
    assert (by_code(findings, 45).verdict, by_code(findings, 45).action) == (H, Action.NONE)
    assert "ignored" in by_code(findings, 45).reason
    assert "(79)" in by_code(findings, 45).reason
    assert worst_action([f.action for f in findings]) is Action.REBOOT


def test_xid45_with_an_application_xid_stays_an_application_matter() -> None:
    findings = judge(ev(45), ev(13))
    assert worst_action([f.action for f in findings]) is Action.RESTART_APP


# --- Xid 48 --------------------------------------------------------------------------------------


def test_xid48_alone_resets_the_gpu_without_diagnostics() -> None:
    (finding,) = judge(ev(48))
    assert (finding.verdict, finding.action, finding.field_diagnostics) == (F, Action.RESET_GPU, False)


def test_xid48_with_63_resets_then_asks_for_field_diagnostics() -> None:
    findings = judge(ev(48), ev(63), ev(94))
    xid48 = by_code(findings, 48)
    assert (xid48.verdict, xid48.action, xid48.field_diagnostics) == (F, Action.RESET_GPU, True)
    assert "with Xid 63" in xid48.reason
    assert "field diagnostics are required" in xid48.reason
    assert by_code(findings, 63).action is Action.NONE
    assert worst_action([f.action for f in findings]) is Action.RESET_GPU


def test_xid48_with_64_asks_for_diagnostics_and_64_asks_for_replacement() -> None:
    findings = judge(ev(48), ev(64))
    assert by_code(findings, 48).field_diagnostics
    assert by_code(findings, 64).action is Action.REPLACE
    assert worst_action([f.action for f in findings]) is Action.REPLACE


# --- Xid 79 --------------------------------------------------------------------------------------


def test_xid79_first_time_reboots() -> None:
    (finding,) = judge(ev(79, "pid='<unknown>', name=<unknown>, GPU has fallen off the bus."), prior={13, 43})
    assert (finding.verdict, finding.action) == (F, Action.REBOOT)


def test_xid79_twice_in_one_batch_is_one_incident() -> None:
    (finding,) = judge(ev(79), ev(79))
    assert finding.action is Action.REBOOT
    assert "x2" in finding.reason


def test_xid79_again_after_an_earlier_sweep_replaces_the_gpu() -> None:
    (finding,) = judge(ev(79), prior={79})
    assert (finding.verdict, finding.action) == (F, Action.REPLACE)
    assert "again" in finding.reason


def test_repeating_application_xids_suggest_diagnostics_but_stay_restart_app() -> None:
    (finding,) = judge(ev(31), prior={31})
    assert finding.action is Action.RESTART_APP
    assert "diagnostics" in finding.reason


# --- Xid 154 -------------------------------------------------------------------------------------

# The first text is the real line of the Talos kernel log in the corpus
# (talos-kern-log-xid154-gsp-rpc-timeout), after the code.
XID154_TEXTS = [
    ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", Action.RESET_GPU),
    ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", Action.REBOOT),
    ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", Action.RESET_GPU),
    ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", Action.RESET_GPU),
    ("GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)", Action.NONE),
    ("gpu recovery action changed from 0x0 (none) to 0x2 (NODE REBOOT REQUIRED)", Action.REBOOT),
    ("GPU recovery action changed to (gpu reset required)", Action.RESET_GPU),
    ("Node Reboot Required", Action.REBOOT),
]


@pytest.mark.parametrize(("text", "action"), XID154_TEXTS)
def test_xid154_follows_the_recovery_action_in_its_text(text: str, action: Action) -> None:
    assert xid154_action(text) is action
    (finding,) = judge(ev(154, text))
    assert finding.action is action
    assert finding.verdict is (H if action is Action.NONE else F)


def test_xid154_without_a_recognisable_action_is_watched() -> None:
    assert xid154_action("GPU recovery action changed from 0x0 (None) to 0x9 (Quux)") is None
    (finding,) = judge(ev(154, "something new"))
    assert (finding.verdict, finding.action) == (W, Action.MONITOR)


def test_xid154_a_later_none_does_not_cancel_an_earlier_reset() -> None:
    findings = judge(
        ev(154, "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"),
        ev(154, "GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)"),
    )
    assert findings[0].action is Action.RESET_GPU


# --- Xid 144-150 (NVLink5) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "severity"),
    [
        ("RLW_RXPIPE Nonfatal XC0 i0 Link 11 (0x00000186 0x00000001 0x0 0x0 0x0 0x0 0x0)", "nonfatal"),
        ("NETIR_LINK_EVT Fatal XC0 i0 Link 3 (0x00011111 0x00000000 0x0 0x0 0x0 0x0 0x0)", "fatal"),
        ("SAW_MVB Non-fatal XC0 i0 Link 0 (...)", "nonfatal"),
        ("NETIR_LINK_EVT Link Fatal XC0 i0 Link 5 (...)", "fatal"),
        ("RLW_RXPIPE interrupt hit on link 11", None),
    ],
)
def test_nvlink5_severity_is_read_from_the_message(text: str, severity: str | None) -> None:
    assert nvlink5_severity(text) == severity


def test_nvlink5_nonfatal_is_monitored_and_fatal_resets() -> None:
    (nonfatal,) = judge(ev(145, "RLW_RXPIPE Nonfatal XC0 i0 Link 11 (...)"))
    assert (nonfatal.verdict, nonfatal.action) == (W, Action.MONITOR)
    (fatal,) = judge(ev(149, "NETIR_LINK_EVT Fatal XC0 i0 Link 3 (...)"))
    assert (fatal.verdict, fatal.action) == (F, Action.RESET_GPU)


def test_nvlink5_the_worst_event_of_a_code_decides() -> None:
    (finding,) = judge(ev(146, "TLW_RX Nonfatal XC0 i0 Link 1 (...)"), ev(146, "TLW_RX Fatal XC0 i0 Link 1 (...)"))
    assert finding.action is Action.RESET_GPU


@pytest.mark.parametrize(("code", "action"), [(144, Action.RESET_GPU), (150, Action.RESET_GPU), (147, Action.MONITOR)])
def test_nvlink5_without_a_severity_falls_back_per_code(code: int, action: Action) -> None:
    (finding,) = judge(ev(code, "no severity printed"))
    assert finding.action is action


def test_a_catalog_refuses_a_code_twice() -> None:
    entry = XidEntry(1, "x", B.IGNORE, None, Action.NONE, H, "n")
    with pytest.raises(ValueError, match="twice"):
        XidCatalog([entry, entry])
