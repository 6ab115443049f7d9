"""History growth: rows, bytes and write time per node-day, every reading kept vs thinned.

    python benchmarks/history.py [--nodes 100] [--hours 24] [--every-minutes 15] [--database sqlite|postgresql]

Each node has 8 GPUs reporting what the SSH collector reports (ECC volatile/aggregate
counters, remapped rows and their flags, retired pages, temperature, power, NVLink CRC,
PCIe replays); a few GPUs see correctable errors now and then, temperatures and power
wander, one node in ten reloads its driver during the day. Quick sweeps write into a
SQLite `TelemetryStore` twice: once keeping every reading, once with the shipped
`HistoryThinning` (`--database postgresql`: two databases of a throwaway PostgreSQL server on
127.0.0.1, the tests' own, started for the run). Prints rows, database size and write time for both, per node-day,
and their ratios; then what a 1,000-node fleet would add per day. Last, it reads the
unthinned history back for the forecaster both ways: every row as a `Sample` then a
`HistoryFrame` (the old path), and straight into columns (`TelemetryStore.history_frame`),
with time and peak Python memory (tracemalloc).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.forecast import HistoryFrame
from gpumedic.domain.history import HistoryThinning
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, RowRemapBanks

T0 = datetime(2026, 11, 1, tzinfo=UTC)
GPUS = 8


def fleet_sweeps(nodes: int, hours: int, every_minutes: int, seed: int = 1) -> list[list[NodeTelemetry]]:
    rng = np.random.default_rng(seed)
    sweeps = hours * 60 // every_minutes
    sbe = np.zeros((nodes, GPUS))
    noisy = rng.random((nodes, GPUS)) < 0.05
    reload_at = np.where(rng.random(nodes) < 0.1, rng.integers(0, sweeps, nodes), -1)
    out = []
    for k in range(sweeps):
        at = T0 + timedelta(minutes=every_minutes * k)
        sbe += np.where(noisy & (rng.random((nodes, GPUS)) < 0.1), rng.integers(1, 20, (nodes, GPUS)), 0)
        sweep = []
        for n in range(nodes):
            volatile = 0 if 0 <= reload_at[n] <= k else 1
            gpus = tuple(
                GpuTelemetry(
                    index=g,
                    uuid=f"GPU-{n}-{g}",
                    pci_bus_id=f"00000000:{g + 0x10:02X}:00.0",
                    ecc_sbe_volatile=int(sbe[n, g]) * volatile,
                    ecc_sbe_aggregate=int(sbe[n, g]) + 40,
                    ecc_dbe_volatile=0,
                    ecc_dbe_aggregate=0,
                    remapped_rows_correctable=1,
                    remapped_rows_uncorrectable=0,
                    row_remap_pending=False,
                    row_remap_failure=False,
                    remap_banks=RowRemapBanks(max=640, none=0),
                    retired_pages_sbe=0,
                    retired_pages_dbe=0,
                    temperature_c=float(np.round(60 + rng.normal(0, 2), 1)),
                    power_w=float(np.round(500 + rng.normal(0, 40), 1)),
                    pcie_replay=0,
                    nvlinks=tuple(NvLinkState(link=i, active=True, crc_errors=0) for i in range(18)),
                )
                for g in range(GPUS)
            )
            sweep.append(NodeTelemetry(node=f"node-{n:04d}", collected_at=at, source="ssh", gpus=gpus))
        out.append(sweep)
    return out


def measure(sweeps: list[list[NodeTelemetry]], thinning: HistoryThinning, url: str) -> tuple[int, int, float]:
    store = TelemetryStore(url, thinning=thinning)
    t0 = time.perf_counter()
    for sweep in sweeps:
        store.record(sweep)
    elapsed = time.perf_counter() - t0
    rows = store.count_samples()
    store.engine.dispose()  # SQLite: the last connection's close checkpoints the write-ahead log into the file
    return rows, _bytes(url), elapsed


def _bytes(url: str) -> int:
    engine = create_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'")).scalar() or 0)
        path = Path(str(engine.url.database))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def databases(kind: str, tmp: str) -> Iterator[Callable[[str], str]]:
    """A function naming a fresh database of `kind` per call."""
    if kind == "sqlite":
        yield lambda name: f"sqlite:///{Path(tmp) / name}.db"
        return
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield lambda _name: server.new_database()
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--every-minutes", type=int, default=15)
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    sweeps = fleet_sweeps(args.nodes, args.hours, args.every_minutes)
    node_days = args.nodes * args.hours / 24
    print(f"{args.nodes} nodes x {GPUS} GPUs, a quick sweep every {args.every_minutes} min for {args.hours} h "
          f"({len(sweeps)} sweeps), {'SQLite' if args.database == 'sqlite' else 'PostgreSQL'}")
    with tempfile.TemporaryDirectory() as tmp, databases(args.database, tmp) as database:
        every_url, thin_url = database("a"), database("b")
        every = measure(sweeps, HistoryThinning(gauge_every=timedelta(0), heartbeat=timedelta(0)), every_url)
        thin = measure(sweeps, HistoryThinning(), thin_url)
        store = TelemetryStore(every_url)
        reads = {
            "rows as Samples": lambda: HistoryFrame.from_samples(list(store.iter_samples(T0))),
            "columns": lambda: store.history_frame(T0),
        }
        read_figures = {}
        for name, read in reads.items():
            tracemalloc.start()
            t0 = time.perf_counter()
            frame = read()
            elapsed = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            read_figures[name] = (len(frame), elapsed, peak)
    print(f"{'':>14} {'rows/node-day':>14} {'MB/node-day':>12} {'write s/node-day':>17}")
    for name, (rows, size, secs) in (("every reading", every), ("thinned", thin)):
        print(f"{name:>14} {rows / node_days:>14,.0f} {size / 1e6 / node_days:>12.3f} {secs / node_days:>17.4f}")
    print(f"ratio (every/thinned): rows {every[0] / thin[0]:.1f}x, bytes {every[1] / thin[1]:.1f}x, "
          f"write time {every[2] / thin[2]:.1f}x")
    print(f"a 1,000-node fleet per day: {every[0] / node_days * 1000:,.0f} rows kept every reading, "
          f"{thin[0] / node_days * 1000:,.0f} thinned")
    print("reading the unthinned history back for the forecaster:")
    for name, (rows, secs, peak) in read_figures.items():
        print(f"  {name:>16}: {rows:,} rows in {secs:.2f} s, peak Python memory {peak / 1e6:.0f} MB")
    (_, s_old, m_old), (_, s_new, m_new) = read_figures.values()
    print(f"  ratio (Samples/columns): time {s_old / s_new:.1f}x, peak memory {m_old / m_new:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
