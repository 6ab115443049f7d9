"""The backtest protocol (issue 4), pure: history + failures in, figures out.

Protocol, exactly:

* Every scored entity (each GPU seen in the history; a node when its history names no
  GPU) is scored every hour t of the history's span, from its first row to the last hour
  whose window can still be judged: t + lead + horizon ≤ the history's last time.
* A score at t is *positive* when a failure of that GPU, or of its node when the
  failure names no GPU, falls within [t + lead, t + lead + horizon].
* Only data up to t is used: rows with time ≤ t and failures with time ≤ t (a failure
  that has happened is known; the replaced GPU's history stops counting against its
  successor). Features are causal by construction (`gpumedic.domain.forecast.features`);
  `score_with` runs any other forecaster with the history cut at t, hour by hour.
* Walk-forward training: the hazard model is refitted every `refit_every` from the rows
  whose whole window had closed by then (t + lead + horizon ≤ refit time), with the
  shipped default coefficients as its prior; each hour is scored by the latest model
  fitted before it. Nothing is trained on the future.
* Negatives are never down-sampled: precision, recall, PR-AUC and prevalence count every
  scored GPU-hour. (Training rows are taken every `train_every_hours`, positives and
  negatives alike, to bound the fitting cost; that is not down-sampling of negatives.)
* Alarms: an alarm fires at t when the risk reaches the alarm threshold. The first alarm
  on an entity suppresses later ones until its failure or a reset. Our reading of
  "reset": a reset of the GPU visible in its telemetry (a counter dropping: driver
  reload, GPU reset) or, with `rearm_after_window` (default), the alarm's own window
  [t + lead, t + lead + horizon] closing without a failure, when an operator would have
  cleared it as false. An alarm is *true* when its entity fails within its window.
* A failure is *counted* when its whole lead window [f − lead − horizon, f − lead] lies
  within the scored hours (a failure in the history's first `lead + horizon` had its
  precursors before the history began; one in its last `horizon` could only be caught by
  an alarm days early, the hours just before it being unlabellable), and *caught* when
  an alarm fired (after suppression) on its GPU (or on any GPU of its node, for a
  node-level failure) within that window. Its lead time is
  f − (time of that alarm). Failures of GPUs absent from the history are counted, never
  caught.
* precision = true alarms / alarms; recall = caught / failures; PR-AUC = average
  precision of the hourly scores against the hourly labels (ties grouped);
  prevalence = positive GPU-hours / scored GPU-hours. Undefined values (no alarms, no
  caught failures) are NaN, written as JSON null.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from gpumedic.domain.forecast.baseline import DEFAULT_BASELINE, LogLinearBaseline
from gpumedic.domain.forecast.default_model import DEFAULT_MODEL
from gpumedic.domain.forecast.features import (
    FEATURES,
    HOUR,
    Entities,
    FeatureSource,
    Grid,
    chunk_features,
    prepare,
)
from gpumedic.domain.forecast.frame import Failure, FailureClass, HistoryFrame, Key, from_epoch, to_epoch
from gpumedic.domain.forecast.hazard import HazardModel, fit_hazard

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Progress = Callable[[str], None]

METRIC_KEYS = (
    "precision",
    "recall",
    "pr_auc",
    "alarms",
    "caught",
    "failures",
    "lead_hours_median",
    "lead_hours_p10",
)


@dataclass(frozen=True, slots=True)
class BacktestProtocol:
    """The protocol's settings (defaults: the issue's lead 24 h, horizon 7 days)."""

    lead: timedelta = timedelta(hours=24)
    horizon: timedelta = timedelta(days=7)
    rearm_after_window: bool = True
    training: Literal["walk-forward", "fixed"] = "walk-forward"
    refit_every: timedelta = timedelta(days=7)
    train_every_hours: int = 12
    # Walk-forward fits lean hard on the shipped coefficients: a few weeks of one fleet
    # hold a handful of failures, against the thousands of GPU-months behind the default.
    prior_precision: float = 100.0
    min_train_failures: int = 3

    @property
    def lead_h(self) -> int:
        return int(self.lead.total_seconds() // HOUR)

    @property
    def horizon_h(self) -> int:
        return int(self.horizon.total_seconds() // HOUR)


@dataclass(frozen=True, slots=True)
class FalseAlarms:
    """Alarms whose window held no failure, by what came next on that GPU (or node)."""

    too_late: int  # it failed within the lead: a true warning, too late to count
    too_early: int  # it failed, after the window
    no_failure: int  # it did not fail in the rest of the history

    def to_json(self) -> dict[str, int]:
        return {"too_late": self.too_late, "too_early": self.too_early, "no_failure": self.no_failure}


@dataclass(frozen=True, slots=True)
class Metrics:
    precision: float
    recall: float
    pr_auc: float
    alarms: int
    caught: int
    failures: int
    lead_hours_median: float
    lead_hours_p10: float
    false_alarms: FalseAlarms

    def to_json(self) -> dict[str, float | int | None]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else round(float(v), 6)

        return {
            "precision": clean(self.precision),
            "recall": clean(self.recall),
            "pr_auc": clean(self.pr_auc),
            "alarms": int(self.alarms),
            "caught": int(self.caught),
            "failures": int(self.failures),
            "lead_hours_median": clean(self.lead_hours_median),
            "lead_hours_p10": clean(self.lead_hours_p10),
        }


@dataclass(frozen=True, slots=True)
class ClassRecall:
    kind: str
    failures: int
    caught_forecaster: int
    caught_baseline: int
    has_precursor: bool | None  # None: a kind the simulator's classes do not name


@dataclass(frozen=True, slots=True)
class BacktestResult:
    forecaster: Metrics
    baseline: Metrics
    prevalence: float
    by_class: tuple[ClassRecall, ...]
    scored_hours: int  # entity-hours scored
    entities: int

    def to_json(self, *, by_class: bool = False) -> dict[str, object]:
        """The issue's exact shape; `by_class` adds two optional keys: per-class recall, and the false
        alarms by what followed them."""
        out: dict[str, object] = {
            "forecaster": self.forecaster.to_json(),
            "baseline": self.baseline.to_json(),
            "prevalence": round(self.prevalence, 9),
        }
        if by_class:
            out["false_alarms"] = {"forecaster": self.forecaster.false_alarms.to_json(),
                                   "baseline": self.baseline.false_alarms.to_json()}
            out["by_class"] = {
                c.kind: {
                    "failures": c.failures,
                    "caught_forecaster": c.caught_forecaster,
                    "caught_baseline": c.caught_baseline,
                    "recall_forecaster": round(c.caught_forecaster / c.failures, 6) if c.failures else None,
                    "recall_baseline": round(c.caught_baseline / c.failures, 6) if c.failures else None,
                    "has_precursor": c.has_precursor,
                }
                for c in self.by_class
            }
        return out

    def precursor_recall(self, which: Literal["forecaster", "baseline"] = "forecaster") -> float:
        """Recall over the failure classes that have precursors (simulator classes)."""
        rows = [c for c in self.by_class if c.has_precursor]
        total = sum(c.failures for c in rows)
        caught = sum(c.caught_forecaster if which == "forecaster" else c.caught_baseline for c in rows)
        return caught / total if total else math.nan


def _has_precursor(kind: str) -> bool | None:
    try:
        return FailureClass(kind).has_precursor
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# Labels and the failures each entity answers for
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Targets:
    """Failures mapped onto entities and grid hours."""

    times: npt.NDArray[np.int64]  # per failure, seconds
    members: tuple[npt.NDArray[np.int64], ...]  # per failure, entities it counts against
    kinds: tuple[str, ...]
    per_entity: tuple[npt.NDArray[np.int64], ...]  # per entity, sorted failure times against it

    @classmethod
    def build(cls, failures: Sequence[Failure], entities: Entities) -> _Targets:
        ent_of = {k: i for i, k in enumerate(entities.keys)}
        node_ents: dict[str, list[int]] = {}
        for i, (node, _) in enumerate(entities.keys):
            node_ents.setdefault(node, []).append(i)
        per: list[list[int]] = [[] for _ in entities.keys]
        times: list[int] = []
        members: list[npt.NDArray[np.int64]] = []
        kinds: list[str] = []
        for f in sorted(failures, key=lambda f: to_epoch(f.time)):
            t = to_epoch(f.time)
            if f.gpu is None:
                m = node_ents.get(f.node, [])
            else:
                e = ent_of.get((f.node, f.gpu))
                if e is None:
                    e = ent_of.get((f.node, None))  # the node is scored as a whole
                m = [] if e is None else [e]
            for e in m:
                per[e].append(t)
            times.append(t)
            members.append(np.array(m, dtype=np.int64))
            kinds.append(f.kind)
        return cls(
            np.array(times, dtype=np.int64),
            tuple(members),
            tuple(kinds),
            tuple(np.array(p, dtype=np.int64) for p in per),
        )


def _window_hours(t: int, grid: Grid, lead_h: int, horizon_h: int) -> tuple[int, int]:
    """Hours k whose window [t_k + lead, t_k + lead + horizon] contains time t: k_lo..k_hi."""
    lo = -(-(t - (lead_h + horizon_h) * HOUR - grid.origin) // HOUR)
    hi = (t - lead_h * HOUR - grid.origin) // HOUR
    return int(lo), int(hi)


def _a_tenth_done(i: int, n: int) -> bool:
    """Whether chunk `i` of `n` completes another tenth of the work (progress every ~10%, and at the end)."""
    return i == n - 1 or (10 * (i + 1)) // n > (10 * i) // n


def _first_hour_at(grid: Grid, k_scored: int, when: datetime) -> int:
    return int(min(max(-((grid.origin - to_epoch(when)) // HOUR), 0), k_scored))


def _hours_through(grid: Grid, k_scored: int, when: datetime) -> int:
    return int(min(max((to_epoch(when) - grid.origin) // HOUR + 1, 0), k_scored))


def _is_counted(lo: int, hi: int, k_scored: int) -> bool:
    """A failure counts when its whole lead window lies within the scored hours.

    A failure in the history's first days had its precursors before the history began;
    one in its last `horizon` could only be caught days early (the hours just before it
    cannot be labelled). Counting them would measure the history's edges, not the
    forecaster.
    """
    return lo >= 0 and hi <= k_scored - 1


def _labels(targets: _Targets, n_entities: int, grid: Grid, k_scored: int, lead_h: int, horizon_h: int) -> BoolArray:
    diff = np.zeros((n_entities, k_scored + 1), dtype=np.int32)
    for t, m in zip(targets.times.tolist(), targets.members, strict=True):
        lo, hi = _window_hours(t, grid, lead_h, horizon_h)
        lo, hi = max(lo, 0), min(hi, k_scored - 1)
        if hi < lo or len(m) == 0:
            continue
        diff[m, lo] += 1  # members are distinct entities: no repeated index
        diff[m, hi + 1] -= 1
    return np.cumsum(diff, axis=1)[:, :k_scored] > 0


# --------------------------------------------------------------------------------------
# Scoring: alarms with suppression, metrics
# --------------------------------------------------------------------------------------


def _fire(
    raw: BoolArray,
    resets: Sequence[npt.NDArray[np.int64]],
    targets: _Targets,
    grid: Grid,
    protocol: BacktestProtocol,
) -> list[npt.NDArray[np.int64]]:
    """Alarm hours per entity after suppression."""
    window = protocol.lead_h + protocol.horizon_h
    fired: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)] * raw.shape[0]
    rows, cols = np.nonzero(raw)
    if len(rows) == 0:
        return fired
    splits = np.flatnonzero(np.diff(rows)) + 1
    for r_block, c_block in zip(np.split(rows, splits), np.split(cols, splits), strict=True):
        e = int(r_block[0])
        hours = c_block
        fail_bins = np.maximum(-((grid.origin - targets.per_entity[e]) // HOUR), 0)
        rs = resets[e]
        out: list[int] = []
        i = 0
        while i < len(hours):
            k = int(hours[i])
            out.append(k)
            nxt = math.inf
            j = int(np.searchsorted(fail_bins, k, side="right"))
            if j < len(fail_bins):
                nxt = min(nxt, int(fail_bins[j]))
            j = int(np.searchsorted(rs, k, side="right"))
            if j < len(rs):
                nxt = min(nxt, int(rs[j]))
            if protocol.rearm_after_window:
                nxt = min(nxt, k + window + 1)
            if math.isinf(nxt):
                break
            i = int(np.searchsorted(hours, nxt, side="left"))
        fired[e] = np.array(out, dtype=np.int64)
    return fired


def pr_curve(
    scores: npt.NDArray[np.floating], labels: BoolArray
) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(threshold, true positives, false positives) at each distinct score, highest first:
    what alarming at score ≥ threshold catches, tied scores taken together."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.ones(len(s), dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    return s[last], np.cumsum(y)[last], np.cumsum(~y)[last]


def average_precision(scores: npt.NDArray[np.floating], labels: BoolArray) -> float:
    """Area under the precision-recall curve as average precision, tied scores grouped."""
    total = int(np.asarray(labels, dtype=bool).sum())
    if total == 0 or np.size(scores) == 0:
        return math.nan
    _, tp, fp = pr_curve(scores, labels)
    precision = tp / (tp + fp)
    recall = tp / total
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


@dataclass(frozen=True, slots=True)
class _Outcome:
    metrics: Metrics
    caught: BoolArray  # per failure


def _metrics(
    fired: Sequence[npt.NDArray[np.int64]],
    labels: BoolArray,
    scores: npt.NDArray[np.floating],
    targets: _Targets,
    grid: Grid,
    k_scored: int,
    protocol: BacktestProtocol,
) -> _Outcome:
    alarms = sum(len(f) for f in fired)
    true_alarms = sum(int(labels[e, f].sum()) for e, f in enumerate(fired) if len(f))
    counted = np.zeros(len(targets.times), dtype=bool)
    caught = np.zeros(len(targets.times), dtype=bool)
    leads: list[float] = []
    for i, (t, m) in enumerate(zip(targets.times.tolist(), targets.members, strict=True)):
        lo, hi = _window_hours(t, grid, protocol.lead_h, protocol.horizon_h)
        if not _is_counted(lo, hi, k_scored):
            continue
        counted[i] = True
        best: int | None = None
        for e in m.tolist():
            f = fired[e]
            hit = f[(f >= lo) & (f <= hi)]
            if len(hit) and (best is None or int(hit[0]) < best):
                best = int(hit[0])
        if best is not None:
            caught[i] = True
            leads.append((t - grid.instant(best)) / HOUR)
    n_fail = int(counted.sum())
    n_caught = int(caught.sum())
    lead_arr = np.array(leads)
    false_alarms = _false_alarms(fired, labels, targets, grid, protocol)
    metrics = Metrics(
        precision=true_alarms / alarms if alarms else math.nan,
        recall=n_caught / n_fail if n_fail else math.nan,
        pr_auc=average_precision(scores, labels),
        alarms=alarms,
        caught=n_caught,
        failures=n_fail,
        lead_hours_median=float(np.median(lead_arr)) if len(leads) else math.nan,
        lead_hours_p10=float(np.percentile(lead_arr, 10)) if len(leads) else math.nan,
        false_alarms=false_alarms,
    )
    return _Outcome(metrics, np.where(counted, caught, False))


def _false_alarms(
    fired: Sequence[npt.NDArray[np.int64]], labels: BoolArray, targets: _Targets, grid: Grid,
    protocol: BacktestProtocol,
) -> FalseAlarms:
    """Sorts the false alarms by the entity's next failure: inside the lead, after the window, or none."""
    late = early = never = 0
    for e, f in enumerate(fired):
        false = f[~labels[e, f]]
        if not len(false):
            continue
        upcoming = targets.per_entity[e]
        if not len(upcoming):
            never += len(false)
            continue
        at = grid.origin + false * HOUR
        j = np.searchsorted(upcoming, at, side="right")
        failing = j < len(upcoming)
        soon = upcoming[np.minimum(j, len(upcoming) - 1)] - at < protocol.lead_h * HOUR
        never += int((~failing).sum())
        late += int((failing & soon).sum())
        early += int((failing & ~soon).sum())
    return FalseAlarms(late, early, never)


# --------------------------------------------------------------------------------------
# Training rows and walk-forward fitting
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingRows:
    x: npt.NDArray[np.float32]  # rows × features
    y: BoolArray
    hour: npt.NDArray[np.int64]  # grid hour of the row
    time_to_failure: FloatArray  # hours to the failure that makes the row positive (nan otherwise)
    failure_id: npt.NDArray[np.int64]  # which failure makes it positive (−1)
    failure_kinds: tuple[str, ...] = ()  # kind of each failure id

    def kinds(self, targets: _Targets | None = None) -> npt.NDArray[np.object_]:
        """The failure kind that makes each row positive (None for negatives)."""
        table = targets.kinds if targets is not None else self.failure_kinds
        lookup = np.array([*table, None], dtype=object)
        return lookup[np.where(self.y, self.failure_id, -1)]


def _row_targets(
    ents: npt.NDArray[np.int64],
    hours: npt.NDArray[np.int64],
    targets: _Targets,
    grid: Grid,
    protocol: BacktestProtocol,
) -> tuple[BoolArray, FloatArray, npt.NDArray[np.int64], BoolArray]:
    """Label, time to failure, failure id and 'fails before the window opens' for each row."""
    n = len(ents)
    y = np.zeros(n, dtype=bool)
    ttf = np.full(n, np.nan)
    fid = np.full(n, -1, dtype=np.int64)
    too_late = np.zeros(n, dtype=bool)
    ids_per_entity: list[list[int]] = [[] for _ in targets.per_entity]
    for i, m in enumerate(targets.members):
        for e in m.tolist():
            ids_per_entity[e].append(i)
    t = grid.origin + hours * HOUR
    lead, horizon = protocol.lead_h * HOUR, protocol.horizon_h * HOUR
    for e in np.unique(ents).tolist():
        ft = targets.per_entity[e]
        if len(ft) == 0:
            continue
        sel = np.flatnonzero(ents == e)
        tt = t[sel]
        j = np.searchsorted(ft, tt + lead, side="left")
        has = j < len(ft)
        nxt = np.where(has, ft[np.minimum(j, len(ft) - 1)], np.iinfo(np.int64).max)
        pos = has & (nxt <= tt + lead + horizon)
        y[sel] = pos
        ttf[sel[pos]] = (nxt[pos] - tt[pos]) / HOUR
        ids = np.array(sorted(ids_per_entity[e], key=lambda i: targets.times[i]), dtype=np.int64)
        fid[sel[pos]] = ids[j[pos]]
        k = np.searchsorted(ft, tt, side="right")
        too_late[sel] = (k < len(ft)) & (ft[np.minimum(k, len(ft) - 1)] < tt + lead)
    return y, ttf, fid, too_late


def training_rows(
    src: FeatureSource,
    targets: _Targets,
    protocol: BacktestProtocol,
    k_scored: int,
    progress: Progress | None = None,
) -> TrainingRows:
    """Rows every `train_every_hours` for every entity over the scored hours, with labels.

    Rows whose entity fails before their window opens (within the lead) are dropped:
    they are neither a clean positive nor a clean negative for a window that starts at
    t + lead.
    """
    cols = np.arange(0, k_scored, protocol.train_every_hours)
    parts: list[TrainingRows] = []
    chunks = src.entities.feature_chunks(src.grid.hours)
    for i, (e0, e1) in enumerate(chunks):
        sub = chunk_features(src, e0, e1).x[:, :, cols]  # features × entities × rows
        ents = np.repeat(np.arange(e0, e1), len(cols))
        hours = np.tile(cols, e1 - e0)
        y, ttf, fid, too_late = _row_targets(ents, hours, targets, src.grid, protocol)
        keep = ~too_late
        # Dropped chunk by chunk, so the whole set of rows is never held twice.
        parts.append(TrainingRows(sub.reshape(len(FEATURES), -1).T[keep], y[keep], hours[keep], ttf[keep], fid[keep]))
        if progress and _a_tenth_done(i, len(chunks)):
            progress(f"training features of {e1:,}/{len(src.entities):,} GPUs")
    return TrainingRows(  # entities are never empty (_setup refuses): there is a part to concatenate
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.hour for p in parts]),
        np.concatenate([p.time_to_failure for p in parts]),
        np.concatenate([p.failure_id for p in parts]),
        targets.kinds,
    )


def _fit_rows(rows: TrainingRows, usable: BoolArray, protocol: BacktestProtocol, prior: HazardModel) -> HazardModel:
    """The hazard model fitted on the `usable` rows, shrunk towards `prior` by the protocol's precision."""
    return fit_hazard(
        rows.x[usable],
        rows.kinds()[usable],
        prior.features,
        lead_hours=float(protocol.lead_h),
        horizon_hours=float(protocol.horizon_h),
        prior=prior,
        prior_precision=protocol.prior_precision,
        time_to_failure=rows.time_to_failure[usable],
    )


@dataclass(frozen=True, slots=True)
class _Schedule:
    starts: npt.NDArray[np.int64]  # first grid hour each model scores
    models: tuple[HazardModel, ...]


def _walk_forward(
    rows: TrainingRows,
    k_scored: int,
    protocol: BacktestProtocol,
    prior: HazardModel,
    progress: Progress | None,
) -> _Schedule:
    refit_h = int(protocol.refit_every.total_seconds() // HOUR)
    window_h = protocol.lead_h + protocol.horizon_h
    starts = [0]
    models = [prior]
    for cutoff in range(refit_h, k_scored, refit_h):
        usable = rows.hour + window_h <= cutoff
        n_fail = len(np.unique(rows.failure_id[usable & rows.y]))
        if n_fail < protocol.min_train_failures:
            continue
        # The lead-time table and threshold stay the prior's when this fit saw too little.
        model = _fit_rows(rows, usable, protocol, prior)
        starts.append(cutoff)
        models.append(model)
        if progress:
            progress(f"walk-forward fit at day {cutoff // 24}: {int(usable.sum())} rows, {n_fail} failures")
    return _Schedule(np.array(starts, dtype=np.int64), tuple(models))


# --------------------------------------------------------------------------------------
# The backtest
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredBacktest:
    """Hourly scores of the forecaster and the baseline, ready to be turned into figures."""

    protocol: BacktestProtocol
    grid: Grid
    k_scored: int
    entities: Entities
    targets: _Targets
    labels: BoolArray
    risk: npt.NDArray[np.float32]  # forecaster probability, entities × scored hours
    baseline_score: npt.NDArray[np.float32]
    resets: tuple[npt.NDArray[np.int64], ...]
    schedule: _Schedule = field(repr=False)

    @property
    def prevalence(self) -> float:
        return float(self.labels.mean()) if self.labels.size else math.nan

    def evaluate(
        self,
        *,
        threshold: float | None = None,
        baseline: LogLinearBaseline = DEFAULT_BASELINE,
    ) -> BacktestResult:
        thr = self.schedule.models[0].alarm_threshold if threshold is None else threshold
        f_out = self._outcome(self.risk >= thr, self.risk)
        b_out = self._outcome(self.baseline_score >= baseline.log_threshold, self.baseline_score)
        kinds = sorted(set(self.targets.kinds))
        by_class = []
        for kind in kinds:
            idx = np.array([i for i, k in enumerate(self.targets.kinds) if k == kind])
            counted = self._counted()[idx]
            by_class.append(
                ClassRecall(
                    kind=kind,
                    failures=int(counted.sum()),
                    caught_forecaster=int(f_out.caught[idx].sum()),
                    caught_baseline=int(b_out.caught[idx].sum()),
                    has_precursor=_has_precursor(kind),
                )
            )
        return BacktestResult(
            forecaster=f_out.metrics,
            baseline=b_out.metrics,
            prevalence=self.prevalence,
            by_class=tuple(by_class),
            scored_hours=int(self.labels.size),
            entities=len(self.entities),
        )

    def first_hour_at(self, when: datetime) -> int:
        """The first scored hour at or after `when` (k_scored if none)."""
        return _first_hour_at(self.grid, self.k_scored, when)

    def hours_through(self, when: datetime) -> int:
        """How many scored hours fall at or before `when`."""
        return _hours_through(self.grid, self.k_scored, when)

    def pr_auc_from(self, hour: int, stop: int | None = None) -> tuple[float, float]:
        """(PR-AUC, prevalence) of the forecaster over the scored hours from `hour` on (to `stop`,
        excluded, if given); NaN if there are none."""
        labels, risk = self.labels[:, hour:stop], self.risk[:, hour:stop]
        if labels.size == 0:
            return math.nan, math.nan
        return average_precision(risk.ravel(), labels.ravel()), float(labels.mean())

    def labels_for(self, *, lead_hours: int, horizon_hours: int) -> BoolArray:
        """Labels of the same scored hours for another window [t + lead, t + lead + horizon]."""
        return _labels(self.targets, len(self.entities), self.grid, self.k_scored, lead_hours, horizon_hours)

    def caught(self, threshold: float | None = None) -> tuple[BoolArray, BoolArray]:
        """(counted, caught by the forecaster) per failure, in time order (stable: ties keep their input order)."""
        thr = self.schedule.models[0].alarm_threshold if threshold is None else threshold
        return self._counted(), self._outcome(self.risk >= thr, self.risk).caught

    def _counted(self) -> BoolArray:
        out = np.zeros(len(self.targets.times), dtype=bool)
        for i, t in enumerate(self.targets.times.tolist()):
            lo, hi = _window_hours(t, self.grid, self.protocol.lead_h, self.protocol.horizon_h)
            out[i] = _is_counted(lo, hi, self.k_scored)
        return out

    def _outcome(self, raw: BoolArray, scores: npt.NDArray[np.floating]) -> _Outcome:
        fired = _fire(raw, self.resets, self.targets, self.grid, self.protocol)
        return _metrics(fired, self.labels, scores, self.targets, self.grid, self.k_scored, self.protocol)


def _setup(
    frame: HistoryFrame,
    protocol: BacktestProtocol,
    roster: Sequence[Key],
    span: tuple[datetime, datetime] | None,
) -> tuple[Grid, int, Entities]:
    """The hourly grid, the number of scored hours and the scored entities."""
    bounds = [int(frame.time[0]), int(frame.time[-1])] if len(frame) else []
    if span is not None:
        bounds += [to_epoch(span[0]), to_epoch(span[1])]
    if not bounds:
        raise ValueError("empty history and no span: nothing to score")
    first, last = min(bounds), max(bounds)
    grid = Grid.covering(first, last)
    window = (protocol.lead_h + protocol.horizon_h) * HOUR
    k = (last - window - grid.origin) // HOUR + 1
    if k <= 0:
        raise ValueError(
            f"history spans {(last - first) / 86400:.1f} days: shorter than lead + horizon "
            f"({window / 86400:.1f} days), nothing can be scored"
        )
    entities = Entities.from_keys([*frame.keys, *roster])
    if len(entities) == 0:
        raise ValueError("no GPU or node to score")
    return grid, int(min(k, grid.hours)), entities


def score_backtest(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol = BacktestProtocol(),
    *,
    model: HazardModel = DEFAULT_MODEL,
    baseline: LogLinearBaseline = DEFAULT_BASELINE,
    progress: Progress | None = None,
    roster: Sequence[Key] = (),
    span: tuple[datetime, datetime] | None = None,
) -> ScoredBacktest:
    """Score every entity every hour (forecaster and baseline) under the protocol.

    The entities are those the history names plus `roster` (GPUs or nodes known to
    exist though the history holds no row of theirs); the scored span is the history's,
    widened to `span` if given (for failure logs without telemetry).
    """
    grid, k_scored, entities = _setup(frame, protocol, roster, span)
    src = prepare(frame, grid, failures, entities)
    targets = _Targets.build(failures, entities)
    labels = _labels(targets, len(entities), grid, k_scored, protocol.lead_h, protocol.horizon_h)

    if protocol.training == "walk-forward":
        rows = training_rows(src, targets, protocol, k_scored, progress)
        schedule = _walk_forward(rows, k_scored, protocol, model, progress)
    else:
        schedule = _Schedule(np.array([0], dtype=np.int64), (model,))

    risk = np.zeros((len(entities), k_scored), dtype=np.float32)
    base = np.zeros((len(entities), k_scored), dtype=np.float32)
    resets: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)] * len(entities)
    ahead = float(protocol.lead_h + protocol.horizon_h)
    bounds = [*schedule.starts.tolist(), k_scored]
    chunks = entities.feature_chunks(grid.hours)
    for i, (e0, e1) in enumerate(chunks):
        feats = chunk_features(src, e0, e1)
        for j, mdl in enumerate(schedule.models):
            a, b = bounds[j], min(bounds[j + 1], k_scored)
            if b > a:
                risk[e0:e1, a:b] = mdl.risk(feats.x[:, :, a:b])
        base[e0:e1] = baseline.scores(feats.sbe_cumulative, ahead)[:, :k_scored]
        for r in range(e1 - e0):
            resets[e0 + r] = np.flatnonzero(feats.resets[r, :k_scored]).astype(np.int64)
        if progress and _a_tenth_done(i, len(chunks)):
            progress(f"scored {e1:,}/{len(entities):,} GPUs")
    return ScoredBacktest(
        protocol=protocol,
        grid=grid,
        k_scored=k_scored,
        entities=entities,
        targets=targets,
        labels=labels,
        risk=risk,
        baseline_score=base,
        resets=tuple(resets),
        schedule=schedule,
    )


def run_backtest(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol = BacktestProtocol(),
    *,
    model: HazardModel = DEFAULT_MODEL,
    baseline: LogLinearBaseline = DEFAULT_BASELINE,
    progress: Progress | None = None,
    roster: Sequence[Key] = (),
    span: tuple[datetime, datetime] | None = None,
) -> BacktestResult:
    scored = score_backtest(
        frame, failures, protocol, model=model, baseline=baseline, progress=progress, roster=roster, span=span
    )
    return scored.evaluate(baseline=baseline)


# --------------------------------------------------------------------------------------
# Any forecaster, hour by hour, with the history cut at t (slow; for tests and new ideas)
# --------------------------------------------------------------------------------------


# (history up to t, failures up to t, t in epoch seconds) -> (score, alarm) per entity key.
Scorer = Callable[[HistoryFrame, Sequence[Failure], int], Mapping[Key, tuple[float, bool]]]


def score_with(
    scorer: Scorer,
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol = BacktestProtocol(),
) -> tuple[Metrics, float]:
    """(metrics, prevalence) of an arbitrary scorer under the protocol.

    At each hour t the scorer sees `frame.until(t)` and the failures with time ≤ t,
    nothing else.
    """
    grid, k_scored, entities = _setup(frame, protocol, (), None)
    index = {k: i for i, k in enumerate(entities.keys)}
    src = prepare(frame, grid, failures, entities)
    targets = _Targets.build(failures, entities)
    labels = _labels(targets, len(entities), grid, k_scored, protocol.lead_h, protocol.horizon_h)
    scores = np.zeros((len(entities), k_scored))
    raw = np.zeros((len(entities), k_scored), dtype=bool)
    ordered = sorted(failures, key=lambda f: to_epoch(f.time))
    times = [to_epoch(f.time) for f in ordered]
    for k in range(k_scored):
        t = grid.instant(k)
        known = ordered[: int(np.searchsorted(np.array(times, dtype=np.int64), t, side="right"))]
        for key, (s, alarm) in scorer(frame.until(t), known, t).items():
            e = index.get(key)
            if e is not None:
                scores[e, k] = s
                raw[e, k] = alarm
    resets = tuple(
        np.flatnonzero(r[:k_scored]).astype(np.int64)
        for e0, e1 in entities.feature_chunks(grid.hours)
        for r in chunk_features(src, e0, e1).resets
    )
    fired = _fire(raw, resets, targets, grid, protocol)
    out = _metrics(fired, labels, scores, targets, grid, k_scored, protocol)
    return out.metrics, float(labels.mean())


def training_set(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol = BacktestProtocol(),
    progress: Progress | None = None,
    roster: Sequence[Key] = (),
    span: tuple[datetime, datetime] | None = None,
) -> TrainingRows:
    """Labelled feature rows of a whole history (every row's window closed), for fitting models."""
    return FleetHistory(frame, failures, protocol, progress, roster=roster, span=span).rows


class NothingToFit(ValueError):
    """The history holds too little to fit on: no closed window, or too few failures in them."""


@dataclass(frozen=True, slots=True)
class FleetFit:
    """A model fitted on one fleet's history, and what it was fitted on."""

    model: HazardModel
    rows: int  # labelled feature rows (one per GPU every `train_every_hours`)
    positive_rows: int
    failures_by_cause: dict[str, int]  # distinct failures that made rows positive, per cause
    first: datetime  # time of the first and last row fitted
    last: datetime

    @property
    def failures(self) -> int:
        return sum(self.failures_by_cause.values())

    @property
    def causes_text(self) -> str:
        """"memory 15, nvlink 4": the failures per cause, in words."""
        return ", ".join(f"{cause} {n}" for cause, n in sorted(self.failures_by_cause.items()))


@dataclass(frozen=True, slots=True)
class HeldOutCheck:
    """A fitted model and its prior on the hours after the fit's `until`, which the fit never saw."""

    until: datetime
    hours: int  # scored hours from `until` on
    prevalence: float  # NaN when no hour was scored
    prior_pr_auc: float
    fitted_pr_auc: float

    @property
    def judged(self) -> bool:
        """Whether the unseen hours hold a failure to rank them by."""
        return self.hours > 0 and self.prevalence > 0

    @property
    def fitted_is_no_worse(self) -> bool:
        return self.judged and self.fitted_pr_auc >= self.prior_pr_auc

    def describe(self) -> str:
        if self.hours == 0:
            return (f"held-out check: no scored hour after {self.until:%Y-%m-%d %H:%M} UTC "
                    "(the history ends within lead + horizon of it)")
        if not self.judged:
            return (f"held-out check: no failure in the windows after {self.until:%Y-%m-%d %H:%M} UTC, "
                    "so nothing to rank them by")
        return (
            f"held-out check, {self.hours:,} hours after {self.until:%Y-%m-%d %H:%M} UTC "
            f"(prevalence {self.prevalence:.4f}): PR-AUC prior {self.prior_pr_auc:.3f}, fitted {self.fitted_pr_auc:.3f}"
            + ("" if self.fitted_is_no_worse else " -- the fitted model ranks the unseen hours WORSE than its prior")
        )


class FleetHistory:
    """One fleet's history and failures binned once on the protocol's hourly grid.

    What fitting on a history and checking that fit on its later hours share: the binning, and
    the labelled training rows (one pass over every GPU's features, made on first use). A refit
    that fits, checks and fits again computes features twice, not once per step.
    """

    def __init__(
        self,
        frame: HistoryFrame,
        failures: Sequence[Failure],
        protocol: BacktestProtocol = BacktestProtocol(),
        progress: Progress | None = None,
        *,
        roster: Sequence[Key] = (),
        span: tuple[datetime, datetime] | None = None,
    ) -> None:
        self.protocol = protocol
        self.grid, self.k_scored, self.entities = _setup(frame, protocol, roster, span)
        self.src = prepare(frame, self.grid, failures, self.entities)
        self.targets = _Targets.build(failures, self.entities)
        self._progress = progress
        self._rows: TrainingRows | None = None

    @property
    def rows(self) -> TrainingRows:
        """Labelled rows every `train_every_hours` for every entity over the scored hours."""
        if self._rows is None:
            self._rows = training_rows(self.src, self.targets, self.protocol, self.k_scored, self._progress)
        return self._rows

    def fit(self, prior: HazardModel = DEFAULT_MODEL, until: datetime | None = None) -> FleetFit:
        """One walk-forward step: the model fitted on every row whose window has closed (by `until`,
        if given), shrunk towards `prior` with the protocol's prior precision.

        Raises NothingToFit when fewer than the protocol's `min_train_failures` failures fall in
        the fitted rows' windows: a fit on a quiet fleet only learns that GPUs do not fail.
        """
        protocol, rows = self.protocol, self.rows
        usable = np.ones(len(rows.y), dtype=bool)
        if until is not None:
            closed_by = (to_epoch(until) - self.grid.origin) // HOUR
            usable &= rows.hour + protocol.lead_h + protocol.horizon_h <= closed_by
        if not usable.any():
            raise NothingToFit(f"no row's window closes by {until:%Y-%m-%d %H:%M} UTC: nothing to fit on")
        ids = np.unique(rows.failure_id[usable & rows.y])
        if len(ids) < protocol.min_train_failures:
            raise NothingToFit(
                f"the fitted rows' windows hold {len(ids)} failures, fewer than {protocol.min_train_failures}: "
                "too few to move the model (a longer history, or more of the fleet, is needed)"
            )
        by_cause: dict[str, int] = {}
        for i in ids.tolist():
            cause = prior.cause_of(rows.failure_kinds[i])
            by_cause[cause] = by_cause.get(cause, 0) + 1
        hours = rows.hour[usable]
        return FleetFit(
            model=_fit_rows(rows, usable, protocol, prior),
            rows=int(usable.sum()),
            positive_rows=int((usable & rows.y).sum()),
            failures_by_cause=by_cause,
            first=from_epoch(self.grid.instant(int(hours.min()))),
            last=from_epoch(self.grid.instant(int(hours.max()))),
        )

    def check(
        self, *, prior: HazardModel, fitted: HazardModel, until: datetime, now: datetime | None = None
    ) -> HeldOutCheck:
        """Both models, as they are, on the scored hours from `until` on: whether a fit made with
        `until` ranks hours it never saw better than its prior (PR-AUC, every hour counted). With
        `now`, only the hours whose window had closed by then count (a replay on a longer history)."""
        hour = _first_hour_at(self.grid, self.k_scored, until)
        stop = self.k_scored
        if now is not None:
            window = timedelta(hours=self.protocol.lead_h + self.protocol.horizon_h)
            stop = _hours_through(self.grid, self.k_scored, now - window)
        if stop <= hour:
            return HeldOutCheck(until, 0, math.nan, math.nan, math.nan)
        if self._progress:
            self._progress(f"scoring the hours after {until:%Y-%m-%d %H:%M} UTC with the prior and the fitted model")
        labels = _labels(
            self.targets, len(self.entities), self.grid, self.k_scored, self.protocol.lead_h, self.protocol.horizon_h
        )[:, hour:stop]
        before, after = self._risks((prior, fitted), hour, stop)
        return HeldOutCheck(
            until,
            stop - hour,
            float(labels.mean()),
            average_precision(before.ravel(), labels.ravel()),
            average_precision(after.ravel(), labels.ravel()),
        )

    def _risks(self, models: Sequence[HazardModel], hour: int, stop: int) -> list[npt.NDArray[np.float32]]:
        """Each model's hourly risk of every entity over scored hours [hour, stop), from one feature pass."""
        out = [np.zeros((len(self.entities), stop - hour), dtype=np.float32) for _ in models]
        chunks = self.entities.feature_chunks(self.grid.hours)
        for i, (e0, e1) in enumerate(chunks):
            x = chunk_features(self.src, e0, e1).x[:, :, hour:stop]
            for risk, model in zip(out, models, strict=True):
                risk[e0:e1] = model.risk(x)
            if self._progress and _a_tenth_done(i, len(chunks)):
                self._progress(f"checked {e1:,}/{len(self.entities):,} GPUs")
        return out


def fit_fleet_model(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol = BacktestProtocol(),
    *,
    prior: HazardModel = DEFAULT_MODEL,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> FleetFit:
    """`FleetHistory.fit` on a history used once."""
    return FleetHistory(frame, failures, protocol, progress).fit(prior, until)


def held_out_check(
    frame: HistoryFrame,
    failures: Sequence[Failure],
    protocol: BacktestProtocol,
    *,
    prior: HazardModel,
    fitted: HazardModel,
    until: datetime,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> HeldOutCheck:
    """`FleetHistory.check` on a history used once."""
    return FleetHistory(frame, failures, protocol, progress).check(prior=prior, fitted=fitted, until=until, now=now)
