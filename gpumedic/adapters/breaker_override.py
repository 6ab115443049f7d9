"""The fleet-wide circuit-breaker override, kept as a Prefect Variable: visible and editable in the UI.

One override at a time, for a known event (a driver rollout, a rack's power work): while it lasts, the
breaker stays closed and each incident does not ask for its own override. It is written by
`gpumedic remediation breaker-override` (who, why, until; at most 24 hours) and read by every
remediation decision. A value that cannot be read is no override: the breaker then decides as if none
were set, which is the safe side.
"""

from __future__ import annotations

import logging

from gpumedic.domain.budget import BreakerOverride

VARIABLE = "gpumedic-breaker-override"

log = logging.getLogger(__name__)


def read_breaker_override() -> BreakerOverride | None:
    from prefect.variables import Variable

    value = Variable.get(VARIABLE, default=None)
    if value is None:
        return None
    try:
        return BreakerOverride.from_json(value)
    except ValueError as err:
        log.warning("the Prefect variable %s is not a breaker override, so none applies: %s", VARIABLE, err)
        return None


def set_breaker_override(override: BreakerOverride) -> None:
    from prefect.variables import Variable

    Variable.set(VARIABLE, override.to_json(), tags=["gpumedic"], overwrite=True)


def clear_breaker_override() -> bool:
    """True if there was one."""
    from prefect.variables import Variable

    return bool(Variable.unset(VARIABLE))
