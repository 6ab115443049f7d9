"""GPUs the fleet has stopped hearing from: set aside, never scored as quiet.

A GPU with no telemetry lately has empty recent windows, and the forecaster reads empty
windows as "nothing wrong": its risk would drop to the fleet's floor exactly when nobody
can see it (an unreachable node, a GPU gone from `nvidia-smi`, a node taken out of the
fleet). Silence is not health, so such a GPU gets no risk at all and is listed as silent,
with the time of its last reading.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gpumedic.domain.forecast.frame import HistoryFrame, from_epoch, to_epoch


@dataclass(frozen=True, slots=True)
class SilentGpu:
    node: str
    gpu: int | None  # None: a node-level series (events logged without a GPU)
    last_sample: datetime  # its newest reading; for a node-level series, the node's newest

    def silent_for(self, now: datetime) -> timedelta:
        return now - self.last_sample


def set_aside_silent(
    frame: HistoryFrame, now: datetime, silent_after: timedelta
) -> tuple[HistoryFrame, list[SilentGpu]]:
    """Split `frame` (read up to `now`) into the history of GPUs heard from within `silent_after`, and the rest.

    A node-level series holds only events, which are rare on a healthy node: it counts as heard
    from while any series of its node is, and is listed as silent only on a node without GPU
    series: the forecaster scores a node's events on its GPUs, so a silent node with GPUs is
    already listed once per GPU. Keys with no reading up to `now` are dropped: nothing was known
    of them yet. Silent GPUs come back longest-silent first.
    """
    if silent_after <= timedelta(0):
        raise ValueError("silent_after must be positive")
    now_s = to_epoch(now)
    frame = frame.until(now_s)
    never = np.iinfo(np.int64).min
    newest = np.full(len(frame.keys), never, dtype=np.int64)
    np.maximum.at(newest, frame.key, frame.time)
    node_newest: dict[str, int] = {}
    for (node, _), t in zip(frame.keys, newest.tolist(), strict=True):
        node_newest[node] = max(node_newest.get(node, never), t)
    heard = np.array(
        [node_newest[node] if gpu is None else t for (node, gpu), t in zip(frame.keys, newest.tolist(), strict=True)],
        dtype=np.int64,
    )
    cutoff = now_s - int(silent_after.total_seconds())
    seen = newest > never
    live = seen & (heard >= cutoff)
    with_gpus = {node for node, gpu in frame.keys if gpu is not None}
    silent = [
        SilentGpu(node, gpu, from_epoch(int(t)))
        for (node, gpu), t, quiet in zip(frame.keys, heard.tolist(), (seen & ~live).tolist(), strict=True)
        if quiet and (gpu is not None or node not in with_gpus)
    ]
    silent.sort(key=lambda s: (s.last_sample, s.node, -1 if s.gpu is None else s.gpu))
    return frame.restricted_to(live), silent


def set_aside_departed(frame: HistoryFrame, members: Collection[str]) -> tuple[HistoryFrame, list[str]]:
    """Split `frame` into the history of the fleet's nodes (`members`) and the names of the nodes it no longer
    holds (taken out of the fleet file, or no longer matched by its label selector), sorted.

    A departed node's hardware is not the fleet's to maintain: scored, its last days could order a part for a
    board that was decommissioned; listed as silent, it would stand among the blind spots for as long as its
    history lasts. Its history stays in the store (a node that comes back is scored on it again).
    """
    members = set(members)
    keep = np.array([node in members for node, _ in frame.keys], dtype=bool)
    departed = sorted({node for node, _ in frame.keys} - members)
    return (frame.restricted_to(keep) if departed else frame), departed
