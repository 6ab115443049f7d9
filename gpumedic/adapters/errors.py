"""The two kinds of adapter failure. A Prefect `retry_condition_fn` needs only this."""

from __future__ import annotations


class AdapterError(Exception):
    """An external system could not do what was asked; `str(err)` is for an operator."""


class TransientError(AdapterError):
    """Worth retrying: timeouts, refused or reset connections, 5xx, 409 conflicts, 429."""


class PermanentError(AdapterError):
    """Retrying will not help: authentication, host-key mismatch, bad input, 4xx."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)
