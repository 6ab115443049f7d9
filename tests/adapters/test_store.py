from __future__ import annotations

import itertools
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from gpumedic.adapters import store as store_module
from gpumedic.adapters.store import (
    StoredForecast,
    TelemetryStore,
    add_missing_columns,
    metadata,
    shared_window,
    store_engine,
)
from gpumedic.adapters.ticket_outbox import TicketOutbox
from gpumedic.domain.forecast import CondemnedGpu, HistoryFrame, forecast_fleet
from gpumedic.domain.history import HistoryThinning
from gpumedic.domain.observation import Observation
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, RowRemapBanks, XidEvent
from gpumedic.domain.verdict import Action

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _telemetry(at: datetime, *, sbe: int, errors: tuple[str, ...] = ()) -> NodeTelemetry:
    gpu = GpuTelemetry(index=0, uuid="GPU-a", pci_bus_id="00000000:3B:00.0", ecc_sbe_aggregate=sbe,
                       throttle_reasons=frozenset({"gpu_idle"}), remap_banks=RowRemapBanks(max=640, none=0))
    xid = XidEvent(code=79, pci_bus_id="0000:3b:00.0", time=at, text="GPU has fallen off the bus.")
    return NodeTelemetry(node="n1", collected_at=at, source="ssh", gpus=(gpu,), xid_events=(xid,),
                         collection_errors=errors)


def test_snapshot_round_trips_and_failed_collections_do_not_replace_it(db_url: str) -> None:
    store = TelemetryStore(db_url)
    good = _telemetry(T0, sbe=5)
    store.record([good])
    store.record([_telemetry(T0 + timedelta(hours=1), sbe=9, errors=("unreachable",))])
    assert store.last_snapshots(["n1"]) == {"n1": good}


def test_the_last_full_reading_outlives_quick_ones_and_failed_ones(db_url: str) -> None:
    import dataclasses

    store = TelemetryStore(db_url)
    full = _telemetry(T0, sbe=5)
    quick = dataclasses.replace(_telemetry(T0 + timedelta(minutes=15), sbe=6), depth="quick")
    store.record([full])
    store.record([quick])
    store.record([_telemetry(T0 + timedelta(hours=1), sbe=9, errors=("nvidia-smi -q: exited with status 15",))])
    assert store.last_snapshots(["n1"]) == {"n1": quick}  # the depth survives the round trip
    assert store.last_snapshots(["n1"], full=True) == {"n1": full}
    assert store.last_snapshots(["n1"], before_last_full=True) == {}
    newer = _telemetry(T0 + timedelta(days=1), sbe=7)
    store.record([newer])
    assert store.last_snapshots(["n1"], full=True) == {"n1": newer} == store.last_snapshots(["n1"])
    # The full reading it replaced: the baseline of the link rates the newer one measured.
    assert store.last_snapshots(["n1"], before_last_full=True) == {"n1": full}
    store.record([dataclasses.replace(_telemetry(T0 + timedelta(days=1, minutes=15), sbe=8), depth="quick")])
    assert store.last_snapshots(["n1"], before_last_full=True) == {"n1": full}
    newest = _telemetry(T0 + timedelta(days=2), sbe=8)
    store.record([newest])
    assert store.last_snapshots(["n1"], before_last_full=True) == {"n1": newer}


def test_prior_xids_are_keyed_by_pci_bus_id_within_the_window(db_url: str) -> None:
    store = TelemetryStore(db_url)
    store.record([_telemetry(T0, sbe=1)])
    assert store.prior_xids(["n1"], T0 + timedelta(hours=1), timedelta(days=1)) == {"n1": {"0000:3b:00.0": {79}}}
    assert store.prior_xids(["n1"], T0, timedelta(days=1)) == {}  # not *before* the sweep that saw it
    assert store.prior_xids(["n1"], T0 + timedelta(days=3), timedelta(days=1)) == {}


def test_samples_are_the_history_rows_the_forecaster_reads(db_url: str) -> None:
    store = TelemetryStore(db_url)
    store.record([_telemetry(T0, sbe=3)])
    rows = {(s.field, s.value) for s in store.iter_samples()}
    assert ("ecc_sbe_aggregate", 3.0) in rows and ("xid", 79.0) in rows


def _gpu_reading(at: datetime, *, sbe: int, temp: float, node: str = "n1") -> NodeTelemetry:
    gpu = GpuTelemetry(index=0, uuid="GPU-a", pci_bus_id="00000000:3B:00.0", ecc_sbe_volatile=sbe,
                       ecc_sbe_aggregate=sbe + 100, remapped_rows_correctable=2, temperature_c=temp)
    return NodeTelemetry(node=node, collected_at=at, source="ssh", gpus=(gpu,))


def _rows(store: TelemetryStore, field: str) -> list[tuple[datetime, float]]:
    return [(s.time, s.value) for s in store.iter_samples() if s.field == field]


def test_quick_sweeps_keep_changes_hourly_gauges_and_a_daily_heartbeat(db_url: str) -> None:
    store = TelemetryStore(db_url)
    sbe = [0] * 8 + [5] * 8 + [2] * 104  # rises, then the driver reloads (a drop), then steady for 26 h
    for i, value in enumerate(sbe):
        store.record([_gpu_reading(T0 + timedelta(minutes=15 * i, seconds=i % 7), sbe=value, temp=60 + i % 3)])
    volatile = [v for _, v in _rows(store, "ecc_sbe_volatile")]
    assert volatile[:3] == [0.0, 5.0, 2.0]  # every change kept, the reset included
    assert len(volatile) == 4  # and one heartbeat a day later, nothing else
    remaps = _rows(store, "remapped_rows_correctable")
    assert [v for _, v in remaps] == [2.0, 2.0] and remaps[1][0] - remaps[0][0] >= timedelta(hours=24)
    temps = [t for t, _ in _rows(store, "temperature_c")]
    assert 29 <= len(temps) <= 31  # 120 quick sweeps over 30 h: about one reading an hour
    assert all(b - a >= timedelta(minutes=55) for a, b in itertools.pairwise(temps))
    assert store.count_samples() < 120 * 4 / 10  # four fields a sweep, a tenth of them kept


def test_thinned_history_gives_the_forecaster_the_same_risk(tmp_path: Path) -> None:
    thinned = TelemetryStore(f"sqlite:///{tmp_path / 'thin.db'}")
    full = TelemetryStore(f"sqlite:///{tmp_path / 'full.db'}", thinning=HistoryThinning(gauge_every=timedelta(0),
                                                                                         heartbeat=timedelta(0)))
    sbe = 0
    for i in range(14 * 96):  # two weeks of quick sweeps; correctable bursts grow in the second week
        if i > 7 * 96 and i % (40 - (i - 7 * 96) // 30) == 0:
            sbe += 1 + i % 5
        for store in (thinned, full):
            store.record([_gpu_reading(T0 + timedelta(minutes=15 * i), sbe=sbe, temp=62.0)])
    assert thinned.count_samples() * 5 < full.count_samples()
    now = T0 + timedelta(days=14)
    risk_full = {(f.node, f.gpu): f.risk for f in forecast_fleet(list(full.iter_samples()), now)}
    risk_thin = {(f.node, f.gpu): f.risk for f in forecast_fleet(list(thinned.iter_samples()), now)}
    assert risk_full.keys() == risk_thin.keys()
    assert risk_full[("n1", 0)] > 0.01  # the bursts are evidence, so equality below means something
    for key, risk in risk_full.items():
        assert risk_thin[key] == pytest.approx(risk, rel=1e-6)


def test_prune_deletes_old_history_but_remembers_the_last_reading(db_url: str) -> None:
    store = TelemetryStore(db_url)
    store.record([_telemetry(T0, sbe=3)])
    store.record([_gpu_reading(T0 + timedelta(days=200), sbe=1, temp=60)])
    deleted = store.prune(before=T0 + timedelta(days=100))
    assert deleted >= 3  # the old samples, the old Xid event
    assert all(s.time >= T0 + timedelta(days=100) for s in store.iter_samples())
    assert store.prior_xids(["n1"], T0 + timedelta(days=1), timedelta(days=2)) == {}
    before = store.count_samples()
    store.record([_gpu_reading(T0 + timedelta(days=200, minutes=15), sbe=1, temp=60)])
    assert store.count_samples() == before  # unchanged, and the gauge was read 15 minutes ago


def test_incidents_are_remembered_once_per_incident_with_each_gpus_kind(db_url: str) -> None:
    store = TelemetryStore(db_url)
    store.record_incident("inc-1", "n1", {3: "hbm", 1: "remediation:reset_gpu"}, T0)
    store.record_incident("inc-1", "n1", {3: "hbm", 1: "nvlink"}, T0)  # a resumed run: the same rows, restated
    store.record_incident("inc-2", "n2", {None: "fallen_off_bus"}, T0 + timedelta(days=2))  # the node as a whole
    got = sorted((f.node, f.gpu, f.kind, f.time, f.replaced) for f in store.prior_incidents(T0 - timedelta(days=1)))
    assert got == [
        ("n1", 1, "nvlink", T0, False),
        ("n1", 3, "hbm", T0, False),
        ("n2", None, "fallen_off_bus", T0 + timedelta(days=2), False),
    ]
    assert [f.node for f in store.prior_incidents(T0 + timedelta(days=1))] == ["n2"]
    with pytest.raises(ValueError, match="inc-3"):
        store.record_incident("inc-3", "n3", {}, T0)


def test_history_frame_is_the_same_history_as_the_samples_and_samples_of_picks_gpus(db_url: str) -> None:
    store = TelemetryStore(db_url)
    for i in range(8):
        store.record([_gpu_reading(T0 + timedelta(hours=i), sbe=i // 2, temp=60 + i, node=n) for n in ("n1", "n2")])
    store.record([_telemetry(T0 + timedelta(hours=9), sbe=3)])  # an Xid row too
    since = T0 + timedelta(hours=2)
    frame = store.history_frame(since)
    expected = HistoryFrame.from_samples(s for s in store.iter_samples(since))
    assert len(frame) == len(expected) > 0
    assert sorted(frame.to_samples(), key=repr) == sorted(expected.to_samples(), key=repr)
    by_gpu = store.samples_of([("n2", 0)], since)
    assert list(by_gpu) == [("n2", 0)]
    picked = by_gpu[("n2", 0)]
    assert picked and {(s.node, s.gpu) for s in picked} == {("n2", 0)}
    assert all(s.time >= since for s in picked)


def test_a_resumed_run_records_an_incident_only_if_it_was_never_recorded(db_url: str) -> None:
    store = TelemetryStore(db_url)
    assert store.record_incident("inc-1", "n1", {2: "hbm"}, T0)
    assert not store.record_incident("inc-1", "n1", {5: "hbm"}, T0, overwrite=False)
    assert [f.gpu for f in store.prior_incidents(T0)] == [2]
    assert store.record_incident("inc-2", "n1", {5: "hbm"}, T0, overwrite=False)
    assert sorted(f.gpu or -1 for f in store.prior_incidents(T0)) == [2, 5]


def test_forecasts_keep_the_window_their_risk_is_over(db_url: str) -> None:
    store = TelemetryStore(db_url)
    rows = [StoredForecast("n1", 0, 0.4, 30.0, True, ("a burst",), T0, RiskWindow(14.0, 24.0)),
            StoredForecast("n1", None, 0.1, None, False, (), T0, RiskWindow(14.0, 24.0))]
    store.record_forecasts(rows)
    latest = store.latest_forecasts(["n1"])
    assert latest == {("n1", 0): rows[0], ("n1", None): rows[1]}
    assert shared_window(latest.values()) == RiskWindow(14.0, 24.0)
    assert shared_window([]) == UNRECORDED


def test_each_forecast_run_replaces_the_last_even_when_it_scored_nothing(db_url: str) -> None:
    store = TelemetryStore(db_url)
    store.record_forecasts([StoredForecast("n1", 0, 0.4, 30.0, True, (), T0, RiskWindow(7.0, 24.0)),
                            StoredForecast("n2", 0, 0.1, None, False, (), T0, RiskWindow(7.0, 24.0))])
    store.record_forecasts([StoredForecast("n2", 0, 0.2, None, False, (), T0, RiskWindow(7.0, 24.0))])
    assert set(store.latest_forecasts(["n1", "n2"])) == {("n2", 0)}
    assert store.record_forecasts([]) == 0
    assert store.latest_forecasts(["n1", "n2"]) == {} and store.forecast_counts() == (0, 0)


# The forecasts table as gpumedic created it before it recorded the window (SQLAlchemy's DDL).
OLD_FORECASTS_DDL = (
    "CREATE TABLE forecasts (node VARCHAR(253) NOT NULL, gpu INTEGER NOT NULL, risk FLOAT NOT NULL, "
    "lead_time_h FLOAT, alarm INTEGER NOT NULL, factors TEXT NOT NULL, computed_at FLOAT NOT NULL, "
    "PRIMARY KEY (node, gpu))"
)


def _execute(url: str, *statements: str, **params: object) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params)
    finally:
        engine.dispose()


def test_a_store_from_before_the_window_gains_it_and_keeps_its_rows(db_url: str) -> None:
    _execute(db_url, OLD_FORECASTS_DDL,
             "INSERT INTO forecasts VALUES ('n1', 0, 0.6, 20.0, 1, '[\"a burst\"]', :t)", t=T0.timestamp())
    store = TelemetryStore(db_url)
    old = store.latest_forecasts(["n1"])[("n1", 0)]
    assert (old.risk, old.alarm, old.factors, old.window) == (0.6, True, ("a burst",), UNRECORDED)
    assert shared_window([old]) == UNRECORDED
    assert old.held is None and old.requested  # an alarm from before alarms were held was requested

    TelemetryStore(db_url)  # opening it again changes nothing and does not fail
    assert add_missing_columns(store.engine, metadata) == []
    store.record_forecasts([StoredForecast("n1", 0, 0.3, None, False, (), T0, RiskWindow(7.0, 24.0))])
    assert store.latest_forecasts(["n1"])[("n1", 0)].window == RiskWindow(7.0, 24.0)


def test_a_store_that_recorded_the_horizon_but_not_the_window_start_gains_the_start(db_url: str) -> None:
    _execute(db_url, OLD_FORECASTS_DDL, "ALTER TABLE forecasts ADD COLUMN horizon_days FLOAT",
             "INSERT INTO forecasts VALUES ('n1', 0, 0.6, 20.0, 1, '[]', :t, 7.0)", t=T0.timestamp())
    store = TelemetryStore(db_url)
    assert store.latest_forecasts(["n1"])[("n1", 0)].window == RiskWindow(7.0, None)


def test_the_gpus_the_newest_sweep_sent_to_a_human_are_read_back(db_url: str) -> None:
    store = TelemetryStore(db_url)
    assert store.latest_condemned() == []  # no sweep yet
    store.record_sweep("sweep-old", T0, {"summary": "1 failed"})  # written before sweeps listed them
    assert store.latest_condemned() == []
    gpu = CondemnedGpu("n1", 2, Action.REPLACE, "sweep-b")
    node = CondemnedGpu("n2", None, Action.INSPECT, "sweep-b")
    store.record_sweep("sweep-b", T0 + timedelta(minutes=15), {"summary": "2 failed",
                                                                "condemned": [gpu.to_json(), node.to_json()]})
    store.record_sweep("sweep-a", T0 + timedelta(minutes=5), {"summary": "1 failed", "condemned": []})
    assert store.latest_condemned() == [gpu, node]  # the newest sweep's word, whatever order they were written
    store.record_sweep("sweep-c", T0 + timedelta(minutes=30), {"summary": "12 healthy", "condemned": []})
    assert store.latest_condemned() == []


def test_a_missing_column_that_old_rows_cannot_fill_is_refused_by_name(db_url: str) -> None:
    _execute(db_url, "CREATE TABLE sweeps (sweep_id VARCHAR(64) PRIMARY KEY, started FLOAT NOT NULL)")
    with pytest.raises(RuntimeError, match="sweeps lacks the non-null column summary"):
        TelemetryStore(db_url)


def _all_at_once(action: Callable[[], object], threads: int = 4) -> list[BaseException]:
    """Run `action` in `threads` threads released together; what they raised."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=30)
            action()
        except BaseException as err:  # reported by the caller, with the thread's own traceback
            errors.append(err)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(timeout=60)
    return errors


def test_several_openers_of_a_new_sqlite_store_all_put_it_in_wal_mode(tmp_path: Path) -> None:
    # The switch to WAL is refused at once, not waited for, when openers collide. One round of 4
    # openers collided about once in 8 on this 2-core machine, so the test runs 30 rounds.
    for round_ in range(30):
        path = tmp_path / f"round-{round_}.db"

        def connect(url: str = f"sqlite:///{path}") -> None:
            engine = store_engine(url)
            with engine.connect():
                pass
            engine.dispose()

        assert _all_at_once(connect) == [], f"round {round_}"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("old", [False, True], ids=["new store", "older store"])
def test_several_processes_opening_a_store_at_once_all_succeed(db_url: str, old: bool) -> None:
    if old:
        _execute(db_url, OLD_FORECASTS_DDL)

    def open_store() -> None:
        TelemetryStore(db_url).engine.dispose()
        TicketOutbox(db_url).close()

    assert _all_at_once(open_store) == []
    store = TelemetryStore(db_url)
    store.record_forecasts([StoredForecast("n1", 0, 0.3, None, False, (), T0, RiskWindow(7.0, 24.0))])
    assert store.latest_forecasts(["n1"])[("n1", 0)].window == RiskWindow(7.0, 24.0)


def test_a_postgresql_store_that_never_answers_fails_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    silent = socket.socket()  # accepts connections (the kernel does) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setattr(store_module, "POSTGRES_CONNECT_TIMEOUT_S", 1)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="timeout"):
            TelemetryStore(f"postgresql+psycopg://gpumedic@127.0.0.1:{silent.getsockname()[1]}/gpumedic")
    finally:
        silent.close()
    # One wait (libpq waits at least 2 s), not one per schema attempt; without the timeout it waits for ever.
    assert time.monotonic() - started < 9  # five attempts would take at least 10 s


def test_observations_round_trip_and_a_newer_sweeps_row_is_never_overwritten_by_an_older_one(db_url: str) -> None:
    store = TelemetryStore(db_url)
    dark = Observation("n1", T0 + timedelta(hours=7), T0, T0 - timedelta(days=3))
    never = Observation("n2", T0, None, T0 - timedelta(hours=1))
    store.record_observations([dark, never])
    assert store.last_observations(["n1", "n2", "n3"]) == {"n1": dark, "n2": never}
    # A quick sweep that started before the one recorded, and finished after it, changes nothing...
    store.record_observations([Observation("n1", T0 + timedelta(hours=6), T0 + timedelta(hours=6), T0)])
    assert store.last_observations(["n1"]) == {"n1": dark}
    # ...a later sweep replaces the row.
    seen = Observation("n1", T0 + timedelta(hours=8), T0 + timedelta(hours=8), T0 - timedelta(days=3))
    store.record_observations([seen])
    assert store.last_observations(["n1"]) == {"n1": seen}
