"""The public entry: per-GPU risk of failure within a horizon, with the evidence in words."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from gpumedic.domain.forecast.default_model import DEFAULT_MODEL
from gpumedic.domain.forecast.explain import HARD_PRECURSORS, describe
from gpumedic.domain.forecast.features import (
    DAY,
    HOUR,
    Entities,
    FeatureSource,
    Grid,
    chunk_features,
    prepare,
)
from gpumedic.domain.forecast.frame import (
    UNPREDICTABLE_CLASSES,
    Failure,
    FailureClass,
    HistoryFrame,
    to_epoch,
)
from gpumedic.domain.forecast.hazard import HazardModel
from gpumedic.domain.history import Sample

# Longest window any feature looks back (prior incidents of the slot: 180 days).
LOOKBACK_HOURS = 200 * DAY
# A feature is named as a factor when it adds at least this much log-odds over the fleet.
FACTOR_MIN_LOG_ODDS = 0.25
MAX_FACTORS = 4


@dataclass(frozen=True, slots=True)
class GpuForecast:
    node: str
    gpu: int | None  # None: a node scored as a whole (its history names no GPU)
    risk: float  # probability of failure within the model's lead + the horizon: `model.risk_window(horizon)`
    lead_time_hours: float | None  # typical hours left when alarmed on this evidence; None below the alarm
    factors: tuple[str, ...]  # top contributing evidence, in words, strongest first
    unpredictable_classes: tuple[FailureClass, ...]  # failure classes this risk cannot see coming
    alarm: bool = False  # risk at or above the model's alarm threshold
    held: str | None = None  # an alarm that raises no request, and why (`condemned.with_holds`)

    @property
    def requested(self) -> bool:
        """An alarm handed to proactive maintenance."""
        return self.alarm and self.held is None


def _explain(model: HazardModel, x: npt.NDArray[np.floating]) -> tuple[tuple[str, ...], float | None]:
    words: list[str] = []
    lead: float | None = None
    for contrib, _cause, feature, lead_h in model.explain(x):
        if contrib < FACTOR_MIN_LOG_ODDS or len(words) >= MAX_FACTORS:
            break
        value = float(x[model.features.index(feature)])
        text = describe(feature, value)
        # The absence of something (0 errors) is not evidence, and features shared by
        # several causes (prior incidents) are named once.
        if value == 0.0 or text in words:
            continue
        words.append(text)
        if lead is None and math.isfinite(lead_h):
            lead = lead_h
    # Hard precursors are always named, whatever their weight in the model.
    for name in HARD_PRECURSORS:
        j = model.features.index(name)
        text = describe(name, float(x[j]))
        if x[j] > 0 and text not in words:
            words.append(text)
    return tuple(words), lead


def forecast_frame(
    frame: HistoryFrame,
    now: datetime,
    *,
    horizon: timedelta = timedelta(days=7),
    model: HazardModel = DEFAULT_MODEL,
    prior_failures: Sequence[Failure] = (),
) -> list[GpuForecast]:
    """`forecast_fleet` on a columnar history (rows after `now` are ignored)."""
    now_s = to_epoch(now)
    frame = frame.until(now_s).since(now_s - LOOKBACK_HOURS * HOUR)
    if len(frame) == 0:
        return []
    grid = Grid.ending_at(now_s, int(frame.time[0]))
    known = [f for f in prior_failures if to_epoch(f.time) <= now_s]
    src: FeatureSource = prepare(frame, grid, known, Entities.from_keys(frame.keys))
    horizon_h = horizon.total_seconds() / HOUR
    out: list[GpuForecast] = []
    for e0, e1 in src.entities.feature_chunks(grid.hours):
        feats = chunk_features(src, e0, e1)
        x_now = feats.x[:, :, -1].astype(np.float64)
        risk = model.risk(x_now, horizon_h)
        alarm_risk = model.risk(x_now)
        for i in range(e1 - e0):
            node, gpu = src.entities.keys[e0 + i]
            alarm = bool(alarm_risk[i] >= model.alarm_threshold)
            factors, lead = _explain(model, x_now[:, i])
            out.append(
                GpuForecast(
                    node=node,
                    gpu=gpu,
                    risk=float(risk[i]),
                    lead_time_hours=lead if alarm else None,
                    factors=factors,
                    unpredictable_classes=UNPREDICTABLE_CLASSES,
                    alarm=alarm,
                )
            )
    out.sort(key=lambda f: (-f.risk, f.node, -1 if f.gpu is None else f.gpu))
    return out


def forecast_fleet(
    samples: Iterable[Sample],
    now: datetime,
    *,
    horizon: timedelta = timedelta(days=7),
    model: HazardModel = DEFAULT_MODEL,
    prior_failures: Sequence[Failure] = (),
) -> list[GpuForecast]:
    """Risk of failure within `horizon` for every GPU in `samples`, riskiest first.

    Only samples with time ≤ `now` are used (nothing reads the clock). `prior_failures`
    are earlier failures and replacements (a replaced GPU's history stops counting
    against its successor; prior incidents raise the slot's and the node's risk).
    `risk` is the model's calibrated probability, converted from the model's own horizon
    with a constant-hazard assumption when `horizon` differs.
    """
    now_s = to_epoch(now)
    frame = HistoryFrame.from_samples(s for s in samples if to_epoch(s.time) <= now_s)
    return forecast_frame(frame, now, horizon=horizon, model=model, prior_failures=prior_failures)
