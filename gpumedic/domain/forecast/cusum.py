"""One-sided Poisson CUSUM on correctable-error event counts.

Page's CUSUM for a Poisson rate moving from the in-control rate λ0 to λ1 = ρ·λ0
accumulates the log-likelihood ratio of each interval's count x:

    S_k = max(0, S_{k-1} + x_k·ln ρ − (ρ − 1)·λ0_k)

and signals when S_k exceeds a decision interval h. λ0 is the fleet's current rate of
correctable-error *bursts* per GPU-hour (estimated causally, see `features`), so a GPU
is compared with its fleet, not with an absolute number.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Detect a five-fold rise over the fleet burst rate; with bursts a few per GPU-year the
# statistic forgets a lone burst within weeks, while a GPU whose bursts keep coming climbs.
CUSUM_RHO = 5.0
# Signal threshold on S (≈ two bursts in close succession above a quiet fleet).
CUSUM_DECISION = 2.5
# S is capped so one violent episode cannot dominate the hazard model's linear scale.
CUSUM_CAP = 12.0


def poisson_cusum(
    counts: npt.NDArray[np.floating],
    baseline: npt.NDArray[np.floating],
    *,
    rho: float = CUSUM_RHO,
    restart: npt.NDArray[np.bool_] | None = None,
    cap: float = CUSUM_CAP,
) -> npt.NDArray[np.float64]:
    """S for every row (unit) and column (interval) of `counts`.

    `baseline` is λ0 per interval (shape: intervals) or per unit and interval.
    `restart` marks the intervals where a unit's statistic restarts from zero before
    its count is added (a replaced GPU is a new unit).
    """
    x = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    lam = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    if rho <= 1.0:
        raise ValueError("rho must exceed 1 for an upward CUSUM")
    log_rho = float(np.log(rho))
    drift = (rho - 1.0) * lam
    out = np.empty_like(x)
    s = np.zeros(x.shape[0])
    for k in range(x.shape[1]):
        if restart is not None:
            s[restart[:, k]] = 0.0
        s = np.minimum(np.maximum(0.0, s + x[:, k] * log_rho - drift[:, k]), cap)
        out[:, k] = s
    return out
