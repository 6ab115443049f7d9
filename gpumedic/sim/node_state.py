"""A simulated node's state: a JSON document on disk, one per node.

The node agent (run by sshd's ForceCommand for every SSH exec) and the simulated
dcgm-exporter both read this file on every request, and node actions (GPU reset,
reboot) rewrite it under an exclusive lock, so the whole fleet's state survives any
process of the simulation and can be inspected or changed by tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# DGX A100-style PCI layout: one GPU per bus.
_BUS_IDS = ("07", "0F", "47", "4E", "87", "90", "B7", "BD", "C1", "C7", "D1", "DA", "E1", "E7", "EE", "F4")
NVLINKS_PER_GPU = 12

# Realistic message text after the code, per Xid, as the driver prints it.
XID_MESSAGES: dict[int, str] = {
    13: "pid=4121, name=python, Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0): Out Of Range Address",
    31: "pid=4121, name=python, Ch 00000008, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 "
    "faulted @ 0x7f0e_4c000000. Fault is of type FAULT_PDE ACCESS_TYPE_READ",
    43: "pid=4121, name=python, Ch 00000008",
    45: "pid=4121, name=python, Ch 00000008",
    48: "pid='<unknown>', name=<unknown>, An uncorrectable double bit error (DBE) has been detected on GPU "
    "in the framebuffer at partition 6, subpartition 0.",
    63: "pid='<unknown>', name=<unknown>, Row Remapper: New row marked for remapping, reset gpu to activate.",
    64: "pid='<unknown>', name=<unknown>, Row Remapper: Failed to remap row (0x3a4f0) due to no spare rows.",
    74: "pid='<unknown>', name=<unknown>, NVLink: fatal error detected on link 2(0x10000, 0x0, 0x0, 0x0, 0x0)",
    79: "pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
    92: "pid='<unknown>', name=<unknown>, High single-bit ECC error rate detected",
    94: "pid=4121, name=python, Contained: SM (0x1). RST: No, D-RST: No",
    95: "pid=4121, name=python, Uncontained: FBHUB. RST: Yes, D-RST: No",
    119: "pid=4121, name=python, Timeout after 6s of waiting for RPC response from GPU0 GSP! "
    "Expected function 76 (GSP_RM_CONTROL) (0x20801348 0x10).",
}


def xid_message(code: int) -> str:
    return XID_MESSAGES.get(code, f"pid='<unknown>', name=<unknown>, simulated Xid {code} event")


def kernel_xid_line(bus_id: str, code: int) -> str:
    """`NVRM: Xid (PCI:0000:07:00): 79, ...` from an nvidia-smi bus id `00000000:07:00.0`."""
    domain, bus, rest = bus_id.split(":")
    return f"NVRM: Xid (PCI:{domain[-4:]}:{bus.lower()}:{rest.split('.')[0]}): {code}, {xid_message(code)}"


def new_gpu(index: int, rng: random.Random) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "serial": str(1320000000000 + rng.randrange(10**9)),
        "bus_id": f"00000000:{_BUS_IDS[index % len(_BUS_IDS)]}:00.0",
        "name": "NVIDIA A100-SXM4-80GB",
        "temp": 30 + rng.randrange(8),
        "slowdown": 89,
        "shutdown": 92,
        "power": round(60 + rng.random() * 10, 2),
        "power_limit": 400.0,
        "sm_clock": 1410,
        "throttle": 0x1,  # idle
        "sbe_vol": 0,
        "dbe_vol": 0,
        "sbe_agg": rng.choice((0, 0, 0, 2, 11)),
        "dbe_agg": 0,
        "remap_corr": 0,
        "remap_uncorr": 0,
        "remap_pending": False,
        "remap_failure": False,
        "sram_threshold": False,
        "banks": [640, 0, 0, 0, 0],
        "nvlinks": [{"up": True, "crc": 0, "replay": 0, "recovery": 0} for _ in range(NVLINKS_PER_GPU)],
        "pcie_replay": 0,
        "missing": False,
        "processes": [],
        # Whether diagnostics will find this GPU broken after a reset (hidden from telemetry).
        "hw_fault": False,
    }


def new_node(name: str, gpus: int, seed: int, now: float) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{name}")
    return {
        "node": name,
        "driver": "550.127.05",
        "cuda": "12.4",
        "boot_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "booted_at": now - 86400 * 3,
        "unreachable": False,
        "garbled": [],
        "gpus": [new_gpu(i, rng) for i in range(gpus)],
        "kernel_log": [[now - 86400 * 3 + 5, "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.127.05"]],
        "actions": [],  # what node actions ran, for tests and the demo's report
    }


def apply_fault(state: dict[str, Any], fault: dict[str, Any], now: float) -> None:
    """Apply one `faults:` entry of a fleet file to a node's state."""
    if fault.get("unreachable"):
        state["unreachable"] = True
    if "garbled" in fault:
        state["garbled"].append(str(fault["garbled"]))
    if "gpu" not in fault:
        return
    gpu = state["gpus"][int(fault["gpu"])]
    for key, value in fault.items():
        if key in ("node", "gpu", "unreachable", "garbled"):
            continue
        if key == "xid":
            code = int(value)
            state["kernel_log"].append([now - 120, kernel_xid_line(gpu["bus_id"], code)])
            if code == 79:
                # A GPU that fell off the bus is gone from the driver's view until a reboot.
                gpu["missing"] = True
                gpu["hw_fault"] = True
                state["kernel_log"].append(
                    [now - 120, f"NVRM: GPU {gpu['bus_id'][4:].lower()}: GPU has fallen off the bus."]
                )
            if code in (48, 64, 95):
                gpu["hw_fault"] = True
        elif key == "row_remap_failure":
            gpu["remap_failure"] = bool(value)
            gpu["banks"] = [0, 0, 0, 3, 637] if value else gpu["banks"]
            gpu["hw_fault"] = bool(value)
        elif key == "sram_threshold_exceeded":
            gpu["sram_threshold"] = bool(value)
            gpu["hw_fault"] = bool(value)
        elif key == "temperature_c":
            gpu["temp"] = float(value)
            if float(value) >= gpu["slowdown"]:
                gpu["throttle"] = 0x20 | 0x40 | 0x8  # sw + hw thermal slowdown
        elif key == "ecc_dbe_volatile":
            gpu["dbe_vol"] = int(value)
            gpu["dbe_agg"] += int(value)
        elif key == "nvlink_down":
            for link in value:
                gpu["nvlinks"][int(link)]["up"] = False
        elif key == "missing":
            gpu["missing"] = bool(value)
        elif key == "row_remap_pending":
            gpu["remap_pending"] = bool(value)
            gpu["remap_uncorr"] += 1
        elif key == "hw_fault":
            gpu["hw_fault"] = bool(value)
        elif key in gpu:
            gpu[key] = value
        else:
            raise ValueError(f"unknown fault key {key!r} in {fault!r}")


def load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        state: dict[str, Any] = json.load(f)
        return state


def save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the state under an exclusive lock (node actions race with scrapes)."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = load(path)
            yield state
            save(path, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
