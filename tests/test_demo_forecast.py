"""The demo's forecast history: a healthy month for every GPU, and one GPU the forecaster must single out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gpumedic.demo_forecast import DegradingGpu, background_history, demo_history
from gpumedic.domain.forecast import HistoryFrame, forecast_frame, to_epoch

NOW = datetime(2026, 11, 22, 20, 7, 13, tzinfo=UTC)
NODES = [f"gpu-node-{i:02d}" for i in range(12)]
DEGRADING = DegradingGpu("gpu-node-00", 4)


def test_the_background_is_the_demo_fleet_over_the_month_before_now() -> None:
    frame = background_history(NODES, 8, NOW, seed=7)
    assert {node for node, _ in frame.keys} <= set(NODES)
    assert len({key for key in frame.keys if key[1] is not None}) == 96
    assert int(frame.time.max()) <= to_epoch(NOW) - 3600
    assert int(frame.time.min()) >= to_epoch(NOW - timedelta(days=31))


def test_the_degrading_gpu_s_node_reports_what_its_history_ends_on() -> None:
    rows = list(DEGRADING.history(NOW))
    assert all(NOW - timedelta(days=DEGRADING.days) < r.time < NOW for r in rows)
    last = {r.field: r.value for r in sorted(rows, key=lambda r: r.time)}
    now = DEGRADING.counters_now(NOW)
    assert (now["sbe_agg"], now["remap_corr"]) == (last["ecc_sbe_aggregate"], last["remapped_rows_correctable"])
    assert now["banks"][3] == last["remap_banks_low"] == 1  # one bank low on spares, as the sweep will read it
    assert sum(r.field == "xid" and r.value == 63 for r in rows) == DEGRADING.remaps
    assert DegradingGpu("n", 0, remaps=2).counters_now(NOW)["banks"][3] == 0  # no bank low before the third


def test_the_forecast_singles_out_the_degrading_gpu_and_no_healthy_one() -> None:
    forecasts = forecast_frame(HistoryFrame.from_samples(demo_history(NODES, 8, DEGRADING, NOW, seed=7)), NOW)
    assert len(forecasts) == 96
    alarms = [(f.node, f.gpu) for f in forecasts if f.alarm]
    assert alarms == [(DEGRADING.node, DEGRADING.gpu)]
    assert forecasts[0].factors and forecasts[1].risk < 0.1
