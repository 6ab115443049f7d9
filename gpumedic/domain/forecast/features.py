"""Windowed, strictly causal features of every GPU at every hour of a grid.

Hour k of a grid is the instant `origin + k·3600 s`. A row at time t lands in bin
`ceil((t − origin) / 3600)`, so the features at hour k are computed from rows with
time ≤ that instant and nothing later: the backtest's "only data up to t" rule holds by
construction, for every hour at once (cumulative sums along time, never a centred
window). `forecast_fleet` evaluates the same grid at its last hour, so production and
backtest features are the same numbers.

Counters (ECC, NVLink CRC, PCIe replay, remapped rows) are cumulative as the driver
reports them. The increase between two readings is `v − prev`, or `v` when `v < prev`:
a drop means the counter was reset (driver reload, GPU reset, replacement) and counted
again from zero. Correctable-error increases are turned into *events* (hours with an
increase) and events less than `BURST_GAP_HOURS` apart are merged into one burst:
correctable errors come in bursts, and a burst of 10,000 is one piece of evidence, not
10,000.

A failure of a GPU known at hour k (it happened at or before then) starts a new segment:
the replaced GPU's history does not count against its successor, except as a prior
incident of the slot and its node.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpumedic.domain.forecast.cusum import CUSUM_RHO, poisson_cusum
from gpumedic.domain.forecast.frame import FIELD_INDEX, Failure, HistoryFrame, Key, to_epoch

HOUR = 3600
BURST_GAP_HOURS = 6  # events closer than this belong to one burst
DAY = 24
WEEK = 7 * DAY

# The fleet's correctable-burst rate before any fleet data is seen (per GPU-hour), and
# how much fleet exposure that prior is worth. A fleet of thousands overrides it within
# hours; a single node's forecast leans on it.
PRIOR_BURST_RATE = 5e-4
PRIOR_EXPOSURE_HOURS = 100 * DAY
BASELINE_WINDOW_HOURS = 30 * DAY
# GPU-hours of features computed at once: 256 GPUs over six weeks, about 150 MiB at the peak of
# `chunk_features` (benchmarks/forecast_cost.py); longer histories are computed for fewer GPUs at a time.
CHUNK_GPU_HOURS = 256 * 1024
MIN_CHUNK_ENTITIES = 8  # one node

# Xid groups (NVIDIA Xid catalog): 63 row-remap event; 48 DBE, 64 remap failure, 94/95
# contained/uncontained ECC error; 74 NVLink error; 119/120 GSP error/timeout; 79 fallen
# off the bus, 61/62 internal micro-controller halt.
XID_REMAP = (63,)
XID_MEM_SEVERE = (48, 64, 94, 95)
XID_NVLINK = (74,)
XID_GSP = (119, 120)
XID_FATAL = (79, 61, 62)

# Features by the failure cause they speak for (the hazard model fits one cause on each group).
MEMORY_FEATURES: tuple[str, ...] = (
    "sbe_bursts_24h",
    "sbe_bursts_7d",
    "sbe_active_days_7d",
    "sbe_errors_7d",
    "sbe_growth",
    "sbe_cusum",
    "hours_since_sbe",
    "remap_rows",
    "remap_growth_7d",
    "remap_uncorrectable",
    "remap_pending",
    "remap_failure",
    "banks_low",
    "banks_none",
    "xid_remap_7d",
    "xid_mem_severe_7d",
    "dbe_7d",
    "memory_hard_signals_7d",
    "sbe_escalation_with_hard",
    "remaps_beyond_first_7d",
)

NVLINK_FEATURES: tuple[str, ...] = (
    "nvlink_crc_24h",
    "nvlink_crc_growth",
    "nvlink_crc_hours_24h",
    "nvlink_crc_hours_72h",
    "nvlink_crc_sustained",
    "xid_nvlink_7d",
    "nvlink_crc_episode_days",
    "nvlink_crc_rising",
)

PCIE_FEATURES: tuple[str, ...] = (
    "pcie_replay_24h",
    "pcie_replay_growth",
    "pcie_replay_hours_24h",
    "pcie_replay_hours_72h",
    "pcie_replay_sustained",
    "pcie_replay_episode_days",
    "pcie_replay_rising",
)

FATAL_XID_FEATURES: tuple[str, ...] = (
    "xid_gsp_30d",
    "xid_fatal_30d",
)

THERMAL_FEATURES: tuple[str, ...] = (
    "temp_dev_48h",
    "temp_dev_change",
    "temp_drift_excess",
    "temp_swing_48h",
    "power_cv_48h",
)

PRIOR_FEATURES: tuple[str, ...] = (
    "prior_gpu_failures_180d",
    "prior_node_failures_90d",
    # Incidents the GPU now in the slot lived through (a reset, a reboot, a contained
    # uncorrectable error; `Failure.replaced` False). Failures come in runs on a part that
    # is going bad: half the repeats in the Calchas HBM log followed the previous episode
    # within 6 days, which a 180-day count of the slot cannot tell from one months ago.
    "survived_incidents_7d",
    "survived_incidents_30d",
    "survived_incidents_180d",
)

# The order is the shipped model's: append, never reorder.
FEATURES: tuple[str, ...] = (
    *MEMORY_FEATURES,
    *NVLINK_FEATURES,
    *PCIE_FEATURES,
    *FATAL_XID_FEATURES,
    *THERMAL_FEATURES,
    *PRIOR_FEATURES,
)
F = {name: i for i, name in enumerate(FEATURES)}

_COUNTERS = (
    "ecc_sbe_volatile",
    "ecc_sbe_aggregate",
    "ecc_dbe_volatile",
    "ecc_dbe_aggregate",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "nvlink_crc_errors",
    "pcie_replay",
)
_LEVELS = (
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "row_remap_pending",
    "row_remap_failure",
    "remap_banks_low",
    "remap_banks_none",
    "ecc_sbe_aggregate",
)
_GAUGES = ("temperature_c", "power_w")

Int32Array = npt.NDArray[np.int32]
Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Grid:
    """Hourly evaluation instants `origin + k·3600` for k in range(hours)."""

    origin: int
    hours: int

    def bin_of(self, t: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The first hour whose instant is at or after t (rows before origin: hour 0)."""
        return np.maximum(-((self.origin - t) // HOUR), 0)

    def instant(self, k: int) -> int:
        return self.origin + k * HOUR

    @classmethod
    def ending_at(cls, now: int, first: int) -> Grid:
        """A grid whose last hour is `now` and whose first is at or before `first`."""
        span = max(0, now - first)
        n = -(-span // HOUR)
        return cls(origin=now - n * HOUR, hours=n + 1)

    @classmethod
    def covering(cls, first: int, last: int) -> Grid:
        return cls(origin=first, hours=(last - first) // HOUR + 1)


@dataclass(frozen=True, slots=True)
class Entities:
    """What gets scored: every GPU seen, or the node itself when no GPU of it is named."""

    keys: tuple[Key, ...]  # ordered so each node's entities are contiguous
    node_index: Int32Array  # per entity
    nodes: tuple[str, ...]

    @classmethod
    def from_keys(cls, keys: Sequence[Key], extra_nodes: Sequence[str] = ()) -> Entities:
        gpu_keys = sorted({k for k in keys if k[1] is not None}, key=lambda k: (k[0], k[1] or 0))
        with_gpus = {node for node, _ in gpu_keys}
        node_only = sorted({node for node, gpu in keys if gpu is None} | set(extra_nodes))
        ents: list[Key] = list(gpu_keys) + [(n, None) for n in node_only if n not in with_gpus]
        ents.sort(key=lambda k: (k[0], -1 if k[1] is None else k[1]))
        nodes = tuple(dict.fromkeys(node for node, _ in ents))
        nidx = {n: i for i, n in enumerate(nodes)}
        return cls(tuple(ents), np.array([nidx[n] for n, _ in ents], dtype=np.int32), nodes)

    def __len__(self) -> int:
        return len(self.keys)

    def node_chunks(self, target: int) -> list[tuple[int, int]]:
        """Entity ranges of about `target` entities that never split a node."""
        bounds = [0]
        starts = np.flatnonzero(np.diff(self.node_index)) + 1
        for s in starts.tolist():
            if s - bounds[-1] >= target:
                bounds.append(s)
        bounds.append(len(self.keys))
        return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    def feature_chunks(self, hours: int) -> list[tuple[int, int]]:
        """Entity ranges whose features over `hours` grid hours stay within CHUNK_GPU_HOURS (node-aligned).

        `chunk_features` holds a few hundred bytes per GPU-hour at its peak, so a fixed number of
        GPUs per chunk would make a year of history cost eight times what six weeks do.
        """
        return self.node_chunks(max(MIN_CHUNK_ENTITIES, CHUNK_GPU_HOURS // max(hours, 1)))


@dataclass(frozen=True, slots=True)
class _Sparse:
    """(entity, bin, value) triplets sorted by entity then bin."""

    ent: Int32Array
    bin: npt.NDArray[np.int64]
    val: FloatArray

    @classmethod
    def make(cls, ent: npt.ArrayLike, b: npt.ArrayLike, val: npt.ArrayLike) -> _Sparse:
        e = np.asarray(ent, dtype=np.int32)
        bb = np.asarray(b, dtype=np.int64)
        v = np.asarray(val, dtype=np.float64)
        order = np.lexsort((bb, e))
        return cls(e[order], bb[order], v[order])

    def dense_sum(self, e0: int, e1: int, hours: int) -> FloatArray:
        lo, hi = np.searchsorted(self.ent, [e0, e1])
        flat = (self.ent[lo:hi].astype(np.int64) - e0) * hours + self.bin[lo:hi]
        sums = np.bincount(flat, weights=self.val[lo:hi], minlength=(e1 - e0) * hours)
        return sums.astype(np.float64, copy=False).reshape(e1 - e0, hours)

    def dense_last(self, e0: int, e1: int, hours: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        """Last value at or before each hour (0 before the first), and the hour it was seen (−1)."""
        lo, hi = np.searchsorted(self.ent, [e0, e1])
        vals = np.zeros((e1 - e0, hours))
        seen = np.full((e1 - e0, hours), -1, dtype=np.int64)
        rows = self.ent[lo:hi].astype(np.int64) - e0
        # Triplets are unique per (entity, bin) (see `_last_per_bin`).
        vals[rows, self.bin[lo:hi]] = self.val[lo:hi]
        seen[rows, self.bin[lo:hi]] = self.bin[lo:hi]
        idx = np.maximum.accumulate(seen, axis=1)
        filled = np.take_along_axis(vals, np.maximum(idx, 0), axis=1)
        filled[idx < 0] = 0.0
        return filled, idx


def _empty_sparse() -> _Sparse:
    return _Sparse.make([], [], [])


@dataclass(frozen=True, slots=True)
class FeatureSource:
    """A history binned onto a grid: sparse per-entity series, ready to be made dense by chunk."""

    grid: Grid
    entities: Entities
    inc: dict[str, _Sparse]  # reset-aware increases per bin: sbe, dbe, crc, pcie, remap
    level: dict[str, _Sparse]  # last reading per bin
    gauge: dict[str, tuple[_Sparse, _Sparse, _Sparse]]  # sum, count, sum of squares
    xid: dict[str, _Sparse]  # event counts per bin per Xid group
    bursts: _Sparse  # merged correctable-error bursts (value 1 at the burst's first hour)
    resets: _Sparse  # hours where any counter of the entity dropped
    own_failures: _Sparse  # known failures of the entity itself
    replacements: _Sparse  # those of its own failures after which it is a new GPU (segments start there)
    node_failures: _Sparse  # known failures on the entity's node (itself included)
    fleet_baseline: FloatArray  # λ0 per hour: bursts per GPU-hour, causal
    sbe_initial: FloatArray  # first lifetime correctable count seen per entity


def _reset_aware_increments(
    key: Int32Array, field: npt.NDArray[np.int16], time: npt.NDArray[np.int64], value: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Increase of each reading over the previous one of the same (key, field), and drops.

    Returns (increase, dropped, order) aligned with `order`, the (key, field, time) sort.
    """
    order = np.lexsort((time, field, key))
    k, f, v = key[order], field[order], value[order]
    same = np.zeros(len(order), dtype=bool)
    same[1:] = (k[1:] == k[:-1]) & (f[1:] == f[:-1])
    prev = np.empty_like(v)
    prev[0:1] = 0.0
    prev[1:] = v[:-1]
    dropped = same & (v < prev)
    inc = np.where(same, np.where(dropped, v, v - prev), 0.0)
    return np.maximum(inc, 0.0), dropped, order


def _last_per_bin(
    ent: npt.NDArray[np.int64], b: npt.NDArray[np.int64], t: npt.NDArray[np.int64], v: FloatArray
) -> _Sparse:
    if len(ent) == 0:
        return _empty_sparse()
    order = np.lexsort((t, b, ent))
    e2, b2, v2 = ent[order], b[order], v[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (e2[1:] != e2[:-1]) | (b2[1:] != b2[:-1])
    return _Sparse.make(e2[last], b2[last], v2[last])


def _failure_sparse(
    failures: Sequence[Failure], entities: Entities, grid: Grid
) -> tuple[_Sparse, _Sparse, _Sparse]:
    """Known failures as (entity, hour) events: the entity's own, its replacements, and its node's
    (node-level failures count on every entity of the node)."""
    ent_of = {k: i for i, k in enumerate(entities.keys)}
    node_ents: dict[str, list[int]] = {}
    for i, (node, _) in enumerate(entities.keys):
        node_ents.setdefault(node, []).append(i)
    end = grid.instant(grid.hours - 1)
    own_e: list[int] = []
    own_b: list[int] = []
    replaced: list[bool] = []
    node_e: list[int] = []
    node_b: list[int] = []
    for fl in failures:
        t = to_epoch(fl.time)
        if t > end:
            continue
        b = int(grid.bin_of(np.array([t]))[0])
        members = node_ents.get(fl.node, [])
        node_e.extend(members)
        node_b.extend([b] * len(members))
        own = ent_of.get((fl.node, fl.gpu))
        if own is not None:
            own_e.append(own)
            own_b.append(b)
            replaced.append(fl.replaced)
    keep = np.array(replaced, dtype=bool)
    return (
        _Sparse.make(own_e, own_b, np.ones(len(own_e))),
        _Sparse.make(np.array(own_e, dtype=np.int64)[keep], np.array(own_b, dtype=np.int64)[keep], np.ones(keep.sum())),
        _Sparse.make(node_e, node_b, np.ones(len(node_e))),
    )


def prepare(
    frame: HistoryFrame,
    grid: Grid,
    failures: Sequence[Failure] = (),
    entities: Entities | None = None,
) -> FeatureSource:
    """Bin a history onto a grid. Rows after the grid's last hour are ignored."""
    ents = entities if entities is not None else Entities.from_keys(frame.keys)
    ent_of = {k: i for i, k in enumerate(ents.keys)}
    node_members: dict[str, list[int]] = {}
    for i, (node, _) in enumerate(ents.keys):
        node_members.setdefault(node, []).append(i)
    # Frame key -> entity (−1: a node-level key of a node whose GPUs are named).
    key_ent = np.array([ent_of.get(k, -1) for k in frame.keys] or [-1], dtype=np.int64)
    node_level_keys = [i for i, k in enumerate(frame.keys) if k[1] is None and ent_of.get(k, -1) < 0]

    end = grid.instant(grid.hours - 1)
    keep = frame.time <= end
    t = frame.time[keep]
    key = frame.key[keep]
    field = frame.field[keep]
    value = frame.value[keep]
    b_all = grid.bin_of(t)
    ent_all = key_ent[key] if len(key) else np.zeros(0, dtype=np.int64)

    # --- counters: reset-aware increases -------------------------------------------------
    counter_ids = np.array([FIELD_INDEX[n] for n in _COUNTERS], dtype=np.int16)
    cmask = np.isin(field, counter_ids) & (ent_all >= 0)
    ck, cf, ct, cv = key[cmask], field[cmask], t[cmask], value[cmask]
    inc: dict[str, _Sparse] = {}
    if len(ck):
        dinc, dropped, order = _reset_aware_increments(ck, cf, ct, cv)
        ck, cf, ct = ck[order], cf[order], ct[order]
        ce = key_ent[ck]
        cb = grid.bin_of(ct)
        # Correctable/uncorrectable ECC: the volatile counter where a key reports one, else
        # the aggregate; counting both would count every error twice.
        has_vol_sbe = np.zeros(len(frame.keys), dtype=bool)
        has_vol_dbe = np.zeros(len(frame.keys), dtype=bool)
        has_vol_sbe[ck[cf == FIELD_INDEX["ecc_sbe_volatile"]]] = True
        has_vol_dbe[ck[cf == FIELD_INDEX["ecc_dbe_volatile"]]] = True
        sel = {
            "sbe": ((cf == FIELD_INDEX["ecc_sbe_volatile"]) & has_vol_sbe[ck])
            | ((cf == FIELD_INDEX["ecc_sbe_aggregate"]) & ~has_vol_sbe[ck]),
            "dbe": ((cf == FIELD_INDEX["ecc_dbe_volatile"]) & has_vol_dbe[ck])
            | ((cf == FIELD_INDEX["ecc_dbe_aggregate"]) & ~has_vol_dbe[ck]),
            "crc": cf == FIELD_INDEX["nvlink_crc_errors"],
            "pcie": cf == FIELD_INDEX["pcie_replay"],
            "remap": (cf == FIELD_INDEX["remapped_rows_correctable"])
            | (cf == FIELD_INDEX["remapped_rows_uncorrectable"]),
        }
        for name, m in sel.items():
            m2 = m & (dinc > 0)
            inc[name] = _Sparse.make(ce[m2], cb[m2], dinc[m2])
        rs = _Sparse.make(ce[dropped], cb[dropped], np.ones(int(dropped.sum())))
        resets = rs
    else:
        resets = _empty_sparse()
    for name in ("sbe", "dbe", "crc", "pcie", "remap"):
        inc.setdefault(name, _empty_sparse())

    # --- levels: last reading per hour ----------------------------------------------------
    level: dict[str, _Sparse] = {}
    valid = ent_all >= 0
    for name in _LEVELS:
        m = (field == FIELD_INDEX[name]) & valid
        level[name] = _last_per_bin(ent_all[m], b_all[m], t[m], value[m])

    sbe_initial = np.zeros(len(ents))
    agg = level["ecc_sbe_aggregate"]
    if len(agg.ent):
        first = np.ones(len(agg.ent), dtype=bool)
        first[1:] = agg.ent[1:] != agg.ent[:-1]
        sbe_initial[agg.ent[first]] = agg.val[first]

    # --- gauges ------------------------------------------------------------------------------
    gauge: dict[str, tuple[_Sparse, _Sparse, _Sparse]] = {}
    for name in _GAUGES:
        m = (field == FIELD_INDEX[name]) & valid & np.isfinite(value)
        e, bb, v = ent_all[m], b_all[m], value[m]
        gauge[name] = (_Sparse.make(e, bb, v), _Sparse.make(e, bb, np.ones(len(v))), _Sparse.make(e, bb, v * v))

    # --- Xid events: GPU-level to the GPU, node-level to every entity of the node ----------
    xm = field == FIELD_INDEX["xid"]
    xe, xb, xv = ent_all[xm], b_all[xm], value[xm]
    xkey = key[xm]
    if node_level_keys:
        nl = np.isin(xkey, np.array(node_level_keys))
        extra_e: list[int] = []
        extra_b: list[int] = []
        extra_v: list[float] = []
        for kk, bb, vv in zip(xkey[nl].tolist(), xb[nl].tolist(), xv[nl].tolist(), strict=True):
            for member in node_members.get(frame.keys[kk][0], []):
                extra_e.append(member)
                extra_b.append(bb)
                extra_v.append(vv)
        xe = np.concatenate([xe[~nl], np.array(extra_e, dtype=np.int64)])
        xb = np.concatenate([xb[~nl], np.array(extra_b, dtype=np.int64)])
        xv = np.concatenate([xv[~nl], np.array(extra_v, dtype=np.float64)])
    xid: dict[str, _Sparse] = {}
    for name, codes in (
        ("remap", XID_REMAP),
        ("mem", XID_MEM_SEVERE),
        ("nvlink", XID_NVLINK),
        ("gsp", XID_GSP),
        ("fatal", XID_FATAL),
    ):
        m = np.isin(xv, np.array(codes, dtype=np.float64)) & (xe >= 0)
        xid[name] = _Sparse.make(xe[m], xb[m], np.ones(int(m.sum())))

    # --- bursts: merge correctable-error hours less than BURST_GAP_HOURS apart ------------
    s = inc["sbe"]
    if len(s.ent):
        start = np.ones(len(s.ent), dtype=bool)
        start[1:] = (s.ent[1:] != s.ent[:-1]) | (s.bin[1:] - s.bin[:-1] > BURST_GAP_HOURS)
        bursts = _Sparse.make(s.ent[start], s.bin[start], np.ones(int(start.sum())))
    else:
        bursts = _empty_sparse()

    # --- fleet baseline λ0(k): bursts per entity-hour over the trailing window, causal ------
    fleet = np.bincount(bursts.bin, minlength=grid.hours)[: grid.hours].astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(fleet)])
    k = np.arange(grid.hours)
    lo = np.maximum(k + 1 - BASELINE_WINDOW_HOURS, 0)
    window_bursts = cum[k + 1] - cum[lo]
    exposure = len(ents) * (k + 1 - lo).astype(np.float64)
    baseline = (window_bursts + PRIOR_BURST_RATE * PRIOR_EXPOSURE_HOURS) / (exposure + PRIOR_EXPOSURE_HOURS)

    own_failures, replacements, node_failures = _failure_sparse(failures, ents, grid)
    return FeatureSource(
        grid=grid,
        entities=ents,
        inc=inc,
        level=level,
        gauge=gauge,
        xid=xid,
        bursts=bursts,
        resets=resets,
        own_failures=own_failures,
        replacements=replacements,
        node_failures=node_failures,
        fleet_baseline=baseline,
        sbe_initial=sbe_initial,
    )


class _Windows:
    """Sums over trailing windows (max(k−w, segment start), k] for a chunk of entities."""

    def __init__(self, hours: int, seg: npt.NDArray[np.int64] | None) -> None:
        self.k = np.arange(hours)
        self.seg = seg

    def cum(self, dense: FloatArray) -> FloatArray:
        c = np.zeros((dense.shape[0], dense.shape[1] + 1))
        np.cumsum(dense, axis=1, out=c[:, 1:])
        return c

    def sum(self, c: FloatArray, w: int, lag: int = 0, *, segmented: bool = True) -> FloatArray:
        """Sum over bins (k−lag−w, k−lag], clipped at the segment start."""
        hi = np.maximum(self.k - lag, -1)
        lo = np.maximum(self.k - lag - w, -1)
        top = c[:, hi + 1]
        if segmented and self.seg is not None:
            lo2 = np.maximum(lo[None, :], self.seg)
            hi2 = np.maximum(hi[None, :], self.seg)
            return np.take_along_axis(c, hi2 + 1, axis=1) - np.take_along_axis(c, lo2 + 1, axis=1)
        return top - c[:, lo + 1]


EPISODE_GAP_HOURS = 12  # a link quiet for longer has ended its error episode
EPISODE_CAP_HOURS = 7 * DAY


def _episode_hours(active: npt.NDArray[np.bool_], seg: npt.NDArray[np.int64] | None) -> FloatArray:
    """Hours since the current error episode began (0 when none is open).

    An episode is a run of active hours no more than EPISODE_GAP_HOURS apart; it is open
    while its last active hour is that recent. A harmless spike lasts hours, a failing link
    errs for days.
    """
    n, K = active.shape
    k = np.broadcast_to(np.arange(K), (n, K))
    last = np.maximum.accumulate(np.where(active, k, -1), axis=1)
    before = np.full((n, K), -1, dtype=np.int64)  # the active hour before this one
    before[:, 1:] = last[:, :-1]
    if seg is not None:  # a replaced GPU's episodes are its own: its predecessor's errors neither open nor extend one
        last = np.where(last > seg, last, -1)
        before = np.where(before > seg, before, -1)
    starts = active & ((before < 0) | (k - before > EPISODE_GAP_HOURS))
    start = np.maximum.accumulate(np.where(starts, k, -1), axis=1)
    open_ = (last >= 0) & (k - last <= EPISODE_GAP_HOURS)
    return np.where(open_, np.minimum(k - start + 1, EPISODE_CAP_HOURS), 0).astype(np.float64)


def _segments(src: FeatureSource, e0: int, e1: int) -> npt.NDArray[np.int64] | None:
    """Per entity and hour: the hour it was last replaced (−1: never)."""
    fl = src.replacements
    lo, hi = np.searchsorted(fl.ent, [e0, e1])
    if hi == lo:
        return None
    seg = np.full((e1 - e0, src.grid.hours), -1, dtype=np.int64)
    rows = fl.ent[lo:hi].astype(np.int64) - e0
    seg[rows, fl.bin[lo:hi]] = fl.bin[lo:hi]
    return np.maximum.accumulate(seg, axis=1)


@dataclass(frozen=True, slots=True)
class ChunkFeatures:
    x: Float32Array  # (features, entities, hours)
    sbe_cumulative: FloatArray  # (entities, hours) lifetime correctable count, for the baseline
    resets: npt.NDArray[np.bool_]  # (entities, hours)
    cusum_raw: FloatArray  # (entities, hours) CUSUM S, for explanations


def chunk_features(src: FeatureSource, e0: int, e1: int) -> ChunkFeatures:
    """All features for entities [e0, e1) at every hour of the grid."""
    K = src.grid.hours
    n = e1 - e0
    seg = _segments(src, e0, e1)
    W = _Windows(K, seg)
    x = np.zeros((len(FEATURES), n, K), dtype=np.float32)

    def put(name: str, arr: FloatArray) -> None:
        x[F[name]] = arr

    # Correctable-error bursts.
    sbe = src.inc["sbe"].dense_sum(e0, e1, K)
    csbe = W.cum(sbe)
    bursts = src.bursts.dense_sum(e0, e1, K)
    cb = W.cum(bursts)
    b24 = W.sum(cb, DAY)
    b7 = W.sum(cb, WEEK)
    put("sbe_bursts_24h", np.log1p(b24))
    put("sbe_bursts_7d", np.log1p(b7))
    ce = W.cum((sbe > 0).astype(np.float64))
    active = np.zeros((n, K))
    for j in range(7):
        active += W.sum(ce, DAY, lag=j * DAY) > 0
    put("sbe_active_days_7d", active)
    put("sbe_errors_7d", np.log1p(W.sum(csbe, WEEK)))
    b3 = W.sum(cb, 3 * DAY)
    bprev = W.sum(cb, 4 * DAY, lag=3 * DAY)
    put("sbe_growth", np.log((b3 + 0.5) / (bprev * 0.75 + 0.5)))
    restart = np.zeros((n, K), dtype=bool)
    if seg is not None:
        restart[:, 1:] = seg[:, 1:] != seg[:, :-1]
        restart[:, 0] = seg[:, 0] >= 0
    S = poisson_cusum(bursts, src.fleet_baseline, rho=CUSUM_RHO, restart=restart)
    put("sbe_cusum", S)
    # Hours since the last correctable-error event in this segment (capped at 30 days).
    ev_idx = np.where(sbe > 0, np.arange(K)[None, :], -1)
    last_ev = np.maximum.accumulate(ev_idx, axis=1)
    if seg is not None:
        last_ev = np.where(last_ev > seg, last_ev, -1)
    since = np.where(last_ev >= 0, np.arange(K)[None, :] - last_ev, 30 * DAY)
    put("hours_since_sbe", np.log1p(np.minimum(since, 30 * DAY)))

    # Row remapping state.
    def level(name: str) -> FloatArray:
        vals, seen = src.level[name].dense_last(e0, e1, K)
        if seg is not None:
            vals = np.where(seen > seg, vals, 0.0)
        return vals

    corr = level("remapped_rows_correctable")
    uncorr = level("remapped_rows_uncorrectable")
    put("remap_rows", np.log1p(corr + uncorr))
    put("remap_uncorrectable", np.log1p(uncorr))
    remaps_7d = W.sum(W.cum(src.inc["remap"].dense_sum(e0, e1, K)), WEEK)
    put("remap_growth_7d", np.log1p(remaps_7d))
    put("remaps_beyond_first_7d", np.log1p(np.maximum(remaps_7d - 1.0, 0.0)))
    for feat, name in (
        ("remap_pending", "row_remap_pending"),
        ("remap_failure", "row_remap_failure"),
        ("banks_low", "remap_banks_low"),
        ("banks_none", "remap_banks_none"),
    ):
        put(feat, (level(name) > 0).astype(np.float64))

    def xid_window(group: str, w: int) -> FloatArray:
        return np.log1p(W.sum(W.cum(src.xid[group].dense_sum(e0, e1, K)), w))

    put("xid_remap_7d", xid_window("remap", WEEK))
    put("xid_mem_severe_7d", xid_window("mem", WEEK))
    put("dbe_7d", np.log1p(W.sum(W.cum(src.inc["dbe"].dense_sum(e0, e1, K)), WEEK)))
    # Harmless GPUs show one memory event at a time (a remap, a contained error); a failing
    # HBM stack shows several kinds together, on top of escalating correctable errors.
    hard = sum(
        (x[F[name]] > 0).astype(np.float64)
        for name in (
            "remap_growth_7d",
            "xid_mem_severe_7d",
            "dbe_7d",
            "remap_failure",
            "banks_low",
            "banks_none",
            "remap_pending",
        )
    )
    put("memory_hard_signals_7d", hard)
    put("sbe_escalation_with_hard", x[F["sbe_active_days_7d"]] * (hard > 0))

    # Links: NVLink CRC and PCIe replay growth against the GPU's own week.
    # A failing link errs hour after hour; a harmless spike lasts a few hours.
    for name, feat in (("crc", "nvlink_crc"), ("pcie", "pcie_replay")):
        dense = src.inc[name].dense_sum(e0, e1, K)
        c = W.cum(dense)
        c24 = W.sum(c, DAY)
        c7 = W.sum(c, WEEK)
        put(f"{feat}_24h", np.log1p(c24))
        put(f"{feat}_growth", np.log((c24 + 1.0) / ((c7 - c24) / 6.0 + 1.0)))
        ch = W.cum((dense > 0).astype(np.float64))
        h24 = W.sum(ch, DAY)
        h72 = W.sum(ch, 3 * DAY)
        put(f"{feat}_hours_24h", h24)
        put(f"{feat}_hours_72h", h72)
        # Beyond what a harmless spike (a few hours) or a noisy-but-stable link produces.
        put(f"{feat}_sustained", np.maximum(h24 - 12.0, 0.0) + np.maximum(h72 - 24.0, 0.0))
        put(f"{feat}_episode_days", _episode_hours(dense > 0, seg) / DAY)
        # A failing link's errors grow half-day after half-day; a spike rises once and stops,
        # a noisy link wanders: the smallest of three successive growths.
        halves = [W.sum(c, DAY // 2, lag=j * DAY // 2) for j in range(4)]
        rising = np.minimum.reduce([np.log((halves[j] + 1.0) / (halves[j + 1] + 1.0)) for j in range(3)])
        put(f"{feat}_rising", np.maximum(rising, 0.0))
    put("xid_nvlink_7d", xid_window("nvlink", WEEK))
    put("xid_gsp_30d", xid_window("gsp", 30 * DAY))
    put("xid_fatal_30d", xid_window("fatal", 30 * DAY))

    # Thermal: the GPU against its node peers, which share the room and the airflow.
    node_local = src.entities.node_index[e0:e1] - src.entities.node_index[e0]
    n_nodes = int(node_local[-1]) + 1 if n else 0

    def gauge_windows(name: str, w: int, lag: int = 0) -> tuple[FloatArray, FloatArray, FloatArray]:
        s_, c_, q_ = src.gauge[name]
        return (
            W.sum(W.cum(s_.dense_sum(e0, e1, K)), w, lag, segmented=False),
            W.sum(W.cum(c_.dense_sum(e0, e1, K)), w, lag, segmented=False),
            W.sum(W.cum(q_.dense_sum(e0, e1, K)), w, lag, segmented=False),
        )

    def peer_dev(mean: FloatArray, ok: npt.NDArray[np.bool_]) -> FloatArray:
        tot = np.zeros((n_nodes, K))
        cnt = np.zeros((n_nodes, K))
        np.add.at(tot, node_local, np.where(ok, mean, 0.0))
        np.add.at(cnt, node_local, ok.astype(np.float64))
        peers_n = cnt[node_local] - ok
        peers = (tot[node_local] - np.where(ok, mean, 0.0)) / np.maximum(peers_n, 1.0)
        return np.where(ok & (peers_n >= 1), mean - peers, 0.0)

    ts48, tc48, tq48 = gauge_windows("temperature_c", 2 * DAY)
    ok48 = tc48 > 0
    m48 = ts48 / np.maximum(tc48, 1.0)
    dev48 = peer_dev(m48, ok48)
    tsp, tcp, _ = gauge_windows("temperature_c", 5 * DAY, lag=2 * DAY)
    okp = tcp > 0
    devp = peer_dev(tsp / np.maximum(tcp, 1.0), okp)
    put("temp_dev_48h", dev48)
    change = np.where(ok48 & okp, dev48 - devp, 0.0)
    put("temp_dev_change", change)
    put("temp_drift_excess", np.maximum(change - 3.0, 0.0) * (dev48 > 3.0))
    var48 = np.maximum(tq48 / np.maximum(tc48, 1.0) - m48 * m48, 0.0)
    put("temp_swing_48h", np.where(tc48 >= 2, np.sqrt(var48), 0.0))
    ps, pc, pq = gauge_windows("power_w", 2 * DAY)
    pm = ps / np.maximum(pc, 1.0)
    pvar = np.maximum(pq / np.maximum(pc, 1.0) - pm * pm, 0.0)
    put("power_cv_48h", np.where((pc >= 2) & (pm > 1.0), np.sqrt(pvar) / np.maximum(pm, 1.0), 0.0))

    # Prior incidents: the strongest predictor in every field study.
    own = W.cum(src.own_failures.dense_sum(e0, e1, K))
    nodef = W.cum(src.node_failures.dense_sum(e0, e1, K))
    put("prior_gpu_failures_180d", np.log1p(W.sum(own, 180 * DAY, segmented=False)))
    put("prior_node_failures_90d", np.log1p(W.sum(nodef, 90 * DAY, segmented=False)))
    # Within the segment: a replacement's own hour opens the next segment and is not in
    # it, so only incidents the current GPU lived through count.
    for w, name in ((WEEK, "7d"), (30 * DAY, "30d"), (180 * DAY, "180d")):
        put(f"survived_incidents_{name}", np.log1p(W.sum(own, w)))

    # Lifetime correctable count for the baseline: first reading, then reset-aware increases.
    lifetime = np.cumsum(sbe, axis=1) + src.sbe_initial[e0:e1, None]
    if seg is not None:
        at_seg = np.take_along_axis(csbe, seg + 1, axis=1)
        lifetime = np.where(seg >= 0, csbe[:, 1:] - at_seg, lifetime)
    resets = src.resets.dense_sum(e0, e1, K) > 0
    return ChunkFeatures(x=x, sbe_cumulative=lifetime, resets=resets, cusum_raw=S)
