"""Columnar telemetry history and failure records for the forecaster and the backtest.

`Sample` rows (`gpumedic.domain.history`) are the exchange format; a fleet's history
is millions of them, so the forecaster works on the same rows held as numpy columns:
`HistoryFrame`. Times are integer seconds since the Unix epoch, UTC; a naive
`datetime` is read as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

# Re-exported: the forecaster's vocabulary of what broke.
from gpumedic.domain.failure_class import UNPREDICTABLE_CLASSES as UNPREDICTABLE_CLASSES
from gpumedic.domain.failure_class import FailureClass as FailureClass
from gpumedic.domain.history import HISTORY_FIELDS, Sample

FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(HISTORY_FIELDS)}

Key = tuple[str, int | None]  # (node, gpu); gpu None for node-level rows

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def to_epoch(t: datetime) -> int:
    """Whole seconds since the epoch; a naive datetime is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() // 1)


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), tz=UTC)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure (or replacement) record: FAILURES.csv `time,node,gpu,kind`."""

    time: datetime
    node: str
    gpu: int | None  # None: the failure names the node, not one of its GPUs
    kind: str
    # False for an incident the GPU lived through (reset, rebooted, readmitted): it counts as a
    # prior incident, but its history keeps counting against it, unlike a replaced GPU's.
    replaced: bool = True


@dataclass(frozen=True, slots=True)
class HistoryFrame:
    """History rows as columns, sorted by time (stable), one key table.

    `key[i]` indexes `keys`; `field[i]` indexes `HISTORY_FIELDS`.
    """

    keys: tuple[Key, ...]
    time: IntArray
    key: npt.NDArray[np.int32]
    field: npt.NDArray[np.int16]
    value: FloatArray

    def __post_init__(self) -> None:
        n = len(self.time)
        if not (len(self.key) == len(self.field) == len(self.value) == n):
            raise ValueError("HistoryFrame columns differ in length")

    def __len__(self) -> int:
        return len(self.time)

    @classmethod
    def build(
        cls,
        keys: Sequence[Key],
        time: npt.ArrayLike,
        key: npt.ArrayLike,
        field: npt.ArrayLike,
        value: npt.ArrayLike,
    ) -> HistoryFrame:
        t = np.asarray(time, dtype=np.int64)
        order = np.argsort(t, kind="stable")
        return cls(
            keys=tuple(keys),
            time=t[order],
            key=np.asarray(key, dtype=np.int32)[order],
            field=np.asarray(field, dtype=np.int16)[order],
            value=np.asarray(value, dtype=np.float64)[order],
        )

    @classmethod
    def empty(cls) -> HistoryFrame:
        return cls.build((), [], [], [], [])

    @classmethod
    def from_samples(cls, samples: Iterable[Sample]) -> HistoryFrame:
        key_index: dict[Key, int] = {}
        times: list[int] = []
        keys: list[int] = []
        fields: list[int] = []
        values: list[float] = []
        epoch_cache: dict[datetime, int] = {}
        for s in samples:
            f = FIELD_INDEX.get(s.field)
            if f is None:
                raise ValueError(f"unknown history field {s.field!r}; expected one of {HISTORY_FIELDS}")
            k = key_index.setdefault((s.node, s.gpu), len(key_index))
            t = epoch_cache.get(s.time)
            if t is None:
                t = epoch_cache[s.time] = to_epoch(s.time)
            times.append(t)
            keys.append(k)
            fields.append(f)
            values.append(float(s.value))
        return cls.build(tuple(key_index), times, keys, fields, values)

    def to_samples(self) -> list[Sample]:
        cache: dict[int, datetime] = {}
        out: list[Sample] = []
        for t, k, f, v in zip(
            self.time.tolist(), self.key.tolist(), self.field.tolist(), self.value.tolist(), strict=True
        ):
            when = cache.get(t)
            if when is None:
                when = cache[t] = from_epoch(t)
            node, gpu = self.keys[k]
            out.append(Sample(when, node, gpu, HISTORY_FIELDS[f], v))
        return out

    def until(self, t: int) -> HistoryFrame:
        """Rows with time <= t (seconds): what was known at t."""
        end = int(np.searchsorted(self.time, t, side="right"))
        return HistoryFrame(self.keys, self.time[:end], self.key[:end], self.field[:end], self.value[:end])

    def restricted_to(self, keep: npt.NDArray[np.bool_]) -> HistoryFrame:
        """The rows of the keys `keep` marks (one flag per key), with only those keys."""
        if len(keep) != len(self.keys):
            raise ValueError("need one flag per key")
        index = (np.cumsum(keep) - 1).astype(np.int32)
        rows = keep[self.key]
        return HistoryFrame(
            tuple(k for k, kept in zip(self.keys, keep.tolist(), strict=True) if kept),
            self.time[rows],
            index[self.key[rows]],
            self.field[rows],
            self.value[rows],
        )

    def since(self, t: int) -> HistoryFrame:
        start = int(np.searchsorted(self.time, t, side="left"))
        return HistoryFrame(self.keys, self.time[start:], self.key[start:], self.field[start:], self.value[start:])
