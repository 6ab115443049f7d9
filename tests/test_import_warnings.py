"""Importing gpumedic keeps urllib3's PySocks notice out of the output, whatever other threads do to the filters."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

# What a `catch_warnings` block ending in another thread does while `requests` imports: the filters go back to
# the snapshot taken before, without the one `requests` added; then urllib3's SOCKS module is imported again.
RACE = """
import warnings
{first}
elsewhere = warnings.catch_warnings()
elsewhere.__enter__()
import requests
elsewhere.__exit__(None, None, None)
try:
    import urllib3.contrib.socks
except ImportError:
    pass
"""


def _stderr(first: str) -> str:
    return subprocess.run([sys.executable, "-c", RACE.format(first=first)], capture_output=True, text=True,
                          timeout=60, check=True).stderr


@pytest.mark.skipif(importlib.util.find_spec("socks") is not None, reason="PySocks is installed: no notice to hide")
def test_the_pysocks_notice_is_silenced_even_when_requests_loses_its_own_filter() -> None:
    assert "SOCKS support in urllib3" in _stderr("")  # the race, as it happens without gpumedic
    assert "SOCKS support in urllib3" not in _stderr("import gpumedic")
