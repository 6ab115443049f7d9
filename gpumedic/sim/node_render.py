"""Render a simulated node's state as the real tools print it.

Layouts follow real captures in shared/real-outputs (A100 on the 550/555 drivers):
`nvidia-smi --query-gpu` CSV, `nvidia-smi -q` sections, `nvidia-smi nvlink -s/-e`,
`journalctl -k -o short-iso` and dcgm-exporter's Prometheus text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

GpuState = dict[str, Any]

_THROTTLE_NAMES = (
    (0x1, "Idle"),
    (0x4, "SW Power Cap"),
    (0x8, "HW Slowdown"),
    (0x40, "    HW Thermal Slowdown"),
    (0x80, "    HW Power Brake Slowdown"),
    (0x10, "Sync Boost"),
    (0x20, "SW Thermal Slowdown"),
)


def visible_gpus(state: dict[str, Any]) -> list[GpuState]:
    return [g for g in state["gpus"] if not g["missing"]]


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


# --query-gpu fields: name -> (value, unit) from a GPU's state. Aliases map to one entry.
def _query_fields() -> dict[str, Callable[[GpuState, dict[str, Any]], tuple[str, str]]]:
    def num(key: str, unit: str = "") -> Callable[[GpuState, dict[str, Any]], tuple[str, str]]:
        return lambda g, s: (str(g[key]), unit)

    def flag(key: str) -> Callable[[GpuState, dict[str, Any]], tuple[str, str]]:
        return lambda g, s: (_yes_no(g[key]) if isinstance(g[key], bool) else str(g[key]), "")

    table: dict[str, Callable[[GpuState, dict[str, Any]], tuple[str, str]]] = {
        "index": num("index"),
        "uuid": num("uuid"),
        "serial": num("serial"),
        "pci.bus_id": num("bus_id"),
        "name": num("name"),
        "driver_version": lambda g, s: (s["driver"], ""),
        "temperature.gpu": lambda g, s: (str(int(g["temp"])), " C"),
        "power.draw": lambda g, s: (f"{g['power']:.2f}", " W"),
        "power.limit": lambda g, s: (f"{g['power_limit']:.2f}", " W"),
        "clocks.sm": lambda g, s: (str(g["sm_clock"]), " MHz"),
        "clocks_event_reasons.active": lambda g, s: (f"0x{g['throttle']:016X}", ""),
        "ecc.errors.corrected.volatile.total": num("sbe_vol"),
        "ecc.errors.uncorrected.volatile.total": num("dbe_vol"),
        "ecc.errors.corrected.aggregate.total": num("sbe_agg"),
        "ecc.errors.uncorrected.aggregate.total": num("dbe_agg"),
        "retired_pages.single_bit_ecc.count": lambda g, s: ("[N/A]", ""),
        "retired_pages.double_bit.count": lambda g, s: ("[N/A]", ""),
        "retired_pages.pending": lambda g, s: ("[N/A]", ""),
        "remapped_rows.correctable": num("remap_corr"),
        "remapped_rows.uncorrectable": num("remap_uncorr"),
        "remapped_rows.pending": flag("remap_pending"),
        "remapped_rows.failure": flag("remap_failure"),
        "pcie.link.gen.current": lambda g, s: ("4", ""),
        "gpu_recovery_action": lambda g, s: ("None", ""),
        "count": lambda g, s: (str(len(visible_gpus(s))), ""),
    }
    aliases = {
        "gpu_name": "name",
        "gpu_uuid": "uuid",
        "gpu_serial": "serial",
        "gpu_bus_id": "pci.bus_id",
        "clocks.current.sm": "clocks.sm",
        "clocks_throttle_reasons.active": "clocks_event_reasons.active",
        "power.draw.instant": "power.draw",
        "enforced.power.limit": "power.limit",
        "remapped_rows.pending_remap": "remapped_rows.pending",
    }
    for alias, canonical in aliases.items():
        table[alias] = table[canonical]
    return table


QUERY_FIELDS = _query_fields()


def render_query_gpu(state: dict[str, Any], fields: Sequence[str], *, header: bool, units: bool) -> tuple[str, int]:
    for name in fields:
        if name not in QUERY_FIELDS:
            return f'Field "{name}" is not a valid field to query.\n\n', 2
    lines = []
    if header:
        lines.append(", ".join(fields))
    for gpu in visible_gpus(state):
        cells = []
        for name in fields:
            value, unit = QUERY_FIELDS[name](gpu, state)
            cells.append(value + (unit if units and value[:1] != "[" else ""))
        lines.append(", ".join(cells))
    if not visible_gpus(state):
        return "No devices were found\n", 6
    return "\n".join(lines) + "\n", 0


def _q_section_ecc(g: GpuState) -> list[str]:
    return [
        "    ECC Mode",
        "        Current                           : Enabled",
        "        Pending                           : Enabled",
        "    ECC Errors",
        "        Volatile",
        "            SRAM Correctable              : 0",
        "            SRAM Uncorrectable Parity     : 0",
        "            SRAM Uncorrectable SEC-DED    : 0",
        f"            DRAM Correctable              : {g['sbe_vol']}",
        f"            DRAM Uncorrectable            : {g['dbe_vol']}",
        "        Aggregate",
        "            SRAM Correctable              : 0",
        "            SRAM Uncorrectable Parity     : 0",
        "            SRAM Uncorrectable SEC-DED    : 0",
        f"            DRAM Correctable              : {g['sbe_agg']}",
        f"            DRAM Uncorrectable            : {g['dbe_agg']}",
        f"            SRAM Threshold Exceeded       : {'Yes' if g.get('sram_threshold') else 'No'}",
    ]


def _q_section_retired(g: GpuState) -> list[str]:
    return [
        "    Retired Pages",
        "        Single Bit ECC                    : N/A",
        "        Double Bit ECC                    : N/A",
        "        Pending Page Blacklist            : N/A",
    ]


def _q_section_remap(g: GpuState) -> list[str]:
    b = g["banks"]
    return [
        "    Remapped Rows",
        f"        Correctable Error                 : {g['remap_corr']}",
        f"        Uncorrectable Error               : {g['remap_uncorr']}",
        f"        Pending                           : {_yes_no(g['remap_pending'])}",
        f"        Remapping Failure Occurred        : {_yes_no(g['remap_failure'])}",
        "        Bank Remap Availability Histogram",
        f"            Max                           : {b[0]} bank(s)",
        f"            High                          : {b[1]} bank(s)",
        f"            Partial                       : {b[2]} bank(s)",
        f"            Low                           : {b[3]} bank(s)",
        f"            None                          : {b[4]} bank(s)",
    ]


def _q_section_temperature(g: GpuState) -> list[str]:
    return [
        "    Temperature",
        f"        GPU Current Temp                  : {int(g['temp'])} C",
        "        GPU T.Limit Temp                  : N/A",
        f"        GPU Shutdown Temp                 : {g['shutdown']} C",
        f"        GPU Slowdown Temp                 : {g['slowdown']} C",
        "        GPU Max Operating Temp            : 85 C",
        "        GPU Target Temperature            : N/A",
        "        Memory Current Temp               : 43 C",
        "        Memory Max Operating Temp         : 95 C",
    ]


def _q_section_performance(g: GpuState) -> list[str]:
    lines = ["    Performance State                     : P0", "    Clocks Event Reasons"]
    for bit, label in _THROTTLE_NAMES:
        pad = 38 - len(label) - 4
        lines.append(f"        {label}{' ' * pad}: {'Active' if g['throttle'] & bit else 'Not Active'}")
    return lines


def _q_section_pcie(g: GpuState) -> list[str]:
    return [
        "    PCI",
        f"        Bus Id                            : {g['bus_id']}",
        f"        Replays Since Reset               : {g['pcie_replay']}",
        "        Replay Number Rollovers           : 0",
    ]


_Q_SECTIONS: dict[str, Callable[[GpuState], list[str]]] = {
    "PCIE": _q_section_pcie,
    "PERFORMANCE": _q_section_performance,
    "ECC": _q_section_ecc,
    "PAGE_RETIREMENT": _q_section_retired,
    "ROW_REMAPPER": _q_section_remap,
    "TEMPERATURE": _q_section_temperature,
}


def render_q(state: dict[str, Any], sections: Sequence[str] | None) -> tuple[str, int]:
    chosen = list(_Q_SECTIONS) if not sections else [s.upper() for s in sections]
    for name in chosen:
        if name not in _Q_SECTIONS:
            return f"Invalid display type: {name}\n", 2
    gpus = visible_gpus(state)
    if not gpus:
        return "No devices were found\n", 6
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime())
    lines = [
        "",
        "==============NVSMI LOG==============",
        "",
        f"Timestamp                                 : {stamp}",
        f"Driver Version                            : {state['driver']}",
        f"CUDA Version                              : {state['cuda']}",
        "",
        f"Attached GPUs                             : {len(gpus)}",
    ]
    for g in gpus:
        lines.append(f"GPU {g['bus_id']}")
        if not sections:
            lines += [
                f"    Product Name                          : {g['name']}",
                f"    Serial Number                         : {g['serial']}",
                f"    GPU UUID                              : {g['uuid']}",
                f"    Minor Number                          : {g['index']}",
            ]
        for name in chosen:
            lines += _Q_SECTIONS[name](g)
        lines.append("")
    return "\n".join(lines) + "\n", 0


def render_nvlink_status(state: dict[str, Any]) -> tuple[str, int]:
    lines = []
    for g in visible_gpus(state):
        lines.append(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})")
        for i, link in enumerate(g["nvlinks"]):
            lines.append(f"\t Link {i}: {'25 GB/s' if link['up'] else '<inactive>'}")
    return "\n".join(lines) + "\n", 0


def render_nvlink_errors(state: dict[str, Any]) -> tuple[str, int]:
    lines = []
    for g in visible_gpus(state):
        lines.append(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})")
        for i, link in enumerate(g["nvlinks"]):
            lines += [
                f"\t Link {i}: Replay Errors: {link['replay']}",
                f"\t Link {i}: Recovery Errors: {link['recovery']}",
                f"\t Link {i}: CRC Errors: {link['crc']}",
                "",
            ]
    return "\n".join(lines) + "\n", 0


def render_kernel_log(state: dict[str, Any], since: float | None) -> tuple[str, int]:
    """`journalctl -k -o short-iso`: only the current boot, like journalctl -k."""
    host = state["node"]
    lines = []
    for stamp, message in state["kernel_log"]:
        if stamp < state["booted_at"] or (since is not None and stamp < since):
            continue
        iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))
        lines.append(f"{iso[:-2]}:{iso[-2:]} {host} kernel: {message}")
    if not lines:
        return "-- No entries --\n", 0
    return "\n".join(lines) + "\n", 0


_PROM_FIELDS: tuple[tuple[str, str, Callable[[GpuState], float]], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", lambda g: g["sm_clock"]),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda g: g["temp"]),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda g: g["power"]),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", lambda g: g["pcie_replay"]),
    ("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", lambda g: g.get("last_xid", 0)),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.", lambda g: g["sbe_vol"]),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", lambda g: g["dbe_vol"]),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "Total number of single-bit persistent ECC errors.", lambda g: g["sbe_agg"]),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "Total number of double-bit persistent ECC errors.", lambda g: g["dbe_agg"]),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for uncorrectable errors",
     lambda g: g["remap_uncorr"]),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "Number of remapped rows for correctable errors",
     lambda g: g["remap_corr"]),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "Whether remapping of rows has failed", lambda g: int(g["remap_failure"])),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "Whether remapping of rows is pending", lambda g: int(g["remap_pending"])),
    ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "Total number of NVLink flow-control CRC errors.",
     lambda g: sum(link["crc"] for link in g["nvlinks"])),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "Current clock throttle reasons.", lambda g: g["throttle"]),
)


def render_prometheus(state: dict[str, Any]) -> str:
    out: list[str] = []
    for name, help_text, value in _PROM_FIELDS:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {'counter' if 'TOTAL' in name or 'COUNTER' in name else 'gauge'}")
        for g in visible_gpus(state):
            labels = (
                f'gpu="{g["index"]}",UUID="{g["uuid"]}",pci_bus_id="{g["bus_id"]}",device="nvidia{g["index"]}",'
                f'modelName="{g["name"]}",Hostname="{state["node"]}",DCGM_FI_DRIVER_VERSION="{state["driver"]}"'
            )
            v = value(g)
            out.append(f"{name}{{{labels}}} {v:g}" if isinstance(v, float) else f"{name}{{{labels}}} {v}")
    return "\n".join(out) + "\n"
