"""Wording shared by reports, notes and logs. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def first_named(names: Sequence[str], limit: int = 10) -> str:
    """The first `limit` names, then how many more: "a, b, c and 12 more" (a rack gone dark is hundreds)."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
