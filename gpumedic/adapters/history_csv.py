"""HISTORY.csv and FAILURES.csv: the backtest's files, read and written.

HISTORY.csv — one value of one field of one GPU at one time (the telemetry store's rows)::

    time,node,gpu,field,value
    2025-01-01T00:13:07Z,node-0001,3,ecc_sbe_volatile,12
    1735690387,node-0001,,xid,79

FAILURES.csv — one failure or replacement::

    time,node,gpu,kind
    2025-01-09T04:55:00Z,node-0001,3,hbm

An optional `replaced` column (`true`/`false`, `yes`/`no`, `1`/`0`; empty or absent:
true) says whether the GPU (the node, for a node-level row) was replaced after the
failure. `false` marks an incident it lived through (a reset, a reboot, an uncorrectable
error that containment absorbed): its history keeps counting, and the incident counts
against it as a prior. Written only when some failure was not a replacement.

* `time`: ISO-8601 (`2025-01-01T00:13:07Z`, `2025-01-01 00:13:07+00:00`; without an
  offset it is UTC) or seconds since the Unix epoch (`1735690387`, `1735690387.5`).
* `node`: any non-empty name. `gpu`: the GPU index (0, 1, ...) or empty for a row about
  the node as a whole (an Xid that names no known GPU; a failure of the node).
* `field`: one of `gpumedic.domain.history.HISTORY_FIELDS`. Counters are cumulative as
  the driver reports them (a drop is read as a reset); `xid` rows are events whose value
  is the Xid code.
* `value`: a finite number. `kind`: free text (the simulator writes `hbm`, `nvlink`,
  `thermal`, `pcie`, `gsp`, `sram`, `sdc`, `fallen_off_bus`).

Columns may come in any order; extra columns are ignored. Any malformed cell stops the
read with `HistoryCsvError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gpumedic.domain.forecast.frame import FIELD_INDEX, Failure, HistoryFrame, Key, from_epoch, to_epoch
from gpumedic.domain.history import HISTORY_FIELDS, Sample
from gpumedic.parsers.errors import ParseError

HISTORY_COLUMNS = ("time", "node", "gpu", "field", "value")
FAILURE_COLUMNS = ("time", "node", "gpu", "kind")
REPLACED_COLUMN = "replaced"
_REPLACED = {"true": True, "yes": True, "1": True, "": True, "false": False, "no": False, "0": False}

_EPOCH = re.compile(r"^[+-]?\d+(\.\d*)?$")
Progress = Callable[[str], None]


class HistoryCsvError(ParseError):
    """A HISTORY/FAILURES file could not be read: permanent, the file must be fixed."""

    def __init__(self, path: Path | str, line: int, column: str | None, reason: str, excerpt: str = "") -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        where = f"{path}, line {line}" + (f", column {column!r}" if column else "")
        super().__init__(where, reason, excerpt)


def parse_time(text: str) -> int:
    """Seconds since the epoch from ISO-8601 or epoch seconds; ValueError with a reason otherwise."""
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    if _EPOCH.match(s):
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(f"epoch seconds out of range: {s!r}")
        return math.floor(v)
    try:
        t = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"not ISO-8601 or epoch seconds: {s!r}") from None
    return to_epoch(t)


def _gpu(text: str) -> int | None:
    s = text.strip()
    if not s:
        return None
    if not s.isdigit():
        raise ValueError(f"GPU index must be a non-negative integer or empty, got {s!r}")
    return int(s)


def _table(
    path: Path, fh: Iterable[str], required: Sequence[str], optional: Sequence[str] = ()
) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """The header's index of each required column (and of each optional one it has), and
    the (line number, cells) of each non-blank row. A missing required column or a row too
    short for the required ones stops the read."""
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        raise HistoryCsvError(path, 1, None, f"empty file; expected a header {','.join(required)}")
    names = [h.strip().lower() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise HistoryCsvError(
            path,
            1,
            None,
            f"missing column(s) {', '.join(missing)}; expected header {','.join(required)}",
            ",".join(header),
        )
    col = {c: names.index(c) for c in (*required, *optional) if c in names}
    width = max(col[c] for c in required) + 1

    def rows() -> Iterator[tuple[int, list[str]]]:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < width:
                raise HistoryCsvError(
                    path, reader.line_num, None, f"expected {width} columns, found {len(row)}", ",".join(row)
                )
            yield reader.line_num, row

    return col, rows()


def read_history(path: Path | str, progress: Progress | None = None) -> HistoryFrame:
    """HISTORY.csv as a columnar frame (the fast path for big histories)."""
    p = Path(path)
    keys: dict[Key, int] = {}
    times: list[int] = []
    kidx: list[int] = []
    fields: list[int] = []
    values: list[float] = []
    time_cache: dict[str, int] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        col, rows = _table(p, fh, HISTORY_COLUMNS)
        ct, cn, cg, cf, cv = (col[c] for c in HISTORY_COLUMNS)
        for line, row in rows:
            ts = row[ct]
            t = time_cache.get(ts)
            if t is None:
                try:
                    t = time_cache[ts] = parse_time(ts)
                except ValueError as err:
                    raise HistoryCsvError(p, line, "time", str(err), ts) from None
            node = row[cn].strip()
            if not node:
                raise HistoryCsvError(p, line, "node", "empty node name")
            try:
                gpu = _gpu(row[cg])
            except ValueError as err:
                raise HistoryCsvError(p, line, "gpu", str(err), row[cg]) from None
            f = FIELD_INDEX.get(row[cf].strip())
            if f is None:
                raise HistoryCsvError(
                    p, line, "field", f"unknown field; expected one of {', '.join(HISTORY_FIELDS)}", row[cf]
                )
            try:
                v = float(row[cv])
            except ValueError:
                raise HistoryCsvError(p, line, "value", "not a number", row[cv]) from None
            if not math.isfinite(v):
                raise HistoryCsvError(p, line, "value", "not a finite number", row[cv])
            k = keys.get((node, gpu))
            if k is None:
                k = keys[(node, gpu)] = len(keys)
            times.append(t)
            kidx.append(k)
            fields.append(f)
            values.append(v)
            if progress and len(times) % 1_000_000 == 0:
                progress(f"{p.name}: read {len(times):,} rows")
    return HistoryFrame.build(tuple(keys), times, kidx, fields, values)


def read_history_samples(path: Path | str) -> list[Sample]:
    return read_history(path).to_samples()


def read_failures(path: Path | str) -> list[Failure]:
    p = Path(path)
    out: list[Failure] = []
    with p.open(newline="", encoding="utf-8") as fh:
        col, rows = _table(p, fh, FAILURE_COLUMNS, optional=(REPLACED_COLUMN,))
        replaced_col = col.get(REPLACED_COLUMN)
        for line, row in rows:
            try:
                t = parse_time(row[col["time"]])
            except ValueError as err:
                raise HistoryCsvError(p, line, "time", str(err), row[col["time"]]) from None
            node = row[col["node"]].strip()
            if not node:
                raise HistoryCsvError(p, line, "node", "empty node name")
            try:
                gpu = _gpu(row[col["gpu"]])
            except ValueError as err:
                raise HistoryCsvError(p, line, "gpu", str(err), row[col["gpu"]]) from None
            kind = row[col["kind"]].strip()
            if not kind:
                raise HistoryCsvError(p, line, "kind", "empty failure kind")
            cell = row[replaced_col] if replaced_col is not None and replaced_col < len(row) else ""
            replaced = _REPLACED.get(cell.strip().lower())
            if replaced is None:
                raise HistoryCsvError(p, line, REPLACED_COLUMN, "not true or false", cell)
            out.append(Failure(from_epoch(t), node, gpu, kind, replaced=replaced))
    return out


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _value(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def write_history(path: Path | str, history: HistoryFrame | Iterable[Sample]) -> int:
    """Write HISTORY.csv (ISO-8601 UTC times); returns the number of rows."""
    frame = history if isinstance(history, HistoryFrame) else HistoryFrame.from_samples(history)
    times = {int(t): _iso(int(t)) for t in np.unique(frame.time).tolist()}
    keys = [(node, "" if gpu is None else str(gpu)) for node, gpu in frame.keys]
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HISTORY_COLUMNS)
        w.writerows(
            (times[t], keys[k][0], keys[k][1], HISTORY_FIELDS[f], _value(v))
            for t, k, f, v in zip(
                frame.time.tolist(), frame.key.tolist(), frame.field.tolist(), frame.value.tolist(), strict=True
            )
        )
    return len(frame)


def write_failures(path: Path | str, failures: Iterable[Failure]) -> int:
    """Write FAILURES.csv; the `replaced` column only when some failure was not a replacement."""
    rows = sorted(failures, key=lambda f: (to_epoch(f.time), f.node, -1 if f.gpu is None else f.gpu))
    survived = any(not f.replaced for f in rows)
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow((*FAILURE_COLUMNS, REPLACED_COLUMN) if survived else FAILURE_COLUMNS)
        for f in rows:
            row: tuple[object, ...] = (_iso(to_epoch(f.time)), f.node, "" if f.gpu is None else f.gpu, f.kind)
            w.writerow((*row, "true" if f.replaced else "false") if survived else row)
    return len(rows)
