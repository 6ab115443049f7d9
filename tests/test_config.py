from __future__ import annotations

from pathlib import Path

import pytest

from gpumedic.config import ConfigError, load_fleet_file
from tests.conftest import EXAMPLE_FLEET


def test_the_example_simulated_fleet_file_loads() -> None:
    loaded = load_fleet_file(EXAMPLE_FLEET)
    assert loaded.simulate is not None and loaded.simulate.nodes == 12 and len(loaded.simulate.faults) == 9


def test_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet:\n  source: ssh\n  nodes: [{name: a}]\n  concurency: 3\n")
    with pytest.raises(ConfigError) as err:
        load_fleet_file(path)
    message = str(err.value)
    assert str(path) in message and "fleet.concurency" in message


def test_ssh_source_without_ssh_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet:\n  source: ssh\n  nodes: [{name: a}]\n")
    with pytest.raises(ConfigError, match="needs an `ssh:` block"):
        load_fleet_file(path)


def test_a_typo_in_a_policy_override_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet:\n  source: exporter\n  nodes: [{name: a}]\n  policy: {sbe_rate_typo: 3}\n")
    with pytest.raises(ConfigError, match="policy"):
        load_fleet_file(path)


def test_relative_key_paths_are_relative_to_the_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet:\n  ssh: {key_file: keys/id, known_hosts: kh}\n  nodes: [{name: a}]\n")
    fleet = load_fleet_file(path).fleet
    assert fleet is not None and fleet.ssh is not None and fleet.ssh.key_file == tmp_path / "keys" / "id"


def test_a_relative_forecast_model_is_relative_to_the_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet:\n  source: exporter\n  nodes: [{name: a}]\n  forecast_model: models/fleet.json\n")
    fleet = load_fleet_file(path).fleet
    assert fleet is not None and fleet.forecast_model == tmp_path / "models" / "fleet.json"
    path.write_text("fleet:\n  source: exporter\n  nodes: [{name: a}]\n")
    fleet = load_fleet_file(path).fleet
    assert fleet is not None and fleet.forecast_model is None  # the shipped model


def test_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fleet_file(path)
