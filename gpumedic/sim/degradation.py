"""A simulator of degrading GPUs: telemetry history and failure records for the backtest.

`simulate_fleet(gpus, days, seed)` returns the HISTORY rows (`Sample`) and FAILURES
(`Failure`) of a fleet of 8-GPU nodes. Everything is drawn from one seeded generator.

The generative model (every rate is per GPU unless stated; `DegradationParams` holds them)

Failures
  * Rate 3.0e-4 per GPU-day overall: Meta's Llama 3 run saw 268 GPU-attributed
    interruptions on 16,384 H100s in 54 days (Llama 3 paper, table 5: faulty GPU incl.
    NVLink 148, HBM3 72, SRAM 19, GSP 17, SDC 6, thermal 6) = 3.03e-4 per GPU-day.
  * Class mix in those proportions. The paper's "faulty GPU" (148) is split by us, an
    assumption: NVLink 55, PCIe 23, fallen off the bus (Xid 79) 70.
  * Node frailty: 10% of nodes fail at 4× the rate of the rest (mean rate unchanged):
    "prior failures on the same GPU/server are the strongest predictor in every study".
  * A failed GPU is out for 1–3 days, then replaced (new GPU, fresh counters, the node
    reloads its driver).

Precursors (the window L before a failure at T)
  * HBM (precursor class): SBE bursts whose rate grows exponentially from ~0.3/day to
    3–15/day over L ≈ 7 days (lognormal), with bigger bursts near the end; correctable
    row remaps with Xid 63 (60%), banks running low (of those with ≥3 remaps, 60%) and
    out of spare rows (30% of those), contained uncorrectable errors Xid 94 (35%), DBE /
    Xid 48 (20%), remap failure Xid 64 (15%, i.e. ~1.2e-5 per GPU-day: NCSA Delta saw
    Xid 64 8 times on 608 H100s in 2.5 years = 1.4e-5). 12% of HBM failures are weak:
    at most one small burst in the last two days.
  * NVLink (precursor class): CRC errors growing from background to 20–300/hour over
    L ≈ 4 days, Xid 74 in half; 15% weak.
  * Thermal (precursor class): temperature drifting 6–15 °C above its node peers over
    L ≈ 5 days, wider swings, power throttling; 15% weak.
  * PCIe (precursor class): replay counter growth over L ≈ 4 days; 20% weak.
  * GSP: 35% show one Xid 119 1–120 h before; otherwise nothing. SRAM: 25% show a small
    correctable burst in the last 3 days. SDC and Xid 79: no precursor at all.

Harmless noise on every GPU (the confounders)
  * Correctable-error bursts on GPUs that never fail: 20% of GPUs are "bursty"
    (an episode every ~25 days), the rest one every ~400 days; 10% of episodes escalate
    over 2–6 days exactly like an HBM precursor and then stop. "Correctable errors come
    in bursts and mostly mark GPUs that are already going bad" — mostly, not always.
  * Correctable row remaps (Xid 63, pending until reset) every ~1,500 GPU-days.
  * Contained uncorrectable errors (Xid 94, an uncorrectable remap, sometimes Xid 48)
    every ~3,700 GPU-days: NCSA Delta's H100 mean time between uncorrectable memory
    errors is 88,768 h per GPU and remapping plus containment absorbed 92% of them, so
    most such GPUs live on. 1% of GPUs start with banks low on spare rows.
  * NVLink CRC background, harmless CRC spikes (~every 45 days, hours long), 3% of GPUs
    with a noisy-but-stable link; PCIe replay background and spikes; rare Xid 119.
  * Sensor noise (σ 1.5 °C, 20 W), job load cycles, node-wide ambient excursions,
    single-GPU hot spells, 5% of slots that simply run hot, 0.1% glitched readings, 1%
    missing readings.
  * Driver reloads every ~14 days per node (and after every replacement): volatile
    counters (SBE/DBE volatile, NVLink CRC, PCIe replay) reset to zero.

Recording
  * Counters are recorded when they change, at resets, and in a weekly full snapshot;
    temperature and power every 12 hours; Xids as events. Each node is swept at its own
    minute past the hour.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from gpumedic.domain.forecast.frame import (
    FIELD_INDEX,
    Failure,
    FailureClass,
    HistoryFrame,
    Key,
    from_epoch,
    to_epoch,
)
from gpumedic.domain.history import Sample

SIM_START = datetime(2025, 1, 1, tzinfo=UTC)
GPUS_PER_NODE = 8

# Llama 3 (Dubey et al. 2024, table 5), GPU-attributed interruptions, 54 days, 16,384 H100.
LLAMA3_COUNTS = {
    FailureClass.NVLINK: 55,  # part of "faulty GPU (incl. NVLink)" 148: our split
    FailureClass.PCIE: 23,  # idem
    FailureClass.FALLEN_OFF_BUS: 70,  # idem
    FailureClass.HBM: 72,
    FailureClass.SRAM: 19,
    FailureClass.GSP: 17,
    FailureClass.SDC: 6,
    FailureClass.THERMAL: 6,
}


@dataclass(frozen=True)
class DegradationParams:
    failures_per_gpu_day: float = 268 / (16384 * 54)  # 3.03e-4
    class_weights: dict[FailureClass, float] = field(default_factory=lambda: dict(LLAMA3_COUNTS))
    frail_node_fraction: float = 0.10
    frail_node_multiplier: float = 4.0
    downtime_hours: tuple[float, float] = (24.0, 72.0)
    weak_fraction: dict[FailureClass, float] = field(
        default_factory=lambda: {
            FailureClass.HBM: 0.12,
            FailureClass.NVLINK: 0.15,
            FailureClass.THERMAL: 0.15,
            FailureClass.PCIE: 0.20,
        }
    )
    # Harmless correctable-error episodes.
    bursty_fraction: float = 0.20
    bursty_episode_days: float = 25.0
    quiet_episode_days: float = 400.0
    escalating_episode_fraction: float = 0.10
    harmless_remap_days: float = 1500.0
    harmless_uncorrectable_days: float = 88_768 / 24  # NCSA Delta H100 MTBE (memory)
    initial_banks_low_fraction: float = 0.01
    # Links and other noise.
    crc_background_per_hour: float = 0.02
    crc_spike_days: float = 45.0
    noisy_link_fraction: float = 0.03
    pcie_background_per_hour: float = 0.005
    pcie_spike_days: float = 90.0
    harmless_gsp_days: float = 2000.0
    driver_reload_days: float = 14.0
    ambient_event_days: float = 30.0
    hot_spell_days: float = 60.0
    hot_slot_fraction: float = 0.05
    temp_noise_c: float = 1.5
    power_noise_w: float = 20.0
    glitch_fraction: float = 0.001
    missing_fraction: float = 0.01
    gauge_every_hours: int = 12
    snapshot_every_hours: int = 168
    node_level_failure_fraction: float = 0.10  # Xid 79 logged without a GPU


DEFAULT_PARAMS = DegradationParams()

_SBE = "sbe"
_DBE = "dbe"
_CRC = "crc"
_PCIE = "pcie"
_RCORR = "remapped_rows_correctable"
_RUNC = "remapped_rows_uncorrectable"
_PENDING = "row_remap_pending"
_RFAIL = "row_remap_failure"
_BLOW = "remap_banks_low"
_BNONE = "remap_banks_none"


@dataclass
class _Life:
    start: float  # hour the GPU came into service (0 for the original GPUs)
    end: float  # hour it failed (inf: still in service)


@dataclass
class _Slot:
    node: int
    gpu: int
    lives: list[_Life] = field(default_factory=list)
    inc: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    sets: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    xids: list[tuple[float, int]] = field(default_factory=list)
    temp_events: list[tuple[float, float, float, float]] = field(default_factory=list)  # start, end, delta, ramp
    throttle: list[tuple[float, float, float]] = field(default_factory=list)  # start, end, watts
    initial_sbe: float = 0.0
    initial_remaps: float = 0.0
    initial_banks_low: float = 0.0


@dataclass(frozen=True)
class _EvidenceMark:
    """How much evidence a slot held at one moment, to find what a failure's precursors added."""

    inc: dict[str, int]
    sets: dict[str, int]
    xids: int
    temp_events: int

    @classmethod
    def of(cls, slot: _Slot) -> _EvidenceMark:
        return cls(
            {k: len(v) for k, v in slot.inc.items()},
            {k: len(v) for k, v in slot.sets.items()},
            len(slot.xids),
            len(slot.temp_events),
        )

    def first_since(self, slot: _Slot, *, before: float) -> float:
        """Hour of the first evidence added since the mark, before the failure itself (inf: none).

        A thermal drift counts from its start, though it is too small to see for a while:
        an upper bound on what could be seen.
        """
        times = [t for k, v in slot.inc.items() for t, _ in v[self.inc.get(k, 0) :]]
        times += [t for k, v in slot.sets.items() for t, _ in v[self.sets.get(k, 0) :]]
        times += [t for t, _ in slot.xids[self.xids :]]
        times += [e[0] for e in slot.temp_events[self.temp_events :]]
        return min((t for t in times if t < before), default=math.inf)


def _lognormal_hours(rng: np.random.Generator, median_days: float, sigma: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.lognormal(math.log(median_days * 24), sigma), lo, hi))


def _growing_times(rng: np.random.Generator, start: float, length: float, r0: float, r1: float) -> np.ndarray:
    """Event times of a Poisson process whose rate grows exponentially from r0 to r1 per hour."""
    g = math.log(max(r1, r0 * 1.0001) / r0)
    expected = r0 * length * (math.exp(g) - 1) / g
    n = rng.poisson(expected)
    u = rng.random(n)
    tau = length / g * np.log1p(u * (math.exp(g) - 1))
    return np.sort(start + tau)


def _burst(slot: _Slot, rng: np.random.Generator, t: float, median: float) -> None:
    """One correctable-error burst: errors spread over 1–3 consecutive hours."""
    size = max(1.0, math.ceil(rng.lognormal(math.log(max(median, 1.0)), 1.2)))
    hours = int(rng.integers(1, 4))
    parts = rng.multinomial(int(size), np.ones(hours) / hours)
    for i, p in enumerate(parts.tolist()):
        if p:
            slot.inc[_SBE].append((t + i, float(p)))


class _Fleet:
    def __init__(self, gpus: int, days: float, seed: int, params: DegradationParams) -> None:
        self.rng = np.random.default_rng(seed)
        self.p = params
        self.hours = days * 24.0
        self.tail = 30 * 24.0  # failures after the end still show their precursors
        self.n_nodes = -(-gpus // GPUS_PER_NODE)
        self.slots = [_Slot(node=i // GPUS_PER_NODE, gpu=i % GPUS_PER_NODE) for i in range(gpus)]
        self.failures: list[tuple[float, int, FailureClass, bool]] = []  # hour, slot, class, node-level
        # Per failure (hour, slot): hour of the first evidence its precursors left (inf: none), weak or not.
        self.truth: dict[tuple[float, int], tuple[float, bool]] = {}
        rng = self.rng
        self.node_offset = rng.integers(0, 3600, self.n_nodes)  # sweep second past the hour
        self.reloads: list[list[float]] = [
            sorted(rng.uniform(0, self.hours, rng.poisson(self.hours / 24 / params.driver_reload_days)).tolist())
            for _ in range(self.n_nodes)
        ]

    # --- failures and their precursors ----------------------------------------------------
    def draw_failures(self) -> None:
        p, rng = self.p, self.rng
        frail = rng.random(self.n_nodes) < p.frail_node_fraction
        rest = (1 - p.frail_node_fraction * p.frail_node_multiplier) / (1 - p.frail_node_fraction)
        mult = np.where(frail, p.frail_node_multiplier, rest)
        classes = list(p.class_weights)
        weights = np.array([p.class_weights[c] for c in classes], dtype=float)
        weights /= weights.sum()
        per_hour = p.failures_per_gpu_day / 24
        span = self.hours + self.tail
        for i, slot in enumerate(self.slots):
            rate = per_hour * mult[slot.node]
            t = 0.0
            start = 0.0
            while rate > 0:  # a rate of 0: a fleet without failures (the demo's background)
                t += rng.exponential(1 / rate)
                if t >= span:
                    break
                cls = classes[int(rng.choice(len(classes), p=weights))]
                node_level = cls is FailureClass.FALLEN_OFF_BUS and rng.random() < p.node_level_failure_fraction
                slot.lives.append(_Life(start, t))
                self.failures.append((t, i, cls, node_level))
                mark = _EvidenceMark.of(slot)
                weak = self.precursors(slot, t, start, cls, node_level)
                self.truth[(t, i)] = (mark.first_since(slot, before=t), weak)
                start = t + rng.uniform(*p.downtime_hours)
                self.reloads[slot.node].append(start)  # replacement: node reboot
                t = start
            slot.lives.append(_Life(start, math.inf))
        for r in self.reloads:
            r.sort()

    def precursors(self, slot: _Slot, T: float, life_start: float, cls: FailureClass, node_level: bool) -> bool:
        """Draw the evidence a failure at T leaves before it; True when its precursor was drawn weak."""
        rng, p = self.rng, self.p
        weak = rng.random() < p.weak_fraction.get(cls, 0.0)
        earliest = life_start + 1.0

        def window(median_days: float, sigma: float, lo_h: float, hi_h: float) -> tuple[float, float]:
            L = _lognormal_hours(rng, median_days, sigma, lo_h, hi_h)
            s = max(T - L, earliest)
            return s, T - s

        if cls is FailureClass.HBM:
            if weak:
                if rng.random() < 0.5:
                    _burst(slot, rng, T - rng.uniform(2, 48), 3)
            else:
                s, L = window(7, 0.5, 48, 600)
                if rng.random() < 0.85:
                    r1 = rng.uniform(3, 15) / 24
                    for t in _growing_times(rng, s, L, 0.3 / 24, r1).tolist():
                        _burst(slot, rng, t, 2 + 30 * ((t - s) / L) ** 2)
                if rng.random() < 0.6:
                    n = 1 + rng.poisson(3)
                    times = np.sort(rng.uniform(s + 0.4 * L, T - 2, n)).tolist()
                    for t in times:
                        slot.inc[_RCORR].append((t, 1.0))
                        slot.sets[_PENDING].append((t, 1.0))
                        if rng.random() < 0.9:
                            slot.xids.append((t, 63))
                    if n >= 3 and rng.random() < 0.6:
                        slot.sets[_BLOW].append((times[2], 1.0))
                        if rng.random() < 0.3:
                            slot.sets[_BNONE].append((T - rng.uniform(6, 72), 1.0))
                if rng.random() < 0.35:
                    for t in rng.uniform(s + 0.6 * L, T - 1, int(rng.integers(1, 3))).tolist():
                        slot.xids.append((t, 94))
                        slot.inc[_RUNC].append((t, 1.0))
                        slot.sets[_PENDING].append((t, 1.0))
                if rng.random() < 0.2:
                    t = rng.uniform(s + 0.7 * L, T - 1)
                    slot.inc[_DBE].append((t, 1.0))
                    slot.xids.append((t, 48))
                if rng.random() < 0.15:
                    t = max(T - rng.uniform(6, 96), earliest)
                    slot.xids.append((t, 64))
                    slot.sets[_RFAIL].append((t, 1.0))
            slot.xids.append((T, 95 if rng.random() < 0.5 else 48))
        elif cls is FailureClass.NVLINK:
            if weak:
                for t in rng.uniform(T - 12, T, int(rng.integers(0, 3))).tolist():
                    slot.inc[_CRC].append((t, float(rng.integers(1, 20))))
            else:
                s, L = window(4, 0.5, 24, 360)
                r1 = rng.uniform(20, 300)
                hours = np.arange(math.ceil(s), math.floor(T))
                if len(hours):
                    rate = 0.05 * (r1 / 0.05) ** ((hours - s) / L)
                    counts = rng.poisson(rate)
                    for h, c in zip(hours.tolist(), counts.tolist(), strict=True):
                        if c:
                            slot.inc[_CRC].append((h + rng.random(), float(c)))
                if rng.random() < 0.5:
                    for t in rng.uniform(s + 0.7 * L, T, int(rng.integers(1, 4))).tolist():
                        slot.xids.append((t, 74))
            slot.xids.append((T, 74))
        elif cls is FailureClass.THERMAL:
            if not weak:
                s, L = window(5, 0.4, 48, 336)
                slot.temp_events.append((s, T, rng.uniform(6, 15), 1.5))
                slot.throttle.append((s, T, rng.uniform(50, 200)))
            if rng.random() < 0.3:
                slot.xids.append((T, 79))
        elif cls is FailureClass.PCIE:
            if not weak:
                s, L = window(4, 0.5, 24, 360)
                r1 = rng.uniform(5, 50)
                hours = np.arange(math.ceil(s), math.floor(T))
                if len(hours):
                    counts = rng.poisson(0.02 * (r1 / 0.02) ** ((hours - s) / L))
                    for h, c in zip(hours.tolist(), counts.tolist(), strict=True):
                        if c:
                            slot.inc[_PCIE].append((h + rng.random(), float(c)))
            if rng.random() < 0.5:
                slot.xids.append((T, 79))
        elif cls is FailureClass.GSP:
            if rng.random() < 0.35:
                slot.xids.append((max(T - rng.uniform(1, 120), earliest), 119))
            slot.xids.append((T, 119 if rng.random() < 0.5 else 120))
        elif cls is FailureClass.SRAM:
            if rng.random() < 0.25:
                for _ in range(int(rng.integers(1, 4))):
                    _burst(slot, rng, T - rng.uniform(1, 72), 3)
            slot.xids.append((T, 95 if rng.random() < 0.5 else 48))
        elif cls is FailureClass.FALLEN_OFF_BUS:
            slot.xids.append((T, -79 if node_level else 79))
        # SDC: nothing at all.
        return weak

    # --- harmless noise ---------------------------------------------------------------------
    def noise(self) -> None:
        p, rng = self.p, self.rng
        H = self.hours
        days = H / 24
        for slot in self.slots:
            bursty = rng.random() < p.bursty_fraction
            every = p.bursty_episode_days if bursty else p.quiet_episode_days
            for t0 in rng.uniform(0, H, rng.poisson(days / every)).tolist():
                if rng.random() < p.escalating_episode_fraction:
                    L = rng.uniform(48, 144)
                    for t in _growing_times(rng, t0, L, 0.3 / 24, rng.uniform(2, 8) / 24).tolist():
                        _burst(slot, rng, t, 2 + 20 * ((t - t0) / L) ** 2)
                else:
                    dur = float(np.clip(rng.lognormal(math.log(8), 0.8), 1, 72))
                    for t in rng.uniform(t0, t0 + dur, 1 + rng.poisson(dur * 0.15)).tolist():
                        _burst(slot, rng, t, 3)
            for t in rng.uniform(0, H, rng.poisson(days / p.harmless_remap_days)).tolist():
                slot.inc[_RCORR].append((t, 1.0))
                slot.sets[_PENDING].append((t, 1.0))
                if rng.random() < 0.9:
                    slot.xids.append((t, 63))
                if rng.random() < 0.3:
                    _burst(slot, rng, t - 1, 5)
            for t in rng.uniform(0, H, rng.poisson(days / p.harmless_uncorrectable_days)).tolist():
                slot.xids.append((t, 94))
                slot.inc[_RUNC].append((t, 1.0))
                slot.sets[_PENDING].append((t, 1.0))
                if rng.random() < 0.3:
                    slot.inc[_DBE].append((t, 1.0))
                    slot.xids.append((t, 48))
            # NVLink CRC: background, spikes, and a few noisy-but-stable links.
            noisy = rng.random() < p.noisy_link_fraction
            rate = p.crc_background_per_hour * (15 if noisy else 1)
            n = rng.poisson(rate * H)
            for t, c in zip(
                rng.uniform(0, H, n).tolist(), rng.geometric(1 / (10 if noisy else 3), n).tolist(), strict=True
            ):
                slot.inc[_CRC].append((t, float(c)))
            for t0 in rng.uniform(0, H, rng.poisson(days / p.crc_spike_days)).tolist():
                per_hour = rng.lognormal(math.log(30), 1.0)
                for h in range(int(rng.integers(2, 13))):
                    c = rng.poisson(per_hour)
                    if c:
                        slot.inc[_CRC].append((t0 + h, float(c)))
                if rng.random() < 0.1:
                    slot.xids.append((t0 + 1, 74))
            n = rng.poisson(p.pcie_background_per_hour * H)
            for t in rng.uniform(0, H, n).tolist():
                slot.inc[_PCIE].append((t, float(rng.integers(1, 3))))
            for t0 in rng.uniform(0, H, rng.poisson(days / p.pcie_spike_days)).tolist():
                per_hour = rng.uniform(5, 50)
                for h in range(int(rng.integers(3, 25))):
                    c = rng.poisson(per_hour)
                    if c:
                        slot.inc[_PCIE].append((t0 + h, float(c)))
            for t in rng.uniform(0, H, rng.poisson(days / p.harmless_gsp_days)).tolist():
                slot.xids.append((t, 119))
            for t0 in rng.uniform(0, H, rng.poisson(days / p.hot_spell_days)).tolist():
                slot.temp_events.append((t0, t0 + rng.uniform(24, 48), rng.uniform(3, 7), 0.0))
            # Lifetime state of the original GPU.
            if rng.random() < 0.3:
                slot.initial_sbe = float(math.ceil(rng.lognormal(math.log(20), 1.5)))
            if rng.random() < 0.08:
                slot.initial_remaps = float(rng.integers(1, 6))
            if rng.random() < p.initial_banks_low_fraction:
                slot.initial_banks_low = 1.0
                slot.initial_remaps += float(rng.integers(5, 30))

    # --- recording ---------------------------------------------------------------------------
    def record(self) -> tuple[HistoryFrame, list[Failure], dict[Failure, FailureTruth]]:
        p, rng = self.p, self.rng
        H = self.hours
        n_hours = int(H)
        keys: list[Key] = [(self._node_name(s.node), s.gpu) for s in self.slots]
        node_keys: dict[int, int] = {}
        cols_t: list[np.ndarray] = []
        cols_k: list[np.ndarray] = []
        cols_f: list[np.ndarray] = []
        cols_v: list[np.ndarray] = []
        start_s = to_epoch(SIM_START)

        def emit(k: int, fname: str, hours: np.ndarray, values: np.ndarray, node: int) -> None:
            if len(hours) == 0:
                return
            cols_t.append(start_s + hours.astype(np.int64) * 3600 + int(self.node_offset[node]))
            cols_k.append(np.full(len(hours), k, dtype=np.int32))
            cols_f.append(np.full(len(hours), FIELD_INDEX[fname], dtype=np.int16))
            cols_v.append(values.astype(np.float64))

        snapshots = np.arange(0, n_hours, p.snapshot_every_hours)
        for k, slot in enumerate(self.slots):
            reloads = np.array(self.reloads[slot.node])
            life_starts = np.array([lf.start for lf in slot.lives])
            life_ends = np.array([lf.end for lf in slot.lives])
            sweep_start = np.ceil(life_starts)

            def alive(h, sweep_start=sweep_start, life_ends=life_ends):
                j = np.searchsorted(sweep_start, h, side="right") - 1
                return (j >= 0) & (h < life_ends[np.maximum(j, 0)]) & (h < n_hours) & (h >= 0)

            node = slot.node
            vol_resets = np.unique(np.concatenate([[0.0], np.ceil(reloads), sweep_start]))
            life_resets = np.unique(np.concatenate([[0.0], sweep_start]))
            for src, fields, resets, base in (
                (_SBE, ("ecc_sbe_volatile",), vol_resets, 0.0),
                (_SBE, ("ecc_sbe_aggregate",), life_resets, slot.initial_sbe),
                (_DBE, ("ecc_dbe_volatile",), vol_resets, 0.0),
                (_DBE, ("ecc_dbe_aggregate",), life_resets, 0.0),
                (_CRC, ("nvlink_crc_errors",), vol_resets, 0.0),
                (_PCIE, ("pcie_replay",), vol_resets, 0.0),
                (_RCORR, (_RCORR,), life_resets, slot.initial_remaps),
                (_RUNC, (_RUNC,), life_resets, 0.0),
            ):
                h, v = self._counter_series(slot.inc.get(src, []), resets, base, snapshots, alive)
                for fname in fields:
                    emit(k, fname, h, v, node)
            for name, initial in ((_PENDING, 0.0), (_RFAIL, 0.0), (_BLOW, slot.initial_banks_low), (_BNONE, 0.0)):
                h, v = self._level_series(
                    slot.sets.get(name, []), name == _PENDING, reloads, life_resets, initial, snapshots, alive
                )
                emit(k, name, h, v, node)
            # Xid events (a negative code: logged against the node, naming no GPU).
            for t, code in slot.xids:
                if t < 0 or t >= H or not any(lf.start <= t <= lf.end for lf in slot.lives):
                    continue
                if code < 0:
                    kk = node_keys.get(node)
                    if kk is None:
                        kk = node_keys[node] = len(keys)
                        keys.append((self._node_name(node), None))
                    target = kk
                else:
                    target = k
                cols_t.append(np.array([start_s + int(t * 3600)], dtype=np.int64))
                cols_k.append(np.array([target], dtype=np.int32))
                cols_f.append(np.array([FIELD_INDEX["xid"]], dtype=np.int16))
                cols_v.append(np.array([float(abs(code))]))

        self._gauges(emit, rng)
        frame = HistoryFrame.build(
            keys,
            np.concatenate(cols_t) if cols_t else [],
            np.concatenate(cols_k) if cols_k else [],
            np.concatenate(cols_f) if cols_f else [],
            np.concatenate(cols_v) if cols_v else [],
        )
        failures: list[Failure] = []
        truth: dict[Failure, FailureTruth] = {}
        for t, i, cls, node_level in sorted(self.failures, key=lambda f: (f[0], f[1])):
            if t >= H:
                continue
            failure = Failure(
                time=from_epoch(start_s + int(t * 3600)),
                node=self._node_name(self.slots[i].node),
                gpu=None if node_level else self.slots[i].gpu,
                kind=str(cls),
            )
            failures.append(failure)
            onset, weak = self.truth[(t, i)]
            truth[failure] = FailureTruth(warning_hours=max(t - max(onset, 0.0), 0.0), weak=weak)
        return frame, failures, truth

    @staticmethod
    def _node_name(node: int) -> str:
        return f"node-{node:04d}"

    @staticmethod
    def _counter_series(events, resets, base, snapshots, alive):
        """Reading of a cumulative counter at each hour it changes, resets, or is snapshotted."""
        if events:
            arr = np.array(events)
            inc_h = np.floor(arr[:, 0])
            order = np.argsort(inc_h, kind="stable")
            inc_h, inc_v = inc_h[order], arr[order, 1]
        else:
            inc_h, inc_v = np.zeros(0), np.zeros(0)
        cum = np.concatenate([[0.0], np.cumsum(inc_v)])
        hours = np.unique(np.concatenate([inc_h, resets, snapshots]))
        hours = hours[alive(hours)]
        if len(hours) == 0:
            return hours, hours
        r = resets[np.searchsorted(resets, hours, side="right") - 1]
        upto = cum[np.searchsorted(inc_h, hours, side="right")]
        before = cum[np.searchsorted(inc_h, r, side="left")]
        vals = upto - before + np.where(r == 0, base, 0.0)
        keep = np.ones(len(hours), dtype=bool)
        keep[1:] = (vals[1:] != vals[:-1]) | np.isin(hours[1:], snapshots)
        return hours[keep], vals[keep]

    @staticmethod
    def _level_series(events, clears_on_reload, reloads, life_resets, initial, snapshots, alive):
        """A state flag/count: set by events; pending flags clear at the next driver reload."""
        changes: list[tuple[float, float]] = [(0.0, initial)]
        reload_h = np.ceil(reloads) if len(reloads) else np.zeros(0)
        for t, v in sorted(events):
            h = math.floor(t)
            changes.append((h, v))
            if clears_on_reload:
                nxt = reload_h[reload_h > h]
                if len(nxt):
                    changes.append((float(nxt[0]), 0.0))
        for r in life_resets[1:].tolist():
            changes.append((r, 0.0))
        changes.sort(key=lambda c: c[0])
        ch = np.array([c[0] for c in changes])
        cv = np.array([c[1] for c in changes])
        hours = np.unique(np.concatenate([ch, snapshots]))
        hours = hours[alive(hours)]
        if len(hours) == 0:
            return hours, hours
        vals = cv[np.searchsorted(ch, hours, side="right") - 1]
        keep = np.ones(len(hours), dtype=bool)
        keep[1:] = (vals[1:] != vals[:-1]) | np.isin(hours[1:], snapshots)
        return hours[keep], vals[keep]

    def _gauges(self, emit, rng: np.random.Generator) -> None:
        p = self.p
        n = len(self.slots)
        hours = np.arange(0, int(self.hours), p.gauge_every_hours).astype(float)
        m = len(hours)
        node_of = np.array([s.node for s in self.slots])
        node_base = rng.normal(60, 3, self.n_nodes)
        temp = node_base[node_of][:, None] + rng.normal(0, 2.5, n)[:, None]
        temp = temp + np.where(rng.random(n) < p.hot_slot_fraction, 5.0, 0.0)[:, None]
        # Node job phases: busy or idle, switching every 6–48 hours.
        busy = np.zeros((self.n_nodes, m), dtype=bool)
        for nd in range(self.n_nodes):
            t, state = 0.0, rng.random() < 0.8
            while t < self.hours:
                dur = rng.uniform(6, 48)
                sel = (hours >= t) & (hours < t + dur)
                busy[nd, sel] = state
                t += dur
                state = rng.random() < 0.8
        b = busy[node_of]
        temp = temp + np.where(b, 0.0, -8.0) + rng.normal(0, p.temp_noise_c, (n, m))
        power = np.where(b, 600.0, 120.0) + rng.normal(0, p.power_noise_w, (n, m))
        for nd in range(self.n_nodes):
            for t0 in rng.uniform(0, self.hours, rng.poisson(self.hours / 24 / p.ambient_event_days)).tolist():
                sel = (hours >= t0) & (hours < t0 + rng.uniform(6, 24))
                temp[np.ix_(node_of == nd, sel)] += rng.uniform(3, 8)
        for i, slot in enumerate(self.slots):
            for s, e, delta, ramp in slot.temp_events:
                sel = (hours >= s) & (hours < e)
                if not sel.any():
                    continue
                frac = (hours[sel] - s) / max(e - s, 1.0)
                shape = frac**ramp if ramp > 0 else np.ones_like(frac)
                temp[i, sel] += delta * shape + (rng.normal(0, p.temp_noise_c, sel.sum()) * frac if ramp else 0)
            for s, e, watts in slot.throttle:
                sel = (hours >= s) & (hours < e)
                frac = (hours[sel] - s) / max(e - s, 1.0)
                power[i, sel] -= watts * frac * rng.random(sel.sum()) * 2
        glitch = rng.random((n, m)) < p.glitch_fraction
        temp[glitch] += 25.0
        keep = rng.random((n, m)) >= p.missing_fraction
        for i, slot in enumerate(self.slots):
            life_starts = np.ceil([lf.start for lf in slot.lives])
            life_ends = np.array([lf.end for lf in slot.lives])
            j = np.searchsorted(life_starts, hours, side="right") - 1
            ok = keep[i] & (j >= 0) & (hours < life_ends[np.maximum(j, 0)])
            emit(i, "temperature_c", hours[ok], np.round(temp[i, ok], 1), slot.node)
            emit(i, "power_w", hours[ok], np.round(np.maximum(power[i, ok], 30.0), 1), slot.node)


@dataclass(frozen=True)
class FailureTruth:
    """What the simulator knows of one failure's precursor, and no forecaster is told."""

    warning_hours: float  # from its precursor's first evidence to the failure (0: none in the history)
    weak: bool  # its precursor was drawn weak: a trace at most (12-20% of the precursor classes)

    def foreseeable(self, lead_hours: float) -> bool:
        """A full precursor began at least `lead_hours` before the failure."""
        return not self.weak and self.warning_hours > 0 and self.warning_hours >= lead_hours


@dataclass(frozen=True)
class SimulatedFleet:
    """A simulated fleet with the simulator's ground truth about each failure.

    The benchmark uses `truth` to say how many failures any forecaster could have caught
    at a given lead (the ceiling on recall), and how many of those this one caught.
    """

    frame: HistoryFrame
    failures: list[Failure]
    truth: dict[Failure, FailureTruth]


def simulate(gpus: int, days: float, seed: int, params: DegradationParams = DEFAULT_PARAMS) -> SimulatedFleet:
    """The simulated fleet as a columnar history (fast path for large fleets), with its ground truth."""
    if gpus < 1 or days <= 0:
        raise ValueError("need at least one GPU and a positive number of days")
    fleet = _Fleet(gpus, days, seed, params)
    fleet.draw_failures()
    fleet.noise()
    return SimulatedFleet(*fleet.record())


def simulate_fleet_frame(
    gpus: int, days: float, seed: int, params: DegradationParams = DEFAULT_PARAMS
) -> tuple[HistoryFrame, list[Failure]]:
    """The simulated fleet as a columnar history (fast path for large fleets)."""
    sim = simulate(gpus, days, seed, params)
    return sim.frame, sim.failures


def simulate_fleet(
    gpus: int, days: float, seed: int, params: DegradationParams = DEFAULT_PARAMS
) -> tuple[list[Sample], list[Failure]]:
    """HISTORY rows and FAILURES of `gpus` GPUs (8 per node) over `days` days from 2025-01-01 UTC."""
    frame, failures = simulate_fleet_frame(gpus, days, seed, params)
    return frame.to_samples(), failures
