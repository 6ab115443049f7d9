"""Nodes and their pods through the Kubernetes API: cordon, taint, drain, annotate, watch a reboot.

Everything here goes through the real `kubernetes` client; the server may be a cluster or
`gpumedic.sim.kube_api`, this module cannot tell.

Kubernetes quirks this module is written around:

- `spec.taints` is a list without a merge key, so two writers that each append a taint with
  a plain patch lose one of them. Every node write that touches taints or
  `spec.unschedulable` is a read-modify-write: a JSON merge patch that carries the
  `metadata.resourceVersion` we read. The API server then refuses it with 409 Conflict when
  the node changed since (this is what `kubectl annotate --resource-version` does), and we
  read again and retry a bounded number of times. (A JSON patch with a `test` op on the
  resourceVersion would also be conditional, but a failed `test` is a generic 422 on a real
  apiserver, indistinguishable from a malformed patch; the 409 says exactly "changed since".)
- The generated client defaults PATCH bodies to JSON-patch/strategic-merge content types; the
  content type is always named explicitly here.
- The Eviction API answers 429 when a PodDisruptionBudget would be violated. That is retried
  with backoff until the drain's deadline and never bypassed by a DELETE: a pod covered by a
  PDB is reported blocked, not deleted, whatever the namespace's policy.
- A node that was unschedulable before gpumedic came belongs to someone else's decision. The
  cordon records that (`CORDON_OWNER_ANNOTATION`) in the same conditional write that adds our
  taint, so a crash between the cordon and the caller persisting its own record cannot turn
  an operator's cordon into "ours" on the re-run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gpumedic.adapters.errors import AdapterError, PermanentError, TransientError
from gpumedic.config import ClusterAccess
from gpumedic.domain.node_condition import ConditionStatus, NodeCondition

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "gpumedic.io/"
TAINT_KEY = "gpumedic.io/unhealthy"
TAINT_EFFECT = "NoSchedule"
MANAGED_LABEL = "gpumedic.io/managed"
# Who made the node unschedulable: the manager's name when we did, EXTERNAL_CORDON when it
# already was (an operator, another controller). Written atomically with our taint.
CORDON_OWNER_ANNOTATION = "gpumedic.io/cordon-owner"
EXTERNAL_CORDON = "external"
GPU_RESOURCE = "nvidia.com/gpu"
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
DEFAULT_SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

_MERGE_PATCH = "application/merge-patch+json"
# Node.status.conditions is merged by `type` under a strategic merge patch: one condition is
# written without replacing the kubelet's (a merge patch would replace the whole list).
_STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
_TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

NamespacePolicy = Literal["wait", "delete_after_timeout"]


class ConflictError(TransientError):
    """The object changed since it was read (HTTP 409): read it again and retry."""


class NotAllowedError(PermanentError):
    """The API server refused the credentials or the request (401, 403): the kubeconfig or RBAC needs fixing."""


class NodeMissingError(PermanentError):
    """No Node of that name exists (404)."""


class NodeNotBackError(PermanentError):
    """A node did not come back Ready with a new boot id in time: the reboot step failed."""


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    effect: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a sweep and remediation need to know about one Node, as the API server has it now."""

    name: str
    unschedulable: bool
    taints: tuple[Taint, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    ready: bool | None  # None: no Ready condition or status Unknown (the node stopped reporting)
    boot_id: str | None
    gpu_capacity: int
    resource_version: str
    conditions: Mapping[str, NodeCondition] = field(default_factory=dict)  # by type
    internal_ip: str | None = None  # where its SSH and dcgm-exporter are reached, when the fleet file lists no nodes

    def taint(self, key: str = TAINT_KEY) -> Taint | None:
        return next((t for t in self.taints if t.key == key), None)


@dataclass(frozen=True, slots=True)
class CordonResult:
    already_cordoned_by_other: bool  # unschedulable before we came: never uncordon it
    changed: bool


@dataclass(slots=True)
class DrainReport:
    """Pods are named `namespace/name`."""

    evicted: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # pod -> why it could not be evicted
    skipped: dict[str, str] = field(default_factory=dict)  # pod -> why it was not a candidate
    remaining: list[str] = field(default_factory=list)  # candidates still on the node at the end
    complete: bool = False
    deleted: list[str] = field(default_factory=list)  # deleted at the deadline by namespace policy


def is_managed(view: NodeView) -> bool:
    """An operator opts a node out of automation with the label `gpumedic.io/managed=false`."""
    return view.labels.get(MANAGED_LABEL, "").strip().lower() != "false"


def operator_uncordoned(view: NodeView, record_said_cordoned: bool) -> bool:
    """Our record says the node is cordoned, yet it is schedulable: someone uncordoned it by hand.

    `kubectl uncordon` only clears `spec.unschedulable` (our taint stays), so that is the
    signal. The workflow must then cancel rather than fight the operator.
    """
    return record_said_cordoned and not view.unschedulable


def _node_view(node: client.V1Node) -> NodeView:
    meta = node.metadata or client.V1ObjectMeta()
    spec = node.spec or client.V1NodeSpec()
    status = node.status or client.V1NodeStatus()
    ready: bool | None = None
    for cond in status.conditions or []:
        if cond.type == "Ready":
            ready = {"True": True, "False": False}.get(cond.status)
    capacity = status.capacity or {}
    try:
        gpus = int(capacity.get(GPU_RESOURCE, "0"))
    except ValueError:
        gpus = 0
    return NodeView(
        name=meta.name or "",
        unschedulable=bool(spec.unschedulable),
        taints=tuple(Taint(t.key, t.effect, t.value) for t in spec.taints or []),
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        ready=ready,
        boot_id=status.node_info.boot_id if status.node_info else None,
        gpu_capacity=gpus,
        resource_version=meta.resource_version or "",
        conditions={c.type: _condition(c) for c in status.conditions or [] if c.type},
        internal_ip=next((a.address for a in status.addresses or [] if a.type == "InternalIP"), None),
    )


_NEVER = datetime.min.replace(tzinfo=UTC)


def _condition(c: client.V1NodeCondition) -> NodeCondition:
    status: ConditionStatus = "True" if c.status == "True" else "False" if c.status == "False" else "Unknown"
    return NodeCondition(c.type, status, c.reason or "", c.message or "", _aware(c.last_heartbeat_time),
                         _aware(c.last_transition_time))


def _aware(stamp: datetime | None) -> datetime:
    if stamp is None:
        return _NEVER
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _condition_json(c: NodeCondition) -> dict[str, str]:
    return {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
            "lastHeartbeatTime": _rfc3339(c.last_heartbeat), "lastTransitionTime": _rfc3339(c.last_transition)}


def _rfc3339(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _taints_json(taints: Iterable[Taint]) -> list[dict[str, str]]:
    out = []
    for t in taints:
        item = {"key": t.key, "effect": t.effect}
        if t.value is not None:
            item["value"] = t.value
        out.append(item)
    return out


def _status_message(err: ApiException) -> str:
    """The human part of a `Status` body (and its causes), never the raw headers."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return str(err.reason or "")
    if not isinstance(body, dict):
        return str(err.reason or "")
    parts = [str(body.get("message") or err.reason or "")]
    details = body.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes or []:
        if isinstance(cause, dict) and cause.get("message"):
            parts.append(str(cause["message"]))
    return "; ".join(p for p in parts if p)


def _translate(err: Exception, what: str) -> AdapterError:
    """An exception from the client as one of our two kinds, with a message for an operator."""
    if isinstance(err, ApiException):
        status = err.status or 0
        message = _status_message(err)
        if status == 409:
            return ConflictError(f"{what}: conflict (409): {message}")
        if status == 0:
            # The client wraps TLS failures as status 0; a certificate problem will not heal.
            if "CERTIFICATE_VERIFY_FAILED" in message or "certificate" in message.lower():
                return PermanentError(f"{what}: TLS verification failed: {message}")
            return TransientError(f"{what}: {message}")
        if status in _TRANSIENT_STATUS or status >= 500:
            return TransientError(f"{what}: {status} {message}")
        if status in (401, 403):
            return NotAllowedError(f"{what}: not allowed ({status}): {message}; check the kubeconfig and RBAC")
        return PermanentError(f"{what}: {status} {message}")
    if isinstance(err, urllib3.exceptions.HTTPError | OSError):
        return TransientError(f"{what}: cannot reach the API server: {type(err).__name__}: {err}")
    return PermanentError(f"{what}: {type(err).__name__}: {err}")


def _pod_key(pod: client.V1Pod) -> str:
    meta = pod.metadata or client.V1ObjectMeta()
    return f"{meta.namespace}/{meta.name}"


def _uses_gpu(pod: client.V1Pod) -> bool:
    spec = pod.spec
    if spec is None:
        return False
    for c in list(spec.containers or []) + list(spec.init_containers or []):
        res = c.resources
        if res is None:
            continue
        for amounts in (res.limits or {}, res.requests or {}):
            value = amounts.get(GPU_RESOURCE)
            if value not in (None, "", "0"):
                return True
    return False


def _selector_matches(selector: client.V1LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches every pod (policy/v1)."""
    if selector is None:
        return False
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions or []:
        values = set(expr.values or [])
        present = expr.key in labels
        if expr.operator == "In" and not (present and labels[expr.key] in values):
            return False
        if expr.operator == "NotIn" and present and labels[expr.key] in values:
            return False
        if expr.operator == "Exists" and not present:
            return False
        if expr.operator == "DoesNotExist" and present:
            return False
    return True


def api_client_from(path: str | Path | None, context: str | None = None) -> client.ApiClient:
    """A client for the kubeconfig at `path` (None: the client's default) and `context` (None: its
    current one); a file that cannot be loaded, or a context it lacks, is a `PermanentError`."""
    try:
        return config.new_client_from_config(config_file=str(path) if path is not None else None, context=context)
    except (config.ConfigException, OSError, ValueError) as err:
        where = f"{path if path is not None else '(the default)'}{f', context {context}' if context else ''}"
        raise PermanentError(f"cannot load kubeconfig {where}: {err}") from err


class KubeNodes:
    """The node-side operations of a remediation, each with its own timeout.

    Build it with `KubeNodes.from_kubeconfig(path)`; close it (or use it as a context manager)
    to release its connection pool.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        request_timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        max_conflict_retries: int = 5,
    ) -> None:
        self._api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self._timeout = (float(connect_timeout_s), float(request_timeout_s))
        self.max_conflict_retries = max_conflict_retries

    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None, *, context: str | None = None, **kwargs: Any) -> Self:
        return cls(api_client_from(path, context), **kwargs)

    @classmethod
    def for_cluster(cls, cluster: ClusterAccess, **kwargs: Any) -> Self:
        """The fleet's cluster, as `cluster_access` chose it (the same one for sweeps and remediation)."""
        return cls.from_kubeconfig(cluster.kubeconfig, context=cluster.context, **kwargs)

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> Self:
        """Inside a pod, with the ServiceAccount of `deploy/rbac.yaml`."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as err:
            raise PermanentError(f"not running in a cluster: {err}") from err
        return cls(client.ApiClient(configuration), **kwargs)

    def close(self) -> None:
        self._api_client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def _read(self, name: str) -> client.V1Node:
        try:
            return self.core.read_node(name, _request_timeout=self._timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            if isinstance(err, ApiException) and err.status == 404:
                raise NodeMissingError(f"node {name!r} does not exist") from err
            raise _translate(err, f"reading node {name}") from err

    def get_node(self, name: str) -> NodeView:
        return _node_view(self._read(name))

    def list_nodes(self, label_selector: str | None = None, *, name: str | None = None) -> list[NodeView]:
        """The Nodes matching `label_selector`; with `name`, only that one (none: it does not match)."""
        fields = f"metadata.name={name}" if name is not None else None
        try:
            nodes = self.core.list_node(label_selector=label_selector, field_selector=fields,
                                        _request_timeout=self._timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            which = f"node {name}" if name is not None else "nodes"
            raise _translate(err, f"listing {which} (selector {label_selector!r})") from err
        return [_node_view(n) for n in nodes.items]

    def read_annotations(self, name: str, prefix: str = ANNOTATION_PREFIX) -> dict[str, str]:
        return {k: v for k, v in self.get_node(name).annotations.items() if k.startswith(prefix)}

    # -- writing ---------------------------------------------------------------------------

    def _patch(self, name: str, body: dict[str, Any], what: str, *, status: bool = False) -> NodeView:
        """A merge patch of the Node, or with `status` a strategic merge patch of its status."""
        try:
            if status:
                node = self.core.patch_node_status(name, body, _content_type=_STRATEGIC_MERGE_PATCH,
                                                   _request_timeout=self._timeout)
            else:
                node = self.core.patch_node(name, body, _content_type=_MERGE_PATCH, _request_timeout=self._timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            if isinstance(err, ApiException) and err.status == 404:  # deleted since it was read
                raise NodeMissingError(f"node {name!r} does not exist") from err
            raise _translate(err, what) from err
        return _node_view(node)

    def write_annotations(
        self,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        expected_resource_version: str | None = None,
    ) -> str:
        """Merge `annotations` into the node's (a `None` value deletes the key); the new resourceVersion.

        With `expected_resource_version` the write is conditional: if the node changed since
        that version, `ConflictError` is raised and nothing is written.
        """
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if expected_resource_version is not None:
            metadata["resourceVersion"] = expected_resource_version
        view = self._patch(name, {"metadata": metadata}, f"writing annotations on node {name}")
        log.info("node=%s action=annotate keys=%s", name, ",".join(sorted(annotations)))
        return view.resource_version

    def _conditional_update(
        self,
        name: str,
        what: str,
        plan: Callable[[NodeView], dict[str, Any] | None],
        *,
        status: bool = False,
        known: NodeView | None = None,
    ) -> tuple[NodeView, bool]:
        """Read, let `plan` compute a patch (None: nothing to do), write it conditionally; retry on 409.

        `status`: the patch is of the Node's status (see `_patch`); `known` is a view just read
        (a list), used for the first attempt instead of reading the node again.
        """
        last: ConflictError | None = None
        for _attempt in range(self.max_conflict_retries + 1):
            view, known = known or self.get_node(name), None
            body = plan(view)
            if body is None:
                return view, False
            body.setdefault("metadata", {})["resourceVersion"] = view.resource_version
            try:
                return self._patch(name, body, f"{what} node {name}", status=status), True
            except ConflictError as err:
                log.info("node=%s action=%s conflict, reading again", name, what)
                last = err
        retries = self.max_conflict_retries
        raise ConflictError(f"{what} node {name}: still conflicting after {retries} retries") from last

    def cordon(self, name: str, *, taint_value: str, manager: str = "gpumedic") -> CordonResult:
        """Make the node unschedulable and add `gpumedic.io/unhealthy=<taint_value>:NoSchedule`.

        Idempotent. `already_cordoned_by_other` is true when the node was unschedulable before
        gpumedic cordoned it; that fact is also kept on the node (`gpumedic.io/cordon-owner`)
        so that a re-run after a crash still knows it. A node labelled `gpumedic.io/managed=false`
        is refused (`PermanentError`), as a last guard behind the workflow's own check.
        """
        if not manager or manager == EXTERNAL_CORDON:
            raise PermanentError(f"invalid cordon manager name {manager!r}")
        outcome: dict[str, str] = {}

        def plan(view: NodeView) -> dict[str, Any] | None:
            if not is_managed(view):
                raise PermanentError(f"node {name} is opted out of gpumedic ({MANAGED_LABEL}=false); not cordoning")
            recorded = view.annotations.get(CORDON_OWNER_ANNOTATION)
            # Schedulable now: whatever an old annotation says, this cordon is ours.
            owner = (recorded or EXTERNAL_CORDON) if view.unschedulable else manager
            outcome["owner"] = owner
            ours = Taint(TAINT_KEY, TAINT_EFFECT, taint_value)
            has_taint = ours in view.taints
            if view.unschedulable and has_taint and recorded == owner:
                return None
            taints = [t for t in view.taints if t.key != TAINT_KEY] + [ours]
            return {
                "metadata": {"annotations": {CORDON_OWNER_ANNOTATION: owner}},
                "spec": {"unschedulable": True, "taints": _taints_json(taints)},
            }

        _view, changed = self._conditional_update(name, "cordon", plan)
        by_other = outcome["owner"] != manager
        if changed:
            log.info("node=%s action=cordon taint=%s already_cordoned_by_other=%s", name, taint_value, by_other)
        return CordonResult(already_cordoned_by_other=by_other, changed=changed)

    def uncordon(self, name: str, *, we_cordoned: bool) -> bool:
        """Remove our taint; make the node schedulable only if we were the ones who cordoned it.

        Belt and braces: even with `we_cordoned=True`, a node whose `gpumedic.io/cordon-owner`
        says the cordon was external stays unschedulable. Idempotent; True when it changed
        something.
        """

        def plan(view: NodeView) -> dict[str, Any] | None:
            owner = view.annotations.get(CORDON_OWNER_ANNOTATION)
            release = we_cordoned and owner != EXTERNAL_CORDON
            body: dict[str, Any] = {}
            if any(t.key == TAINT_KEY for t in view.taints):
                body.setdefault("spec", {})["taints"] = _taints_json(t for t in view.taints if t.key != TAINT_KEY)
            if release and view.unschedulable:
                body.setdefault("spec", {})["unschedulable"] = False
            if owner is not None:
                body["metadata"] = {"annotations": {CORDON_OWNER_ANNOTATION: None}}
            return body or None

        _view, changed = self._conditional_update(name, "uncordon", plan)
        if changed:
            log.info("node=%s action=uncordon we_cordoned=%s", name, we_cordoned)
        return changed

    # -- draining --------------------------------------------------------------------------

    def update_condition(
        self,
        name: str,
        condition_type: str,
        decide: Callable[[NodeCondition | None], NodeCondition | None],
        *,
        known: NodeView | None = None,
    ) -> NodeCondition | None:
        """Write the condition `decide` returns for the one of `condition_type` on the node now (None:
        leave it); the condition written, or None. Other conditions (the kubelet's) are untouched.

        The write is conditional on the node's resourceVersion, and `decide` sees the condition
        again after a conflict, so two sweeps writing at once cannot put the older one's word last.
        """
        written: list[NodeCondition] = []

        def plan(view: NodeView) -> dict[str, Any] | None:
            written.clear()
            condition = decide(view.conditions.get(condition_type))
            if condition is None:
                return None
            if condition.type != condition_type:
                raise ValueError(f"asked to write {condition_type}, got a {condition.type} condition")
            written.append(condition)
            return {"status": {"conditions": [_condition_json(condition)]}}

        self._conditional_update(name, f"setting condition {condition_type} on", plan, status=True, known=known)
        if written:
            log.info("node=%s action=condition type=%s status=%s reason=%s", name, condition_type,
                     written[0].status, written[0].reason)
        return written[0] if written else None

    def _pods_on(self, node: str) -> list[client.V1Pod]:
        try:
            pods = self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _request_timeout=self._timeout
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            raise _translate(err, f"listing pods on node {node}") from err
        return list(pods.items)

    def _pdb_covered(self, pods: Sequence[client.V1Pod]) -> set[str]:
        """Pods (by key) that some PodDisruptionBudget selects: these are never deleted."""
        covered: set[str] = set()
        for namespace in sorted({(p.metadata.namespace if p.metadata else None) or "default" for p in pods}):
            try:
                pdbs = self.policy.list_namespaced_pod_disruption_budget(namespace, _request_timeout=self._timeout)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
                raise _translate(err, f"listing PodDisruptionBudgets in {namespace}") from err
            for pod in pods:
                meta = pod.metadata or client.V1ObjectMeta()
                if (meta.namespace or "default") != namespace:
                    continue
                if any(_selector_matches(pdb.spec.selector if pdb.spec else None, meta.labels or {})
                       for pdb in pdbs.items):
                    covered.add(_pod_key(pod))
        return covered

    def _skip_reason(
        self, pod: client.V1Pod, system_namespaces: Sequence[str], gpu_pods_only: bool
    ) -> str | None:
        meta = pod.metadata or client.V1ObjectMeta()
        if any(ref.kind == "DaemonSet" for ref in meta.owner_references or []):
            return "DaemonSet-owned"
        if MIRROR_POD_ANNOTATION in (meta.annotations or {}):
            return "mirror (static) pod"
        if meta.namespace in system_namespaces:
            return f"system namespace {meta.namespace}"
        phase = pod.status.phase if pod.status else None
        if phase in ("Succeeded", "Failed"):
            return f"already terminated ({phase})"
        if gpu_pods_only and not _uses_gpu(pod):
            return f"uses no {GPU_RESOURCE}"
        return None

    def _evict(self, pod: client.V1Pod) -> tuple[Literal["evicted", "gone", "refused"], str]:
        meta = pod.metadata or client.V1ObjectMeta()
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=meta.name, namespace=meta.namespace),
            # Only this incarnation: a replacement that reuses the name is not ours to evict.
            delete_options=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=meta.uid))
            if meta.uid
            else None,
        )
        try:
            self.core.create_namespaced_pod_eviction(
                meta.name or "", meta.namespace or "default", body, _request_timeout=self._timeout
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            if isinstance(err, ApiException):
                if err.status == 404:
                    return "gone", "already gone"
                if err.status == 409 and meta.uid:
                    return "gone", "replaced by a new pod of the same name"
                if err.status == 429:
                    return "refused", f"disruption budget: {_status_message(err)}"
            translated = _translate(err, f"evicting pod {_pod_key(pod)}")
            if isinstance(translated, TransientError):
                return "refused", str(translated)
            raise translated from err
        return "evicted", ""

    def drain(
        self,
        name: str,
        *,
        deadline_s: float,
        system_namespaces: Sequence[str] = DEFAULT_SYSTEM_NAMESPACES,
        gpu_pods_only: bool = False,
        namespace_policy: Mapping[str, NamespacePolicy] | None = None,
        poll_s: float = 1.0,
        backoff: Sequence[float] = (1, 2, 4, 8),
        delete_grace_period_s: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DrainReport:
        """Evict the node's workload pods through the Eviction API and wait until they are gone.

        Skipped: DaemonSet-owned pods, mirror pods, pods in `system_namespaces`, terminated pods
        and, with `gpu_pods_only`, pods that request no GPU. A 429 (PodDisruptionBudget) is
        retried with `backoff` until `deadline_s` and never bypassed.

        `namespace_policy` says what happens to a namespace's pods still on the node at the
        deadline: "wait" (the default) leaves them and reports them; "delete_after_timeout"
        deletes them (the pod's own grace period unless `delete_grace_period_s`), except any
        pod a PodDisruptionBudget covers or whose eviction the budget refused: those are
        reported blocked and left alone, since deleting them would be the very disruption the
        budget forbids.

        Idempotent: on a drained node it evicts nothing and reports complete.
        """
        policy = dict(namespace_policy or {})
        steps = list(backoff) or [poll_s]
        deadline = clock() + deadline_s
        report = DrainReport()

        candidates: dict[str, client.V1Pod] = {}
        for pod in self._pods_on(name):
            key = _pod_key(pod)
            reason = self._skip_reason(pod, system_namespaces, gpu_pods_only)
            if reason is not None:
                report.skipped[key] = reason
            else:
                candidates[key] = pod
        if not candidates:
            report.complete = True
            return report

        # Not yet accepted by the Eviction API. A pod already terminating (an earlier drain, a
        # re-run after a crash, someone else) is only waited for: evicting it again is noise.
        pending = {k: p for k, p in candidates.items() if not (p.metadata and p.metadata.deletion_timestamp)}
        refusals: dict[str, int] = {}
        next_try: dict[str, float] = dict.fromkeys(pending, clock())
        budget_refused: set[str] = set()
        uids = {k: (p.metadata.uid if p.metadata else None) for k, p in candidates.items()}
        present: set[str] = set(candidates)

        while True:
            now = clock()
            for key in sorted(pending):
                if next_try[key] > now:
                    continue
                outcome, reason = self._evict(pending[key])
                if outcome == "refused":
                    if reason.startswith("disruption budget"):
                        budget_refused.add(key)
                    report.blocked[key] = reason
                    n = refusals[key] = refusals.get(key, 0) + 1
                    next_try[key] = clock() + steps[min(n - 1, len(steps) - 1)]
                    continue
                del pending[key]
                report.blocked.pop(key, None)
                if outcome == "evicted":
                    report.evicted.append(key)
                    log.info("node=%s action=evict pod=%s", name, key)
            present = self._still_present(name, candidates, uids)
            if not present:
                break
            now = clock()
            if now >= deadline:
                break
            wake = min([now + poll_s, deadline, *(next_try[k] for k in pending)])
            sleep(max(0.0, wake - now))

        if present:
            covered = self._pdb_covered([candidates[k] for k in present]) | budget_refused
            for key in sorted(present):
                namespace = key.split("/", 1)[0]
                if policy.get(namespace, "wait") != "delete_after_timeout":
                    terminating = key in report.evicted or key not in pending
                    still = "evicted, still terminating" if terminating else "still running"
                    report.blocked.setdefault(key, f"{still} at the drain deadline")
                    continue
                if key in covered:
                    report.blocked.setdefault(key, "protected by a PodDisruptionBudget; not deleted")
                    continue
                if self._delete(candidates[key], delete_grace_period_s):
                    report.deleted.append(key)
                    report.blocked.pop(key, None)
                    log.info("node=%s action=delete pod=%s reason=drain-deadline", name, key)
            present = self._still_present(name, candidates, uids)

        report.remaining = sorted(present)
        for key in list(report.blocked):
            if key not in present:
                del report.blocked[key]
        report.complete = not present
        return report

    def _still_present(
        self, node: str, candidates: Mapping[str, client.V1Pod], uids: Mapping[str, str | None]
    ) -> set[str]:
        """Candidates still on the node; a pod that finished meanwhile (a Job's) no longer counts."""
        present = set()
        for pod in self._pods_on(node):
            key = _pod_key(pod)
            uid = pod.metadata.uid if pod.metadata else None
            finished = pod.status is not None and pod.status.phase in ("Succeeded", "Failed")
            if key in candidates and not finished and (uids.get(key) is None or uid == uids[key]):
                present.add(key)
        return present

    def _delete(self, pod: client.V1Pod, grace_period_s: int | None) -> bool:
        meta = pod.metadata or client.V1ObjectMeta()
        try:
            self.core.delete_namespaced_pod(
                meta.name or "",
                meta.namespace or "default",
                grace_period_seconds=grace_period_s,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=meta.uid)) if meta.uid else None,
                _request_timeout=self._timeout,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            if isinstance(err, ApiException) and err.status in (404, 409):
                return False
            raise _translate(err, f"deleting pod {_pod_key(pod)}") from err
        return True

    # -- reboot verification ---------------------------------------------------------------

    def wait_until_ready_with_new_boot(
        self,
        name: str,
        old_boot_id: str | None,
        timeout_s: float,
        *,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> NodeView:
        """Poll until the node is Ready with a boot id other than `old_boot_id`.

        API errors while polling are tolerated (a rebooting control plane blips too); at the
        deadline `NodeNotBackError` names what was last seen.
        """
        deadline = clock() + timeout_s
        last = "never read"
        while True:
            try:
                view = self.get_node(name)
            except TransientError as err:
                last = str(err)
            else:
                if view.ready is True and view.boot_id and view.boot_id != old_boot_id:
                    return view
                last = f"ready={view.ready} boot_id={view.boot_id}"
            now = clock()
            if now >= deadline:
                raise NodeNotBackError(
                    f"node {name} not Ready with a new boot id within {timeout_s:.0f}s (last: {last})"
                )
            sleep(min(poll_s, deadline - now))
