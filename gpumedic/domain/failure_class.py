"""What broke: the failure classes of field studies, shared by verdicts, incidents and the forecaster.

A health finding names the class its evidence points to (a DBE: HBM; Xid 79: fallen off the
bus), remediation records it with the incident, and the forecaster learns per class from
those incidents. Real failure logs carry free-text kinds; only these names get per-class
meaning.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    HBM = "hbm"  # HBM / row remapping exhaustion, uncorrectable memory errors
    NVLINK = "nvlink"
    THERMAL = "thermal"
    PCIE = "pcie"
    GSP = "gsp"  # GPU System Processor timeouts (Xid 119/120)
    SRAM = "sram"
    SDC = "sdc"  # silent data corruption, found by a job, not by telemetry
    FALLEN_OFF_BUS = "fallen_off_bus"  # Xid 79

    @property
    def has_precursor(self) -> bool:
        """True for the classes whose failures usually announce themselves in telemetry."""
        return self in _PRECURSOR_CLASSES

    @property
    def why_unpredictable(self) -> str:
        return _UNPREDICTABLE_REASON.get(self, "")


_PRECURSOR_CLASSES = frozenset({FailureClass.HBM, FailureClass.NVLINK, FailureClass.THERMAL, FailureClass.PCIE})

_UNPREDICTABLE_REASON = {
    FailureClass.FALLEN_OFF_BUS: "Xid 79 (fallen off the bus) gives almost no numeric warning",
    FailureClass.SDC: "silent data corruption leaves no telemetry trace until a job detects it",
    FailureClass.GSP: "GSP timeouts (Xid 119/120) are preceded by a warning only sometimes",
    FailureClass.SRAM: "SRAM uncorrectable errors rarely follow a correctable-error trend",
}

UNPREDICTABLE_CLASSES: tuple[FailureClass, ...] = tuple(c for c in FailureClass if not c.has_precursor)
