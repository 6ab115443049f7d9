from __future__ import annotations


class ParseError(ValueError):
    """Tool output could not be understood; `str(err)` is the operator-facing reason."""

    def __init__(self, source: str, reason: str, excerpt: str = "") -> None:
        self.source = source
        self.reason = reason
        self.excerpt = excerpt[:200]
        detail = f": {self.excerpt!r}" if self.excerpt else ""
        super().__init__(f"{source}: {reason}{detail}")
