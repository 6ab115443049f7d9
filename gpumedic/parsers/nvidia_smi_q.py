"""`nvidia-smi -q` (full, or `-d ROW_REMAPPER,PAGE_RETIREMENT,ECC,TEMPERATURE,...`) -> `GpuTelemetry`.

The report is an indented tree of `Label : value` lines. Its label column has been
34, 42 and 55 characters wide across drivers, sections were renamed (`Clocks Throttle
Reasons` -> `Clocks Event Reasons`, `Power Readings` -> `GPU Power Readings`) and the
ECC block has had three layouts. So the parser reads the tree by indentation and looks
sections up by name, case-insensitively, instead of by position or column.

GPU index: the GPU's position in the output, counting from 0. nvidia-smi prints GPUs in
its own index order (PCI bus order), which is also the order `--query-gpu=index` and
`nvidia-smi nvlink -s` use. `Minor Number` is the /dev/nvidiaN number and can differ
from that index, so it is not used. A report made with `-i N` shows one GPU, which
this parser numbers 0: the caller that asked for `-i N` must renumber it.

A fragment that is only sections without a `GPU 0000...` header (a pasted ECC or
Retired Pages block) is read as one GPU with index 0; the caller knows which GPU it
asked about. Fragments with no known section are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from gpumedic.domain.telemetry import GpuTelemetry, RowRemapBanks, canonical_pci_bus_id
from gpumedic.parsers._common import (
    ELISION,
    optional_bool,
    optional_float,
    optional_int,
    optional_str,
    raise_if_tool_error,
    require_text,
    snake_case,
)
from gpumedic.parsers.errors import ParseError

SOURCE = "nvidia-smi -q"

_T = TypeVar("_T")

_GPU_HEADER = re.compile(r"^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])$")
# `Label   : value`. The separator is the first colon preceded by whitespace; values
# (bus ids, timestamps) contain colons, labels never do.
_KEY_VALUE = re.compile(r"^(?P<key>[^:]*?\S)\s+:(?:\s(?P<value>.*))?$")

# Top-level sections that make a header-less fragment recognisable as -q output.
_KNOWN_SECTIONS = frozenset(
    {
        "ecc errors",
        "retired pages",
        "remapped rows",
        "temperature",
        "clocks event reasons",
        "clocks throttle reasons",
        "gpu power readings",
        "power readings",
        "clocks",
        "pci",
    }
)

_THROTTLE_LABELS = {
    "idle": "gpu_idle",
    "applications clocks setting": "applications_clocks_setting",
    "sw power cap": "sw_power_cap",
    "hw slowdown": "hw_slowdown",
    "hw thermal slowdown": "hw_thermal_slowdown",
    "hw power brake slowdown": "hw_power_brake_slowdown",
    "sync boost": "sync_boost",
    "sw thermal slowdown": "sw_thermal_slowdown",
    "display clock setting": "display_clock_setting",
}


@dataclass
class _Node:
    key: str
    value: str | None
    indent: int
    children: list[_Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join(self.key.split()).casefold()

    def child(self, *names: str) -> _Node | None:
        """The first child whose label is one of `names` (lower case, single-spaced)."""
        for name in names:
            for node in self.children:
                if node.name == name:
                    return node
        return None

    def raw(self, *path: str) -> str | None:
        """The value at a path of labels; None when any label along it is absent."""
        node: _Node | None = self
        for name in path:
            node = node.child(name) if node is not None else None
        return node.value if node is not None else None

    def walk(self) -> Iterator[_Node]:
        # Iterative: a garbage input can nest thousands of levels deep.
        pending = list(reversed(self.children))
        while pending:
            node = pending.pop()
            yield node
            pending.extend(reversed(node.children))


def parse_nvidia_smi_q(text: str) -> list[GpuTelemetry]:
    require_text(SOURCE, text)
    # A lost GPU prints its failure inline among the healthy ones: the report is then
    # incomplete, and the message is the most useful thing to hand the operator.
    raise_if_tool_error(SOURCE, text)
    # nvidia-smi ends every line with a line feed; a last line without one was cut
    # mid-value (`36 C` -> `3`), so it is not read at all. Its field stays unknown.
    if not text.endswith("\n"):
        text = text.rsplit("\n", 1)[0] if "\n" in text else ""
    root = _tree(text)
    gpu_nodes = [n for n in root.children if n.value is None and _GPU_HEADER.match(n.key)]
    if gpu_nodes:
        return [_gpu(index, node) for index, node in enumerate(gpu_nodes)]
    if any(n.name in _KNOWN_SECTIONS and n.children for n in root.children):
        gpu = _gpu(0, root)
        if gpu == GpuTelemetry(index=0):
            raise ParseError(SOURCE, "the sections carry no reading this parser knows", text)
        return [gpu]
    raise ParseError(SOURCE, "no `GPU 0000:xx:xx.x` section or known -q section was found", text)


def _tree(text: str) -> _Node:
    root = _Node("", None, -1)
    stack = [root]
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped in ELISION or stripped.startswith("====="):
            continue
        indent = len(line) - len(line.lstrip(" \t"))
        match = _KEY_VALUE.match(stripped)
        if match:
            node = _Node(match.group("key"), (match.group("value") or "").strip(), indent)
        else:
            node = _Node(stripped, None, indent)
        while stack[-1].indent >= indent:
            stack.pop()
        stack[-1].children.append(node)
        stack.append(node)
    return root


def _read(node: _Node | None, convert: Callable[[str, str, str], _T | None], where: str, *path: str) -> _T | None:
    """The value at `path` under `node`, converted; None when the label is absent or N/A."""
    raw = node.raw(*path) if node is not None else None
    return None if raw is None else convert(SOURCE, raw, f"{where} {' / '.join(path)}")


def _gpu(index: int, node: _Node) -> GpuTelemetry:
    where = f"GPU {index}"
    header = _GPU_HEADER.match(node.key)
    bus_id = _read(node, optional_str, where, "pci", "bus id") or (header.group(1) if header else None)
    ecc = node.child("ecc errors")
    temperature = _temperatures(node.child("temperature"), where)
    sbe_vol, dbe_vol = _ecc_totals(ecc.child("volatile") if ecc else None, f"{where} volatile ECC")
    sbe_agg, dbe_agg = _ecc_totals(ecc.child("aggregate") if ecc else None, f"{where} aggregate ECC")
    power = node.child("gpu power readings", "power readings")
    remap = node.child("remapped rows")
    return GpuTelemetry(
        index=index,
        uuid=_read(node, optional_str, where, "gpu uuid"),
        serial=_read(node, optional_str, where, "serial number"),
        pci_bus_id=canonical_pci_bus_id(bus_id),
        name=_read(node, optional_str, where, "product name"),
        temperature_c=temperature[0],
        temp_slowdown_c=temperature[1],
        temp_shutdown_c=temperature[2],
        power_w=_first_float(power, ("power draw", "average power draw", "instantaneous power draw"), where),
        power_limit_w=_first_float(power, ("current power limit", "power limit", "enforced power limit"), where),
        sm_clock_mhz=_read(node, optional_float, where, "clocks", "sm"),
        throttle_reasons=_throttle(node.child("clocks event reasons", "clocks throttle reasons"), where),
        ecc_sbe_volatile=sbe_vol,
        ecc_dbe_volatile=dbe_vol,
        ecc_sbe_aggregate=sbe_agg,
        ecc_dbe_aggregate=dbe_agg,
        sram_threshold_exceeded=_read(ecc, optional_bool, where, "aggregate", "sram threshold exceeded"),
        retired_pages_sbe=_read(node, optional_int, where, "retired pages", "single bit ecc"),
        retired_pages_dbe=_read(node, optional_int, where, "retired pages", "double bit ecc"),
        retired_pages_pending=_retired_pending(node.child("retired pages"), where),
        remapped_rows_correctable=_read(node, optional_int, where, "remapped rows", "correctable error"),
        remapped_rows_uncorrectable=_read(node, optional_int, where, "remapped rows", "uncorrectable error"),
        row_remap_pending=_read(node, optional_bool, where, "remapped rows", "pending"),
        row_remap_failure=_read(node, optional_bool, where, "remapped rows", "remapping failure occurred"),
        remap_banks=_banks(remap.child("bank remap availability histogram") if remap else None, where),
        pcie_replay=_read(node, optional_int, where, "pci", "replays since reset"),
        recovery_action=_read(node, optional_str, where, "gpu recovery action"),
    )


def _first_float(section: _Node | None, labels: tuple[str, ...], where: str) -> float | None:
    for label in labels:
        value = _read(section, optional_float, where, label)
        if value is not None:
            return value
    return None


def _temperatures(section: _Node | None, where: str) -> tuple[float | None, float | None, float | None]:
    """(current, slowdown, shutdown) in absolute degrees C.

    Hopper-era drivers print thresholds relative to T.Limit: `GPU T.Limit Temp` is the
    current margin (T.Limit minus the current temperature) and `GPU Shutdown T.Limit
    Temp : -8 C` means 8 C past T.Limit. So T.Limit = current + margin and a threshold
    = T.Limit - its relative value. The driver rounds each reading to whole degrees, so
    a converted threshold can be off by 1 C. Missing any of the three inputs -> None.
    """
    current = _read(section, optional_float, where, "gpu current temp")
    slowdown = _read(section, optional_float, where, "gpu slowdown temp")
    shutdown = _read(section, optional_float, where, "gpu shutdown temp")
    margin = _read(section, optional_float, where, "gpu t.limit temp")
    if current is not None and margin is not None:
        t_limit = current + margin
        relative_slowdown = _read(section, optional_float, where, "gpu slowdown t.limit temp")
        relative_shutdown = _read(section, optional_float, where, "gpu shutdown t.limit temp")
        if slowdown is None and relative_slowdown is not None:
            slowdown = t_limit - relative_slowdown
        if shutdown is None and relative_shutdown is not None:
            shutdown = t_limit - relative_shutdown
    return current, slowdown, shutdown


def _throttle(section: _Node | None, where: str) -> frozenset[str]:
    if section is None:
        return frozenset()
    active = set()
    for node in section.walk():
        if node.value is None:
            continue
        if optional_bool(SOURCE, node.value, f"{where} clocks event reason {node.key}"):
            active.add(_THROTTLE_LABELS.get(node.name, snake_case(node.key)))
    return frozenset(active)


def _ecc_totals(section: _Node | None, where: str) -> tuple[int | None, int | None]:
    """(corrected, uncorrected) for one of the Volatile / Aggregate blocks.

    Volta and earlier print `Single Bit` / `Double Bit` sub-blocks with a `Total`.
    Ampere and later print SRAM and DRAM counters, with the SRAM uncorrectable count
    split into Parity and SEC-DED on Hopper-era drivers. The totals are the sums
    nvidia-smi's own `ecc.errors.*.total` fields report. A counter the layout should
    have but the text lacks (a cut output) makes the total None rather than a
    smaller number.
    """
    if section is None:
        return None, None
    single = section.child("single bit")
    if single is not None:
        double = section.child("double bit")
        return _read(single, optional_int, where, "total"), _read(double, optional_int, where, "total")
    uncorrectable: tuple[str, ...]
    if section.child("sram uncorrectable parity") or section.child("sram uncorrectable sec-ded"):
        uncorrectable = ("sram uncorrectable parity", "sram uncorrectable sec-ded", "dram uncorrectable")
    else:
        uncorrectable = ("sram uncorrectable", "dram uncorrectable")
    return (
        _sum(section, ("sram correctable", "dram correctable"), where),
        _sum(section, uncorrectable, where),
    )


def _sum(section: _Node, labels: tuple[str, ...], where: str) -> int | None:
    total = 0
    reported = False
    for label in labels:
        if section.raw(label) is None:
            return None
        value = _read(section, optional_int, where, label)
        if value is not None:
            total += value
            reported = True
    return total if reported else None


def _retired_pending(section: _Node | None, where: str) -> bool | None:
    if section is None:
        return None
    # "Pending Page Blacklist" until R460-ish, "Pending Page Retirement" on some builds.
    for node in section.children:
        if node.name.startswith("pending") and node.value is not None:
            return optional_bool(SOURCE, node.value, f"{where} retired pages {node.key}")
    return None


def _banks(section: _Node | None, where: str) -> RowRemapBanks | None:
    if section is None:
        return None
    counts = {
        level: _read(section, optional_int, f"{where} bank remap histogram", level)
        for level in ("max", "high", "partial", "low", "none")
    }
    if all(v is None for v in counts.values()):
        return None
    return RowRemapBanks(**counts)
