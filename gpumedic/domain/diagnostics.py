"""What active checks said: a DCGM diagnostic run, a DCGM health check, a GPU reset.

These are results the parsers build from `dcgmi diag`, `dcgmi health -c` and
`nvidia-smi --gpu-reset`. Like telemetry, they only carry what the tool said: a
diagnostic that did not state a pass is never recorded as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DiagStatus(StrEnum):
    PASS = "pass"  # noqa: S105 (a test verdict, not a password)
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"
    # DCGM prints "Not Run" for tests it never started; an unknown spelling lands
    # here too, so a new DCGM wording can never read as a pass.
    NOT_RUN = "not_run"


@dataclass(frozen=True, slots=True)
class GpuDiagResult:
    gpu: int
    status: DiagStatus


@dataclass(frozen=True, slots=True)
class DiagTestResult:
    """One row of the diagnostic table (one test in the JSON), e.g. "Targeted Power"."""

    name: str
    category: str | None  # "Deployment", "Hardware", "Integration", "Stress", ...
    status: DiagStatus  # the test as a whole; FAIL when any GPU failed or the test errored
    per_gpu: tuple[GpuDiagResult, ...] = ()  # empty when DCGM only said "Pass - All"
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    info: tuple[str, ...] = ()

    def status_for(self, gpu: int) -> DiagStatus | None:
        return next((r.status for r in self.per_gpu if r.gpu == gpu), None)


@dataclass(frozen=True, slots=True)
class DiagReport:
    """`dcgmi diag -r N` (table or `-j`), any DCGM major version."""

    passed: bool  # True only when every test passed or was skipped and nothing said FAIL
    tests: tuple[DiagTestResult, ...]
    failed_gpus: frozenset[int] = frozenset()  # GPUs DCGM named as failing
    dcgm_version: str | None = None
    driver_version: str | None = None

    def test(self, name: str) -> DiagTestResult | None:
        wanted = name.casefold()
        return next((t for t in self.tests if t.name.casefold() == wanted), None)


class HealthStatus(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    FAILURE = "failure"
    # DCGM's own "Internal error" (and any spelling we do not know): not healthy.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class HealthIncident:
    entity_group: str  # "GPU", "Switch", "CPU", ... as DCGM names the group
    entity_id: int
    system: str  # "Power system", "Memory system", "PCIe system", ...
    health: HealthStatus
    message: str

    @property
    def gpu(self) -> int | None:
        return self.entity_id if self.entity_group.upper() == "GPU" else None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """`dcgmi health -c` (table or `-j`).

    DCGM's health watches are known to report Healthy while a GPU needs a reset or
    has billions of corrected ECC errors (corpus: DCGM issues #263 and #313), so a
    Healthy here is one input to the assessment, never a verdict on its own.
    """

    overall: HealthStatus
    incidents: tuple[HealthIncident, ...] = ()
    entity_health: tuple[tuple[str, int, HealthStatus], ...] = ()  # (group, id, status) per entity

    def incidents_for_gpu(self, gpu: int) -> tuple[HealthIncident, ...]:
        return tuple(i for i in self.incidents if i.gpu == gpu)


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    """What `nvidia-smi --gpu-reset [-i N]` printed."""

    success: bool  # every GPU it names was reset, and none was refused
    in_use_refused: bool  # refused because a process (or persistenced, Fabric Manager) holds the GPU
    message: str  # the tool's own words, for the incident record
    pci_bus_ids: tuple[str, ...] = ()  # canonical ids of the GPUs the output names
