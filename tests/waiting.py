"""Waiting for something another process or thread does, without guessing how long it takes."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], *, timeout_s: float = 15.0, every_s: float = 0.05) -> bool:
    """True as soon as `condition()` is, False if it is still false after `timeout_s`.

    A fixed sleep before an assertion passes on an idle machine and fails on a loaded CI runner;
    polling up to a generous deadline costs nothing when the condition comes quickly.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
