"""HealthPolicy: defaults an SRE can defend, overrides from a fleet YAML, typos rejected."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpumedic.domain.policy import HealthPolicy, PolicyError


def test_defaults_treat_power_cap_and_idle_as_normal() -> None:
    policy = HealthPolicy()
    normal = {"sw_power_cap", "gpu_idle"}
    assert not normal & policy.thermal_throttle_reasons
    assert not normal & policy.power_throttle_reasons
    assert "hw_power_brake_slowdown" in policy.power_throttle_reasons
    assert {"hw_thermal_slowdown", "sw_thermal_slowdown"} <= policy.thermal_throttle_reasons


def test_defaults_follow_the_documented_figures() -> None:
    policy = HealthPolicy()
    assert policy.pcie_replay_rate_per_hour_watch == 8 * 60  # 8 replays a minute
    assert policy.nvlink_crc_rate_per_hour_watch == 100 * 3600  # 100 a second
    assert (policy.retired_pages_watch, policy.retired_pages_replace) == (15, 60)
    assert policy.temperature_margin_c == 0
    assert policy.default_slowdown_c == 87


def test_every_threshold_is_documented() -> None:
    for name, field in HealthPolicy.model_fields.items():
        assert field.description, name
        assert len(field.description) > 40, name


def test_a_fleet_yaml_overrides_any_field() -> None:
    policy = HealthPolicy.model_validate(
        {
            "sbe_rate_per_hour_watch": 20,
            "temperature_margin_c": 5,
            "power_throttle_reasons": ["HW_Power_Brake_Slowdown "],
            "nvlink_inactive_is_fault": False,
        }
    )
    assert policy.sbe_rate_per_hour_watch == 20
    assert policy.temperature_margin_c == 5
    assert policy.power_throttle_reasons == frozenset({"hw_power_brake_slowdown"})
    assert policy.nvlink_inactive_is_fault is False
    assert policy.pcie_replay_rate_per_hour_watch == HealthPolicy().pcie_replay_rate_per_hour_watch


def test_a_typo_is_an_error_that_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        HealthPolicy.model_validate({"sbe_rate_per_hour_wacth": 20})
    message = str(caught.value)
    assert "sbe_rate_per_hour_wacth" in message
    assert "Extra inputs are not permitted" in message


def test_from_mapping_names_the_source_the_field_and_the_known_fields() -> None:
    with pytest.raises(PolicyError) as caught:
        HealthPolicy.from_mapping({"temprature_margin_c": 3}, source="fleets/prod.yaml")
    message = str(caught.value)
    assert message.startswith("fleets/prod.yaml: ")
    assert "unknown field 'temprature_margin_c'" in message
    assert "temperature_margin_c" in message.split("known fields:")[1]


def test_from_mapping_says_what_was_expected() -> None:
    with pytest.raises(
        PolicyError, match=r"temperature_margin_c: Input should be greater than or equal to 0 \(got -2\)"
    ):
        HealthPolicy.from_mapping({"temperature_margin_c": -2}, source="fleet.yaml")


def test_from_mapping_accepts_a_valid_mapping() -> None:
    assert HealthPolicy.from_mapping({"banks_low_spare_watch": 4}).banks_low_spare_watch == 4


def test_watch_threshold_above_replace_threshold_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must not exceed"):
        HealthPolicy(retired_pages_watch=80, retired_pages_replace=60)


def test_policy_is_frozen() -> None:
    policy = HealthPolicy()
    with pytest.raises(ValidationError):
        policy.sbe_rate_per_hour_watch = 1
