"""gpumedic: GPU fleet health sweeps, failure forecasts and remediation, orchestrated by Prefect."""

__version__ = "0.1.0"
