"""Health assessment: one node's telemetry and a policy in, verdicts, actions and reasons out.

Contract of `assess_node`:

* Every rule yields a `Finding`; a reason names the GPU, the value and the threshold. A GPU's
  verdict and action are the worst of its findings; the node's are the worst of every GPU and
  every node-level finding (`Verdict.rank`: unknown ranks above degraded, below failed).
* Collection errors make the node `unknown` (each error is a node reason), unless something
  parsed says `failed`. Findings from what *was* parsed are kept, and their actions stand: every
  action is backed by a concrete parsed reason (a fresh Xid 79 justifies a reboot even when
  another command failed). What failed to parse never produces a finding, and the GPU-count rule
  is skipped because a short GPU list may be an artefact of the error. An unparsable GPU list
  therefore gives unknown / none.
* A GPU that reported no health data at all (every field None) is `unknown`, never healthy.
* `previous` is the same node's previous sweep: rates (correctable ECC, PCIe replay, NVLink CRC)
  need it. Without it, counter totals alone never trigger a rate finding. A counter that went
  down was reset (driver reload, GPU reset): no rate, no alarm.
* `last_full` is the node's last clean full sweep (`gpumedic.domain.deep_readings`). A quick
  sweep takes from it the state readings it cannot make (SRAM flag, spare-row banks, remap
  state, slowdown temperature) while it is younger than `full_reading_max_age_hours`; a finding
  that exists only thanks to them ends with when they were read. A full sweep takes its PCIe
  replay and NVLink CRC rates against it when `previous` was a quick sweep. `before_last_full` is
  the clean full sweep before `last_full`: a quick sweep (reading neither counter) states the
  rates `last_full` measured against it, while `last_full` is carried, saying between which
  sweeps they were measured.
* `prior_xids` maps a GPU key to the Xid codes that GPU logged in *earlier* sweeps (not this
  one's `xid_events`). A key is a GPU UUID (matched case-insensitively), a PCI bus id in any
  common spelling ("00000000:3B:00.0", "0000:3b:00.0", "PCI:0000:3b:00"), or a GPU index (int).
  A GPU's history is the union of its UUID, PCI and index entries; an Xid whose GPU is not in
  the list uses its PCI entry. Prefer UUID or PCI keys: indices shift when a GPU drops off the
  bus, so an index can pin another GPU's history on the wrong card. The caller decides how far
  back history reaches (`HealthPolicy.xid_repeat_window_hours`). Used for: Xid 79 again on the
  same GPU -> replace; Xid 13/31 repeating -> the reason suggests diagnostics.
* Xid events are attributed to GPUs by normalised PCI bus id. Events without a bus id, or whose
  bus id matches no listed GPU (a GPU that fell off the bus is often missing from the list),
  become node-level findings, grouped per bus id. `xid_events` is taken as this sweep's new
  evidence: the collector passes only events since the previous sweep.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from gpumedic.domain.deep_readings import carried_note, full_baseline, readings_to_carry, with_full_readings
from gpumedic.domain.failure_class import FailureClass
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, XidEvent, canonical_pci_bus_id
from gpumedic.domain.verdict import (
    Action,
    Finding,
    GpuAssessment,
    NodeAssessment,
    Verdict,
    worst_action,
    worst_verdict,
)
from gpumedic.domain.xid_catalog import XID_CATALOG, XidCatalog

__all__ = ["PriorXids", "assess_node", "summarise", "unknown_node"]

# GPU key -> Xid codes that GPU logged in earlier sweeps; see the module docstring.
PriorXids = Mapping[str, Collection[int]] | Mapping[int, Collection[int]]


# --- identifiers ---------------------------------------------------------------------------------


def _gpu_key(key: str | int) -> str | int:
    """A `prior_xids` key as it is matched: PCI ids canonical, UUIDs lower-case, indices as-is."""
    if isinstance(key, int):
        return key
    return canonical_pci_bus_id(key) or key.strip().lower()


# --- combining -----------------------------------------------------------------------------------


def summarise(findings: Iterable[Finding]) -> tuple[Verdict, Action, tuple[str, ...], bool]:
    """Worst verdict, worst action, the reasons in order, and whether diagnostics are asked for."""
    found = tuple(findings)
    return (
        worst_verdict([f.verdict for f in found]),
        worst_action([f.action for f in found]),
        tuple(f.reason for f in found),
        any(f.field_diagnostics for f in found),
    )


def likely_cause(findings: Iterable[Finding]) -> FailureClass | None:
    """What broke, by the findings behind the strongest action: the first of them that names a
    part, else the first naming one behind a weaker action (a driver's recovery action names
    none; the DBE beside it does). None when no finding names one."""
    named = [f for f in findings if f.cause is not None and f.verdict is not Verdict.HEALTHY]
    return max(named, key=lambda f: f.action.rank).cause if named else None


def unknown_node(node: str, reason: str) -> NodeAssessment:
    """A node about which nothing could be learned: unknown, and nothing is done to it."""
    return NodeAssessment(node=node, verdict=Verdict.UNKNOWN, action=Action.NONE, reasons=(reason,), gpus=())


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _ranges(indices: Iterable[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2, 4, 6-7'."""
    ordered = sorted(set(indices))
    spans: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        spans.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(spans)


def _fmt(value: float) -> str:
    return f"{value:g}"


# --- node-level rules ----------------------------------------------------------------------------


_MAX_LISTED_GPUS = 1024


def _gpu_count_findings(telemetry: NodeTelemetry) -> list[Finding]:
    expected = telemetry.expected_gpu_count
    if expected is None or expected < 0:  # no inventory figure (a negative one is no figure either)
        return []
    present = [g.index for g in telemetry.gpus]
    found = len(present)
    if found == expected:
        return []
    if found == 0:
        return [Finding(Verdict.FAILED, Action.REBOOT, f"expected {expected} GPUs, found none")]
    listed = f"indices {_ranges(present)} present"
    # Name the missing indices when they are the usual 0..expected-1; bounded so that a corrupt
    # inventory figure cannot make this loop run for ever.
    seen = set(present)
    missing = [i for i in range(expected) if i not in seen] if expected <= _MAX_LISTED_GPUS else []
    if found < expected:
        if missing:
            listed += f", {_ranges(missing)} missing"
        # A GPU that drops out of the list has, as a rule, fallen off the bus.
        return [
            Finding(
                Verdict.FAILED,
                Action.REBOOT,
                f"expected {expected} GPUs, found {found}: {listed}",
                cause=FailureClass.FALLEN_OFF_BUS,
            )
        ]
    return [
        Finding(
            Verdict.WATCH,
            Action.MONITOR,
            f"expected {expected} GPUs, found {found}: {listed}; check the fleet inventory",
        )
    ]


def _links_down(gpu: GpuTelemetry) -> list[NvLinkState]:
    return [link for link in gpu.nvlinks if link.active is False]


def _fabric_findings(telemetry: NodeTelemetry, policy: HealthPolicy) -> list[Finding]:
    if not policy.nvlink_inactive_is_fault:
        return []
    affected = [g.index for g in telemetry.gpus if _links_down(g)]
    if len(affected) < policy.nvlink_down_gpus_reboot:
        return []
    return [
        Finding(
            Verdict.DEGRADED,
            Action.REBOOT,
            f"NVLinks down on {len(affected)} GPUs ({_ranges(affected)}), at or above "
            f"{policy.nvlink_down_gpus_reboot}: likely the NVSwitch/fabric side, reboot the node",
            cause=FailureClass.NVLINK,
        )
    ]


# --- GPU-level rules -----------------------------------------------------------------------------

_IDENTITY_FIELDS = frozenset({"index", "uuid", "serial", "pci_bus_id", "name"})


def _has_health_data(gpu: GpuTelemetry) -> bool:
    for field in dataclasses.fields(gpu):
        if field.name in _IDENTITY_FIELDS:
            continue
        value = getattr(gpu, field.name)
        if value is not None and value != () and value != frozenset():
            return True
    return False


def _memory_findings(gpu: GpuTelemetry, label: str, policy: HealthPolicy) -> list[Finding]:
    found: list[Finding] = []
    dbe = gpu.ecc_dbe_volatile
    if dbe is not None and dbe > 0:
        found.append(
            Finding(
                Verdict.FAILED,
                Action.RESET_GPU,
                f"{label}: {_plural(dbe, 'volatile uncorrectable (DBE) ECC error')} since the last driver load",
                cause=FailureClass.HBM,
            )
        )
    if gpu.row_remap_failure:
        found.append(
            Finding(
                Verdict.FAILED,
                Action.REPLACE,
                f"{label}: row remapping failed (no spare row for an uncorrectable error): replacement criterion",
                cause=FailureClass.HBM,
            )
        )
    if gpu.sram_threshold_exceeded:
        # Row remapping cannot spare on-chip SRAM; past the field diagnostic's threshold the
        # board fails NVIDIA's RMA qualification, so a reset or reboot would only delay it.
        found.append(
            Finding(
                Verdict.FAILED,
                Action.REPLACE,
                f"{label}: SRAM uncorrectable errors exceed the field diagnostic's threshold "
                "(SRAM Threshold Exceeded: Yes): replacement criterion",
                cause=FailureClass.SRAM,
            )
        )
    banks = gpu.remap_banks
    if banks is not None and banks.none is not None and banks.none > 0:
        found.append(
            Finding(
                Verdict.FAILED,
                Action.REPLACE,
                f"{label}: {_plural(banks.none, 'bank has', 'banks have')} no spare rows left",
                cause=FailureClass.HBM,
            )
        )
    if banks is not None and banks.low is not None and banks.low >= policy.banks_low_spare_watch:
        found.append(
            Finding(
                Verdict.WATCH,
                Action.MONITOR,
                f"{label}: {_plural(banks.low, 'bank has', 'banks have')} few spare rows left "
                f"(watch at {policy.banks_low_spare_watch})",
                cause=FailureClass.HBM,
            )
        )
    if gpu.row_remap_pending:
        found.append(
            Finding(
                Verdict.DEGRADED,
                Action.RESET_GPU,
                f"{label}: pending row remap: takes effect at the next GPU reset",
                cause=FailureClass.HBM,
            )
        )
    if gpu.retired_pages_pending:
        found.append(
            Finding(
                Verdict.DEGRADED,
                Action.RESET_GPU,
                f"{label}: pending page retirement: takes effect at the next GPU reset",
                cause=FailureClass.HBM,
            )
        )
    counts = [c for c in (gpu.retired_pages_sbe, gpu.retired_pages_dbe) if c is not None]
    if counts:
        retired = sum(counts)
        if retired >= policy.retired_pages_replace:
            found.append(
                Finding(
                    Verdict.FAILED,
                    Action.REPLACE,
                    f"{label}: {retired} retired pages, at or above {policy.retired_pages_replace}: "
                    "replacement criterion",
                    cause=FailureClass.HBM,
                )
            )
        elif retired >= policy.retired_pages_watch:
            found.append(
                Finding(
                    Verdict.WATCH,
                    Action.MONITOR,
                    f"{label}: {retired} retired pages (watch at {policy.retired_pages_watch})",
                    cause=FailureClass.HBM,
                )
            )
    return found


def _thermal_findings(gpu: GpuTelemetry, label: str, policy: HealthPolicy) -> list[Finding]:
    found: list[Finding] = []
    temperature = gpu.temperature_c
    if temperature is not None:
        if gpu.temp_slowdown_c is not None:
            slowdown, assumed = gpu.temp_slowdown_c, ""
        else:
            slowdown, assumed = policy.default_slowdown_c, " (not reported; assumed)"
        margin = policy.temperature_margin_c
        if temperature >= slowdown - margin:
            threshold = f"the slowdown threshold {_fmt(slowdown)} C{assumed}"
            if margin:
                threshold += f" minus a {_fmt(margin)} C margin"
            found.append(
                Finding(
                    Verdict.DEGRADED,
                    Action.INSPECT,
                    f"{label}: {_fmt(temperature)} C is at or above {threshold}",
                    cause=FailureClass.THERMAL,
                )
            )
    active = {reason.strip().lower() for reason in gpu.throttle_reasons}
    thermal = sorted(active & policy.thermal_throttle_reasons)
    if thermal:
        found.append(
            Finding(
                Verdict.DEGRADED,
                Action.INSPECT,
                f"{label}: thermal slowdown active: {', '.join(thermal)}",
                cause=FailureClass.THERMAL,
            )
        )
    power = sorted(active & policy.power_throttle_reasons)
    if power:
        found.append(
            Finding(
                Verdict.DEGRADED,
                Action.INSPECT,
                f"{label}: hardware power slowdown active: {', '.join(power)}",
                cause=FailureClass.THERMAL,
            )
        )
    return found


def _nvlink_findings(gpu: GpuTelemetry, label: str, policy: HealthPolicy) -> list[Finding]:
    down = _links_down(gpu) if policy.nvlink_inactive_is_fault else []
    if not down:
        return []
    links = _ranges(link.link for link in down)
    if len(down) == len(gpu.nvlinks):
        return [
            Finding(
                Verdict.DEGRADED,
                Action.REBOOT,
                f"{label}: all {_plural(len(down), 'NVLink')} down ({links}): likely the fabric side, reboot",
                cause=FailureClass.NVLINK,
            )
        ]
    return [
        Finding(
            Verdict.DEGRADED,
            Action.RESET_GPU,
            f"{label}: NVLink {links} down ({len(down)} of {len(gpu.nvlinks)} links): reset the GPU to retrain",
            cause=FailureClass.NVLINK,
        )
    ]


_RECOVERY_ACTIONS: dict[str, tuple[Verdict, Action]] = {
    "none": (Verdict.HEALTHY, Action.NONE),
    "reset": (Verdict.FAILED, Action.RESET_GPU),
    "gpu_reset": (Verdict.FAILED, Action.RESET_GPU),
    "drain_p2p": (Verdict.FAILED, Action.RESET_GPU),
    "drain_and_reset": (Verdict.FAILED, Action.RESET_GPU),
    "reboot": (Verdict.FAILED, Action.REBOOT),
    "node_reboot": (Verdict.FAILED, Action.REBOOT),
    # Newer NVML values: a PCIe bus reset or a system reboot are both beyond a GPU reset.
    "bus_reset": (Verdict.FAILED, Action.REBOOT),
    "system_reboot": (Verdict.FAILED, Action.REBOOT),
    # Multi-node IMEX domain recovery is not something we automate.
    "recover_imex_domain": (Verdict.DEGRADED, Action.INSPECT),
}
_NOT_REPORTED = frozenset({"", "n/a", "[n/a]", "not supported", "[not supported]"})


def _recovery_findings(gpu: GpuTelemetry, label: str) -> list[Finding]:
    raw = gpu.recovery_action
    if raw is None:
        return []
    key = re.sub(r"[\s-]+", "_", raw.strip().lower())
    if key in _NOT_REPORTED:
        return []
    known = _RECOVERY_ACTIONS.get(key)
    if known is None:
        return [
            Finding(
                Verdict.WATCH,
                Action.MONITOR,
                f"{label}: driver recovery action {raw!r} is not one we know: monitor",
            )
        ]
    verdict, action = known
    if action is Action.NONE:
        return []
    return [Finding(verdict, action, f"{label}: the driver's recovery action is {raw!r}: {action}")]


# --- rates ---------------------------------------------------------------------------------------


def _hours_between(earlier: datetime, later: datetime) -> float | None:
    try:
        seconds = (later - earlier).total_seconds()
    except TypeError:  # naive vs. aware timestamps: no trustworthy interval
        return None
    return seconds / 3600 if seconds > 0 else None


def _rate(before: int | None, after: int | None, hours: float) -> float | None:
    """Counter increase per hour, or None when either side is missing or the counter was reset."""
    if before is None or after is None or after < before:
        return None
    return (after - before) / hours


def _interval_hours(previous: NodeTelemetry | None, now: datetime, policy: HealthPolicy) -> float | None:
    """Hours since `previous`, or None when there is none or it is too recent for a rate."""
    if previous is None:
        return None
    hours = _hours_between(previous.collected_at, now)
    if hours is None or hours * 60 < policy.rate_min_interval_minutes:
        return None
    return hours


def _ecc_rate_findings(
    gpu: GpuTelemetry, old: GpuTelemetry, hours: float, label: str, policy: HealthPolicy
) -> list[Finding]:
    window = f"over {_fmt(round(hours, 2))} h"
    if gpu.ecc_sbe_volatile is not None and old.ecc_sbe_volatile is not None:
        sbe, counter = _rate(old.ecc_sbe_volatile, gpu.ecc_sbe_volatile, hours), "volatile"
    else:
        sbe, counter = _rate(old.ecc_sbe_aggregate, gpu.ecc_sbe_aggregate, hours), "aggregate"
    if sbe is None or sbe <= policy.sbe_rate_per_hour_watch:
        return []
    return [
        Finding(
            Verdict.WATCH,
            Action.MONITOR,
            f"{label}: {sbe:.0f} correctable (SBE) ECC errors per hour ({counter} counter, {window}), "
            f"above {_fmt(policy.sbe_rate_per_hour_watch)}/h",
            cause=FailureClass.HBM,
        )
    ]


def _link_rate_findings(
    gpu: GpuTelemetry, old: GpuTelemetry, hours: float, label: str, policy: HealthPolicy
) -> list[Finding]:
    """PCIe replay and NVLink CRC rates: counters only a full sweep reads."""
    found: list[Finding] = []
    window = f"over {_fmt(round(hours, 2))} h"
    replay = _rate(old.pcie_replay, gpu.pcie_replay, hours)
    if replay is not None and replay > policy.pcie_replay_rate_per_hour_watch:
        found.append(
            Finding(
                Verdict.WATCH,
                Action.MONITOR,
                f"{label}: {replay:.0f} PCIe replays per hour ({window}), "
                f"above {_fmt(policy.pcie_replay_rate_per_hour_watch)}/h",
                cause=FailureClass.PCIE,
            )
        )
    old_links = {link.link: link for link in old.nvlinks}
    noisy: list[str] = []
    for link in gpu.nvlinks:
        before = old_links.get(link.link)
        crc = _rate(before.crc_errors, link.crc_errors, hours) if before is not None else None
        if crc is not None and crc > policy.nvlink_crc_rate_per_hour_watch:
            noisy.append(f"link {link.link} {crc:.0f}/h")
    if noisy:
        found.append(
            Finding(
                Verdict.WATCH,
                Action.MONITOR,
                f"{label}: NVLink CRC errors {', '.join(noisy)} ({window}), "
                f"above {_fmt(policy.nvlink_crc_rate_per_hour_watch)}/h",
                cause=FailureClass.NVLINK,
            )
        )
    return found


# --- Xid attribution -----------------------------------------------------------------------------


def _normalised_history(prior_xids: PriorXids | None) -> dict[str | int, frozenset[int]]:
    history: dict[str | int, frozenset[int]] = {}
    items: Iterable[tuple[str | int, Collection[int]]] = (prior_xids or {}).items()
    for key, codes in items:
        normal = _gpu_key(key)
        history[normal] = history.get(normal, frozenset()) | frozenset(codes)
    return history


def _gpu_history(gpu: GpuTelemetry, history: Mapping[str | int, frozenset[int]]) -> frozenset[int]:
    codes = history.get(gpu.index, frozenset())
    for key in (gpu.uuid, gpu.pci_bus_id):
        if key is not None:
            codes |= history.get(_gpu_key(key), frozenset())
    return codes


# --- the assessment ------------------------------------------------------------------------------


class _Earlier(NamedTuple):
    """What earlier sweeps tell the assessment of one GPU."""

    old: GpuTelemetry | None  # the previous sweep's reading of the board: ECC rates over `hours`
    hours: float | None
    baseline: GpuTelemetry | None  # the last full sweep's: PCIe replay and NVLink CRC rates
    baseline_hours: float | None
    full: NodeTelemetry | None  # a full sweep whose state readings a quick sweep takes up
    before_full: NodeTelemetry | None  # the full sweep before `full`: the link rates `full` measured


def _state_findings(gpu: GpuTelemetry, label: str, policy: HealthPolicy) -> list[Finding]:
    return _memory_findings(gpu, label, policy) + _thermal_findings(gpu, label, policy)


def _with_carried_state(gpu: GpuTelemetry, label: str, policy: HealthPolicy, full: NodeTelemetry) -> list[Finding]:
    """State findings with the last full sweep's readings filled in; those that only the carried
    readings make say when they were read."""
    filled = with_full_readings(gpu, full)
    found = _state_findings(filled, label, policy)
    if filled is gpu or not found:  # most GPUs: nothing found, nothing to tell apart
        return found
    own = _state_findings(gpu, label, policy)
    note = carried_note(full)
    return [f if f in own else dataclasses.replace(f, reason=f"{f.reason} ({note})") for f in found]


def _carried_link_rates(
    gpu: GpuTelemetry, label: str, policy: HealthPolicy, full: NodeTelemetry, before: NodeTelemetry
) -> list[Finding]:
    """The PCIe replay and NVLink CRC rates the last full sweep measured on this board, for a quick sweep,
    which reads neither counter: a link the nightly sweep found erring stays watched until the next full
    sweep measures it again, instead of reading healthy from the next quarter hour on."""
    last, first = full.same_gpu(gpu), before.same_gpu(gpu)
    hours = _interval_hours(before, full.collected_at, policy)
    if last is None or first is None or hours is None:
        return []
    note = (f"as measured between the full sweeps at {before.collected_at:%Y-%m-%d %H:%M} and "
            f"{full.collected_at:%Y-%m-%d %H:%M} UTC")
    return [dataclasses.replace(f, reason=f"{f.reason} ({note})")
            for f in _link_rate_findings(last, first, hours, label, policy)]


def _assess_gpu(
    gpu: GpuTelemetry,
    policy: HealthPolicy,
    *,
    earlier: _Earlier,
    xids: list[XidEvent],
    history: frozenset[int],
    catalog: XidCatalog,
) -> GpuAssessment:
    label = f"GPU {gpu.index}"
    findings: list[Finding] = []
    if not _has_health_data(gpu):
        findings.append(Finding(Verdict.UNKNOWN, Action.NONE, f"{label}: no health data reported"))
    if earlier.full is not None:
        findings += _with_carried_state(gpu, label, policy, earlier.full)
    else:
        findings += _state_findings(gpu, label, policy)
    findings += _nvlink_findings(gpu, label, policy)
    findings += _recovery_findings(gpu, label)
    if earlier.old is not None and earlier.hours is not None:
        findings += _ecc_rate_findings(gpu, earlier.old, earlier.hours, label, policy)
    if earlier.baseline is not None and earlier.baseline_hours is not None:
        findings += _link_rate_findings(gpu, earlier.baseline, earlier.baseline_hours, label, policy)
    elif earlier.full is not None and earlier.before_full is not None:
        findings += _carried_link_rates(gpu, label, policy, earlier.full, earlier.before_full)
    findings += catalog.assess_events(xids, subject=label, prior_codes=history)
    verdict, action, reasons, diagnostics = summarise(findings)
    return GpuAssessment(
        index=gpu.index,
        verdict=verdict,
        action=action,
        reasons=reasons,
        uuid=gpu.uuid,
        serial=gpu.serial,
        field_diagnostics=diagnostics,
        cause=likely_cause(findings),
    )


def assess_node(
    telemetry: NodeTelemetry,
    policy: HealthPolicy,
    *,
    previous: NodeTelemetry | None = None,
    prior_xids: PriorXids | None = None,
    last_full: NodeTelemetry | None = None,
    before_last_full: NodeTelemetry | None = None,
    catalog: XidCatalog = XID_CATALOG,
) -> NodeAssessment:
    """Assess one node's sweep; see the module docstring for the exact contract."""
    node_findings: list[Finding] = [
        Finding(Verdict.UNKNOWN, Action.NONE, error) for error in telemetry.collection_errors
    ]
    if not telemetry.collection_errors:
        node_findings += _gpu_count_findings(telemetry)

    now = telemetry.collected_at
    hours = _interval_hours(previous, now, policy)
    baseline = full_baseline(telemetry, previous, last_full)
    baseline_hours = _interval_hours(baseline, now, policy)
    full = readings_to_carry(telemetry, last_full, timedelta(hours=policy.full_reading_max_age_hours))

    position_by_pci: dict[str, int] = {}
    for position, gpu in enumerate(telemetry.gpus):
        bus = canonical_pci_bus_id(gpu.pci_bus_id)
        if bus is not None:
            position_by_pci.setdefault(bus, position)
    attributed: list[list[XidEvent]] = [[] for _ in telemetry.gpus]
    unattributed: dict[str | None, list[XidEvent]] = {}
    for event in telemetry.xid_events:
        raw = event.pci_bus_id
        pci = canonical_pci_bus_id(raw) or (raw.strip().lower() if raw and raw.strip() else None)
        owner = position_by_pci.get(pci) if pci is not None else None
        if owner is not None:
            attributed[owner].append(event)
        else:
            unattributed.setdefault(pci, []).append(event)

    history = _normalised_history(prior_xids)
    gpus = tuple(
        _assess_gpu(
            gpu,
            policy,
            earlier=_Earlier(previous.same_gpu(gpu) if previous is not None else None, hours,
                             baseline.same_gpu(gpu) if baseline is not None else None, baseline_hours, full,
                             before_last_full),
            xids=events,
            history=_gpu_history(gpu, history),
            catalog=catalog,
        )
        for gpu, events in zip(telemetry.gpus, attributed, strict=True)
    )

    node_findings += _fabric_findings(telemetry, policy)
    for pci, events in sorted(unattributed.items(), key=lambda item: item[0] or ""):
        subject = f"PCI {pci} (not in the GPU list)" if pci is not None else "Xid without a PCI address"
        prior = history.get(pci, frozenset()) if pci is not None else frozenset()
        node_findings += catalog.assess_events(events, subject=subject, prior_codes=prior)

    verdict, action, reasons, diagnostics = summarise(node_findings)
    return NodeAssessment(
        node=telemetry.node,
        verdict=worst_verdict([verdict, *(g.verdict for g in gpus)]),
        action=worst_action([action, *(g.action for g in gpus)]),
        reasons=reasons,
        gpus=gpus,
        field_diagnostics=diagnostics or any(g.field_diagnostics for g in gpus),
        cause=likely_cause(node_findings),
    )
