"""What a quick sweep cannot read, and the last full sweep's word on it.

A quick sweep (every 15 minutes) skips `nvidia-smi -q` and the NVLink error counters, the slow
part of a collection. It therefore cannot see the SRAM threshold flag, the spare-row bank
histogram or the GPU's own slowdown temperature. Judged on its own, a GPU whose banks ran out of
spare rows at the 02:00 full sweep would read healthy at 02:15, and the report, the Node's
`GpuUnhealthy` condition and the sweep's events would flip back and forth with the schedule.

So a quick sweep is assessed with the *state* readings of the last full sweep filled in
(`with_full_readings`), while they are younger than the policy's `full_reading_max_age_hours`.
State readings only: a flag or a histogram stays true until something changes the board, and
the next full sweep reads it again. Gauges and counters are never carried. A temperature read
hours ago is not the temperature now, and a counter carried to a later time stamp would turn
into a false rate; rates of the counters only a full sweep reads (PCIe replays, NVLink CRC) are
taken between two full sweeps (`full_baseline`), and a quick sweep states the rates the last full
sweep measured (between it and the full sweep before it), under the same age limit.

A reading is carried only onto the same board (`NodeTelemetry.same_gpu`: by UUID first), and
only where the quick sweep has none of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta

from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry
from gpumedic.domain.wording import first_named

__all__ = [
    "CARRIED_FIELDS", "carried_note", "full_baseline", "quick_sweep_note", "readings_to_carry", "with_full_readings",
    "without_full_readings",
]

# What `nvidia-smi -q` (or a full DCGM/exporter read) says about the board's state, that no
# quick sweep asks for. Each stands until the board changes: a GPU reset settles a pending
# remap (and the quick sweep's own `remapped_rows.pending` then says so: never overwritten).
CARRIED_FIELDS: tuple[str, ...] = (
    "temp_slowdown_c",
    "temp_shutdown_c",
    "sram_threshold_exceeded",
    "remap_banks",
    "row_remap_pending",
    "row_remap_failure",
    "retired_pages_pending",
)


def readings_to_carry(
    telemetry: NodeTelemetry, last_full: NodeTelemetry | None, max_age: timedelta
) -> NodeTelemetry | None:
    """The full sweep whose state readings this sweep's assessment takes up, or None.

    None for a full reading (it has its own), for a node that no full sweep has read cleanly,
    and for a full reading older than `max_age` (or newer than this one: clocks).
    """
    if telemetry.depth == "full" or last_full is None or last_full.collection_errors:
        return None
    age = telemetry.collected_at - last_full.collected_at
    if age < timedelta(0) or age > max_age:
        return None
    return last_full


def with_full_readings(gpu: GpuTelemetry, full: NodeTelemetry) -> GpuTelemetry:
    """`gpu` with the state readings it lacks taken from the same board in `full`."""
    same = full.same_gpu(gpu)
    if same is None:
        return gpu
    carried = {
        name: getattr(same, name)
        for name in CARRIED_FIELDS
        if getattr(gpu, name) is None and getattr(same, name) is not None
    }
    return dataclasses.replace(gpu, **carried) if carried else gpu


def full_baseline(
    telemetry: NodeTelemetry, previous: NodeTelemetry | None, last_full: NodeTelemetry | None
) -> NodeTelemetry | None:
    """The earlier reading that rates of the full-sweep-only counters are taken against.

    A full sweep after a quick one would otherwise compare its PCIe replay and NVLink CRC
    counters with a reading that has none, and no such rate would ever be computed on a fleet
    with quick sweeps. A quick sweep reads none of them: no baseline.
    """
    if telemetry.depth == "quick":
        return None
    if previous is not None and previous.depth == "full":
        return previous
    return last_full


def carried_note(full: NodeTelemetry) -> str:
    """What a finding made from carried readings says about them. No age in it: the words stay the
    same from one quick sweep to the next, so the Node's condition is not rewritten every 15 minutes."""
    return f"as read by the full sweep at {full.collected_at:%Y-%m-%d %H:%M} UTC"


def without_full_readings(
    telemetry: Iterable[NodeTelemetry], last_full: Mapping[str, NodeTelemetry], max_age: timedelta
) -> list[str]:
    """The nodes a quick sweep read cleanly but has no full reading to take state readings from:
    never read by a full sweep, or not cleanly for longer than `max_age` (a nightly sweep failing
    on them, or not scheduled at all). Their SRAM flag and spare rows are not being judged."""
    return [t.node for t in telemetry
            if t.depth == "quick" and not t.collection_errors
            and readings_to_carry(t, last_full.get(t.node), max_age) is None]


def quick_sweep_note(max_age_hours: float, without_full: Sequence[str] = ()) -> str:
    """What a quick sweep's report says about what it did not read, naming (up to ten of) the
    nodes it had no full reading for."""
    if max_age_hours <= 0:
        return ("Quick sweep: `nvidia-smi -q` and the NVLink error counters were not read, and the policy "
                "takes nothing from the last full sweep (`full_reading_max_age_hours: 0`): the SRAM flag, "
                "spare-row banks and slowdown temperatures are not judged.")
    note = ("Quick sweep: `nvidia-smi -q` and the NVLink error counters were not read. The SRAM flag, "
            "spare-row banks, remap state and slowdown temperatures are those of each node's last full "
            f"sweep, where it is at most {max_age_hours:g} h old; a reason that rests on them says when "
            "they were read.")
    if without_full:
        named = first_named(without_full)
        note += (f" **{len(without_full)} node{'s' if len(without_full) != 1 else ''} had no clean full sweep "
                 f"in that time, so nothing of this is judged there:** {named}. Check that the nightly full "
                 "sweep runs and reaches them.")
    return note
