"""The fleet file: one YAML document that says which nodes to sweep and how.

A real fleet names its nodes (or a Kubernetes label selector), the SSH user, key and
known_hosts, and the telemetry source. A `simulate:` block instead describes a
simulated fleet that gpumedic starts itself. Errors name the file and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpumedic.sim.fleet import FleetSimulation


class ConfigError(ValueError):
    """A fleet file is unreadable or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshConfig(_Strict):
    user: str = "root"
    key_file: Path = Field(description="private key for key authentication (no passwords)")
    known_hosts: Path = Field(description="known_hosts file used for strict host-key checking")
    port: int = Field(default=22, ge=1, le=65535)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)
    strict_host_keys: bool = Field(default=True, description="refuse unknown or changed host keys")
    jump_host: str | None = Field(default=None, description="bastion as user@host[:port]")


class NodeEntry(_Strict):
    name: str
    host: str | None = Field(default=None, description="address to SSH to (default: the name)")
    port: int | None = Field(default=None, ge=1, le=65535)
    exporter_url: str | None = Field(default=None, description="dcgm-exporter /metrics URL")
    gpus: int | None = Field(default=None, ge=0, description="expected GPU count, overrides gpus_per_node")


class KubernetesSettings(_Strict):
    """The cluster the fleet's nodes belong to: their inventory when `nodes:` is empty, and where
    each sweep's verdicts are published as Node conditions."""

    label_selector: str = "nvidia.com/gpu.present=true"
    kubeconfig: Path | None = None
    context: str | None = None
    node_conditions: bool = Field(
        default=True,
        description="write each sweep's verdict to its Node as the GpuUnhealthy condition (RBAC: patch nodes/status)",
    )
    expected_gpus_label: str | None = Field(
        default=None,
        description="with nodes taken from Kubernetes: a Node label holding the GPUs that node should have (set by "
        "provisioning, e.g. per node pool), for fleets whose nodes differ; a Node without it expects gpus_per_node, "
        "one whose value is not a count expects nothing. Not GPU Feature Discovery's nvidia.com/gpu.count nor the "
        "device plugin's capacity: both drop with a GPU that fell off the bus, which would then go unseen",
    )


KUBECONFIG_ENV = "GPUMEDIC_KUBECONFIG"


class ConflictingClusters(ConfigError):
    """A run was pointed at a kubeconfig other than the one its fleet file names."""


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """The one cluster a fleet's sweeps and remediation talk to.

    `kubeconfig` None is the Kubernetes client's own default ($KUBECONFIG, else ~/.kube/config);
    `context` None is that file's current context. `chosen_by` says, in words, where the kubeconfig
    came from, for the run's log and its errors.
    """

    kubeconfig: str | None
    context: str | None
    chosen_by: str

    def __str__(self) -> str:
        where = self.kubeconfig or "the default kubeconfig"
        context = f", context {self.context}" if self.context else ""
        return f"{where}{context} ({self.chosen_by})"


def cluster_access(
    kubernetes: KubernetesSettings | None, environ: Mapping[str, str], *, given: str | None = None
) -> ClusterAccess:
    """Where the fleet's Nodes are: the fleet file's `kubernetes:` block, else `$GPUMEDIC_KUBECONFIG`,
    else the client's default; `given` (a run's explicit kubeconfig) must agree with the fleet file.

    One answer for every part of the product: a sweep that read its records on one cluster and a
    remediation that cordoned nodes on another would act on a node nobody assessed. A `given` file
    that differs from the fleet file's raises `ConflictingClusters` rather than pick one.
    """
    named = str(kubernetes.kubeconfig) if kubernetes is not None and kubernetes.kubeconfig else None
    context = kubernetes.context if kubernetes is not None else None
    if given and named is not None and not _same_file(given, named):
        raise ConflictingClusters(
            f"this run was given the kubeconfig {given}, but its fleet file names {named} "
            "(fleet.kubernetes.kubeconfig): the sweeps and remediation must act on one cluster; "
            "leave the run's kubeconfig empty, or make the two the same file"
        )
    if named is not None:
        why = "the fleet file's kubernetes.kubeconfig"
        from_env = environ.get(KUBECONFIG_ENV)
        if from_env and not _same_file(from_env, named):  # said, so a stale environment is seen in the log
            why += f"; ${KUBECONFIG_ENV} ({from_env}) is not used"
        return ClusterAccess(named, context, why)
    if given:
        return ClusterAccess(given, context, "this run's kubeconfig parameter")
    if environ.get(KUBECONFIG_ENV):
        return ClusterAccess(environ[KUBECONFIG_ENV], context, f"${KUBECONFIG_ENV}")
    return ClusterAccess(None, context, "the Kubernetes client's default: $KUBECONFIG, else ~/.kube/config")


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


class JiraConfig(_Strict):
    """Where replacement tickets go. Credentials never live in the fleet file: the API token is
    read from the environment variable named here (or GPUMEDIC_JIRA_TOKEN_FILE)."""

    url: str = Field(description="Jira base URL, e.g. https://jira.example.com")
    user: str = Field(description="the bot account that files tickets")
    token_env: str = Field(default="GPUMEDIC_JIRA_TOKEN", description="environment variable holding the API token")
    project: str = "GPU"
    replacement_issue_type: str = "Hardware Replacement"
    forecast_issue_type: str = "Order Replacement"


Source = Literal["ssh", "exporter", "dcgm"]


class FleetSettings(_Strict):
    name: str = "fleet"
    source: Source = Field(default="ssh", description="ssh (nvidia-smi + kernel log), exporter, or dcgm")
    gpus_per_node: int | None = Field(default=None, ge=0, description="expected GPUs per node")
    ssh: SshConfig | None = None
    nodes: list[NodeEntry] = Field(default_factory=list)
    kubernetes: KubernetesSettings | None = None
    exporter_port: int = Field(default=9400, ge=1, le=65535)
    exporter_timeout_s: float = Field(default=10.0, gt=0)
    concurrency: int = Field(default=32, ge=1, le=1024, description="nodes collected at once")
    shard_size: int = Field(default=25, ge=1, description="nodes per Prefect task")
    kernel_log_lookback_h: float = Field(default=24.0, gt=0, description="Xid window on a node's first sweep")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL of the telemetry store")
    # The forecaster looks back 30 days at most; prior failures come from failure records.
    history_retention_days: int = Field(
        default=180, ge=31, description="telemetry history older than this is deleted by the nightly full sweep"
    )
    forecast_model: Path | None = Field(
        default=None,
        description="hazard model fitted on this fleet's history by `gpumedic forecast fit` (default: the shipped one)",
    )
    policy: dict[str, Any] = Field(default_factory=dict, description="HealthPolicy overrides")
    remediation: dict[str, Any] = Field(default_factory=dict, description="RemediationPolicy overrides")
    jira: JiraConfig | None = None

    @model_validator(mode="after")
    def _source_needs_its_settings(self) -> FleetSettings:
        if self.source == "ssh" and self.ssh is None:
            raise ValueError("source 'ssh' needs an `ssh:` block (user, key_file, known_hosts)")
        if not self.nodes and self.kubernetes is None:
            raise ValueError("name the nodes (`nodes:`) or a Kubernetes label selector (`kubernetes:`)")
        return self

    @field_validator("policy")
    @classmethod
    def _policy_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gpumedic.domain.policy import HealthPolicy

        HealthPolicy.model_validate(value)
        return value

    @field_validator("remediation")
    @classmethod
    def _remediation_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gpumedic.domain.budget import RemediationPolicy

        RemediationPolicy.model_validate(value)
        return value

    def remediation_policy(self) -> Any:
        from gpumedic.domain.budget import RemediationPolicy

        return RemediationPolicy.model_validate(self.remediation)

    def health_policy(self) -> Any:
        from gpumedic.domain.policy import HealthPolicy

        return HealthPolicy.model_validate(self.policy)


class FleetFile(_Strict):
    fleet: FleetSettings | None = None
    simulate: FleetSimulation | None = None

    @model_validator(mode="after")
    def _one_of(self) -> FleetFile:
        if self.fleet is None and self.simulate is None:
            raise ValueError("a fleet file needs a `fleet:` block (real fleet) or a `simulate:` block")
        return self


_PATH_KEYS = ("key_file", "known_hosts", "kubeconfig", "forecast_model")


def _resolve_paths(data: Any, base: Path) -> Any:
    """Relative key_file/known_hosts/kubeconfig/forecast_model paths are relative to the fleet file."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if key in _PATH_KEYS and isinstance(value, str):
                path = Path(os.path.expanduser(value))
                out[key] = str(path if path.is_absolute() else (base / path))
            else:
                out[key] = _resolve_paths(value, base)
        return out
    if isinstance(data, list):
        return [_resolve_paths(v, base) for v in data]
    return data


def load_fleet_file(path: str | Path) -> FleetFile:
    if "{{" in str(path):  # `prefect deploy` keeps a placeholder whose variable was not set
        raise ConfigError(
            f"{path}: the fleet file's path is an unfilled template; set GPUMEDIC_FLEET_FILE to the fleet file's "
            "path on the workers when running `prefect deploy`, or give the run a `fleet_file`"
        )
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such fleet file") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `fleet:` or `simulate:` at the top")
    try:
        return FleetFile.model_validate(_resolve_paths(raw, path.resolve().parent))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            problems.append(f"  {where}: {e['msg']}")
        raise ConfigError(f"{path}: invalid fleet file:\n" + "\n".join(problems)) from err


def load_fleet_settings(path: str | Path) -> FleetSettings:
    """The `fleet:` block of a fleet file: the fleet in service that sweeps, remediation and forecasts act on."""
    loaded = load_fleet_file(path)
    if loaded.fleet is None:
        raise ConfigError(
            f"{path}: a `simulate:` file describes a fleet to start, not one in service; "
            "run `gpumedic sim up --fleet FILE` and use its inventory.yaml, or use `gpumedic sweep`"
        )
    return loaded.fleet
