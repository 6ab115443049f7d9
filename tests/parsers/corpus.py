"""The real-output corpus: where it lives and how its files are grouped.

CI clones the repository next to `shared/`, so the corpus is found relative to the
checkout, not by an absolute path. Its absence fails the suite: the parsers are only
as good as the real outputs they are tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpumedic.parsers.dcgmi import parse_dcgmi_diag, parse_dcgmi_discovery, parse_dcgmi_health
from gpumedic.parsers.kernel_log import parse_kernel_log
from gpumedic.parsers.nvidia_smi_csv import parse_query_gpu_csv
from gpumedic.parsers.nvidia_smi_q import parse_nvidia_smi_q
from gpumedic.parsers.nvidia_smi_reset import parse_gpu_reset
from gpumedic.parsers.nvlink import (
    parse_dcgmi_nvlink_errors,
    parse_dcgmi_nvlink_status,
    parse_nvlink_errors,
    parse_nvlink_status,
)
from gpumedic.parsers.prometheus import parse_dcgm_exporter, parse_dcgm_exporter_xids

CORPUS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "real-outputs"
MISSING = "<corpus directory missing>"


def corpus_files() -> list[str]:
    """Every tool output in the corpus (INDEX.md and COMMANDS.md describe them; they are not outputs).

    When the directory is missing this returns one placeholder name, so parametrized
    tests fail on it instead of being collected as an empty, skipped parameter set.
    """
    if not CORPUS_DIR.is_dir():
        return [MISSING]
    return sorted(p.name for p in CORPUS_DIR.iterdir() if p.is_file() and p.suffix != ".md")


def read(name: str) -> str:
    path = CORPUS_DIR / name
    assert CORPUS_DIR.is_dir(), f"the real-output corpus is required and missing: {CORPUS_DIR}"
    return path.read_text(encoding="utf-8")


def starting(*prefixes: str) -> list[str]:
    return [name for name in corpus_files() if name.startswith(prefixes)]


# Whole-output failures and refusals: no parser may turn these into data.
ERROR_FILES = frozenset(
    starting("nvidia-smi-error_", "nvidia-smi-a-i0-error_") + starting("nvidia-smi-nvlink-s_H200_MIG-enabled")
)


# Every public parser, each taking the tool's text alone.
PARSERS: dict[str, Callable[[str], object]] = {
    "parse_query_gpu_csv": parse_query_gpu_csv,
    "parse_nvidia_smi_q": parse_nvidia_smi_q,
    "parse_nvlink_status": parse_nvlink_status,
    "parse_nvlink_errors": parse_nvlink_errors,
    "parse_dcgmi_nvlink_status": parse_dcgmi_nvlink_status,
    "parse_dcgmi_nvlink_errors": parse_dcgmi_nvlink_errors,
    "parse_kernel_log": parse_kernel_log,
    "parse_dcgm_exporter": parse_dcgm_exporter,
    "parse_dcgm_exporter_xids": parse_dcgm_exporter_xids,
    "parse_dcgmi_diag": parse_dcgmi_diag,
    "parse_dcgmi_health": parse_dcgmi_health,
    "parse_dcgmi_discovery": parse_dcgmi_discovery,
    "parse_gpu_reset": parse_gpu_reset,
}

# The corpus files each parser reads as its own format. Every other file it must refuse
# with ParseError (the kernel log parser instead finds no Xid in them).
ACCEPTS: dict[str, list[str]] = {
    "parse_query_gpu_csv": starting(
        "nvidia-smi-query-gpu-csv_H100_80GB_HBM3_driver590",
        "nvidia-smi-query-gpu-csv_H200",
        "nvidia-smi-query-gpu-csv_L40S",
    ),
    "parse_nvidia_smi_q": starting("nvidia-smi-q_", "nvidia-smi-q-"),
    "parse_nvlink_status": starting(
        "nvidia-smi-nvlink-status_", "nvidia-smi-nvlink-s_H200_driver", "nvidia-smi-nvlink-s_V100"
    ),
    "parse_nvlink_errors": starting("nvidia-smi-nvlink-e_"),
    "parse_dcgmi_nvlink_status": starting("dcgmi-nvlink-s_", "dcgmi-nvlink-link-status_"),
    "parse_dcgmi_nvlink_errors": starting("dcgmi-nvlink-e-"),
    "parse_kernel_log": [n for n in corpus_files() if n.endswith(".log")],
    "parse_dcgm_exporter": starting("dcgm-exporter-"),
    "parse_dcgm_exporter_xids": starting("dcgm-exporter-"),
    "parse_dcgmi_diag": starting("dcgmi-diag"),
    "parse_dcgmi_health": starting("dcgmi-health-"),
    "parse_dcgmi_discovery": starting("dcgmi-discovery-"),
    "parse_gpu_reset": starting("nvidia-smi-gpu-reset_"),
}
