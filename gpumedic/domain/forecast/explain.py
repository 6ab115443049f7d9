"""Features in words: the evidence behind a risk, as an SRE would write it."""

from __future__ import annotations

import math
from collections.abc import Callable

from gpumedic.domain.forecast.cusum import CUSUM_DECISION


def _n(v: float) -> int:
    return round(math.expm1(v))


def _ratio(v: float) -> str:
    return f"×{math.exp(v):.1f}"


_WORDS: dict[str, Callable[[float], str]] = {
    "sbe_bursts_24h": lambda v: f"{_n(v)} correctable-ECC burst(s) in the last 24 h",
    "sbe_bursts_7d": lambda v: f"{_n(v)} correctable-ECC burst(s) in 7 days",
    "sbe_active_days_7d": lambda v: f"correctable ECC errors on {round(v)} of the last 7 days",
    "sbe_errors_7d": lambda v: f"{_n(v)} correctable ECC errors in 7 days",
    "sbe_growth": lambda v: f"correctable-error bursts accelerating ({_ratio(v)} the previous days' rate)",
    "sbe_cusum": lambda v: (
        f"correctable-error rate above the fleet baseline (Poisson CUSUM {v:.1f}, signals at {CUSUM_DECISION})"
    ),
    "hours_since_sbe": lambda v: f"last correctable error {_n(v)} h ago",
    "remap_rows": lambda v: f"{_n(v)} row(s) remapped",
    "remap_growth_7d": lambda v: f"{_n(v)} row(s) remapped in the last 7 days",
    "remap_uncorrectable": lambda v: f"{_n(v)} row(s) remapped after uncorrectable errors",
    "remap_pending": lambda v: "row remap pending (a GPU reset is needed to apply it)",
    "remap_failure": lambda v: "row remapping failed (Xid 64: no spare row left where needed)",
    "banks_low": lambda v: "memory bank(s) low on spare rows",
    "banks_none": lambda v: "memory bank(s) with no spare rows left",
    "xid_remap_7d": lambda v: f"Xid 63 (row remap) ×{_n(v)} in 7 days",
    "xid_mem_severe_7d": lambda v: f"Xid 48/64/94/95 (uncorrectable memory error) ×{_n(v)} in 7 days",
    "dbe_7d": lambda v: f"{_n(v)} uncorrectable ECC error(s) in 7 days",
    "memory_hard_signals_7d": lambda v: f"{round(v)} distinct kinds of memory-error evidence in 7 days",
    "sbe_escalation_with_hard": lambda v: (
        f"correctable errors on {round(v)} of the last 7 days together with remaps or uncorrectable errors"
    ),
    "remaps_beyond_first_7d": lambda v: f"{_n(v) + 1} rows remapped within 7 days",
    "nvlink_crc_sustained": lambda v: "NVLink CRC errors hour after hour, longer than a transient spike",
    "pcie_replay_sustained": lambda v: "PCIe replays hour after hour, longer than a transient spike",
    "nvlink_crc_episode_days": lambda v: f"NVLink CRC errors for {v * 24:.0f} h without a 12 h pause",
    "pcie_replay_episode_days": lambda v: f"PCIe replays for {v * 24:.0f} h without a 12 h pause",
    "nvlink_crc_rising": lambda v: f"NVLink CRC errors growing half-day after half-day (at least {_ratio(v)} each)",
    "pcie_replay_rising": lambda v: f"PCIe replays growing half-day after half-day (at least {_ratio(v)} each)",
    "temp_drift_excess": lambda v: f"running hot and drifting hotter than its node peers ({v:+.1f} °C beyond normal)",
    "nvlink_crc_24h": lambda v: f"{_n(v)} NVLink CRC errors in 24 h",
    "nvlink_crc_growth": lambda v: f"NVLink CRC errors at {_ratio(v)} the GPU's own daily rate",
    "nvlink_crc_hours_24h": lambda v: f"NVLink CRC errors in {round(v)} of the last 24 hours",
    "nvlink_crc_hours_72h": lambda v: f"NVLink CRC errors in {round(v)} of the last 72 hours",
    "pcie_replay_hours_24h": lambda v: f"PCIe replays in {round(v)} of the last 24 hours",
    "pcie_replay_hours_72h": lambda v: f"PCIe replays in {round(v)} of the last 72 hours",
    "xid_nvlink_7d": lambda v: f"Xid 74 (NVLink error) ×{_n(v)} in 7 days",
    "pcie_replay_24h": lambda v: f"{_n(v)} PCIe replays in 24 h",
    "pcie_replay_growth": lambda v: f"PCIe replays at {_ratio(v)} the GPU's own daily rate",
    "xid_gsp_30d": lambda v: f"Xid 119/120 (GSP timeout) ×{_n(v)} in 30 days",
    "xid_fatal_30d": lambda v: f"fatal Xid (79/61/62) ×{_n(v)} in 30 days",
    "temp_dev_48h": lambda v: f"running {v:+.1f} °C against its node peers (48 h)",
    "temp_dev_change": lambda v: f"temperature drifting {v:+.1f} °C against its node peers",
    "temp_swing_48h": lambda v: f"temperature swings (σ {v:.1f} °C over 48 h)",
    "power_cv_48h": lambda v: f"power swings ({v:.0%} of mean over 48 h)",
    "prior_gpu_failures_180d": lambda v: f"{_n(v)} earlier failure(s) of this GPU slot in 180 days",
    "prior_node_failures_90d": lambda v: f"{_n(v)} earlier failure(s) on this node in 90 days",
    "survived_incidents_7d": lambda v: f"{_n(v)} incident(s) this GPU lived through in the last 7 days",
    "survived_incidents_30d": lambda v: f"{_n(v)} incident(s) this GPU lived through in 30 days",
    "survived_incidents_180d": lambda v: f"{_n(v)} incident(s) this GPU lived through in 180 days",
}

# Layer (a): conditions NVIDIA's memory-error guidance treats as service-now on their own.
HARD_PRECURSORS: tuple[str, ...] = (
    "remap_failure",
    "banks_none",
    "xid_mem_severe_7d",
    "remap_pending",
    "banks_low",
    "remap_uncorrectable",
)


def describe(feature: str, value: float) -> str:
    words = _WORDS.get(feature)
    return words(value) if words else f"{feature} = {value:.3g}"
