"""`gpumedic sweep --fleet FILE --json OUT` as an operator runs it: a fresh process, real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLE_FLEET, EXPECTED_EXAMPLE, REPO, require_sshd


def test_sweep_command_on_the_reference_fleet(tmp_path: Path) -> None:
    require_sshd()
    out = tmp_path / "sweep.json"
    env = {**os.environ, "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gpumedic.cli", "sweep", "--fleet", str(EXAMPLE_FLEET), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    document = json.loads(out.read_text())
    assert set(document) == {"sweep_id", "started", "nodes"}
    assert {n["node"]: (n["verdict"], n["action"]) for n in document["nodes"]} == EXPECTED_EXAMPLE
    for node in document["nodes"]:
        assert set(node) == {"node", "verdict", "action", "last_seen", "remediation", "reasons", "gpus"}
        # No cluster named in the fleet file: every node that needs a repair has its run requested.
        needs_repair = node["action"] in ("reset_gpu", "reboot", "inspect", "replace")
        assert node["remediation"] == ("run requested" if needs_repair else None)
        for gpu in node["gpus"]:
            assert set(gpu) == {"index", "verdict", "action", "reasons"}
        # A fresh store: a node this sweep assessed was last seen now; one it could not, never.
        assert node["last_seen"] == (None if node["verdict"] == "unknown" else document["started"])
    assert "gpu-node-05" in proc.stdout  # the summary table is printed too
    assert "remediation: run requested" in proc.stdout
    unknown = [line for line in proc.stdout.splitlines() if line.startswith("gpu-node-09")]
    assert unknown and "unknown" in unknown[0] and "never seen; " in unknown[0]
