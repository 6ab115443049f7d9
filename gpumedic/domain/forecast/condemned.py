"""GPUs the latest sweep already sends to a human: their part is remediation's to order, not the forecast's.

A forecast alarm on a GPU the sweep has condemned (a row-remap failure: `replace`; 97 °C: `inspect`)
foresees a failure that has already happened. Remediation is taking that GPU out of service and
asking a human, whose approval form shows the forecast risk; a proactive-maintenance request as
well would put a second approval and a second order on the same part. So the alarm stays in the
risk table, marked as held and why, and raises no request. It is not remembered as requested
either: a GPU returned to service (the inspection found nothing) that still alarms is requested by
the next forecast.

Pure: no I/O, no Prefect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpumedic.domain.forecast.forecaster import GpuForecast
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict

# From `inspect` up, a sweep takes the GPU out of service and to a human (see `Action`).
TO_A_HUMAN = Action.INSPECT


@dataclass(frozen=True, slots=True)
class CondemnedGpu:
    node: str
    gpu: int | None  # None: the node as a whole (node-level findings sent it to a human)
    action: Action
    sweep_id: str

    def why_held(self) -> str:
        what = "the node" if self.gpu is None else f"GPU {self.gpu}"
        return (f"no order: sweep {self.sweep_id} sends {what} to a human ({self.action}); "
                "its remediation asks for approval, with this risk on the form")

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "gpu": self.gpu, "action": str(self.action), "sweep_id": self.sweep_id}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CondemnedGpu:
        gpu = doc["gpu"]
        return cls(str(doc["node"]), None if gpu is None else int(gpu), Action(doc["action"]), str(doc["sweep_id"]))


def condemned_by(
    assessments: Iterable[NodeAssessment], sweep_id: str, earlier: Sequence[CondemnedGpu] = ()
) -> list[CondemnedGpu]:
    """The GPUs (or whole nodes) a sweep's assessments send to a human, in assessment order.

    A node this sweep could not assess (`unknown`) keeps what the sweeps before said of it (`earlier`, the
    previous sweep's list, naming the sweep that decided): a node powered off while its part is swapped is
    still condemned, not a GPU to order again. A node no longer in the fleet is dropped.
    """
    carried: dict[str, list[CondemnedGpu]] = {}
    for c in earlier:
        carried.setdefault(c.node, []).append(c)
    condemned: list[CondemnedGpu] = []
    for node in assessments:
        if node.verdict is Verdict.UNKNOWN:
            condemned += carried.get(node.node, [])
            continue
        gpus = [CondemnedGpu(node.node, g.index, g.action, sweep_id) for g in node.gpus
                if g.action.rank >= TO_A_HUMAN.rank]
        if node.action.rank >= TO_A_HUMAN.rank and not gpus:
            gpus = [CondemnedGpu(node.node, None, node.action, sweep_id)]
        condemned += gpus
    return condemned


def held_alarms(
    forecasts: Iterable[GpuForecast], condemned: Sequence[CondemnedGpu]
) -> dict[tuple[str, int | None], CondemnedGpu]:
    """The alarms to hold: each alarmed GPU the sweep condemned, or on a node it condemned as a whole."""
    by_key = {(c.node, c.gpu): c for c in condemned}
    held: dict[tuple[str, int | None], CondemnedGpu] = {}
    for f in forecasts:
        reason = by_key.get((f.node, f.gpu)) or by_key.get((f.node, None))
        if f.alarm and reason is not None:
            held[(f.node, f.gpu)] = reason
    return held


def with_holds(forecasts: Sequence[GpuForecast], condemned: Sequence[CondemnedGpu]) -> list[GpuForecast]:
    """`forecasts`, each held alarm saying why (`GpuForecast.held`), in the same order."""
    held = held_alarms(forecasts, condemned)
    return [replace(f, held=held[(f.node, f.gpu)].why_held()) if (f.node, f.gpu) in held else f for f in forecasts]
