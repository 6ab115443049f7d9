"""Which readings the history keeps (pure rule; the store applies it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpumedic.domain.history import HistoryThinning, Sample

T0 = datetime(2026, 11, 1, tzinfo=UTC)
RULE = HistoryThinning()


def _s(field: str, value: float, minutes: float) -> Sample:
    return Sample(T0 + timedelta(minutes=minutes), "n1", 0, field, value)


@pytest.mark.parametrize(
    ("sample", "last", "kept"),
    [
        (_s("ecc_sbe_volatile", 5, 15), None, True),  # first reading of a series
        (_s("ecc_sbe_volatile", 5, 15), (T0, 5.0), False),  # unchanged
        (_s("ecc_sbe_volatile", 7, 15), (T0, 5.0), True),  # grew
        (_s("ecc_sbe_volatile", 0, 15), (T0, 5.0), True),  # dropped: a reset is evidence
        (_s("row_remap_pending", 1, 15), (T0, 0.0), True),
        (_s("ecc_sbe_volatile", 5, 24 * 60), (T0, 5.0), True),  # daily heartbeat
        (_s("temperature_c", 61, 15), (T0, 60.0), False),  # gauges at most hourly
        (_s("temperature_c", 61, 56), (T0, 60.0), True),
        (_s("power_w", 300, 60), (T0, 300.0), True),
        (_s("xid", 79, 1), (T0, 79.0), True),  # events always
        (_s("ecc_sbe_volatile", 5, -30), (T0, 5.0), True),  # the clock went backwards: keep, never lose
    ],
)
def test_keeps_changes_events_hourly_gauges_and_a_heartbeat(
    sample: Sample, last: tuple[datetime, float] | None, kept: bool
) -> None:
    assert RULE.keep(sample, last) is kept
