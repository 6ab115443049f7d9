"""Pieces every parser needs: tool error detection, "not reported" values, number parsing.

Private to `gpumedic.parsers`: the public surface is each parser module's functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gpumedic.parsers.errors import ParseError

# Whole-output failures of the NVIDIA tools, each anchored at the start of a line so a
# kernel log line that merely mentions the phrase is not mistaken for one. The message
# itself becomes the operator-facing reason.
_TOOL_ERRORS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^NVIDIA-SMI has failed\b",
        r"^No devices were found\b",
        r"^Failed to initialize NVML\b",
        r"^NVML library version mismatch\b",
        r"^Driver/library version mismatch\b",
        r"^Unable to determine the device handle\b",
        r"^GPU \S+: GPU is lost\b",
        r"^Nvlink queries are not supported\b",
        r"^Field \".*\" is not a valid field to query",
        r"^Invalid combination of input arguments\b",
        r"^Insufficient Permissions\b",
        r"^Error: ",  # dcgmi: "Error: unable to establish a connection to the specified host"
        r"^Unable to (?:connect|establish)\b",
        r"^dmesg: ",  # "dmesg: read kernel buffer failed: Operation not permitted"
        r"^journalctl: ",
        r"^No journal files were found\b",
        r"^\S*(?:nvidia-smi|dcgmi|dmesg|journalctl)\S*: (?:command )?not found\b",
        r"^(?:bash|sh|zsh): \S*(?:nvidia-smi|dcgmi|dmesg|journalctl)\S*: (?:command )?not found\b",
    )
)

# Values nvidia-smi and DCGM print for "no reading". `None` in telemetry means exactly this.
_NOT_REPORTED = frozenset(
    s.casefold()
    for s in (
        "",
        "N/A",
        "[N/A]",
        "Not Supported",
        "[Not Supported]",
        "Requested functionality has been deprecated",
        "[Requested functionality has been deprecated]",
        "Unknown Error",
        "[Unknown Error]",
        "Not Available",
        "[Not Available]",
        "Unknown",
        "[Unknown]",
        "Insufficient Permissions",
        "[Insufficient Permissions]",
    )
)

# Values that say the GPU itself is gone or wedged. They are evidence, not a missing
# reading, so they stop the parse with a reason instead of becoming `None`.
_GPU_LOST = re.compile(r"^\[?\s*(GPU is lost|GPU requires reset)\s*\]?$", re.IGNORECASE)

_NUMBER = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*([A-Za-z%/()]*)$")

ELISION = frozenset({"[...]", "...", "…", "[…]"})  # cuts a poster made in the corpus copies


def tool_error_line(lines: Iterable[str]) -> str | None:
    """The first line that is one of the tools' whole-output failure messages."""
    for raw in lines:
        line = raw.strip()
        if line and any(p.search(line) for p in _TOOL_ERRORS):
            return line
    return None


def raise_if_tool_error(source: str, text: str, *, first_lines: int | None = None) -> None:
    """Raise `ParseError` when `text` carries a tool failure message.

    `first_lines` limits the scan to the first non-blank lines, for formats (kernel
    logs) whose bodies can quote anything.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if first_lines is not None:
        lines = lines[:first_lines]
    found = tool_error_line(lines)
    if found is not None:
        raise ParseError(source, f"the tool reported an error: {found}", found)


def require_text(source: str, text: str) -> None:
    if not text.strip():
        raise ParseError(source, "the output is empty")
    if "\x00" in text:
        raise ParseError(source, "the output contains NUL bytes; it is binary, not tool text", text)


def require_complete_last_line(source: str, text: str) -> None:
    """Refuse output whose last line has no line feed.

    The tools end every line with one, so its absence means the stream was cut, and a
    line cut mid-value reads as a different number (`631.95 W` -> `631.9`, `12` -> `1`).
    Pass the command's stdout as it came, not `.strip()`ped.
    """
    if not text.endswith("\n"):
        last = text.rsplit("\n", 1)[-1]
        raise ParseError(source, "the output ends mid-line (no line feed after the last line): it was cut off", last)


def is_not_reported(value: str) -> bool:
    return value.strip().casefold() in _NOT_REPORTED


def check_gpu_lost(source: str, value: str, where: str) -> None:
    match = _GPU_LOST.match(value.strip())
    if match:
        raise ParseError(source, f"{where} reports {match.group(1)!r}: the GPU needs attention", value)


def optional_str(source: str, value: str, where: str) -> str | None:
    check_gpu_lost(source, value, where)
    return None if is_not_reported(value) else value.strip()


def optional_float(source: str, value: str, where: str) -> float | None:
    """`"73.93 W"`, `"31 C"`, `"1980 MHz"`, `"31"` -> float; "not reported" -> None."""
    check_gpu_lost(source, value, where)
    if is_not_reported(value):
        return None
    match = _NUMBER.match(value.strip())
    if not match:
        raise ParseError(source, f"{where} is not a number", value)
    return float(match.group(1))


def optional_int(source: str, value: str, where: str) -> int | None:
    """An error counter: a whole number, optionally with a unit (`"192 bank(s)"`)."""
    check_gpu_lost(source, value, where)
    if is_not_reported(value):
        return None
    match = _NUMBER.match(value.strip())
    if not match or "." in match.group(1):
        raise ParseError(source, f"{where} is not a whole number", value)
    return int(match.group(1))


def optional_bool(source: str, value: str, where: str) -> bool | None:
    """`Yes`/`No` (and the numeric 1/0 some drivers print for remap flags)."""
    check_gpu_lost(source, value, where)
    if is_not_reported(value):
        return None
    word = value.strip().casefold()
    if word in ("yes", "1", "true", "active", "enabled"):
        return True
    if word in ("no", "0", "false", "not active", "disabled"):
        return False
    raise ParseError(source, f"{where} is not Yes/No", value)


# NVML's nvmlClocksEventReasons (formerly nvmlClocksThrottleReasons) bits, checked against
# the R525 and R550 NVML API reference. Names follow nvidia-smi's query field suffixes.
THROTTLE_REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x0000000000000001, "gpu_idle"),
    (0x0000000000000002, "applications_clocks_setting"),
    (0x0000000000000004, "sw_power_cap"),
    (0x0000000000000008, "hw_slowdown"),
    (0x0000000000000010, "sync_boost"),
    (0x0000000000000020, "sw_thermal_slowdown"),
    (0x0000000000000040, "hw_thermal_slowdown"),
    (0x0000000000000080, "hw_power_brake_slowdown"),
    (0x0000000000000100, "display_clock_setting"),
)


def decode_throttle_mask(mask: int) -> frozenset[str]:
    """Active reasons in a clocks-event bitmask; a bit NVML added later keeps its number."""
    names = {name for bit, name in THROTTLE_REASON_BITS if mask & bit}
    known = 0
    for bit, _ in THROTTLE_REASON_BITS:
        known |= bit
    unknown = mask & ~known
    bit = 1
    while unknown:
        if unknown & bit:
            names.add(f"unknown_{bit:#x}")
            unknown &= ~bit
        bit <<= 1
    return frozenset(names)


def is_digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also accepts "²", which `int()` then rejects."""
    return text.isascii() and text.isdigit()


def snake_case(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.casefold()).strip("_")
