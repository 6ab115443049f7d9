from __future__ import annotations

from pathlib import Path

import pytest

from gpumedic.config import (
    ConfigError,
    ConflictingClusters,
    KubernetesSettings,
    cluster_access,
    load_fleet_file,
    load_fleet_settings,
)
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


# --------------------------------------------------------------------------- the fleet's cluster


def _cluster_block(tmp_path: Path, block: str) -> KubernetesSettings | None:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet:\n  source: exporter\n  nodes: [{{name: a}}]\n{block}")
    return load_fleet_settings(path).kubernetes


def test_the_cluster_is_the_one_the_fleet_file_names_with_its_context(tmp_path: Path) -> None:
    kubernetes = _cluster_block(tmp_path, "  kubernetes: {kubeconfig: kube/prod.yaml, context: prod}\n")
    cluster = cluster_access(kubernetes, {"GPUMEDIC_KUBECONFIG": "/elsewhere"})
    assert (cluster.kubeconfig, cluster.context) == (str(tmp_path / "kube" / "prod.yaml"), "prod")
    assert "fleet file" in cluster.chosen_by and str(tmp_path / "kube" / "prod.yaml") in str(cluster)
    assert "$GPUMEDIC_KUBECONFIG (/elsewhere) is not used" in str(cluster)  # the run's log says what lost
    same = cluster_access(kubernetes, {"GPUMEDIC_KUBECONFIG": str(tmp_path / "kube" / "prod.yaml")})
    assert same.chosen_by == "the fleet file's kubernetes.kubeconfig"


def test_without_a_kubeconfig_in_the_fleet_file_the_environment_then_the_clients_default_decide(
    tmp_path: Path,
) -> None:
    with_context = _cluster_block(tmp_path, "  kubernetes: {context: prod}\n")
    from_env = cluster_access(with_context, {"GPUMEDIC_KUBECONFIG": "/etc/gpumedic/kubeconfig"})
    assert (from_env.kubeconfig, from_env.context) == ("/etc/gpumedic/kubeconfig", "prod")
    default = cluster_access(None, {})
    assert (default.kubeconfig, default.context) == (None, None)
    assert "$KUBECONFIG" in default.chosen_by


def test_a_run_given_the_fleet_files_kubeconfig_under_another_spelling_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / "prod.yaml").write_text("{}")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "kube" / "prod.yaml")
    kubernetes = _cluster_block(tmp_path, "  kubernetes: {kubeconfig: kube/prod.yaml, context: prod}\n")
    for spelling in (str(tmp_path / "kube" / ".." / "kube" / "prod.yaml"), str(tmp_path / "link.yaml")):
        cluster = cluster_access(kubernetes, {}, given=spelling)
        assert (cluster.kubeconfig, cluster.context) == (str(tmp_path / "kube" / "prod.yaml"), "prod")


def test_a_run_given_another_kubeconfig_than_the_fleet_files_is_refused(tmp_path: Path) -> None:
    kubernetes = _cluster_block(tmp_path, "  kubernetes: {kubeconfig: /etc/gpumedic/prod.yaml}\n")
    with pytest.raises(ConflictingClusters) as refused:
        cluster_access(kubernetes, {}, given="/root/.kube/config")
    assert "/root/.kube/config" in str(refused.value) and "/etc/gpumedic/prod.yaml" in str(refused.value)
    # Without a kubeconfig in the fleet file, the run's own is the cluster (and the file's context applies).
    given = cluster_access(_cluster_block(tmp_path, "  kubernetes: {context: c}\n"), {}, given="/k")
    assert (given.kubeconfig, given.context) == ("/k", "c")


def test_a_fleet_file_path_left_as_a_deployment_template_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="set GPUMEDIC_FLEET_FILE"):
        load_fleet_file("{{ $GPUMEDIC_FLEET_FILE }}")
