from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, RowRemapBanks, XidEvent

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _telemetry(at: datetime, *, sbe: int, errors: tuple[str, ...] = ()) -> NodeTelemetry:
    gpu = GpuTelemetry(index=0, uuid="GPU-a", pci_bus_id="00000000:3B:00.0", ecc_sbe_aggregate=sbe,
                       throttle_reasons=frozenset({"gpu_idle"}), remap_banks=RowRemapBanks(max=640, none=0))
    xid = XidEvent(code=79, pci_bus_id="0000:3b:00.0", time=at, text="GPU has fallen off the bus.")
    return NodeTelemetry(node="n1", collected_at=at, source="ssh", gpus=(gpu,), xid_events=(xid,),
                         collection_errors=errors)


def test_snapshot_round_trips_and_failed_collections_do_not_replace_it(tmp_path: Path) -> None:
    store = TelemetryStore(f"sqlite:///{tmp_path / 't.db'}")
    good = _telemetry(T0, sbe=5)
    store.record([good])
    store.record([_telemetry(T0 + timedelta(hours=1), sbe=9, errors=("unreachable",))])
    assert store.last_snapshots(["n1"]) == {"n1": good}


def test_prior_xids_are_keyed_by_pci_bus_id_within_the_window(tmp_path: Path) -> None:
    store = TelemetryStore(f"sqlite:///{tmp_path / 't.db'}")
    store.record([_telemetry(T0, sbe=1)])
    assert store.prior_xids(["n1"], T0 + timedelta(hours=1), timedelta(days=1)) == {"n1": {"0000:3b:00.0": {79}}}
    assert store.prior_xids(["n1"], T0, timedelta(days=1)) == {}  # not *before* the sweep that saw it
    assert store.prior_xids(["n1"], T0 + timedelta(days=3), timedelta(days=1)) == {}


def test_samples_are_the_history_rows_the_forecaster_reads(tmp_path: Path) -> None:
    store = TelemetryStore(f"sqlite:///{tmp_path / 't.db'}")
    store.record([_telemetry(T0, sbe=3)])
    rows = {(s.field, s.value) for s in store.iter_samples()}
    assert ("ecc_sbe_aggregate", 3.0) in rows and ("xid", 79.0) in rows
