"""`nvidia-smi --gpu-reset [-i N]` output -> `ResetOutcome`.

Every line must be one the reset command is known to print; anything else is a
`ParseError`, because a reset whose outcome we cannot read must not be recorded as
done. Whole-output tool failures (driver unreachable, no devices) are `ParseError`s
too: the reset did not run, and the state of the GPU is unknown.
"""

from __future__ import annotations

import re

from gpumedic.domain.diagnostics import ResetOutcome
from gpumedic.domain.telemetry import canonical_pci_bus_id
from gpumedic.parsers._common import raise_if_tool_error, require_text
from gpumedic.parsers.errors import ParseError

SOURCE = "nvidia-smi --gpu-reset"

_BUS = r"(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])"
_SUCCESS = re.compile(rf"^GPU {_BUS} was successfully reset\.?$")
# Old wording (R450-era): "GPU 00000000:C1:00.0 is currently in use by another process."
_IN_USE_OLD = re.compile(rf"^GPU {_BUS} is currently in use by another (?:process|client)\.?$")
# New wording: "The following GPUs could not be reset:" then "  GPU <bus>: <reason>".
_REFUSED_HEADER = re.compile(r"^The following GPUs could not be reset:$")
_REFUSED_GPU = re.compile(rf"^GPU {_BUS}: (?P<reason>.+)$")
_IN_USE_REASON = re.compile(r"\bin use\b", re.IGNORECASE)
_IN_USE_SUMMARY = re.compile(r"^\d+ devices? (?:is|are) currently being used by one or more other processes")
_BENIGN = re.compile(r"^(?:All done\.?|Please first kill all processes using (?:this|these) devices?.*)$")
# Refusals that are not about another process holding the GPU.
_OTHER_REFUSAL = re.compile(
    r"^(?:GPU Reset couldn't run because .*|Unable to reset this GPU because .*|"
    r"Resetting GPU \S+ is not supported\.?|GPU \S+ is the primary GPU\.?|"
    r"Unable to reset GPU \S+.*|Insufficient Permissions.*|The GPU reset failed.*)$",
    re.IGNORECASE,
)


def parse_gpu_reset(text: str) -> ResetOutcome:
    require_text(SOURCE, text)
    raise_if_tool_error(SOURCE, text)
    reset: list[str] = []
    refused: list[str] = []
    in_use = False
    other_failure = False
    in_refusal_list = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if match := _SUCCESS.match(line):
            reset.append(match.group("bus"))
        elif match := _IN_USE_OLD.match(line):
            refused.append(match.group("bus"))
            in_use = True
        elif _REFUSED_HEADER.match(line):
            in_refusal_list = True
        elif in_refusal_list and (match := _REFUSED_GPU.match(line)):
            refused.append(match.group("bus"))
            if _IN_USE_REASON.search(match.group("reason")):
                in_use = True
            else:
                other_failure = True
        elif _IN_USE_SUMMARY.match(line):
            in_use = True
        elif _OTHER_REFUSAL.match(line):
            other_failure = True
        elif not _BENIGN.match(line):
            raise ParseError(SOURCE, "a line of the reset output is not one the tool is known to print", line)
    if not reset and not refused and not in_use and not other_failure:
        raise ParseError(SOURCE, "the output neither confirms nor refuses a reset", text)
    success = bool(reset) and not refused and not in_use and not other_failure
    buses = tuple(b for b in (canonical_pci_bus_id(x) for x in reset + refused) if b is not None)
    return ResetOutcome(
        success=success,
        in_use_refused=in_use,
        message=" ".join(text.split()),
        pci_bus_ids=buses,
    )
