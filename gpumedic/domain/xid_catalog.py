"""NVIDIA's Xid catalog, and what each Xid means for us: a verdict and an action.

Source: NVIDIA "Analyzing Xid Errors with the Xid Catalog"
(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html), table "Xids" for
Ampere and later, its "XID 144-150 Decode" table, and its "Guidance Class" legend. Each entry
keeps NVIDIA's two resolution buckets (immediate / investigatory) next to our own `Action`, so
a reviewer can check the mapping line by line.

How buckets become actions (our policy, not NVIDIA's words):

* ``IGNORE`` is not a node fault: verdict healthy, action none; the event is still reported.
* ``RESTART_APP`` is not a node fault either: verdict watch, action restart_app (a node
  remediation is never started for it: `Action.needs_remediation` is False).
* ``RESET_GPU`` -> reset_gpu (failed). ``RESTART_BM`` / ``RESTART_VM`` -> reboot (failed).
* ``CONTACT_SUPPORT`` as the *immediate* bucket -> replace (failed): the GPU cannot be brought
  back into service by anything we automate.
* ``CHECK_MECHANICALS`` -> inspect: seating and power cables need hands.
* ``UPDATE_SWFW`` -> inspect: a human must update the driver or firmware; we never flash
  firmware automatically, and a reset would not help.
* ``CHECK_UVM`` (Xid 159) -> inspect. NVIDIA: "if UVM/vGPU is being utilized, RESET_GPU;
  otherwise IGNORE". Nothing in our telemetry says whether UVM is in use (on Grace-attached GPUs
  it nearly always is), so neither automatic branch is safe: restart_app would leave a GPU that
  needs a reset in service, and an unconditional reset would act on a guess. A human decides.
* ``WORKFLOW_NVLINK_ERR`` (Xid 74) -> reset_gpu ("A GPU reset or node reboot is needed").
* ``WORKFLOW_XID_13`` / ``WORKFLOW_XID_31`` -> restart_app (application faults until a pattern
  of repeats on the same GPU says otherwise).
* ``WORKFLOW_XID_45`` (Xid 45): alone it is the benign cleanup after an application was stopped
  -> none. With any other Xid on the same GPU in the same batch it is ignored and the other Xids
  decide. (NVIDIA's investigatory "Solo: RESTART_FM" is about Fabric Manager partitions that we
  do not manage; a lone 45 is overwhelmingly a Ctrl-C or a kill.)
* ``WORKFLOW_XID_48`` (Xid 48): alone -> reset_gpu. With Xid 63 or 64 on the same GPU ->
  reset_gpu and `Finding.field_diagnostics` set: NVIDIA's "drain and reset, then RUN_FIELDDIAG".
* Xid 64 (row remapper failure): NVIDIA's immediate bucket is RESET_GPU, but a remap failure
  means the bank had no spare row left; that is a replacement criterion (NVIDIA's investigatory
  CONTACT_SUPPORT), so we take the investigatory bucket: replace.
* Xid 79 (fallen off the bus): reboot the first time; replace if the same GPU fell off the bus
  in an earlier sweep too (the caller passes that history as ``prior_codes``).
* Xid 92 (high single-bit ECC rate): NVIDIA says IGNORE now, CONTACT_SUPPORT to investigate;
  we watch and monitor it instead of hiding it.
* Xid 154 carries the driver's own recovery action in its text; we follow it.
* Xid 144-150 (NVLink5, Blackwell): the driver prints whether the error is fatal; see
  `nvlink5_severity`.
* An Xid that is not in the catalog -> watch/monitor ("not in the catalog"), never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from gpumedic.domain.failure_class import FailureClass
from gpumedic.domain.telemetry import XidEvent
from gpumedic.domain.verdict import Action, Finding, Verdict, worst_action


class XidBucket(StrEnum):
    """NVIDIA's resolution buckets, spelled as in the catalog."""

    RESTART_APP = "RESTART_APP"
    IGNORE = "IGNORE"
    RESET_GPU = "RESET_GPU"
    RESTART_BM = "RESTART_BM"
    RESTART_VM = "RESTART_VM"
    CONTACT_SUPPORT = "CONTACT_SUPPORT"
    CHECK_MECHANICALS = "CHECK_MECHANICALS"
    UPDATE_SWFW = "UPDATE_SWFW"
    CHECK_UVM = "CHECK_UVM"
    WORKFLOW_XID_13 = "WORKFLOW_XID_13"
    WORKFLOW_XID_31 = "WORKFLOW_XID_31"
    WORKFLOW_XID_45 = "WORKFLOW_XID_45"
    WORKFLOW_XID_48 = "WORKFLOW_XID_48"
    WORKFLOW_NVLINK_ERR = "WORKFLOW_NVLINK_ERR"
    WORKFLOW_NVLINK5_ERR = "WORKFLOW_NVLINK5_ERR"
    XID_154 = "XID_154"
    # Buckets that only appear as the investigatory action.
    CHECK_APP_CUDA = "CHECK_APP/CUDA"
    INVESTIGATE_SW = "INVESTIGATE_SW"
    INVESTIGATE_SW_USER = "INVESTIGATE_SW_USER"
    INVESTIGATE_LINK_SI = "INVESTIGATE_LINK_SI"
    IGNORE_SYMPATHETIC = "IGNORE (sympathetic)"
    SYMPATHETIC_REPORT_SOLO = "SYMPATHETIC_REPORT_SOLO"
    XID_137_FLOW = "XID_137_FLOW"


@dataclass(frozen=True, slots=True)
class XidEntry:
    code: int
    name: str  # short human description
    immediate: XidBucket  # NVIDIA: what recovers the system now
    investigatory: XidBucket | None  # NVIDIA: what finds the cause; None where the catalog has none
    action: Action  # ours
    verdict: Verdict  # ours
    note: str  # what the reason says about it: the consequence, in a few words


# Default verdict/action per immediate bucket; entries that differ say so explicitly.
_BUCKET_DEFAULTS: dict[XidBucket, tuple[Verdict, Action]] = {
    XidBucket.IGNORE: (Verdict.HEALTHY, Action.NONE),
    XidBucket.RESTART_APP: (Verdict.WATCH, Action.RESTART_APP),
    XidBucket.RESET_GPU: (Verdict.FAILED, Action.RESET_GPU),
    XidBucket.RESTART_BM: (Verdict.FAILED, Action.REBOOT),
    XidBucket.RESTART_VM: (Verdict.FAILED, Action.REBOOT),
    XidBucket.CONTACT_SUPPORT: (Verdict.FAILED, Action.REPLACE),
    XidBucket.CHECK_MECHANICALS: (Verdict.DEGRADED, Action.INSPECT),
    XidBucket.UPDATE_SWFW: (Verdict.DEGRADED, Action.INSPECT),
    XidBucket.CHECK_UVM: (Verdict.DEGRADED, Action.INSPECT),
    XidBucket.WORKFLOW_NVLINK_ERR: (Verdict.FAILED, Action.RESET_GPU),
    XidBucket.WORKFLOW_XID_13: (Verdict.WATCH, Action.RESTART_APP),
    XidBucket.WORKFLOW_XID_31: (Verdict.WATCH, Action.RESTART_APP),
    XidBucket.WORKFLOW_XID_45: (Verdict.HEALTHY, Action.NONE),
    XidBucket.WORKFLOW_XID_48: (Verdict.FAILED, Action.RESET_GPU),
    # Text-dependent; these are the defaults when the text cannot be read.
    XidBucket.WORKFLOW_NVLINK5_ERR: (Verdict.FAILED, Action.RESET_GPU),
    XidBucket.XID_154: (Verdict.WATCH, Action.MONITOR),
}

_APP = "application-level fault: restart the application; not a node fault"
_APP_IGNORED = "ignored, application-level"
_CONTACT = XidBucket.CONTACT_SUPPORT
_CHECK_APP = XidBucket.CHECK_APP_CUDA


def _entries(
    codes: Iterable[int],
    name: str | dict[int, str],
    immediate: XidBucket,
    investigatory: XidBucket | None,
    note: str,
    *,
    verdict: Verdict | None = None,
    action: Action | None = None,
) -> list[XidEntry]:
    default_verdict, default_action = _BUCKET_DEFAULTS[immediate]
    return [
        XidEntry(
            code=code,
            name=name if isinstance(name, str) else name[code],
            immediate=immediate,
            investigatory=investigatory,
            action=action if action is not None else default_action,
            verdict=verdict if verdict is not None else default_verdict,
            note=note,
        )
        for code in codes
    ]


_COPY_ENGINES = {70: "CE3", 71: "CE4", 72: "CE5", 75: "CE6", 76: "CE7", 77: "CE8", 85: "CE9"}
_COPY_ENGINES |= {126 + i: f"CE{10 + i}" for i in range(10)}  # 126..135 -> CE10..CE19
_MEDIA_ENGINES = {
    68: "NVDEC0 Exception",
    82: "NVJPG0 Error",
    83: "NVDEC1 Error",
    84: "NVDEC2 Error",
    86: "OFA Exception",
    88: "NVDEC3 Error",
    89: "NVDEC4 Error",
    96: "NVDEC5 Error",
    97: "NVDEC6 Error",
    98: "NVDEC7 Error",
    99: "NVJPG1 Error",
    100: "NVJPG2 Error",
    101: "NVJPG3 Error",
    102: "NVJPG4 Error",
    103: "NVJPG5 Error",
    104: "NVJPG6 Error",
    105: "NVJPG7 Error",
    139: "OFA1 Error",
}
_NVLINK5 = {
    144: "NVLINK: SAW Error",
    145: "NVLINK: RLW Error",
    146: "NVLINK: TLW Error",
    147: "NVLINK: TREX Error",
    148: "NVLINK: NVLPW_CTRL Error",
    149: "NVLINK: NETIR Error",
    150: "NVLINK: MSE Error",
}

_CATALOG_ENTRIES: list[XidEntry] = [
    *_entries([8], "GPU stopped processing", XidBucket.RESTART_APP, _CONTACT, _APP),
    *_entries([11, 32], "Invalid or corrupted push buffer stream", XidBucket.RESTART_APP, _CHECK_APP, _APP),
    *_entries([25], "Invalid or illegal push buffer stream", XidBucket.RESTART_APP, _CHECK_APP, _APP),
    *_entries(
        [13],
        "Graphics Engine Exception",
        XidBucket.RESTART_APP,
        XidBucket.WORKFLOW_XID_13,
        "application-level fault (typically out of bounds): restart the application; not a node fault",
    ),
    *_entries([14], "Fake or injected error", XidBucket.IGNORE, _CONTACT, "ignored, injected from userspace"),
    *_entries(
        [31],
        "GPU memory page fault",
        XidBucket.RESTART_APP,
        XidBucket.WORKFLOW_XID_31,
        "application-level fault (illegal address): restart the application; not a node fault",
    ),
    *_entries([37], "Driver firmware error", XidBucket.IGNORE, _CHECK_APP, _APP_IGNORED),
    *_entries([38], "Driver firmware error", XidBucket.IGNORE, _CONTACT, _APP_IGNORED),
    *_entries([39, 40, 41], "Copy Engine Exception", XidBucket.RESTART_APP, _CONTACT, _APP),
    *_entries(
        _COPY_ENGINES,
        {code: f"{ce}: Unknown Error" for code, ce in _COPY_ENGINES.items()},
        XidBucket.RESTART_APP,
        _CONTACT,
        _APP,
    ),
    *_entries([43], "GPU stopped processing", XidBucket.IGNORE, _CONTACT, _APP_IGNORED),
    *_entries([44], "Graphics Engine fault during context switch", XidBucket.IGNORE, _CONTACT, _APP_IGNORED),
    *_entries(
        [45],
        "Preemptive cleanup, due to previous errors",
        XidBucket.WORKFLOW_XID_45,
        XidBucket.WORKFLOW_XID_45,
        "cleanup after an application was stopped; alone it is benign, otherwise the other Xids decide",
    ),
    *_entries([46], "GPU stopped processing", XidBucket.RESET_GPU, _CONTACT, "GPU timed out: reset the GPU"),
    *_entries(
        [48],
        "Double Bit ECC Error",
        XidBucket.WORKFLOW_XID_48,
        XidBucket.WORKFLOW_XID_48,
        "uncorrectable ECC error: reset the GPU to clear it",
    ),
    *_entries(
        [54],
        "Auxiliary power is not connected to the GPU board",
        XidBucket.CHECK_MECHANICALS,
        _CONTACT,
        "check the power cables and seating (inspect)",
    ),
    *_entries([60], "Video processor exception", XidBucket.RESTART_APP, XidBucket.INVESTIGATE_SW, _APP),
    *_entries(
        [62],
        "Internal micro-controller halt",
        XidBucket.RESET_GPU,
        _CONTACT,
        "micro-controller halted: reset the GPU",
    ),
    *_entries(
        [63],
        "ECC page retirement or row remapping recording event",
        XidBucket.IGNORE,
        XidBucket.IGNORE,
        "row-remap event recorded; no action (the remapped-row counters decide)",
    ),
    *_entries(
        [64],
        "ECC page retirement or row remapper recording failure",
        XidBucket.RESET_GPU,
        _CONTACT,
        "row-remap failure, no spare rows: replacement criterion (NVIDIA: reset, then contact support)",
        verdict=Verdict.FAILED,
        action=Action.REPLACE,
    ),
    *_entries([66], "Illegal access by driver", XidBucket.IGNORE, XidBucket.INVESTIGATE_SW, _APP_IGNORED),
    *_entries([67], "Illegal access by driver", XidBucket.IGNORE, _CONTACT, _APP_IGNORED),
    *_entries(_MEDIA_ENGINES, _MEDIA_ENGINES, XidBucket.RESTART_APP, _CONTACT, _APP),
    *_entries([69], "Graphics Engine class error", XidBucket.RESTART_APP, _CHECK_APP, _APP),
    *_entries(
        [74],
        "NVLINK Error",
        XidBucket.WORKFLOW_NVLINK_ERR,
        _CONTACT,
        "NVLink error: reset the GPU (contact the vendor if a reset or reboot does not clear it)",
    ),
    *_entries(
        [78],
        "vGPU Start Error",
        XidBucket.UPDATE_SWFW,
        XidBucket.UPDATE_SWFW,
        "a human must update the driver or firmware (inspect)",
    ),
    *_entries(
        [79],
        "GPU has fallen off the bus",
        XidBucket.RESTART_BM,
        _CONTACT,
        "reboot the node; replace the GPU if it falls off the bus again",
    ),
    *_entries([80], "Corrupted data sent to GPU", XidBucket.RESTART_APP, _CHECK_APP, _APP),
    *_entries(
        [92],
        "High single-bit ECC error rate",
        XidBucket.IGNORE,
        _CONTACT,
        "high correctable ECC rate: monitor",
        verdict=Verdict.WATCH,
        action=Action.MONITOR,
    ),
    *_entries(
        [93],
        "Non-fatal violation of provisioned InfoROM wear limit",
        XidBucket.IGNORE,
        _CONTACT,
        "ignored, InfoROM wear limit set with nvflash, not a fault",
    ),
    *_entries(
        [94],
        "Contained ECC error",
        XidBucket.RESTART_APP,
        XidBucket.IGNORE_SYMPATHETIC,
        "contained to one application: restart it; reset the GPU when convenient",
    ),
    *_entries(
        [95],
        "Uncontained ECC error",
        XidBucket.RESET_GPU,
        XidBucket.IGNORE_SYMPATHETIC,
        "uncontained ECC error: reset the GPU",
    ),
    *_entries([106], "SMBPBI Test Message", XidBucket.IGNORE, XidBucket.IGNORE, "ignored, test message"),
    *_entries([107], "SMBPBI Test Message Silent", XidBucket.IGNORE, XidBucket.IGNORE, "ignored, test message"),
    *_entries(
        [109], "Context Switch Timeout Error", XidBucket.RESET_GPU, _CONTACT, "context switch timed out: reset the GPU"
    ),
    *_entries(
        [110],
        "Security Fault Error",
        XidBucket.RESET_GPU,
        XidBucket.INVESTIGATE_SW,
        "security fault: reset the GPU (cold-reset the system if it persists)",
    ),
    *_entries(
        [119],
        "GSP RPC timeout",
        XidBucket.RESET_GPU,
        XidBucket.INVESTIGATE_SW,
        "GSP firmware did not answer: reset the GPU (power-cycle if it persists)",
    ),
    *_entries(
        [120],
        "GSP error",
        XidBucket.RESET_GPU,
        XidBucket.INVESTIGATE_SW,
        "GSP firmware error: reset the GPU (power-cycle if it persists)",
    ),
    *_entries([121], "C2C Link corrected error", XidBucket.IGNORE, _CONTACT, "ignored, corrected by the C2C link"),
    *_entries(
        [136],
        "Link Training Failed",
        XidBucket.RESET_GPU,
        XidBucket.INVESTIGATE_LINK_SI,
        "link training failed: reset the GPU",
    ),
    *_entries(
        [137],
        "NVLink Privilege Error",
        XidBucket.IGNORE,
        XidBucket.XID_137_FLOW,
        "ignored, application-level (illegal NVLink peer access)",
    ),
    *_entries(
        [140],
        "ECC Unrecovered Error",
        XidBucket.RESET_GPU,
        _CONTACT,
        "ECC error escaped page offlining/row remapping: reset the GPU",
    ),
    *_entries([141], "CUDA Fast Path Error", XidBucket.IGNORE, _CONTACT, _APP_IGNORED),
    *_entries([142], "NVENC3 Error", XidBucket.CONTACT_SUPPORT, None, "NVIDIA: contact support (replace)"),
    *_entries(
        [143], "GPU Initialization Error", XidBucket.RESET_GPU, _CONTACT, "GPU failed to initialise: reset the GPU"
    ),
    *_entries(
        [144, 145, 146, 149, 150],
        _NVLINK5,
        XidBucket.WORKFLOW_NVLINK5_ERR,
        XidBucket.WORKFLOW_NVLINK5_ERR,
        "NVLink5 error: fatal -> reset the GPU, non-fatal -> monitor",
    ),
    # Every row of NVIDIA's decode table for 147 and 148 is non-fatal with immediate IGNORE
    # (147: "not in production code"): when the severity cannot be read, monitor.
    *_entries(
        [147, 148],
        _NVLINK5,
        XidBucket.WORKFLOW_NVLINK5_ERR,
        XidBucket.WORKFLOW_NVLINK5_ERR,
        "NVLink5 error: fatal -> reset the GPU, non-fatal -> monitor",
        verdict=Verdict.WATCH,
        action=Action.MONITOR,
    ),
    *_entries(
        [151],
        "Key rotation Error",
        XidBucket.RESTART_VM,
        _CONTACT,
        "confidential-computing key rotation failed: restart the VM (reboot)",
    ),
    *_entries([152], "DLA SMMU Error", XidBucket.IGNORE, _CONTACT, "ignored, DLA error"),
    *_entries([153], "DLA timeout Error", XidBucket.IGNORE, _CONTACT, "ignored, DLA error"),
    *_entries(
        [154],
        "GPU recovery action changed",
        XidBucket.XID_154,
        None,
        "follow the recovery action the driver names",
    ),
    *_entries(
        [155],
        "NVLINK: SW Defined Error",
        XidBucket.RESET_GPU,
        XidBucket.INVESTIGATE_SW_USER,
        "NVLink link taken down on purpose: reset the GPU",
    ),
    *_entries(
        [156],
        "Resource Retirement Event",
        XidBucket.RESET_GPU,
        XidBucket.IGNORE,
        "a resource was retired: reset the GPU to apply",
    ),
    # NVIDIA's table: immediate IGNORE ("you may still run workloads"), investigatory
    # CONTACT_SUPPORT ("no possible repairs ... due to lack of resources"). Like Xid 64, no spare
    # resources left is a replacement criterion, so we take the investigatory bucket.
    *_entries(
        [157],
        "Resource Retirement Failure",
        XidBucket.IGNORE,
        _CONTACT,
        "resource retirement failed, no spare resources: replacement criterion",
        verdict=Verdict.FAILED,
        action=Action.REPLACE,
    ),
    *_entries([158], "GPU Fatal Timeout", XidBucket.RESET_GPU, _CONTACT, "GPU fatal timeout: reset the GPU"),
    *_entries(
        [159],
        "CHI Non-Data Error",
        XidBucket.CHECK_UVM,
        XidBucket.SYMPATHETIC_REPORT_SOLO,
        "C2C error: reset if UVM is in use, else ignore; we cannot tell, so a human inspects",
    ),
    *_entries(
        [160], "Channel Retirement Event", XidBucket.IGNORE, XidBucket.INVESTIGATE_SW, "ignored, channel retired"
    ),
    *_entries(
        [161],
        "Channel Retirement Failure",
        XidBucket.IGNORE,
        XidBucket.INVESTIGATE_SW,
        "ignored, channel retirement failed (software to investigate)",
    ),
]


# --- text-dependent Xids -------------------------------------------------------------------------

_XID154_TARGET = re.compile(r"\bto\s+(?:0x[0-9a-f]+\s*)?\(([^)]*)\)", re.IGNORECASE)


def _recovery_text_action(label: str) -> Action | None:
    """'GPU Reset Required' -> reset_gpu ... ; None when the label names no known action."""
    text = label.lower()
    if "reboot" in text:
        return Action.REBOOT
    if "reset" in text or "drain" in text:
        return Action.RESET_GPU
    if text.strip() == "none":
        return Action.NONE
    return None


def _xid154_target(text: str) -> str:
    match = _XID154_TARGET.search(text)
    return match.group(1).strip() if match else text.strip()


def xid154_action(text: str) -> Action | None:
    """The recovery action an Xid 154 message names, or None when it names none we know.

    The message reads "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)";
    the state *after* "to" counts. Expected labels (NVIDIA catalog): "None", "Drain P2P",
    "Drain and Reset", "GPU Reset Required", "Node Reboot Required". Both drains end in a GPU
    reset, so they map to reset_gpu. Without a "to (...)" part the whole text is searched.
    """
    return _recovery_text_action(_xid154_target(text))


_NVLINK5_SEVERITY = re.compile(r"\b(non-?fatal|fatal)\b", re.IGNORECASE)


def nvlink5_severity(text: str) -> Literal["fatal", "nonfatal"] | None:
    """Severity printed in an Xid 144-150 message, or None when the message carries none.

    The driver prints "<Xid>, <unit> <Fatal|Nonfatal> <XC> <injected> Link <n> (<intrInfo>
    <errorStatus> ...)", for example "145, RLW_RXPIPE Nonfatal XC0 i0 Link 11 (...)". That word is
    the driver's own decode of intrInfo/errorStatus, the same decode NVIDIA's "XID 144-150 Decode"
    table performs; "Link Fatal" rows put the GPU into drain-and-reset, "Fatal" rows need a reset.
    Known gap: a few non-fatal RLW_RXPIPE rows escalate to a reset on one intrInfo bit; those
    come with an Xid 154 naming the reset, which `XidCatalog.assess_events` follows.
    """
    match = _NVLINK5_SEVERITY.search(text)
    if match is None:
        return None
    return "nonfatal" if match.group(1).lower().startswith("non") else "fatal"


def _nvlink5_judgement(entry: XidEntry, text: str) -> tuple[Verdict, Action, str]:
    severity = nvlink5_severity(text)
    if severity == "fatal":
        return Verdict.FAILED, Action.RESET_GPU, "fatal NVLink5 error: reset the GPU"
    if severity == "nonfatal":
        return Verdict.WATCH, Action.MONITOR, "non-fatal NVLink5 error (NVIDIA: no immediate action): monitor"
    return entry.verdict, entry.action, f"severity not printed; assuming {entry.action}"


def _xid154_judgement(text: str) -> tuple[Verdict, Action, str]:
    action = xid154_action(text)
    if action is None:
        return Verdict.WATCH, Action.MONITOR, f"recovery action not recognised in {text.strip()[:120]!r}: monitor"
    verdict = Verdict.HEALTHY if action is Action.NONE else Verdict.FAILED
    return verdict, action, f"the driver's recovery action is now {_xid154_target(text)!r}: {action}"


# --- the catalog -----------------------------------------------------------------------------------


def _times(count: int) -> str:
    return f" x{count}" if count > 1 else ""


# The part an Xid points at, where it points at one: what an incident it opens records as its
# cause, for the forecaster to learn from. Codes not here (application faults, timeouts,
# driver errors) name no part.
_MEMORY_XIDS = (48, 63, 64, 92, 94, 95, 140)
_NVLINK_XIDS = (74, 137, 144, 145, 146, 147, 148, 149, 150, 155)
XID_CAUSES: dict[int, FailureClass] = {
    **dict.fromkeys(_MEMORY_XIDS, FailureClass.HBM),
    **dict.fromkeys(_NVLINK_XIDS, FailureClass.NVLINK),
    79: FailureClass.FALLEN_OFF_BUS,
    119: FailureClass.GSP,
    120: FailureClass.GSP,
}


class XidCatalog:
    """Look up Xid entries, and judge the Xids one GPU logged in one sweep."""

    def __init__(self, entries: Iterable[XidEntry]) -> None:
        self._entries: dict[int, XidEntry] = {}
        for entry in entries:
            if entry.code in self._entries:
                raise ValueError(f"Xid {entry.code} is in the catalog twice")
            self._entries[entry.code] = entry

    def entry(self, code: int) -> XidEntry | None:
        return self._entries.get(code)

    @property
    def codes(self) -> frozenset[int]:
        return frozenset(self._entries)

    def __contains__(self, code: object) -> bool:
        return code in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def action_for(self, code: int) -> Action:
        """Our action for a lone Xid `code` whose text says nothing more (monitor when unknown)."""
        entry = self.entry(code)
        return entry.action if entry is not None else Action.MONITOR

    def assess_events(
        self,
        events: Sequence[XidEvent],
        *,
        subject: str,
        prior_codes: Collection[int] = (),
    ) -> tuple[Finding, ...]:
        """Findings for the Xids that one GPU (or one unattributed PCI address) logged in one batch.

        One finding per distinct code, in code order; repeats are counted ("x12"), not repeated.
        `subject` starts every reason ("GPU 5", "PCI 0000:a1:00.0"). `prior_codes` are the Xid
        codes the same GPU logged in earlier sweeps (not this batch): Xid 79 there turns a reboot
        into a replacement. Workflows that look at the whole batch: 45 (alone vs. with others) and
        48 (alone vs. with 63/64). Text-dependent codes (154, 144-150) take the most severe
        reading among their events, so a later event never cancels an earlier one.
        """
        by_code: dict[int, list[XidEvent]] = {}
        for event in events:
            by_code.setdefault(event.code, []).append(event)
        codes = set(by_code)
        prior = frozenset(prior_codes)
        findings: list[Finding] = []
        for code in sorted(by_code):
            group = by_code[code]
            entry = self.entry(code)
            times = _times(len(group))
            if entry is None:
                findings.append(
                    Finding(
                        Verdict.WATCH,
                        Action.MONITOR,
                        f"{subject}: Xid {code}: not in the catalog{times}, monitoring",
                    )
                )
                continue
            head = f"{subject}: Xid {code} ({entry.name}){times}"
            finding = self._judge(entry, group, head, codes - {code}, prior)
            findings.append(replace(finding, cause=XID_CAUSES.get(code)))
        return tuple(findings)

    def _judge(
        self,
        entry: XidEntry,
        group: Sequence[XidEvent],
        head: str,
        others: set[int],
        prior: frozenset[int],
    ) -> Finding:
        code = entry.code
        if code == 45:
            if others:
                listed = ", ".join(str(c) for c in sorted(others))
                return Finding(
                    Verdict.HEALTHY,
                    Action.NONE,
                    f"{head}: ignored, cleanup after the other Xids on this GPU ({listed})",
                )
            return Finding(
                Verdict.HEALTHY,
                Action.NONE,
                f"{head}: alone, benign cleanup after an application was stopped",
            )
        if code == 48:
            with_remap = sorted(others & {63, 64})
            if with_remap:
                listed = " and ".join(f"Xid {c}" for c in with_remap)
                return Finding(
                    Verdict.FAILED,
                    Action.RESET_GPU,
                    f"{head} with {listed}: drain and reset the GPU, then field diagnostics are required",
                    field_diagnostics=True,
                )
        if code == 79 and 79 in prior:
            return Finding(
                Verdict.FAILED,
                Action.REPLACE,
                f"{head}: fell off the bus again (also in an earlier sweep): replace the GPU",
            )
        if code == 154 or entry.immediate is XidBucket.WORKFLOW_NVLINK5_ERR:
            judged = [_xid154_judgement(e.text) if code == 154 else _nvlink5_judgement(entry, e.text) for e in group]
            action = worst_action([a for _, a, _ in judged])
            verdict, action, why = next(j for j in judged if j[1] is action)
            return Finding(verdict, action, f"{head}: {why}")
        note = entry.note
        if code in (13, 31) and code in prior:
            note += "; it repeats on this GPU across sweeps: NVIDIA's workflow suggests diagnostics"
        return Finding(entry.verdict, entry.action, f"{head}: {note}")


XID_CATALOG = XidCatalog(_CATALOG_ENTRIES)
