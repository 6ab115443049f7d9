"""NVLink state: `nvidia-smi nvlink -s` / `-e` and `dcgmi nvlink -s` / `-e` -> `NvLinkState` per GPU.

Results are keyed by the GPU index the tool printed (`GPU 3:` / `gpuId 3:`). A GPU that
the tool lists with no links maps to an empty tuple: it has no NVLink, which is
different from a GPU the output does not mention at all.

MIG mode: nvidia-smi refuses NVLink queries for a GPU in MIG mode. That refusal is
raised as `NvLinkNotSupported` (a `ParseError`), not returned as "no links", so that
a MIG node never reads as one whose links are all fine; a collector that knows the
node runs MIG can catch it and skip NVLink on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gpumedic.domain.telemetry import NvLinkState
from gpumedic.parsers._common import (
    ELISION,
    is_digits,
    raise_if_tool_error,
    require_complete_last_line,
    require_text,
)
from gpumedic.parsers.errors import ParseError


class NvLinkNotSupported(ParseError):
    """The tool declined NVLink queries for this device (MIG mode)."""


_SMI_GPU = re.compile(r"^GPU (\d+): .*\(UUID: [^)]*\)\s*$")
_SMI_LINK_STATUS = re.compile(r"^Link (\d+): (?:(<inactive>)|([\d.]+) GB/s)$")
_SMI_LINK_COUNTER = re.compile(r"^Link (\d+): ([A-Za-z ]+?) Errors?: (\d+)$")
_MIG_REFUSAL = re.compile(r"^Nvlink queries are not supported for Devices in MIG mode", re.IGNORECASE)

_DCGMI_GPU = re.compile(r"^gpuId (\d+):$")
_DCGMI_STATES = re.compile(r"^[UDX_](?: [UDX_])*$")
# dcgmi's key: Up=U, Down=D, Disabled=X, Not Supported=_ (a link this GPU does not have).
_DCGMI_STATE = {"U": True, "D": False, "X": False}


def parse_nvlink_status(text: str) -> dict[int, tuple[NvLinkState, ...]]:
    """`nvidia-smi nvlink -s`: a link with a speed is active, `<inactive>` is not."""
    source = "nvidia-smi nvlink -s"

    def link(line: str) -> NvLinkState | None:
        match = _SMI_LINK_STATUS.match(line)
        if match is None:
            return None
        return NvLinkState(link=int(match.group(1)), active=match.group(2) is None)

    return _parse_smi(source, text, link)


def parse_nvlink_errors(text: str) -> dict[int, tuple[NvLinkState, ...]]:
    """`nvidia-smi nvlink -e`: Replay / Recovery / CRC counters per link (`active` unknown)."""
    source = "nvidia-smi nvlink -e"

    def link(line: str) -> NvLinkState | None:
        match = _SMI_LINK_COUNTER.match(line)
        if match is None:
            return None
        # Each counter has its own line; `_merge` folds them into one state per link.
        return NvLinkState(link=int(match.group(1)), active=None, **_counter(match.group(2), int(match.group(3))))

    # A counter line cut mid-number reads as a smaller count, so a cut stream is refused.
    per_gpu = _parse_smi(source, text, link, complete_lines=True)
    return {gpu: _merge(links) for gpu, links in per_gpu.items()}


def parse_dcgmi_nvlink_status(text: str) -> dict[int, tuple[NvLinkState, ...]]:
    """`dcgmi nvlink -s` / `--link-status`: one letter per link under each `gpuId N:`."""
    source = "dcgmi nvlink -s"
    require_text(source, text)
    raise_if_tool_error(source, text)
    result: dict[int, tuple[NvLinkState, ...]] = {}
    gpu: int | None = None
    in_gpus = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == "GPUs:":
            in_gpus = True
            continue
        if line.endswith(":") and not _DCGMI_GPU.match(line):
            in_gpus = False  # "NvSwitches:" and later sections
            gpu = None
            continue
        if not in_gpus:
            continue
        header = _DCGMI_GPU.match(line)
        if header:
            gpu = int(header.group(1))
            if gpu in result:
                raise ParseError(source, f"gpuId {gpu} appears twice", text)
            result[gpu] = ()
            continue
        if gpu is not None and _DCGMI_STATES.match(line):
            letters = line.split()
            result[gpu] = tuple(NvLinkState(link=i, active=_DCGMI_STATE[c]) for i, c in enumerate(letters) if c != "_")
            gpu = None
        elif line:
            raise ParseError(source, "unexpected line in the GPUs section", line)
    if not result:
        raise ParseError(source, "no `gpuId N:` entries: not dcgmi nvlink link-status output", text)
    return result


_DCGMI_TABLE_GPU = re.compile(r"^GPU (\d+)$")
_DCGMI_TABLE_LINK = re.compile(r"^Link (\d+)$")
_DCGMI_TABLE_COUNTER = re.compile(r"^-> (CRC FLIT|CRC Data|Replay|Recovery) Error$")


def parse_dcgmi_nvlink_errors(text: str) -> dict[int, tuple[NvLinkState, ...]]:
    """`dcgmi nvlink -e -g N`: the `NVLINK Error Counts` tree, flit and data CRC summed."""
    source = "dcgmi nvlink -e"
    require_text(source, text)
    raise_if_tool_error(source, text)
    if "NVLINK Error Counts" not in text:
        raise ParseError(source, "no `NVLINK Error Counts` table: not dcgmi nvlink -e output", text)
    per_gpu: dict[int, list[NvLinkState]] = {}
    gpu: int | None = None
    link: int | None = None
    for raw in text.splitlines():
        cells = [c.strip() for c in raw.strip().strip("|").split("|")]
        label = cells[0]
        value = cells[1] if len(cells) > 1 else ""
        if raw.strip().startswith("+") or not raw.strip():
            continue
        if match := _DCGMI_TABLE_GPU.match(label):
            gpu = int(match.group(1))
            per_gpu.setdefault(gpu, [])
        elif match := _DCGMI_TABLE_LINK.match(label):
            link = int(match.group(1))
        elif (match := _DCGMI_TABLE_COUNTER.match(label)) and gpu is not None and link is not None:
            if not raw.rstrip().endswith("|"):
                raise ParseError(source, "a counter row is cut off before its closing border", raw)
            if not is_digits(value):
                raise ParseError(source, f"GPU {gpu} link {link} {match.group(1)} count is not a number", raw)
            per_gpu[gpu].append(NvLinkState(link=link, active=None, **_counter(match.group(1), int(value))))
    if not per_gpu:
        raise ParseError(source, "the table names no GPU", text)
    return {g: _merge(links) for g, links in per_gpu.items()}


def _parse_smi(
    source: str, text: str, link: Callable[[str], NvLinkState | None], *, complete_lines: bool = False
) -> dict[int, tuple[NvLinkState, ...]]:
    require_text(source, text)
    if any(_MIG_REFUSAL.match(ln.strip()) for ln in text.splitlines()):
        raise NvLinkNotSupported(source, "NVLink queries are not supported for a GPU in MIG mode", text)
    raise_if_tool_error(source, text)
    if complete_lines:
        require_complete_last_line(source, text)
    result: dict[int, list[NvLinkState]] = {}
    gpu: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line in ELISION:
            continue
        header = _SMI_GPU.match(line)
        if header:
            gpu = int(header.group(1))
            if gpu in result:
                raise ParseError(source, f"GPU {gpu} appears twice", text)
            result[gpu] = []
            continue
        state = link(line)
        if state is None or gpu is None:
            raise ParseError(source, "unexpected line", line)
        result[gpu].append(state)
    if not result:
        raise ParseError(source, "no `GPU N: ... (UUID: ...)` header was found", text)
    return {g: tuple(links) for g, links in result.items()}


def _counter(kind: str, value: int) -> dict[str, int]:
    kind = kind.strip().casefold()
    if "crc" in kind:
        return {"crc_errors": value}
    if kind.startswith("replay"):
        return {"replay_errors": value}
    if kind.startswith("recovery"):
        return {"recovery_errors": value}
    return {}


def _merge(partials: tuple[NvLinkState, ...] | list[NvLinkState]) -> tuple[NvLinkState, ...]:
    """One `NvLinkState` per link from one-counter-per-line readings (CRC kinds summed)."""
    merged: dict[int, NvLinkState] = {}
    for part in partials:
        seen = merged.get(part.link)
        if seen is None:
            merged[part.link] = part
            continue
        merged[part.link] = NvLinkState(
            link=part.link,
            active=seen.active if seen.active is not None else part.active,
            crc_errors=_add(seen.crc_errors, part.crc_errors),
            replay_errors=_add(seen.replay_errors, part.replay_errors),
            recovery_errors=_add(seen.recovery_errors, part.recovery_errors),
        )
    return tuple(merged[k] for k in sorted(merged))


def _add(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
