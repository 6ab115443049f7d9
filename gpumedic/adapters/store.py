"""The telemetry history store (SQLAlchemy): a SQLite file by default, PostgreSQL in production.

Tables:
- `samples`: long-form history (`time, node, gpu, field, value`), the forecaster's input and
  the same shape as the backtest's HISTORY.csv;
- `snapshots`: each node's last good telemetry, so the next sweep can compute *rates*
  (counter deltas per hour) and read the kernel log only since then;
- `full_snapshots`: each node's last good *full* telemetry, whose state readings a quick sweep
  takes up and whose PCIe/NVLink counters the next full sweep takes rates against;
- `earlier_full_snapshots`: the full telemetry each one replaced, so a quick sweep can state the
  PCIe replay and NVLink CRC rates the last full sweep measured (it reads neither counter);
- `series_last`: the last kept reading of every series, so a sweep keeps only what changed
  (`HistoryThinning`) without reading the samples back;
- `incidents`: the GPUs (or nodes) remediation took out of service, for the forecaster's
  "prior incidents" (the strongest predictor in every field study);
- `sweeps`: one row per sweep with its summary and the GPUs it sent to a human (`CondemnedGpu`),
  which the forecast reads so as not to order a part remediation is already asking about;
- `observations`: per node, when a sweep last looked, last saw it (any verdict but unknown) and
  first looked: how long a node has been a blind spot;
- `forecasts`: the latest risk per GPU, with the horizon it is a probability over.

A store written by an older gpumedic gains the columns added since (all nullable) when it is
opened: nothing is lost by an upgrade. `prune(before)` deletes history older than the retention
(the nightly sweep calls it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from gpumedic.adapters.telemetry_codec import telemetry_from_json, telemetry_to_json
from gpumedic.domain.forecast.condemned import CondemnedGpu
from gpumedic.domain.forecast.frame import FIELD_INDEX, Failure, HistoryFrame
from gpumedic.domain.history import HISTORY_FIELDS, HistoryThinning, Sample, samples_from_telemetry
from gpumedic.domain.observation import Observation
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.telemetry import NodeTelemetry, canonical_pci_bus_id

T = TypeVar("T")

metadata = MetaData()

samples = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("node", String(253), nullable=False, index=True),
    Column("gpu", Integer, nullable=True),
    Column("field", String(64), nullable=False),
    Column("value", Float, nullable=False),
)

# The last kept reading of each series (gpu -1: the node as a whole).
series_last = Table(
    "series_last",
    metadata,
    Column("node", String(253), primary_key=True),
    Column("gpu", Integer, primary_key=True),
    Column("field", String(64), primary_key=True),
    Column("time", Float, nullable=False),
    Column("value", Float, nullable=False),
)

def _snapshot_table(name: str) -> Table:
    """One telemetry reading per node, as JSON (`telemetry_codec`)."""
    return Table(
        name,
        metadata,
        Column("node", String(253), primary_key=True),
        Column("collected_at", Float, nullable=False),
        Column("telemetry", Text, nullable=False),
    )


snapshots = _snapshot_table("snapshots")
full_snapshots = _snapshot_table("full_snapshots")
earlier_full_snapshots = _snapshot_table("earlier_full_snapshots")

# Xid events with the GPU's PCI bus id: a GPU that fell off the bus has no index to key on.
xid_events = Table(
    "xid_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("node", String(253), nullable=False, index=True),
    Column("pci_bus_id", String(32), nullable=True),
    Column("code", Integer, nullable=False),
    Column("text", Text, nullable=False),
)

# The latest forecast per GPU (written by the daily failure_forecast flow, read by sweeps and
# approval forms): cheap to read, unlike re-scoring the whole history.
forecasts = Table(
    "forecasts",
    metadata,
    Column("node", String(253), primary_key=True),
    Column("gpu", Integer, primary_key=True),  # -1: the node as a whole
    Column("risk", Float, nullable=False),
    Column("lead_time_h", Float, nullable=True),
    Column("alarm", Integer, nullable=False),
    Column("factors", Text, nullable=False),
    Column("computed_at", Float, nullable=False),
    # The window the risk is a probability over (RiskWindow); null in rows written before each was recorded.
    Column("horizon_days", Float, nullable=True),
    Column("window_starts_after_h", Float, nullable=True),
    # Why an alarm raised no proactive-maintenance request (the sweep sends the GPU to a human); null otherwise.
    Column("held", Text, nullable=True),
)

# One row per GPU a remediation incident opened for (gpu -1: the node as a whole).
incidents = Table(
    "incidents",
    metadata,
    Column("incident_id", String(128), primary_key=True),
    Column("gpu", Integer, primary_key=True),
    Column("node", String(253), nullable=False, index=True),
    Column("time", Float, nullable=False, index=True),
    Column("kind", String(64), nullable=False),
)

sweeps = Table(
    "sweeps",
    metadata,
    Column("sweep_id", String(64), primary_key=True),
    Column("started", Float, nullable=False),
    Column("summary", Text, nullable=False),
)


observations = Table(
    "observations",
    metadata,
    Column("node", String(253), primary_key=True),
    Column("checked_at", Float, nullable=False),
    Column("seen_at", Float, nullable=True),
    Column("first_checked_at", Float, nullable=False),
)


def default_store_url() -> str:
    home = Path.home() / ".gpumedic"
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'telemetry.db'}"


# Values per `IN (...)` list: well under SQLite's and PostgreSQL's bind-parameter limits.
IN_LIST_LIMIT = 500


def _batches(items: Iterable[T], size: int = IN_LIST_LIMIT) -> Iterator[list[T]]:
    batch = list(items)
    for i in range(0, len(batch), size):
        yield batch[i : i + size]


# Seconds to wait for a PostgreSQL server to answer a new connection (libpq waits for ever by default):
# a sweep must not hang on an unreachable store. A `connect_timeout` in the URL wins.
POSTGRES_CONNECT_TIMEOUT_S = 10
# How long a SQLite writer waits for another process's write to finish before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def store_engine(url: str) -> Engine:
    """The engine of the store's database, shared by the telemetry tables and the ticket outbox."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    engine = create_engine(parsed, future=True, connect_args=connect_args)
    if url.startswith("sqlite"):
        # Concurrent sweeps, forecasts and remediations share the file: WAL lets readers and a writer coexist.
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.close()

    return engine


def _use_wal(cursor: Any, *, attempts: int = 50) -> None:
    """Put the SQLite file in WAL mode, unless it is already.

    Switching takes an exclusive lock, and when several processes open a new store at once SQLite
    answers "database is locked" at once rather than waiting (its busy handler would deadlock
    there), so the switch is retried. WAL mode is stored in the file: later openers only read it.
    """
    for attempt in range(1, attempts + 1):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts:
                raise
            time.sleep(0.01 * attempt)


def prepare_schema(engine: Engine, tables: MetaData, *, attempts: int = 5) -> list[str]:
    """Create the missing tables, add the missing columns; returns the columns added as `table.column`.

    Sweeps, forecasts and remediations open the store from several processes at once. Creating a
    table or adding a column is check-then-act, so two openers of a new (or older) store can both
    find it missing and one of them fails; the next attempt finds it made and goes on. A database
    that cannot be reached fails at once, not once per attempt.
    """
    with engine.connect():
        pass
    for attempt in range(1, attempts + 1):
        try:
            tables.create_all(engine)
            return add_missing_columns(engine, tables)
        except DBAPIError:
            if attempt == attempts:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def add_missing_columns(engine: Engine, tables: MetaData) -> list[str]:
    """Add the columns `tables` have and the database's tables lack; returns them as `table.column`.

    `create_all` creates missing tables but never alters existing ones, so a store written by an
    older gpumedic would fail on its first read of a new column. Only nullable columns are ever
    added (old rows read as null); anything else is a schema change this cannot make safely.
    """
    added: list[str] = []
    existing = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    for table in tables.sorted_tables:
        have = {c["name"] for c in existing.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise RuntimeError(f"store {engine.url!r}: table {table.name} lacks the non-null column "
                                   f"{column.name}; it cannot be added to existing rows")
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                                  f"{column.type.compile(dialect=engine.dialect)}"))
            added.append(f"{table.name}.{column.name}")
    return added


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class TelemetryStore:
    def __init__(self, url: str | None = None, *, thinning: HistoryThinning = HistoryThinning()) -> None:
        self.url = url or default_store_url()
        self.thinning = thinning
        self.engine: Engine = store_engine(self.url)
        prepare_schema(self.engine, metadata)

    def record(self, telemetry: Iterable[NodeTelemetry], *, evidence: Iterable[NodeTelemetry] | None = None) -> int:
        """Append history from `evidence` (default: `telemetry`); snapshot the raw `telemetry`.

        Only the readings `self.thinning` keeps are appended; returns how many. A node's
        snapshot (and its full snapshot, for a full reading) is replaced only when its collection
        was clean. `evidence` is the
        telemetry with already-seen events removed (see collect_exporter.new_gauge_xids).
        """
        raw = list(telemetry)
        sources = raw if evidence is None else list(evidence)
        last = self._series_last({t.node for t in sources})
        rows: list[dict[str, Any]] = []
        kept: dict[tuple[str, int, str], tuple[datetime, float]] = {}
        events: list[dict[str, Any]] = []
        for t in sources:
            events += [
                {"time": _epoch(e.time or t.collected_at), "node": t.node,
                 "pci_bus_id": canonical_pci_bus_id(e.pci_bus_id), "code": e.code, "text": e.text[:2000]}
                for e in t.xid_events
            ]
            for s in samples_from_telemetry(t):
                key = (s.node, -1 if s.gpu is None else s.gpu, s.field)
                if not self.thinning.keep(s, kept.get(key) or last.get(key)):
                    continue
                rows.append({"time": _epoch(s.time), "node": s.node, "gpu": s.gpu, "field": s.field, "value": s.value})
                if s.field != "xid":
                    kept[key] = (s.time, s.value)
        clean = [t for t in raw if not t.collection_errors]
        snaps = [{"node": t.node, "collected_at": _epoch(t.collected_at), "telemetry": json.dumps(telemetry_to_json(t))}
                 for t in clean]
        full_snaps = [snap for snap, t in zip(snaps, clean, strict=True) if t.depth == "full"]
        with self.engine.begin() as conn:
            if rows:
                conn.execute(samples.insert(), rows)
            for chunk in _batches(kept):
                cols = (series_last.c.node, series_last.c.gpu, series_last.c.field)
                conn.execute(delete(series_last).where(tuple_(*cols).in_(chunk)))
                conn.execute(series_last.insert(), [
                    {"node": n, "gpu": g, "field": f, "time": _epoch(kept[(n, g, f)][0]), "value": kept[(n, g, f)][1]}
                    for n, g, f in chunk
                ])
            if events:
                conn.execute(xid_events.insert(), events)
            for names in _batches([s["node"] for s in full_snaps]):
                replaced = [dict(row) for row in conn.execute(
                    select(full_snapshots).where(full_snapshots.c.node.in_(names))).mappings()]
                conn.execute(earlier_full_snapshots.delete().where(earlier_full_snapshots.c.node.in_(names)))
                if replaced:
                    conn.execute(earlier_full_snapshots.insert(), replaced)
            for table, replacing in ((snapshots, snaps), (full_snapshots, full_snaps)):
                if replacing:
                    conn.execute(table.delete().where(table.c.node.in_([s["node"] for s in replacing])))
                    conn.execute(table.insert(), replacing)
        return len(rows)

    def _series_last(self, nodes: set[str]) -> dict[tuple[str, int, str], tuple[datetime, float]]:
        out: dict[tuple[str, int, str], tuple[datetime, float]] = {}
        with self.engine.connect() as conn:
            for names in _batches(sorted(nodes)):
                for row in conn.execute(select(series_last).where(series_last.c.node.in_(names))):
                    out[(row.node, row.gpu, row.field)] = (datetime.fromtimestamp(row.time, UTC), row.value)
        return out

    def prune(self, before: datetime) -> int:
        """Delete history (samples, Xid events, sweep summaries) older than `before`; returns rows deleted.

        The last kept reading of each series stays in `series_last`, so the next sweep still
        knows what changed.
        """
        cut = _epoch(before)
        with self.engine.begin() as conn:
            deleted = conn.execute(delete(samples).where(samples.c.time < cut)).rowcount or 0
            deleted += conn.execute(delete(xid_events).where(xid_events.c.time < cut)).rowcount or 0
            deleted += conn.execute(delete(sweeps).where(sweeps.c.started < cut)).rowcount or 0
        return int(deleted)

    def count_samples(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(samples)).scalar_one())

    def append_samples(self, history: Iterable[Sample]) -> int:
        """Append history rows as they are (e.g. a HISTORY.csv imported from another system)."""
        rows = [{"time": _epoch(s.time), "node": s.node, "gpu": s.gpu, "field": s.field, "value": s.value}
                for s in history]
        with self.engine.begin() as conn:
            for batch in _batches(rows, 10_000):
                conn.execute(samples.insert(), batch)
        return len(rows)

    def last_snapshots(
        self, nodes: Iterable[str], *, full: bool = False, before_last_full: bool = False
    ) -> dict[str, NodeTelemetry]:
        """Each node's last clean reading; `full`: its last clean full reading; `before_last_full`: the clean full
        reading before that one."""
        table = earlier_full_snapshots if before_last_full else full_snapshots if full else snapshots
        out: dict[str, NodeTelemetry] = {}
        with self.engine.connect() as conn:
            for names in _batches(nodes):
                query = select(table.c.telemetry).where(table.c.node.in_(names))
                for (text,) in conn.execute(query):
                    snap = telemetry_from_json(json.loads(text))
                    out[snap.node] = snap
        return out

    def prior_xids(self, nodes: Iterable[str], before: datetime, window: timedelta) -> dict[str, dict[str, set[int]]]:
        """node -> PCI bus id -> Xid codes seen in `[before - window, before)` (repeat-offender rules)."""
        out: dict[str, dict[str, set[int]]] = {}
        with self.engine.connect() as conn:
            for names in _batches(nodes):
                query = select(xid_events.c.node, xid_events.c.pci_bus_id, xid_events.c.code).where(
                    xid_events.c.time < _epoch(before),
                    xid_events.c.time >= _epoch(before - window),
                    xid_events.c.node.in_(names),
                    xid_events.c.pci_bus_id.is_not(None),
                )
                for node, bus, code in conn.execute(query):
                    out.setdefault(node, {}).setdefault(bus, set()).add(int(code))
        return out

    def history_frame(self, since: datetime) -> HistoryFrame:
        """History since `since` as columns, for the forecaster: no per-row Python object is kept
        (30 days of a 1,000-node fleet are millions of rows)."""
        query = select(samples.c.time, samples.c.node, samples.c.gpu, samples.c.field, samples.c.value).where(
            samples.c.time >= _epoch(since)
        )
        key_index: dict[tuple[str, int | None], int] = {}
        times: list[int] = []
        keys: list[int] = []
        fields: list[int] = []
        values: list[float] = []
        with self.engine.connect() as conn:
            for time, node, gpu, field, value in conn.execute(query):
                f = FIELD_INDEX.get(field)
                if f is None:
                    raise ValueError(f"unknown history field {field!r} in the store; expected one of {HISTORY_FIELDS}")
                times.append(int(time))
                keys.append(key_index.setdefault((node, gpu), len(key_index)))
                fields.append(f)
                values.append(value)
        return HistoryFrame.build(tuple(key_index), times, keys, fields, values)

    def samples_of(
        self, gpus: Iterable[tuple[str, int | None]], since: datetime
    ) -> dict[tuple[str, int | None], list[Sample]]:
        """The history of a few GPUs (e.g. the riskiest, for their charts) since `since`, per GPU."""
        out: dict[tuple[str, int | None], list[Sample]] = {}
        with self.engine.connect() as conn:
            for node, gpu in set(gpus):
                where = [samples.c.node == node, samples.c.time >= _epoch(since)]
                where.append(samples.c.gpu.is_(None) if gpu is None else samples.c.gpu == gpu)
                query = select(samples.c.time, samples.c.field, samples.c.value).where(*where).order_by(samples.c.time)
                out[(node, gpu)] = [Sample(datetime.fromtimestamp(t, UTC), node, gpu, f, v)
                                    for t, f, v in conn.execute(query)]
        return out

    def iter_samples(self, since: datetime | None = None) -> Iterator[Sample]:
        query = select(samples.c.time, samples.c.node, samples.c.gpu, samples.c.field, samples.c.value)
        if since is not None:
            query = query.where(samples.c.time >= _epoch(since))
        with self.engine.connect() as conn:
            for time, node, gpu, field, value in conn.execute(query.order_by(samples.c.time)):
                yield Sample(datetime.fromtimestamp(time, UTC), node, gpu, field, value)

    def record_incident(
        self, incident_id: str, node: str, kinds: Mapping[int | None, str], opened_at: datetime, *,
        overwrite: bool = True,
    ) -> bool:
        """Remember that remediation took these GPUs (key None: the node as a whole) out of service,
        each with its kind: the failure class its evidence named, else the remediation it started.
        Idempotent per incident; with `overwrite=False` an incident already remembered is left as it is.
        True if written."""
        if not kinds:
            raise ValueError(f"incident {incident_id}: no GPU and no node-level kind to record")
        rows = [{"incident_id": incident_id, "gpu": -1 if gpu is None else gpu, "node": node,
                 "time": _epoch(opened_at), "kind": kind[:64]} for gpu, kind in kinds.items()]
        with self.engine.begin() as conn:
            if not overwrite:
                known = conn.execute(select(incidents.c.gpu).where(incidents.c.incident_id == incident_id)).first()
                if known is not None:
                    return False
            conn.execute(delete(incidents).where(incidents.c.incident_id == incident_id))
            conn.execute(incidents.insert(), rows)
        return True

    def prior_incidents(self, since: datetime) -> list[Failure]:
        """Incidents opened at or after `since`, as the forecaster's prior failures: incidents the GPU
        lived through (`replaced=False`), so its history keeps counting against it."""
        query = select(incidents).where(incidents.c.time >= _epoch(since)).order_by(incidents.c.time)
        with self.engine.connect() as conn:
            return [
                Failure(datetime.fromtimestamp(row.time, UTC), row.node, None if row.gpu < 0 else row.gpu, row.kind,
                        replaced=False)
                for row in conn.execute(query)
            ]

    def record_sweep(self, sweep_id: str, started: datetime, summary: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sweeps.delete().where(sweeps.c.sweep_id == sweep_id))
            conn.execute(sweeps.insert(), [{"sweep_id": sweep_id, "started": _epoch(started),
                                            "summary": json.dumps(summary)}])

    def latest_condemned(self) -> list[CondemnedGpu]:
        """The GPUs the newest sweep sent to a human; none when no sweep is stored (or it predates the list)."""
        with self.engine.connect() as conn:
            summary = conn.execute(select(sweeps.c.summary).order_by(sweeps.c.started.desc()).limit(1)).scalar()
        if summary is None:
            return []
        return [CondemnedGpu.from_json(doc) for doc in json.loads(summary).get("condemned", [])]

    def last_observations(self, nodes: Iterable[str]) -> dict[str, Observation]:
        out: dict[str, Observation] = {}
        with self.engine.connect() as conn:
            for names in _batches(nodes):
                for row in conn.execute(select(observations).where(observations.c.node.in_(names))):
                    out[row.node] = Observation(
                        node=row.node,
                        checked_at=datetime.fromtimestamp(row.checked_at, UTC),
                        seen_at=None if row.seen_at is None else datetime.fromtimestamp(row.seen_at, UTC),
                        first_checked_at=datetime.fromtimestamp(row.first_checked_at, UTC),
                    )
        return out

    def record_observations(self, rows: Iterable[Observation]) -> None:
        """Replace each node's observation, unless the stored one comes from a newer sweep (a quick and a
        full sweep overlapping: the newest sweep's word stands). A re-run of a sweep writes the same rows."""
        values = {o.node: {"node": o.node, "checked_at": _epoch(o.checked_at),
                           "seen_at": None if o.seen_at is None else _epoch(o.seen_at),
                           "first_checked_at": _epoch(o.first_checked_at)} for o in rows}
        with self.engine.begin() as conn:
            for names in _batches(sorted(values)):
                query = select(observations.c.node, observations.c.checked_at).where(observations.c.node.in_(names))
                newer = {node for node, checked in conn.execute(query) if checked > values[node]["checked_at"]}
                names = [n for n in names if n not in newer]
                if names:
                    conn.execute(delete(observations).where(observations.c.node.in_(names)))
                    conn.execute(observations.insert(), [values[n] for n in names])

    def record_forecasts(self, rows: Iterable[StoredForecast]) -> int:
        """Replace the latest forecast with `rows`, even with none (every GPU silent): a risk the latest run
        could not compute is not shown as if it were current."""
        values = [
            {"node": r.node, "gpu": -1 if r.gpu is None else r.gpu, "risk": r.risk, "lead_time_h": r.lead_time_h,
             "alarm": int(r.alarm), "factors": json.dumps(list(r.factors)), "computed_at": _epoch(r.computed_at),
             "horizon_days": r.window.days, "window_starts_after_h": r.window.starts_after_hours, "held": r.held}
            for r in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(forecasts.delete())
            if values:
                conn.execute(forecasts.insert(), values)
        return len(values)

    def latest_forecasts(self, nodes: Iterable[str]) -> dict[tuple[str, int | None], StoredForecast]:
        out: dict[tuple[str, int | None], StoredForecast] = {}
        with self.engine.connect() as conn:
            for names in _batches(nodes):
                for row in conn.execute(select(forecasts).where(forecasts.c.node.in_(names))):
                    stored = _stored_forecast(row)
                    out[(stored.node, stored.gpu)] = stored
        return out

    def riskiest_forecasts(self, limit: int | None = None) -> list[StoredForecast]:
        """The latest forecast's GPUs across the fleet, riskiest first (all of them without `limit`)."""
        query = select(forecasts).order_by(forecasts.c.risk.desc(), forecasts.c.node, forecasts.c.gpu).limit(limit)
        with self.engine.connect() as conn:
            return [_stored_forecast(row) for row in conn.execute(query)]

    def forecast_counts(self) -> tuple[int, int]:
        """(GPUs, alarms) in the latest forecast."""
        with self.engine.connect() as conn:
            gpus, alarms = conn.execute(select(func.count(), func.coalesce(func.sum(forecasts.c.alarm), 0))).one()
        return int(gpus), int(alarms)


@dataclass(frozen=True, slots=True)
class StoredForecast:
    node: str
    gpu: int | None
    risk: float
    lead_time_h: float | None
    alarm: bool
    factors: tuple[str, ...]
    computed_at: datetime
    window: RiskWindow  # what `risk` is a probability over
    held: str | None = None  # an alarm that raised no request, and why (`GpuForecast.held`)

    @property
    def requested(self) -> bool:
        """An alarm handed to proactive maintenance."""
        return self.alarm and self.held is None


def _stored_forecast(row: Any) -> StoredForecast:
    return StoredForecast(
        node=row.node, gpu=None if row.gpu < 0 else int(row.gpu), risk=row.risk, lead_time_h=row.lead_time_h,
        alarm=bool(row.alarm), factors=tuple(json.loads(row.factors)),
        computed_at=datetime.fromtimestamp(row.computed_at, UTC),
        window=RiskWindow(row.horizon_days, row.window_starts_after_h), held=row.held,
    )


def shared_window(rows: Iterable[StoredForecast]) -> RiskWindow:
    """The risk window of the latest forecast run among `rows` (each run replaces every row, so they share one)."""
    newest = max(rows, key=lambda r: r.computed_at, default=None)
    return UNRECORDED if newest is None else newest.window
