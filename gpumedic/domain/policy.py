"""Thresholds the health assessment applies, with defaults an SRE can defend.

A fleet YAML may override any field (``HealthPolicy.model_validate(mapping)``, or
``HealthPolicy.from_mapping(mapping, source="fleet.yaml")`` for an error message that names
the file). Unknown fields are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class PolicyError(ValueError):
    """A health policy mapping did not validate; `str(err)` names the source, fields and expectations."""


class HealthPolicy(BaseModel):
    """Every threshold of `gpumedic.domain.assess.assess_node`.

    Rates are per hour and need two sweeps (`previous`); a counter total alone never triggers a
    rate finding, and a counter that went down (driver reload, GPU reset) restarts the rate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- rates (watch / monitor) ----------------------------------------------------------------
    sbe_rate_per_hour_watch: float = Field(
        default=100.0,
        gt=0,
        description=(
            "Correctable (single-bit) ECC errors per hour above which a GPU is watched. Uses the "
            "volatile counter when both sweeps report it, else the aggregate one. A healthy HBM GPU "
            "sees a handful a day; a steady 100/h means a memory region is wearing out and row "
            "remapping or page retirement will follow. Judgement call: DCGM's own SBE limit is a "
            "placeholder."
        ),
    )
    pcie_replay_rate_per_hour_watch: float = Field(
        default=480.0,
        gt=0,
        description=(
            "PCIe replays per hour above which a GPU is watched. 480/h = 8 per minute, the maximum "
            "the driver team recommends (DCGM_LIMIT_MAX_PCIREPLAY_RATE). Totals of 40-120 since "
            "reset are common on healthy H100 nodes, hence a rate and not a total."
        ),
    )
    nvlink_crc_rate_per_hour_watch: float = Field(
        default=360_000.0,
        gt=0,
        description=(
            "NVLink CRC errors per hour on one link above which the GPU is watched. 360,000/h = "
            "100 per second: the driver team says CRC errors only matter above that rate "
            "(DCGM_LIMIT_MAX_NVLINK_CRC_ERROR); below it the link's replay absorbs them."
        ),
    )
    rate_min_interval_minutes: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Shortest gap between two sweeps from which a rate is computed. Below it a single "
            "error extrapolates to an alarming hourly rate, so no rate is computed."
        ),
    )

    # --- thermal and power (degraded / inspect) --------------------------------------------------
    temperature_margin_c: float = Field(
        default=0.0,
        ge=0,
        description=(
            "A GPU at or above (slowdown temperature - margin) is degraded and goes to a human "
            "(inspect: airflow, fans, thermal paste). 0: only at or above slowdown itself."
        ),
    )
    default_slowdown_c: float = Field(
        default=87.0,
        description=(
            "Slowdown temperature assumed when the GPU does not report one. 87 C is the lowest "
            "slowdown among the data-center GPUs in our corpus (V100 SXM2: 87 C; A100 89 C, A40 "
            "95 C, A10 98 C): conservative, so a hot GPU whose limit we cannot read still gets a "
            "look; the reason says the limit was assumed."
        ),
    )
    thermal_throttle_reasons: frozenset[str] = Field(
        default=frozenset({"hw_thermal_slowdown", "sw_thermal_slowdown"}),
        description=(
            "Active clock-event reasons that mean thermal trouble (degraded / inspect). "
            "sw_thermal_slowdown also fires for memory (HBM) temperature while the core is cool."
        ),
    )
    power_throttle_reasons: frozenset[str] = Field(
        default=frozenset({"hw_power_brake_slowdown", "hw_slowdown"}),
        description=(
            "Active clock-event reasons that mean power trouble (degraded / inspect). "
            "hw_power_brake_slowdown is asserted from outside the GPU (chassis, PSU); hw_slowdown "
            "is the hardware umbrella (thermal, power brake or over-current). Deliberately absent: "
            "sw_power_cap (normal: a loaded GPU at its power limit, and seen active on idle A40s) "
            "and gpu_idle (normal)."
        ),
    )

    # --- memory (row remapping, page retirement) --------------------------------------------------
    banks_low_spare_watch: int = Field(
        default=1,
        ge=1,
        description=(
            "Watch a GPU when at least this many memory banks are in the 'Low' bin of the row "
            "remap availability histogram. (Banks in the 'None' bin have no spare row left: replace.)"
        ),
    )
    retired_pages_watch: int = Field(
        default=15,
        ge=1,
        description=(
            "Retired pages (single + double bit, pre-Ampere page retirement) at which a GPU is "
            "watched: DCGM's soft limit (DCGM_LIMIT_MAX_RETIRED_PAGES_SOFT_LIMIT)."
        ),
    )
    retired_pages_replace: int = Field(
        default=60,
        ge=1,
        description=(
            "Retired pages (single + double bit) at which a GPU is replaced: DCGM's limit "
            "(DCGM_LIMIT_MAX_RETIRED_PAGES), NVIDIA's RMA threshold for page retirement."
        ),
    )

    # --- NVLink ------------------------------------------------------------------------------------
    nvlink_inactive_is_fault: bool = Field(
        default=True,
        description=(
            "Treat a reported NVLink that is not active as a fault. Set false for fleets of PCIe "
            "GPUs without NVLink bridges, where the driver may list links that are not cabled."
        ),
    )
    nvlink_down_gpus_reboot: int = Field(
        default=2,
        ge=1,
        description=(
            "When this many GPUs of one node have links down, the node is rebooted rather than "
            "single GPUs reset: the common cause is the NVSwitch/fabric side, not each GPU. A GPU "
            "with every reported link down is rebooted on its own for the same reason."
        ),
    )

    # --- Xid history ---------------------------------------------------------------------------------
    xid_repeat_window_hours: float = Field(
        default=168.0,
        gt=0,
        description=(
            "How far back earlier sweeps count as history for `prior_xids` (Xid 79 again on the same "
            "GPU -> replace; Xid 13/31 repeating -> diagnostics suggested). assess_node reads no "
            "clock: whoever builds `prior_xids` (the telemetry store) keeps only Xids seen within "
            "this many hours before the sweep. A week: a GPU that falls off the bus twice in a week "
            "is not a one-off."
        ),
    )

    unseen_alert_after_hours: float = Field(
        default=6.0,
        gt=0,
        description=(
            "A node no sweep could assess for this long (unreachable, unreadable tools, no health "
            "data: `unknown` every time) is announced once (event `gpumedic.node.unseen`) and listed "
            "as a blind spot in every sweep report until it is seen again. Nothing is done to it: "
            "an unknown node is never remediated. Six hours: longer than a reboot or a driver "
            "upgrade, short enough that a dead node is noticed within a shift."
        ),
    )

    full_reading_max_age_hours: float = Field(
        default=48.0,
        ge=0,
        description=(
            "A quick sweep cannot read the SRAM threshold flag, the spare-row banks, pending or "
            "failed row remaps or the slowdown temperature (`nvidia-smi -q`), so it takes them from "
            "the node's last clean full sweep while that is at most this many hours old; findings "
            "from them say so. 48 h: the nightly full sweep may fail once and the word still "
            "stands. 0: a quick sweep judges only what it read itself."
        ),
    )

    @field_validator("thermal_throttle_reasons", "power_throttle_reasons")
    @classmethod
    def _canonical_reasons(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(reason.strip().lower() for reason in value)

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> HealthPolicy:
        if self.retired_pages_watch > self.retired_pages_replace:
            raise ValueError(
                f"retired_pages_watch ({self.retired_pages_watch}) must not exceed "
                f"retired_pages_replace ({self.retired_pages_replace})"
            )
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, source: str = "health policy") -> HealthPolicy:
        """Validate a mapping (a fleet YAML section); errors name `source`, each field and the problem."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            problems = []
            for error in err.errors():
                field = ".".join(str(part) for part in error["loc"]) or "(policy)"
                if error["type"] == "extra_forbidden":
                    known = ", ".join(sorted(cls.model_fields))
                    problems.append(f"unknown field {field!r} (known fields: {known})")
                else:
                    problems.append(f"{field}: {error['msg']} (got {error.get('input')!r})")
            raise PolicyError(f"{source}: " + "; ".join(problems)) from err
