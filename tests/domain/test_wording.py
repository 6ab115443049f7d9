"""Shared wording."""

from __future__ import annotations

from gpumedic.domain.wording import first_named


def test_a_long_list_names_the_first_ones_and_counts_the_rest() -> None:
    names = [f"n{i}" for i in range(13)]
    assert first_named(names) == "n0, n1, n2, n3, n4, n5, n6, n7, n8, n9 and 3 more"
    assert first_named(names, 13) == ", ".join(names)
    assert first_named([]) == ""
