"""The handed-down baseline: a log-linear fit of cumulative correctable ECC counts.

Our exact reading of "a log-linear fit of cumulative correctable ECC counts with a
fixed threshold" (the original states no protocol):

* C(t) is the GPU's lifetime correctable ECC count: the first `ecc_sbe_aggregate`
  reading, then reset-aware increases (a replaced GPU starts again from zero).
* At every scoring hour t, fit log(1 + C) = a + b·τ by least squares over the hourly
  points τ in (t − 7 days, t] (fewer at the start of the history).
* Extrapolate to the end of the prediction window, τ* = t + lead + horizon, and alarm
  when the predicted count 1 + C(τ*) reaches a fixed threshold. The score used for
  PR-AUC is the predicted log count.

The threshold is one fixed number for the whole fleet. `DEFAULT_BASELINE` uses the value
that maximised the baseline's own F1 on the simulator's fitting seeds (see
`benchmarks/forecast.py --fit-default`), so the comparison is fair to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpumedic.domain.forecast.default_model import DEFAULT_BASELINE_THRESHOLD

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LogLinearBaseline:
    threshold: float = 200.0  # predicted lifetime correctable errors that raise an alarm
    window_hours: int = 7 * 24

    @property
    def log_threshold(self) -> float:
        return float(np.log1p(self.threshold))

    def scores(self, cumulative: npt.NDArray[np.floating], ahead_hours: float) -> FloatArray:
        """Predicted log(1 + C) at `ahead_hours` past each hour, per row and hour.

        `cumulative` is C on an hourly grid (rows: GPUs, columns: hours), already causal.
        """
        y = np.log1p(np.maximum(np.asarray(cumulative, dtype=np.float64), 0.0))
        n_rows, K = y.shape
        k = np.arange(K, dtype=np.float64)
        w = self.window_hours
        cy = np.zeros((n_rows, K + 1))
        cxy = np.zeros((n_rows, K + 1))
        np.cumsum(y, axis=1, out=cy[:, 1:])
        np.cumsum(y * k[None, :], axis=1, out=cxy[:, 1:])
        hi = np.arange(K) + 1
        lo = np.maximum(hi - w, 0)
        m = (hi - lo).astype(np.float64)  # points in the window
        # Sums of τ and τ² over τ = lo .. hi−1, in closed form.
        sx = (lo + hi - 1) * m / 2.0
        sxx = ((hi - 1) * hi * (2 * hi - 1) - (lo - 1) * lo * (2 * lo - 1)) / 6.0
        sy = cy[:, hi] - cy[:, lo]
        sxy = cxy[:, hi] - cxy[:, lo]
        den = m * sxx - sx * sx
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(den > 0, (m * sxy - sx * sy) / np.where(den > 0, den, 1.0), 0.0)
        intercept = (sy - slope * sx) / m
        return intercept + slope * (k[None, :] + ahead_hours)

    def alarms(self, scores: npt.NDArray[np.floating]) -> npt.NDArray[np.bool_]:
        return np.asarray(scores) >= self.log_threshold


DEFAULT_BASELINE = LogLinearBaseline(threshold=DEFAULT_BASELINE_THRESHOLD)
