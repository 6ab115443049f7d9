"""gpumedic: GPU fleet health sweeps, failure forecasts and remediation, orchestrated by Prefect."""

import warnings

__version__ = "0.1.0"

# `requests` hides urllib3's notice that PySocks is missing by adding a warning filter while it imports.
# A `catch_warnings` block ending in another thread meanwhile (Prefect runs several) restores the filters
# without it, and the notice lands in the demo's output and the workers' logs at random. gpumedic never
# talks through a SOCKS proxy; set before any thread starts, this filter is in every snapshot.
warnings.filterwarnings("ignore", message="SOCKS support in urllib3 requires")
