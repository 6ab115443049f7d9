"""Node actions in the simulator: GPU reset, reboot and DCGM diagnostics change the state.

Their outputs copy the real tools' text (see shared/real-outputs: nvidia-smi-gpu-reset_*).
Hidden state decides outcomes: a GPU with `hw_fault` fails diagnostics after any repair,
while a transient fault (pending row remap, volatile DBE, a flapping link) is cleared by a
reset, so the remediation workflow meets both a repairable and an unrepairable node.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from gpumedic.sim import node_state

Result = tuple[str, int]

REBOOT_SECONDS = 2.0  # how long a rebooting node refuses commands


def _record(state: dict[str, Any], action: str) -> None:
    state["actions"].append([time.time(), action])


def _clear_transients(gpu: dict[str, Any]) -> None:
    gpu["sbe_vol"] = 0
    gpu["dbe_vol"] = 0
    if gpu["remap_pending"]:
        gpu["remap_pending"] = False  # the pending remap takes effect at reset
    if not gpu["hw_fault"]:
        for link in gpu["nvlinks"]:
            link["up"] = True
        if gpu["temp"] < gpu["slowdown"]:
            gpu["throttle"] = 0x1
    gpu.pop("last_xid", None)


def gpu_reset(path: Path, index: str | None) -> Result:
    with node_state.locked(path) as state:
        if index is None:
            return "A GPU must be specified with -i when resetting in the simulator.\n", 2
        # Imported here, not at the top: this module loads on every simulated SSH exec.
        from gpumedic.domain.telemetry import canonical_pci_bus_id

        # nvidia-smi -i takes an index, a UUID or a PCI bus id.
        wanted = canonical_pci_bus_id(index) or index.lower()
        gpus = [g for g in state["gpus"]
                if wanted in (str(g["index"]), g["uuid"].lower(), canonical_pci_bus_id(g["bus_id"]))]
        if not gpus:
            return f"No GPU with index {index}\n", 6
        gpu = gpus[0]
        if gpu["missing"]:
            return f"Unable to determine the device handle for GPU{gpu['bus_id'][4:]}: Unknown Error\n", 15
        if gpu["processes"]:
            return (
                "The following GPUs could not be reset:\n"
                f"  GPU {gpu['bus_id']}: In use by another client\n\n"
                "1 device is currently being used by one or more other processes (e.g., Fabric Manager, "
                "CUDA application, graphics application such as an X server, or a monitoring application "
                "such as another instance of nvidia-smi). Please first kill all processes using this device "
                "and all compute applications running in the system.\n",
                255,
            )
        _clear_transients(gpu)
        _record(state, f"reset_gpu:{index}")
        return f"GPU {gpu['bus_id']} was successfully reset.\n", 0


def reboot(path: Path) -> Result:
    with node_state.locked(path) as state:
        now = time.time()
        state["boot_id"] = str(uuid.uuid4())
        state["booted_at"] = now
        state["rebooting_until"] = now + REBOOT_SECONDS
        state["kernel_log"].append([now + 1, f"NVRM: loading NVIDIA UNIX x86_64 Kernel Module  {state['driver']}"])
        for gpu in state["gpus"]:
            gpu["missing"] = False  # a GPU that fell off the bus is enumerated again after a power cycle
            gpu["processes"] = []
            _clear_transients(gpu)
        _record(state, "reboot")
    return "", 0


def _diag_gpu_passes(gpu: dict[str, Any]) -> bool:
    return not (gpu["hw_fault"] or gpu["missing"] or gpu["dbe_vol"] or gpu["remap_pending"] or gpu["remap_failure"])


def diag_json(state: dict[str, Any], level: int) -> dict[str, Any]:
    """`dcgmi diag -r N -j` in DCGM 3.x's JSON layout."""
    gpus = [g for g in state["gpus"] if not g["missing"]]
    tests = {
        1: [("Deployment", ["Denylist", "NVML Library", "CUDA Main Library", "Permissions and OS Blocks",
                            "Persistence Mode", "Environment Variables", "Page Retirement/Row Remap",
                            "Graphics Processes", "Inforom"])],
        2: [("Integration", ["PCIe"]), ("Hardware", ["GPU Memory"])],
        3: [("Stress", ["Targeted Stress", "Targeted Power", "Memory Bandwidth"]), ("Hardware", ["Diagnostic"])],
    }
    categories = []
    for lvl in range(1, min(level, 3) + 1):
        for category, names in tests[lvl]:
            entries = []
            for name in names:
                results = []
                for g in gpus:
                    ok = _diag_gpu_passes(g)
                    if name == "Page Retirement/Row Remap":
                        ok = not (g["remap_pending"] or g["remap_failure"])
                    elif lvl == 1:
                        ok = True
                    result: dict[str, Any] = {"gpu_ids": str(g["index"]), "status": "Pass" if ok else "Fail"}
                    if not ok:
                        result["warnings"] = [{
                            "warning": f"GPU {g['index']} failed the {name} test: simulated hardware fault "
                            f"(bus {g['bus_id']})",
                            "error_id": 83 if name == "GPU Memory" else 50,
                        }]
                    results.append(result)
                entries.append({"name": name, "results": results})
            categories.append({"category": category, "tests": entries})
    return {
        "DCGM GPU Diagnostic": {"test_categories": categories},
        "Driver Version Detected": state["driver"],
        "GPU Device IDs": ["20b2"] * len(gpus),
        "version": "3.3.9",
    }


def dcgmi(path: Path, args: list[str]) -> Result:
    state = node_state.load(path)
    if "dcgmi" in state["garbled"]:
        return "Error: unable to establish a connection to the specified host: localhost\n", 255
    if args[:1] == ["diag"]:
        level = 1
        if "-r" in args and args.index("-r") + 1 < len(args):
            level = int(args[args.index("-r") + 1])
        with node_state.locked(path) as locked_state:
            _record(locked_state, f"diag:{level}")
        time.sleep(float(state.get("diag_seconds", 0.2)))
        report = diag_json(state, level)
        if "-j" in args:
            return json.dumps(report, indent=2) + "\n", 0
        return "Simulated dcgmi diag: use -j\n", 2
    return "Simulated dcgmi: unsupported subcommand\n", 2
