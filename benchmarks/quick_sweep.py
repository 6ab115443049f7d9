"""What keeping the last full sweep's word costs a quick sweep on a large fleet.

    python benchmarks/quick_sweep.py [--sizes 100 1000 3000]

A quick sweep reads each node's last full snapshot and the full snapshot before it from the store
as well as its last snapshot, and assesses GPUs with the carried state readings filled in (and,
where that finds something, once more without them, to say which findings rest on them) and the
PCIe replay and NVLink CRC rates the last full sweep measured. For each fleet size (8-GPU nodes, 1%
of GPUs with a carried SRAM flag, 1% with a carried PCIe replay rate) it prints, in milliseconds:
- load: reading the last snapshots, and the two full snapshots, from a SQLite store;
- assess: assessing every node's quick reading alone, and with its full readings;
the ratio of the two assessments, and what the change adds to a sweep (the full snapshots' loads
plus the extra assessment time), in all and per node.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumedic.adapters.store import TelemetryStore
from gpumedic.domain.assess import assess_node
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, RowRemapBanks

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def _full_gpu(index: int, flagged: bool) -> GpuTelemetry:
    return GpuTelemetry(
        index=index, uuid=f"GPU-{index:08d}-benchmark", pci_bus_id=f"00000000:{0x18 + 0x11 * index:02X}:00.0",
        temperature_c=40.0, temp_slowdown_c=87.0, temp_shutdown_c=92.0, power_w=300.0, power_limit_w=700.0,
        ecc_sbe_volatile=0, ecc_dbe_volatile=0, ecc_sbe_aggregate=3, ecc_dbe_aggregate=0,
        sram_threshold_exceeded=flagged, remapped_rows_correctable=0, remapped_rows_uncorrectable=0,
        row_remap_pending=False, row_remap_failure=False, remap_banks=RowRemapBanks(2560, 0, 0, 0, 0),
        nvlinks=tuple(NvLinkState(link, True, 0, 0, 0) for link in range(18)), pcie_replay=40,
    )


def _quick(gpu: GpuTelemetry) -> GpuTelemetry:
    return dataclasses.replace(gpu, temp_slowdown_c=None, temp_shutdown_c=None, sram_threshold_exceeded=None,
                               remap_banks=None, pcie_replay=None,
                               nvlinks=tuple(NvLinkState(link.link, True) for link in gpu.nvlinks))


def fleet(size: int) -> tuple[list[NodeTelemetry], list[NodeTelemetry], list[NodeTelemetry]]:
    """(full readings the night before, full readings at 02:00, quick readings at 09:15) for `size` nodes."""
    before, full, quick = [], [], []
    for n in range(size):
        gpus = tuple(_full_gpu(i, flagged=(n * 8 + i) % 100 == 0) for i in range(8))
        # 1% of GPUs replayed 24,000 times in the day between the two full sweeps: 1,000/h, above the watch.
        replayed = tuple(dataclasses.replace(g, pcie_replay=g.pcie_replay + (24_000 if (n * 8 + i) % 100 == 50 else 0))
                         for i, g in enumerate(gpus))
        before.append(NodeTelemetry(f"gpu-node-{n:05d}", T0 - timedelta(days=1), "ssh", gpus, expected_gpu_count=8))
        full.append(NodeTelemetry(f"gpu-node-{n:05d}", T0, "ssh", replayed, expected_gpu_count=8))
        quick.append(NodeTelemetry(f"gpu-node-{n:05d}", T0 + timedelta(hours=7, minutes=15), "ssh",
                                   tuple(_quick(g) for g in gpus), expected_gpu_count=8, depth="quick"))
    return before, full, quick


def _ms(action) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = action()
    return (time.perf_counter() - start) * 1000, result


def figures(size: int, workdir: Path) -> dict[str, float]:
    before, full, quick = fleet(size)
    store = TelemetryStore(f"sqlite:///{workdir / f'store-{size}.db'}")
    store.record(before)
    store.record(full)
    store.record(quick)
    names = [t.node for t in quick]
    policy = HealthPolicy()
    load_last, last = _ms(lambda: store.last_snapshots(names))
    load_full, last_full = _ms(lambda: store.last_snapshots(names, full=True))
    load_before, before_full = _ms(lambda: store.last_snapshots(names, before_last_full=True))
    assert isinstance(last, dict) and isinstance(last_full, dict) and isinstance(before_full, dict)
    assert len(last_full) == len(before_full) == size
    alone_ms, alone = _ms(lambda: [assess_node(t, policy) for t in quick])
    carried_ms, carried = _ms(lambda: [assess_node(t, policy, last_full=last_full[t.node],
                                                   before_last_full=before_full[t.node]) for t in quick])
    assert isinstance(alone, list) and isinstance(carried, list)
    failed = sum(a.verdict == "failed" for a in carried)
    watched = sum(g.verdict == "watch" for a in carried for g in a.gpus)
    if any(a.verdict != "healthy" for a in alone) or failed != sum(
            any(g.sram_threshold_exceeded for g in t.gpus) for t in full) or watched != sum(
            (n * 8 + i) % 100 == 50 for n in range(size) for i in range(8)):
        raise SystemExit(f"{size} nodes: unexpected verdicts (alone: not all healthy, or {failed} failed / "
                         f"{watched} GPUs watched with carry)")
    return {"load last": load_last, "load full": load_full + load_before, "assess alone": alone_ms,
            "assess carried": carried_ms, "failed": failed, "watched": watched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000])
    args = parser.parse_args()
    print(f"{'nodes':>6} {'load last ms':>13} {'load fulls ms':>14} {'assess alone ms':>16} {'assess carried ms':>18} "
          f"{'assess ratio':>13} {'added ms':>9} {'added ms/node':>14} {'failed nodes':>13} {'watched GPUs':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            f = figures(size, Path(tmp))
            added = f["load full"] + f["assess carried"] - f["assess alone"]
            print(f"{size:6d} {f['load last']:13.1f} {f['load full']:14.1f} {f['assess alone']:16.1f} "
                  f"{f['assess carried']:18.1f} {f['assess carried'] / f['assess alone']:13.2f} {added:9.1f} "
                  f"{added / size:14.3f} {int(f['failed']):13d} {int(f['watched']):13d}")


if __name__ == "__main__":
    main()
