"""Failure forecasting: per-GPU risk of failure within a horizon, with the evidence.

Layers, each explainable on its own:
(a) hard precursors (remap pending/failed, banks without spare rows, memory Xids);
(b) a one-sided Poisson CUSUM on correctable-error bursts against the fleet's rate;
(c) a hazard model (logistic, calibrated) over windowed features including (a) and (b).

Pure domain code: numpy only, no I/O, no clock (`now` is passed), no randomness.
"""

from gpumedic.domain.forecast.baseline import DEFAULT_BASELINE, LogLinearBaseline
from gpumedic.domain.forecast.condemned import CondemnedGpu, condemned_by, held_alarms, with_holds
from gpumedic.domain.forecast.cusum import poisson_cusum
from gpumedic.domain.forecast.default_model import DEFAULT_MODEL
from gpumedic.domain.forecast.features import FEATURES, Entities, Grid, chunk_features, prepare
from gpumedic.domain.forecast.forecaster import GpuForecast, forecast_fleet, forecast_frame
from gpumedic.domain.forecast.frame import (
    UNPREDICTABLE_CLASSES,
    Failure,
    FailureClass,
    HistoryFrame,
    from_epoch,
    to_epoch,
)
from gpumedic.domain.forecast.hazard import HazardModel, fit_hazard
from gpumedic.domain.forecast.silence import SilentGpu, set_aside_departed, set_aside_silent

__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_MODEL",
    "FEATURES",
    "UNPREDICTABLE_CLASSES",
    "CondemnedGpu",
    "Entities",
    "Failure",
    "FailureClass",
    "GpuForecast",
    "Grid",
    "HazardModel",
    "HistoryFrame",
    "LogLinearBaseline",
    "SilentGpu",
    "chunk_features",
    "condemned_by",
    "fit_hazard",
    "forecast_fleet",
    "forecast_frame",
    "from_epoch",
    "held_alarms",
    "poisson_cusum",
    "prepare",
    "set_aside_departed",
    "set_aside_silent",
    "to_epoch",
    "with_holds",
]
