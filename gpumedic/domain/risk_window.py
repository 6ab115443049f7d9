"""What a forecast risk is a probability of: failure within the model's lead plus the horizon.

The hazard model is fitted on the backtest's label, "fails in [t + lead, t + lead + horizon]", with the
rows whose GPU fails inside the lead left out (neither a clean positive nor a clean negative), so a GPU
that is failing now scores as high as one that fails in five days: measured, a risk above 0.6 says 0.94
and 0.96 of those GPUs fail within lead + horizon (docs/forecasting.md, "Calibration"). The shipped
model's lead is 24 h, so its 7-day risk is a probability of failure within 8 days, and every report,
approval form and ticket says so rather than "within 7 days".
"""

from __future__ import annotations

from dataclasses import dataclass

HOURS_PER_DAY = 24.0


@dataclass(frozen=True, slots=True)
class RiskWindow:
    days: float | None  # the horizon; None: not recorded by the gpumedic that scored it
    starts_after_hours: float | None  # the model's lead; None: not recorded by the gpumedic that scored it

    def __str__(self) -> str:
        """The phrase that follows "probability of failure", e.g. "within 8 days of the forecast"."""
        if self.days is None:
            return "within the forecast's horizon (not recorded by the gpumedic version that scored it)"
        if self.starts_after_hours is None:
            return (f"within {_days(self.days)} of the forecast plus its model's lead (the lead was not recorded "
                    "by the gpumedic version that scored it; 1 day for the shipped model)")
        return f"within {_days(self.days + self.starts_after_hours / HOURS_PER_DAY)} of the forecast"


# A forecast recorded before its window was: what it is a probability over is not known.
UNRECORDED = RiskWindow(None, None)


def _days(days: float) -> str:
    return f"{days:g} day{'' if days == 1 else 's'}"
