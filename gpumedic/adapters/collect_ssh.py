"""Collect one node's GPU telemetry over SSH: nvidia-smi, row-remap sections, NVLink, Xids.

All tools run in ONE exec (one round trip per node), separated by marker lines that carry
each tool's exit status, so a failing tool is reported as that tool's failure rather than
poisoning the others' output. Any tool that fails or prints something the parser does not
understand becomes a collection error, which the assessment turns into `unknown`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from gpumedic.adapters.errors import AdapterError
from gpumedic.adapters.ssh import SshConnection, SshSettings, quote_command
from gpumedic.adapters.targets import NodeTarget
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, canonical_pci_bus_id
from gpumedic.parsers import ParseError
from gpumedic.parsers.kernel_log import parse_kernel_log
from gpumedic.parsers.nvidia_smi_csv import QUERY_GPU_FIELDS, parse_query_gpu_csv
from gpumedic.parsers.nvidia_smi_q import parse_nvidia_smi_q
from gpumedic.parsers.nvlink import NvLinkNotSupported, parse_nvlink_errors, parse_nvlink_status

_MARK = "@@gpumedic"
_END = re.compile(rf"^{_MARK}:end:(?P<name>[a-z_]+):(?P<rc>-?\d+)$")
# ECC for the "SRAM Threshold Exceeded" flag, which no --query-gpu field carries.
Q_SECTIONS = "ROW_REMAPPER,PAGE_RETIREMENT,ECC,TEMPERATURE,PCIE"


def tool_commands(since: datetime, depth: str = "full") -> dict[str, list[str]]:
    """The tools a sweep runs. A quick sweep skips the -q sections and NVLink counters."""
    commands = {
        "query": ["nvidia-smi", f"--query-gpu={','.join(QUERY_GPU_FIELDS)}", "--format=csv,noheader,nounits"],
        "q": ["nvidia-smi", "-q", "-d", Q_SECTIONS],
        "nvlink_status": ["nvidia-smi", "nvlink", "-s"],
        "nvlink_errors": ["nvidia-smi", "nvlink", "-e"],
        "kernel_log": ["journalctl", "-k", "--no-pager", "-o", "short-iso", "--since", f"@{int(since.timestamp())}"],
    }
    if depth == "quick":
        for name in ("q", "nvlink_errors"):
            del commands[name]
    return commands


def composite_command(commands: dict[str, list[str]]) -> str:
    """`CMD 2>&1; echo @@gpumedic:end:NAME:$?` for each tool, as one sh command line."""
    parts = [f"{quote_command(argv)} 2>&1; echo {_MARK}:end:{name}:$?" for name, argv in commands.items()]
    return "; ".join(parts)


def split_sections(output: str) -> dict[str, tuple[int, str]]:
    sections: dict[str, tuple[int, str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        match = _END.match(line.strip())
        if match:
            sections[match["name"]] = (int(match["rc"]), "\n".join(current) + "\n")
            current = []
        else:
            current.append(line)
    return sections


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")[:200]


def _merge_q(gpus: list[GpuTelemetry], details: list[GpuTelemetry]) -> list[GpuTelemetry]:
    """Fill what --query-gpu cannot give (bank histogram, thresholds, PCIe replays) from -q."""
    by_bus = {canonical_pci_bus_id(d.pci_bus_id): d for d in details if d.pci_bus_id}
    merged = []
    for gpu in gpus:
        extra = by_bus.get(canonical_pci_bus_id(gpu.pci_bus_id))
        if extra is None:
            merged.append(gpu)
            continue
        updates = {
            f.name: getattr(extra, f.name)
            for f in dataclasses.fields(GpuTelemetry)
            if f.name not in ("index", "throttle_reasons", "nvlinks")
            and getattr(gpu, f.name) is None
            and getattr(extra, f.name) is not None
        }
        merged.append(dataclasses.replace(gpu, **updates))
    return merged


def _merge_nvlinks(
    gpus: list[GpuTelemetry], status: dict[int, tuple[NvLinkState, ...]], errors: dict[int, tuple[NvLinkState, ...]]
) -> list[GpuTelemetry]:
    merged = []
    for gpu in gpus:
        links = {link.link: link for link in status.get(gpu.index, ())}
        for counted in errors.get(gpu.index, ()):
            base = links.get(counted.link, NvLinkState(link=counted.link, active=None))
            links[counted.link] = dataclasses.replace(
                base,
                crc_errors=counted.crc_errors,
                replay_errors=counted.replay_errors,
                recovery_errors=counted.recovery_errors,
            )
        merged.append(dataclasses.replace(gpu, nvlinks=tuple(links[k] for k in sorted(links))))
    return merged


def parse_sections(
    node: str,
    sections: dict[str, tuple[int, str]],
    *,
    now: datetime,
    expected_gpus: int | None,
    expected: Collection[str] = ("query", "q", "nvlink_status", "nvlink_errors", "kernel_log"),
) -> NodeTelemetry:
    """Turn the composite command's sections into telemetry; failures become collection errors.

    Without `-q` among the `expected` tools the reading is a quick one (`NodeTelemetry.depth`)."""
    errors: list[str] = []

    def parsed(name: str, parser: Callable[[str], object], what: str) -> object | None:
        if name not in expected:
            return None
        if name not in sections:
            errors.append(f"{what}: no output (the command did not run to completion)")
            return None
        rc, text = sections[name]
        try:
            if rc != 0 and not name.startswith("nvlink"):
                raise ParseError(what, f"exited with status {rc}: {_first_line(text)}")
            return parser(text)
        except NvLinkNotSupported:
            # MIG mode and PCIe-only GPUs have no NVLink to report: no link data, not a fault.
            return None
        except ParseError as err:
            errors.append(str(err))
            return None

    gpus = parsed("query", parse_query_gpu_csv_for_fields, "nvidia-smi --query-gpu")
    details = parsed("q", parse_nvidia_smi_q, "nvidia-smi -q")
    status = parsed("nvlink_status", parse_nvlink_status, "nvidia-smi nvlink -s")
    link_errors = parsed("nvlink_errors", parse_nvlink_errors, "nvidia-smi nvlink -e")
    xids = parsed("kernel_log", lambda text: parse_kernel_log(text, year=now.year), "journalctl -k")

    gpu_list: list[GpuTelemetry] = list(gpus) if isinstance(gpus, list) else []
    if isinstance(details, list):
        gpu_list = _merge_q(gpu_list, details)
    if isinstance(status, dict) or isinstance(link_errors, dict):
        gpu_list = _merge_nvlinks(
            gpu_list, status if isinstance(status, dict) else {}, link_errors if isinstance(link_errors, dict) else {}
        )
    return NodeTelemetry(
        node=node,
        collected_at=now,
        source="ssh",
        gpus=tuple(gpu_list),
        expected_gpu_count=expected_gpus,
        xid_events=tuple(xids) if isinstance(xids, list) else (),
        collection_errors=tuple(errors),
        depth="full" if "q" in expected else "quick",
    )


def parse_query_gpu_csv_for_fields(text: str) -> list[GpuTelemetry]:
    return parse_query_gpu_csv(text, QUERY_GPU_FIELDS)


def collect_over_ssh(
    target: NodeTarget,
    settings: SshSettings,
    *,
    since: datetime | None,
    lookback: timedelta,
    now: datetime | None = None,
    depth: str = "full",
    connection: SshConnection | None = None,
) -> NodeTelemetry:
    """Never raises: an unreachable node or a failed tool yields telemetry with collection errors."""
    now = now or datetime.now(UTC)
    window_start = since or (now - lookback)
    if target.ssh is None:
        return unreachable(target, now, "no SSH endpoint configured for this node", "ssh")
    own = connection is None
    conn = connection or SshConnection(target.name, target.ssh, settings)
    commands = tool_commands(window_start, depth)
    try:
        result = conn.run(composite_command(commands))
    except AdapterError as err:
        return unreachable(target, now, str(err), "ssh")
    finally:
        if own:
            conn.close()
    sections = split_sections(result.stdout)
    if not sections:
        return unreachable(
            target, now, f"node answered without any tool output (exit {result.exit_status}): "
            f"{_first_line(result.stdout)}", "ssh"
        )
    return parse_sections(target.name, sections, now=now, expected_gpus=target.expected_gpus, expected=commands)


def unreachable(target: NodeTarget, now: datetime, reason: str, source: str) -> NodeTelemetry:
    return NodeTelemetry(
        node=target.name,
        collected_at=now,
        source=source,
        expected_gpu_count=target.expected_gpus,
        collection_errors=(reason,),
    )
