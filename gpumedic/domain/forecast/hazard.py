"""The hazard model: windowed features → calibrated probability of failure in a window.

Cause-specific discrete-time hazards. Each cause (memory, NVLink, PCIe, thermal, and
"other" for every failure kind no cause names) has its own logistic regression on its
own evidence, fitted on the label "this GPU fails *of this cause* within [t + lead,
t + lead + horizon]". The probability of any failure in the window is the competing-risk
combination 1 − Π_c (1 − p_c). One logistic regression over every cause at once learns
an average of unrelated signals (a CRC storm says nothing about HBM) and fits none of
them; per-cause models stay small, explainable and separately calibrated.

Each logistic regression is fitted by maximum a posteriori (Newton–Raphson) with a
Gaussian prior centred on another model's coefficients: with no prior it is ordinary
ridge logistic regression; in the walk-forward backtest the shipped default model is the
prior and each week's data moves it as far as the evidence warrants. Maximum-likelihood
logistic regression with an intercept is calibrated in the large on its training data
(mean predicted risk = observed rate); the tests check that this carries over to a fleet
it was not fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from gpumedic.domain.forecast.features import (
    FATAL_XID_FEATURES,
    MEMORY_FEATURES,
    NVLINK_FEATURES,
    PCIE_FEATURES,
    PRIOR_FEATURES,
    THERMAL_FEATURES,
)
from gpumedic.domain.risk_window import HOURS_PER_DAY, RiskWindow

FloatArray = npt.NDArray[np.float64]

# Evidence per cause. Prior incidents feed every cause: they are the strongest predictor
# in every field study whatever broke.
_PRIORS = PRIOR_FEATURES
CAUSE_SPEC: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("memory", ("hbm", "sram"), (*MEMORY_FEATURES, *_PRIORS)),
    ("nvlink", ("nvlink",), (*NVLINK_FEATURES, *_PRIORS)),
    ("pcie", ("pcie",), (*PCIE_FEATURES, *_PRIORS)),
    ("thermal", ("thermal",), (*THERMAL_FEATURES, *_PRIORS)),
    ("other", (), (*FATAL_XID_FEATURES, *_PRIORS)),
)


# Features are standardised by their spread, but never by less than this: a flag seen on
# one GPU in ten thousand would otherwise get a standardised value in the hundreds, and a
# Gaussian prior on its coefficient would constrain nothing.
SCALE_FLOOR = 0.5


def _sigmoid(z: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True, slots=True)
class CauseModel:
    """One cause's logistic regression on standardised features."""

    name: str
    kinds: tuple[str, ...]  # failure kinds it answers for; () = every kind no other cause names
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]  # per standardised feature, log-odds
    intercept: float
    # Median hours from a row to its failure among training positives whose top factor
    # was this feature (nan: too few); the lead-time estimate.
    lead_by_feature: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == len(self.lead_by_feature) == n):
            raise ValueError(f"cause {self.name}: vectors must have one entry per feature")

    def log_odds(self, x: npt.NDArray[np.floating]) -> FloatArray:
        """`x`: this cause's features on axis 0, any trailing shape."""
        mean, scale, coef = np.array(self.mean), np.array(self.scale), np.array(self.coef)
        w = coef / scale
        z0 = self.intercept - float(np.sum(w * mean))
        return z0 + np.tensordot(w, np.asarray(x, dtype=np.float64), axes=(0, 0))

    def contributions(self, x: npt.NDArray[np.floating]) -> FloatArray:
        mean, scale, coef = np.array(self.mean), np.array(self.scale), np.array(self.coef)
        return coef * (np.asarray(x, dtype=np.float64) - mean) / scale


@dataclass(frozen=True, slots=True)
class HazardModel:
    features: tuple[str, ...]  # the feature vector the model reads (all causes' features)
    causes: tuple[CauseModel, ...]
    lead_hours: float  # the window the probability is about: [t + lead, t + lead + horizon]
    horizon_hours: float
    alarm_threshold: float  # risk at or above which the forecaster raises an alarm
    note: str = ""

    def _index(self, cause: CauseModel) -> list[int]:
        return [self.features.index(f) for f in cause.features]

    def cause_risks(self, x: npt.NDArray[np.floating]) -> FloatArray:
        """P(failure of each cause in the window); `x` has `features` on axis 0."""
        xs = np.asarray(x)
        return np.stack([_sigmoid(c.log_odds(xs[self._index(c)])) for c in self.causes])

    def risk(self, x: npt.NDArray[np.floating], horizon_hours: float | None = None) -> FloatArray:
        """P(any failure in the model's window); for another horizon, a constant-hazard conversion."""
        survive = np.prod(1.0 - self.cause_risks(x), axis=0)
        p = 1.0 - survive
        if horizon_hours is None or horizon_hours == self.horizon_hours:
            return p
        return 1.0 - np.power(survive, horizon_hours / self.horizon_hours)

    def explain(self, x: npt.NDArray[np.floating]) -> list[tuple[float, str, str, float]]:
        """(log-odds contribution, cause, feature, lead hours) for one GPU's feature vector, strongest first."""
        xs = np.asarray(x, dtype=np.float64)
        out: list[tuple[float, str, str, float]] = []
        for c in self.causes:
            contrib = c.contributions(xs[self._index(c)])
            for j, f in enumerate(c.features):
                out.append((float(contrib[j]), c.name, f, c.lead_by_feature[j]))
        out.sort(key=lambda r: -r[0])
        return out

    def risk_window(self, horizon_hours: float | None = None) -> RiskWindow:
        """What `risk(x, horizon_hours)` is a probability of (see `RiskWindow`)."""
        hours = self.horizon_hours if horizon_hours is None else horizon_hours
        return RiskWindow(days=hours / HOURS_PER_DAY, starts_after_hours=self.lead_hours)

    def with_threshold(self, threshold: float) -> HazardModel:
        return replace(self, alarm_threshold=threshold)

    def cause_of(self, kind: str) -> str:
        for c in self.causes:
            if kind in c.kinds:
                return c.name
        return next(c.name for c in self.causes if not c.kinds)


def _fit_logistic(
    Z: FloatArray, trials: FloatArray, events: FloatArray, beta0: FloatArray, lam: FloatArray, max_iter: int
) -> FloatArray:
    """MAP binomial logistic regression: `events` successes out of `trials` per row of `Z`."""
    beta = beta0.copy()

    def objective(b: FloatArray) -> float:
        z = Z @ b
        ll = float(np.sum(events * z - trials * np.logaddexp(0.0, z)))
        return -ll + 0.5 * float(np.sum(lam * (b - beta0) ** 2))

    obj = objective(beta)
    for _ in range(max_iter):
        p = _sigmoid(Z @ beta)
        grad = Z.T @ (trials * p - events) + lam * (beta - beta0)
        hess = (Z * (trials * p * (1 - p))[:, None]).T @ Z + np.diag(lam)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            cand = beta - t * step
            new = objective(cand)
            if new <= obj or t < 1e-6:
                break
            t *= 0.5
        done = obj - new < 1e-10 * max(1.0, abs(obj)) or float(np.max(np.abs(t * step))) < 1e-7
        beta, obj = cand, min(new, obj)
        if done:
            break
    return beta


def _group_rows(
    X: npt.NDArray[np.floating], Y: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Identical feature rows merged (exactly): (unique rows as float64, trials, events, row → group).

    Rows are compared in their own precision (float32 rows are never widened before merging: widening
    is exact, so it merges the same rows, and sorting half the bytes halves the fit's peak memory).
    """
    A = np.ascontiguousarray(X)
    if A.shape[0] == 0:
        return A.astype(np.float64), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    keys = A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    events = np.bincount(inverse, weights=Y, minlength=len(first))
    return A[first].astype(np.float64), counts.astype(np.float64), events.astype(np.float64), inverse.astype(np.int64)


def fit_hazard(
    x: npt.NDArray[np.floating],
    kinds: Sequence[str | None] | npt.NDArray[np.object_],
    features: tuple[str, ...],
    *,
    lead_hours: float,
    horizon_hours: float,
    prior: HazardModel | None = None,
    prior_precision: float = 1.0,
    alarm_threshold: float | None = None,
    time_to_failure: npt.NDArray[np.floating] | None = None,
    max_iter: int = 50,
    note: str = "",
) -> HazardModel:
    """Fit every cause on rows `x` (n × features).

    `kinds[i]` is the failure kind that makes row i positive (None: negative). With
    `prior`, each cause's coefficients are shrunk towards the prior's (standardised with
    the prior's means and scales, so both speak the same units); without, towards zero.
    `prior_precision` is the Gaussian prior's precision per standardised coefficient.
    `time_to_failure` (hours, for positive rows) feeds the lead-time estimate.
    """
    # Each cause reads its own columns in their own precision, widened to float64 only where
    # arithmetic needs it: a float64 copy of every row would be the fit's largest allocation.
    X = np.asarray(x)
    n, d = X.shape
    if d != len(features):
        raise ValueError("x has one column per feature")
    if prior is not None and prior.features != features:
        raise ValueError("prior model reads different features")
    named = {k for _, ks, _ in CAUSE_SPEC for k in ks}
    kind_arr = np.array([k if k is not None else "" for k in kinds], dtype=object)
    ttf = None if time_to_failure is None else np.asarray(time_to_failure, dtype=np.float64)
    causes: list[CauseModel] = []
    for ci, (name, cause_kinds, cause_feats) in enumerate(CAUSE_SPEC):
        cols = [features.index(f) for f in cause_feats]
        Xc = X[:, cols]
        if cause_kinds:
            Y = np.isin(kind_arr, list(cause_kinds)).astype(np.float64)
        else:
            Y = ((kind_arr != "") & ~np.isin(kind_arr, list(named))).astype(np.float64)
        pc = prior.causes[ci] if prior is not None else None
        if pc is not None:
            mean, scale = np.array(pc.mean), np.array(pc.scale)
            beta0 = np.concatenate([[pc.intercept], pc.coef])
        else:
            wide = Xc.astype(np.float64)
            mean = wide.mean(axis=0) if n else np.zeros(len(cols))
            scale = np.maximum(wide.std(axis=0) if n else np.ones(len(cols)), SCALE_FLOOR)
            base = min(max(float(Y.mean()) if n else 1e-3, 1e-6), 1 - 1e-6)
            beta0 = np.zeros(len(cols) + 1)
            beta0[0] = np.log(base / (1 - base))
        # Healthy GPUs produce the same feature row hour after hour: fit on distinct rows
        # with their counts (a binomial likelihood, exactly the same fit, far fewer rows).
        rows, trials, events, _ = _group_rows(Xc, Y)
        Z = np.empty((len(rows), len(cols) + 1))
        Z[:, 0] = 1.0
        Z[:, 1:] = (rows - mean) / scale
        lam = np.full(len(cols) + 1, prior_precision)
        if pc is None:
            lam[0] = 1e-4  # from scratch, the intercept follows the data
        beta = _fit_logistic(Z, trials, events, beta0, lam, max_iter) if n else beta0
        coef = beta[1:]
        lead_by = np.full(len(cols), np.nan)
        if ttf is not None and n:
            pos = (Y > 0.5) & np.isfinite(ttf)
            if pos.any():
                top = np.argmax(coef[None, :] * ((Xc[pos].astype(np.float64) - mean) / scale), axis=1)
                for j in range(len(cols)):
                    hit = top == j
                    if hit.sum() >= 5:
                        lead_by[j] = float(np.median(ttf[pos][hit]))
        if pc is not None:
            lead_by = np.where(np.isfinite(lead_by), lead_by, np.array(pc.lead_by_feature))
        causes.append(
            CauseModel(
                name=name,
                kinds=cause_kinds,
                features=cause_feats,
                mean=tuple(float(v) for v in mean),
                scale=tuple(float(v) for v in scale),
                coef=tuple(float(v) for v in coef),
                intercept=float(beta[0]),
                lead_by_feature=tuple(float(v) for v in lead_by),
            )
        )
    threshold = (
        alarm_threshold if alarm_threshold is not None else (prior.alarm_threshold if prior is not None else 0.5)
    )
    return HazardModel(
        features=features,
        causes=tuple(causes),
        lead_hours=lead_hours,
        horizon_hours=horizon_hours,
        alarm_threshold=threshold,
        note=note or (prior.note if prior is not None else ""),
    )
