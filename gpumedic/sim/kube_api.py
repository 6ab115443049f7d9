"""An emulated kube-apiserver that the real ``kubernetes`` client talks to, over TLS on loopback.

No kube-apiserver can run where gpumedic is tested, so this module is the server side of the
Kubernetes REST protocol for the few resources gpumedic touches. The adapters use the real
client unchanged; only the kubeconfig differs. The emulator follows the documented API (and,
where the documentation is silent, the apiserver's source) so that a behaviour the adapters
rely on here is one they can rely on in a real cluster.

What is emulated
----------------
* Transport: HTTPS on 127.0.0.1 with a throwaway CA (``ca_path``, embedded in the kubeconfig),
  bearer-token authentication (401 ``Unauthorized`` Status otherwise; anonymous access is off,
  so even ``/version`` needs the token), HTTP/1.1 keep-alive, chunked watch streams.
* Discovery: ``/version`` (all nine ``version.Info`` fields), ``/api``, ``/api/v1``, ``/apis``,
  ``/apis/policy``, ``/apis/policy/v1``, ``/healthz``, ``/livez``, ``/readyz``.
* Resources: Nodes (+ ``/status``), Namespaces, Pods (+ ``/status``, ``/eviction``),
  PodDisruptionBudgets ``policy/v1`` (+ ``/status``). Verbs: get, list, watch, create, update
  (PUT), patch, delete. ``deletecollection`` and server-side apply are not implemented
  (405 and 415, the codes the real server gives for a verb or a patch type it does not serve).
* Object metadata: a global, monotonically increasing ``resourceVersion`` (a string, as the API
  requires clients to treat it as opaque), ``uid``, ``creationTimestamp``; PDBs carry
  ``generation``. Server-managed metadata is restored on update, as ``BeforeUpdate`` does.
* Optimistic concurrency: PUT with a stale ``metadata.resourceVersion`` and PATCH whose body
  names a resourceVersion other than the current one get 409 ``Conflict`` with the exact
  Status the apiserver sends. PUT without a resourceVersion is an unconditional update (nodes
  and pods allow it).
* The main resource ignores ``status`` on update and the ``/status`` subresource changes only
  ``status``, as the registry strategies do. A pod created over HTTP starts ``Pending``
  (there is no scheduler or kubelet; the simulator moves pods with :meth:`set_pod_phase`).
* PATCH: ``application/merge-patch+json`` (RFC 7386); ``application/json-patch+json``
  (RFC 6902, all six operations; a body that is not a JSON array is 400, an operation that
  cannot be applied, a failed ``test`` included, is 422 ``Invalid`` with the generic message
  "the server rejected our request due to an error in our request", exactly as the apiserver
  answers it); ``application/strategic-merge-patch+json`` with the patch strategies of the
  fields listed in ``_SMP_LIST_KEYS`` (containers, volumes, env, ports, volumeMounts by their
  merge keys; conditions and node addresses by ``type``; ownerReferences by ``uid``;
  finalizers as a set) and the ``$patch: replace|delete``, ``$deleteFromPrimitiveList``,
  ``$retainKeys`` and ``$setElementOrder`` directives (the last is accepted and ignored). Any
  other list, ``spec.taints`` and ``spec.tolerations`` included, has no patch merge key in
  the API and is replaced whole.
* Validation that catches adapter bugs: label keys and values, annotation keys, node taints
  (key, effect, uniqueness by key and effect), pod containers, PDB ``minAvailable`` /
  ``maxUnavailable``, name and namespace immutability, pod spec immutability.
* Selectors on list and watch: label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``,
  ``key``, ``!key``, ``gt``, ``lt``) and the field selectors each resource supports
  (``metadata.name``, ``metadata.namespace``; ``spec.unschedulable`` on nodes;
  ``spec.nodeName``, ``status.phase`` and a few more on pods); any other field label is 400
  "field label not supported". ``limit`` / ``continue`` paging.
* Watch: ``?watch=true`` streams newline-delimited ``{"type","object"}`` events in HTTP chunks
  and ends cleanly after ``timeoutSeconds`` (0 or absent: ``watch_default_timeout_s``). With no
  ``resourceVersion`` (or "0") it first sends synthetic ``ADDED`` events for the current state;
  with a resourceVersion it replays the changes after it from a bounded history, or sends an
  ``ERROR`` event with a 410 ``Expired`` Status when that version is older than the history. An object that starts or
  stops matching the selectors is reported as ``ADDED`` / ``DELETED``, like the watch cache.
  Bookmarks are not sent (they are best-effort in the API); ``sendInitialEvents`` is ignored.
* Restarts: :meth:`KubeApiEmulator.stop` then :meth:`KubeApiEmulator.start` serves the same
  state on the same port with the same CA (open watches end, as they do when an apiserver
  restarts); :meth:`KubeApiEmulator.snapshot` / :meth:`KubeApiEmulator.restore` move the state
  to another emulator.
* Eviction (``POST .../pods/{name}/eviction``), following ``pkg/registry/core/pod/storage/
  eviction.go``: 404 for an unknown pod; 400 if the body names another pod; pods that are
  Pending, Succeeded, Failed or already terminating are deleted without looking at budgets;
  more than one matching PDB is the apiserver's 500 "This pod has more than one
  PodDisruptionBudget, which the eviction subresource does not support."; a budget with no
  disruption left is 429 ``TooManyRequests`` "Cannot evict pod as it would violate the pod's
  disruption budget." with a ``DisruptionBudget`` cause ("The disruption budget X needs N
  healthy pods and has M currently"); an unready pod may go when the budget is otherwise
  met; success is 201 with a ``Success`` Status (the API-initiated eviction page says "200
  OK", but the apiserver's create handler answers 201: callers must accept any 2xx), the pod
  gets the ``DisruptionTarget`` condition and a ``deletionTimestamp`` and disappears after
  ``min(grace period, eviction_delay)`` seconds.
* PDB status is computed on read, as if the disruption controller reacted instantly:
  healthy = pod is Ready and not terminating; ``minAvailable`` as an integer counts the
  selected pods, a percentage or ``maxUnavailable`` counts the replicas of the pods'
  controllers (ReplicaSet, ReplicationController, StatefulSet, Deployment), rounding up; a
  selected pod whose controller has no scale (a DaemonSet, a Job) makes the controller fail
  safe with ``disruptionsAllowed`` 0 and a ``SyncFailed`` condition; pods without a controller
  are left out of that count. A controller's replica count is the largest number of its live
  pods seen at once, or what :meth:`KubeApiEmulator.set_owner_replicas` says, so an evicted
  pod still counts as expected until it is replaced.
* DELETE of a pod: graceful (``gracePeriodSeconds`` from the query or DeleteOptions, else the
  pod's ``terminationGracePeriodSeconds``); unscheduled or finished pods go at once; the reply
  is the pod. Other kinds are deleted at once (a namespace takes its objects with it).

* RBAC, for the resources above: :meth:`KubeApiEmulator.service_account` issues a token whose
  requests are authorized by a ClusterRole's ``rules`` (``apiGroups``, ``resources`` with
  ``name/subresource``, ``verbs``, ``resourceNames``, ``"*"`` wildcards), as the RBAC authorizer
  does: get/list/watch/create/update/patch/delete from the method, a refusal is 403
  ``Forbidden`` with the apiserver's message ("nodes \"gpu-a\" is forbidden: User
  \"system:serviceaccount:ns:name\" cannot patch resource \"nodes/status\" in API group \"\" at
  the cluster scope"). Discovery and health paths are open to every authenticated user
  (``system:discovery``). The emulator's own :attr:`token` is cluster-admin.

Not emulated: other resources, server-side apply, protobuf/CBOR, field managers, admission,
Roles and bindings as API objects, ``dryRun`` except on eviction.

The Python-side API (``add_node``, ``add_pod``, ``add_pdb`` ...) is the simulator's and the
tests' view: it changes state as kubelets and controllers would, under the same lock, and
produces the same watch events.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hmac
import ipaddress
import json
import logging
import math
import random
import re
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpumedic.sim._http import EmulatorHandler, Fault, LoopbackServer

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "EvictionRecord",
    "Fault",
    "KubeApiEmulator",
    "RequestRecord",
]

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

JsonObj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Resource kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    kind: str
    plural: str
    singular: str
    group: str
    namespaced: bool
    field_labels: frozenset[str]
    subresources: frozenset[str]
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        """The ``GroupResource`` string the apiserver puts in messages (``pods``, ``x.policy``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


_NODES = _Kind(
    "Node", "nodes", "node", "", False,
    frozenset({"metadata.name", "metadata.namespace", "spec.unschedulable"}),
    frozenset({"status"}), ("no",),
)
_PODS = _Kind(
    "Pod", "pods", "pod", "", True,
    frozenset({
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
        "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
        "status.podIP", "status.nominatedNodeName",
    }),
    frozenset({"status", "eviction"}), ("po",),
)
_PDBS = _Kind(
    "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", "policy", True,
    frozenset({"metadata.name", "metadata.namespace"}),
    frozenset({"status"}), ("pdb",),
)
_NAMESPACES = _Kind(
    "Namespace", "namespaces", "namespace", "", False,
    frozenset({"metadata.name", "metadata.namespace", "status.phase"}),
    frozenset(), ("ns",),
)
_KINDS = {k.plural: k for k in (_NODES, _PODS, _PDBS, _NAMESPACES)}

# Controllers the disruption controller can read a scale from (its "finders").
_SCALABLE_OWNERS = frozenset({"ReplicaSet", "ReplicationController", "StatefulSet", "Deployment"})
_OWNER_API_VERSIONS = {
    "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1",
    "Deployment": "apps/v1", "Job": "batch/v1", "ReplicationController": "v1", "Node": "v1",
}


# --------------------------------------------------------------------------------------------
# Errors as the apiserver writes them (k8s.io/apimachinery/pkg/api/errors)
# --------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JsonObj | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> JsonObj:
        return _status_body(self.code, self.reason, self.message, self.details)


def _status_body(code: int, reason: str, message: str, details: JsonObj | None) -> JsonObj:
    body: JsonObj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(kind: _Kind, name: str, *, use_kind: bool = False) -> JsonObj:
    details: JsonObj = {"name": name} if name else {}  # StatusDetails.name is omitempty
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.kind if use_kind else kind.plural
    return details


def _not_found(kind: _Kind, name: str) -> _ApiError:
    return _ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found', _details(kind, name))


def _already_exists(kind: _Kind, name: str) -> _ApiError:
    return _ApiError(409, "AlreadyExists", f'{kind.qualified} "{name}" already exists', _details(kind, name))


_MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def _conflict(kind: _Kind, name: str, why: str = _MODIFIED) -> _ApiError:
    return _ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}',
        _details(kind, name),
    )


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, "BadRequest", message)


def _route_not_found() -> _ApiError:
    return _ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _method_not_allowed() -> _ApiError:
    return _ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
    )


def _patch_rejected() -> _ApiError:
    # NewGenericServerResponse(422, ...) keeps only its generic message; the json-patch error
    # text does not reach the client. kubectl prints "The request is invalid: the server
    # rejected our request due to an error in our request".
    return _ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})


@dataclass(frozen=True)
class _FieldError:
    path: str
    type: Literal["Invalid", "Required", "NotSupported", "Duplicate", "Forbidden"]
    value: Any = None
    detail: str = ""

    def __str__(self) -> str:
        if self.type == "Required":
            return f"{self.path}: Required value" + (f": {self.detail}" if self.detail else "")
        if self.type == "Forbidden":
            return f"{self.path}: Forbidden: {self.detail}"
        if self.type == "NotSupported":
            return f"{self.path}: Unsupported value: {json.dumps(self.value)}: supported values: {self.detail}"
        if self.type == "Duplicate":
            return f"{self.path}: Duplicate value: {json.dumps(self.value)}" + (
                f": {self.detail}" if self.detail else ""
            )
        return f"{self.path}: Invalid value: {json.dumps(self.value)}: {self.detail}"

    def cause(self) -> JsonObj:
        reason = {
            "Invalid": "FieldValueInvalid", "Required": "FieldValueRequired",
            "NotSupported": "FieldValueNotSupported", "Duplicate": "FieldValueDuplicate",
            "Forbidden": "FieldValueForbidden",
        }[self.type]
        message = str(self)[len(self.path) + 2:]
        return {"reason": reason, "message": message, "field": self.path}


def _invalid(kind: _Kind, name: str, errors: list[_FieldError]) -> _ApiError:
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details = _details(kind, name, use_kind=True)
    details["causes"] = [e.cause() for e in errors]
    return _ApiError(422, "Invalid", f'{kind.qualified_kind} "{name}" is invalid: {text}', details)


# --------------------------------------------------------------------------------------------
# Name, label and annotation validation (k8s.io/apimachinery/pkg/util/validation)
# --------------------------------------------------------------------------------------------

_QNAME_CHARS = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_RE = re.compile(_QNAME_CHARS)
_LABEL_VALUE_RE = re.compile(f"({_QNAME_CHARS})?")
_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS1123_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN)
_DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

_QNAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    f"validation is '{_QNAME_CHARS}')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    f"'12345', regex used for validation is '({_QNAME_CHARS})?')"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    f"validation is '{_DNS1123_SUBDOMAIN}')"
)


def _qualified_name_problems(key: str) -> list[str]:
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name " + _QNAME_MSG[len("name part "):] +
                " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    problems = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
            problems.append("prefix part " + _SUBDOMAIN_MSG)
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _QNAME_RE.fullmatch(name):
        problems.append(_QNAME_MSG)
    return problems


def _label_value_problems(value: str) -> list[str]:
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE_RE.fullmatch(value):
        problems.append(_LABEL_VALUE_MSG)
    return problems


# --------------------------------------------------------------------------------------------
# Label and field selectors (k8s.io/apimachinery/pkg/labels, pkg/fields)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: Literal["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == "gt" else number < limit


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\((.*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s(),]*)\s*$")
_CMP_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(gt|lt)\s+([^\s(),]+)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _parse_label_selector(text: str) -> list[_Requirement]:
    if not text.strip():
        return []
    requirements = []
    for term in _split_top_level(text):
        req: _Requirement
        if m := _SET_TERM.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise _bad_request(f"unable to parse requirement: for '{m.group(2)}', 'notin' operators, "
                                   "values set can't be empty")
            req = _Requirement(m.group(1), "in" if m.group(2) == "in" else "notin", values)
        elif m := _EQ_TERM.match(term):
            req = _Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),))
        elif m := _CMP_TERM.match(term):
            if not re.fullmatch(r"-?\d+", m.group(3)):
                raise _bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                                   f"must be an integer: {m.group(3)}")
            req = _Requirement(m.group(1), m.group(2), (m.group(3),))  # type: ignore[arg-type]
        elif m := _EXISTS_TERM.match(term):
            req = _Requirement(m.group(2), "!" if m.group(1) else "exists")
        else:
            raise _bad_request(f"unable to parse requirement: found '{term.strip()}', expected: "
                               "in, notin, =, ==, !=, gt, lt")
        problems = _qualified_name_problems(req.key)
        if problems:
            raise _bad_request(f"unable to parse requirement: key: Invalid value: {json.dumps(req.key)}: "
                               + "; ".join(problems))
        if req.op not in ("gt", "lt"):
            for value in req.values:
                if _label_value_problems(value):
                    raise _bad_request(f"unable to parse requirement: values[0][{req.key}]: Invalid value: "
                                       f"{json.dumps(value)}: {_LABEL_VALUE_MSG}")
        requirements.append(req)
    return requirements


def _selector_from_label_selector(selector: JsonObj | None) -> list[_Requirement] | None:
    """A ``metav1.LabelSelector`` as requirements; ``None`` selects nothing (policy/v1 PDBs)."""
    if selector is None:
        return None
    reqs = [_Requirement(k, "=", (v,)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[expr["operator"]]
        reqs.append(_Requirement(expr["key"], op, tuple(expr.get("values") or ())))  # type: ignore[arg-type]
    return reqs


def _labels_match(reqs: list[_Requirement] | None, labels: dict[str, str] | None) -> bool:
    if reqs is None:
        return False
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def _unescape_field_value(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _parse_field_selector(text: str, kind: _Kind) -> list[tuple[str, bool, str]]:
    """``[(field, equals, value)]``; 400 for a field the resource does not index."""
    if not text.strip():
        return []
    terms = re.split(r"(?<!\\),", text)
    result = []
    for term in terms:
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)(.*)$", term)
        if not m:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field_name, op, value = m.group(1), m.group(2), _unescape_field_value(m.group(3).strip())
        if field_name not in kind.field_labels:
            raise _bad_request(f"field label not supported: {field_name}")
        result.append((field_name, op != "!=", value))
    return result


def _field_value(obj: JsonObj, field_name: str) -> str:
    current: Any = obj
    for part in field_name.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    if isinstance(current, bool):
        return "true" if current else "false"
    if current is None and field_name in ("spec.unschedulable", "spec.hostNetwork"):
        return "false"
    return "" if current is None else str(current)


def _fields_match(terms: list[tuple[str, bool, str]], obj: JsonObj) -> bool:
    return all((_field_value(obj, f) == v) == eq for f, eq, v in terms)


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


class _PatchError(Exception):
    """A patch that parsed but cannot be applied (422 for JSON patch)."""


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ``==``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise _PatchError(f"path is not a string: {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PatchError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _list_index(container: list[Any], segment: str, *, for_add: bool) -> int:
    if for_add and segment == "-":
        return len(container)
    if not re.fullmatch(r"0|[1-9]\d*", segment):
        raise _PatchError(f"invalid array index {segment!r}")
    index = int(segment)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise _PatchError(f"array index {index} out of bounds")
    return index


def _resolve_parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict):
            if token not in current:
                raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")
            current = current[token]
        elif isinstance(current, list):
            current = current[_list_index(current, token, for_add=False)]
        else:
            raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return current, tokens[-1]


def _get_at(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent, last = _resolve_parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise _PatchError(f"doc is missing key: /{'/'.join(tokens)}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_list_index(parent, last, for_add=False)]
    raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")


def _add_at(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _resolve_parent(doc, tokens)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, for_add=True), value)
    else:
        raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")
    return doc


def _remove_at(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _PatchError("cannot remove the whole document")
    parent, last = _resolve_parent(doc, tokens)
    if isinstance(parent, dict):
        if last not in parent:
            raise _PatchError(f"remove operation does not apply: doc is missing path: /{'/'.join(tokens)}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_list_index(parent, last, for_add=False))
    raise _PatchError(f"doc is missing path: /{'/'.join(tokens)}")


def json_patch(doc: Any, operations: list[Any]) -> Any:
    """RFC 6902 JSON patch; raises ``_PatchError`` when an operation does not apply."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict):
            raise _PatchError("operation is not an object")
        op = operation.get("op")
        tokens = _pointer(operation.get("path"))
        if op in ("add", "replace", "test") and "value" not in operation:
            raise _PatchError(f"missing value for {op} operation")
        if op == "add":
            doc = _add_at(doc, tokens, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove_at(doc, tokens)
        elif op == "replace":
            _get_at(doc, tokens)
            if not tokens:
                doc = copy.deepcopy(operation["value"])
            else:
                parent, last = _resolve_parent(doc, tokens)
                if isinstance(parent, list):
                    parent[_list_index(parent, last, for_add=False)] = copy.deepcopy(operation["value"])
                else:
                    parent[last] = copy.deepcopy(operation["value"])
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from"))
            if op == "move" and tokens[: len(source)] == source and tokens != source:
                raise _PatchError("cannot move a value into one of its children")
            value = _remove_at(doc, source) if op == "move" else copy.deepcopy(_get_at(doc, source))
            doc = _add_at(doc, tokens, value)
        elif op == "test":
            if not _json_equal(_get_at(doc, tokens), operation["value"]):
                raise _PatchError(f"testing value {operation.get('path')} failed: test failed")
        else:
            raise _PatchError(f"Unexpected kind: {op}")
    return doc


_PRIMITIVE_SET = "<set>"
# Lists that strategic merge patch merges instead of replacing, from the patchStrategy /
# patchMergeKey struct tags in k8s.io/api. "*" stands for "each element of the list above".
_SMP_LIST_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): _PRIMITIVE_SET,
    ("spec", "podCIDRs"): _PRIMITIVE_SET,
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "podIPs"): "ip",
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
}
for _containers in ("containers", "initContainers", "ephemeralContainers"):
    _SMP_LIST_KEYS[("spec", _containers)] = "name"
    _SMP_LIST_KEYS[("spec", _containers, "*", "env")] = "name"
    _SMP_LIST_KEYS[("spec", _containers, "*", "ports")] = "containerPort"
    _SMP_LIST_KEYS[("spec", _containers, "*", "volumeMounts")] = "mountPath"


class _SmpError(Exception):
    """A strategic merge patch the apiserver refuses (400 or 500, see ``_strategic_patch``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v) for k, v in value.items()
            if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _smp_map(original: JsonObj, patch: JsonObj, path: tuple[str, ...]) -> JsonObj | None:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise _SmpError(f"Unknown patch type: {directive} in map: {patch}", 400)
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise _SmpError("invalid patch format for $deleteFromPrimitiveList", 400)
            result[name] = [v for v in result.get(name) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        if isinstance(value, dict):
            current = result.get(key)
            merged = _smp_map(current if isinstance(current, dict) else {}, value, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, sub)
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise _SmpError("invalid patch format for $retainKeys", 400)
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(original: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = _SMP_LIST_KEYS.get(path)
    if key is None:
        return [_strip_directives(v) for v in patch]
    original = original if isinstance(original, list) else []
    if key == _PRIMITIVE_SET:
        return list(original) + [v for v in patch if v not in original]
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [_strip_directives(e) for e in patch if not (isinstance(e, dict) and "$patch" in e)]
    result = copy.deepcopy(original)
    for element in patch:
        if not isinstance(element, dict) or key not in element:
            raise _SmpError(f"map: {element} does not contain declared merge key: {key}", 500)
        index = next(
            (i for i, e in enumerate(result) if isinstance(e, dict) and e.get(key) == element[key]), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        merged = _smp_map(result[index] if index is not None else {}, element, (*path, "*"))
        if merged is None:
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(merged)
        else:
            result[index] = merged
    return result


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the emulator answered (or dropped, for an injected reset)."""

    method: str
    path: str
    query: str
    status: int | None
    fault: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class EvictionRecord:
    """One attempt to remove a pod through the API: an eviction or a direct DELETE.

    ``pdb`` names the budget that covered the pod (if exactly one did) and
    ``disruptions_allowed`` is that budget's ``status.disruptionsAllowed`` just before the
    request was decided, so a test can assert that no pod was evicted from a budget at 0.
    """

    at: float
    via: Literal["eviction", "delete"]
    namespace: str
    pod: str
    node: str | None
    outcome: Literal["evicted", "deleted", "refused", "not_found", "error", "dry_run"]
    code: int
    pdb: str | None = None
    disruptions_allowed: int | None = None
    current_healthy: int | None = None
    desired_healthy: int | None = None
    pod_healthy: bool | None = None
    message: str = ""


# --------------------------------------------------------------------------------------------
# HTTP plumbing shared by the handler
# --------------------------------------------------------------------------------------------


class _Handler(EmulatorHandler):
    server_version = "gpumedic-kube-api-emulator"
    emulator_name = "kube-api emulator"

    def send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def reset_connection(self) -> None:
        # SO_LINGER 0: close() sends RST, what a crashed proxy or apiserver looks like.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            raw = self.connection
            if isinstance(raw, ssl.SSLSocket):
                # Close the descriptor without a TLS close_notify.
                socket.socket(fileno=raw.detach()).close()
            else:
                raw.close()


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


def _make_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpumedic-sim-kubernetes-ca")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _timestamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: JsonObj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _is_ready(pod: JsonObj) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _controller_of(pod: JsonObj) -> JsonObj | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def _scaled(value: int | str, total: int) -> int:
    """``intstr.GetScaledValueFromIntOrPercent(value, total, roundUp=true)``."""
    if isinstance(value, int):
        return value
    return math.ceil(int(value.rstrip("%")) * total / 100)


def _int_or_percent_problems(path: str, value: Any) -> list[_FieldError]:
    if isinstance(value, bool):
        return [_FieldError(path, "Invalid", value, "must be an integer or a percentage")]
    if isinstance(value, int):
        if value < 0:
            return [_FieldError(path, "Invalid", value, "must be greater than or equal to 0")]
        return []
    if isinstance(value, str) and re.fullmatch(r"\d+%", value):
        if int(value[:-1]) > 100:
            return [_FieldError(path, "Invalid", value, "must not be greater than 100%")]
        return []
    return [_FieldError(path, "Invalid", value, "a valid percent string must be a numeric string followed by "
                        "an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")]


def _query_flag(query: dict[str, list[str]], name: str) -> bool:
    return (query.get(name) or [""])[0].lower() in ("true", "1")


def _query_value(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


@dataclass
class _Event:
    rv: int
    plural: str
    type: str
    obj: JsonObj
    old: JsonObj | None


@dataclass
class _Route:
    kind: _Kind | None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    special: str | None = None


_SUCCESS = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
_ADMIN: tuple[str, tuple[JsonObj, ...]] = ("kubernetes-admin", ())  # system:masters: every request allowed


def _request_verb(route: _Route, method: str, query: dict[str, list[str]]) -> str:
    if method in ("GET", "HEAD"):
        if route.name is not None:
            return "get"
        return "watch" if _query_flag(query, "watch") else "list"
    if method == "DELETE":
        return "delete" if route.name is not None else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _rule_allows(rule: JsonObj, group: str, resource: str, verb: str, name: str | None) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    named = rule.get("resourceNames") or []
    return (has("apiGroups", group) and has("resources", resource) and has("verbs", verb)
            and (not named or (name is not None and name in named)))


def _authorize(account: tuple[str, tuple[JsonObj, ...]], route: _Route, method: str,
               query: dict[str, list[str]]) -> None:
    """Raise the apiserver's 403 unless one of the account's rules allows the request
    (plugin/pkg/auth/authorizer/rbac; the message from endpoints/handlers/responsewriters)."""
    kind = route.kind
    assert kind is not None
    user, rules = account
    verb = _request_verb(route, method, query)
    resource = kind.plural + (f"/{route.subresource}" if route.subresource else "")
    if any(_rule_allows(rule, kind.group, resource, verb, route.name) for rule in rules):
        return
    scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
    why = f'User "{user}" cannot {verb} resource "{resource}" in API group "{kind.group}" {scope}'
    subject = f'{kind.qualified} "{route.name}"' if route.name else kind.qualified
    raise _ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", _details(kind, route.name or ""))


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class KubeApiEmulator:
    """An in-memory kube-apiserver on ``https://127.0.0.1:<ephemeral port>``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Clients authenticate
    with :attr:`token`; :meth:`write_kubeconfig` and :meth:`api_client` set that up for the
    real ``kubernetes`` client.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        eviction_delay: float = 0.0,
        git_version: str = "v1.33.2",
        watch_history: int = 10_000,
        watch_default_timeout_s: float = 1800.0,
        seed: int | None = None,
    ) -> None:
        """
        ``eviction_delay``: seconds a pod stays terminating after an eviction or graceful
        delete (capped by its grace period), to make a drain wait as it would for a kubelet.
        ``git_version``: what ``/version`` reports. ``watch_history``: how many changes a watch
        can resume from before it gets 410 Expired. ``seed``: makes uids reproducible.
        """
        self.token = token or secrets.token_urlsafe(32)
        self._accounts: dict[str, tuple[str, tuple[JsonObj, ...]]] = {}  # token -> (user, its rules)
        self.eviction_delay = eviction_delay
        self.git_version = git_version
        self.watch_default_timeout_s = watch_default_timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], JsonObj]] = {plural: {} for plural in _KINDS}
        self._history: deque[_Event] = deque(maxlen=max(1, watch_history))
        self._history_floor = 0
        self._restore_generation = 0
        self._removals: dict[tuple[str, str], tuple[float, str]] = {}
        self._replicas: dict[tuple[str, str, str], int] = {}
        self._replicas_pinned: set[tuple[str, str, str]] = set()
        self._faults: list[Fault] = []
        self.request_log: list[RequestRecord] = []
        self.eviction_log: list[EvictionRecord] = []
        self._server: LoopbackServer | None = None
        self._server_thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tls_files: tuple[Path, Path, Path] = (Path(), Path(), Path())
        self._ca_path: Path | None = None
        self._port = 0
        with self._lock:
            for name in DEFAULT_NAMESPACES:
                self._create_namespace_locked(name)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> KubeApiEmulator:
        """Serve; after a :meth:`stop`, on the same port with the same CA, like a restarted apiserver."""
        if self._server is not None:
            return self
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gpumedic-kube-api-")
            self._tls_files = _make_tls_material(Path(self._tmp.name))
        ca_path, cert_path, key_path = self._tls_files
        self._ca_path = ca_path
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        context.set_alpn_protocols(["http/1.1"])
        self._stopping.clear()
        self._server = LoopbackServer(_Handler, self, context, self._port)
        self._port = int(self._server.server_address[1])
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="kube-api-emulator", daemon=True,
        )
        self._server_thread.start()
        self._reaper = threading.Thread(target=self._reap_loop, name="kube-api-emulator-reaper", daemon=True)
        self._reaper.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; the state, port and CA are kept for :meth:`start`."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        self._server = None

    def close(self) -> None:
        """Stop and delete the TLS material; a later :meth:`start` is a new cluster endpoint."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._ca_path = None
            self._port = 0

    def __enter__(self) -> KubeApiEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        """PEM file of the CA that signed the server certificate (from :meth:`start` to :meth:`close`)."""
        if self._ca_path is None:
            raise RuntimeError("the emulator is not started")
        return self._ca_path

    def service_account(self, namespace: str, name: str, rules: Sequence[Mapping[str, Any]]) -> str:
        """A bearer token for ``system:serviceaccount:<namespace>:<name>``, allowed what ``rules`` (a
        ClusterRole's, bound cluster-wide) allow and nothing else."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._accounts[token] = (f"system:serviceaccount:{namespace}:{name}",
                                     tuple(copy.deepcopy(dict(rule)) for rule in rules))
        return token

    def kubeconfig(self, *, namespace: str = "default", token: str | None = None) -> JsonObj:
        """A kubeconfig (as a dict) with the server URL, the CA data and the bearer token (default: the admin's)."""
        ca_data = base64.b64encode(self.ca_path.read_bytes()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "gpumedic-sim", "cluster": {
                "server": self.url, "certificate-authority-data": ca_data,
            }}],
            "users": [{"name": "gpumedic-sim-admin", "user": {"token": token or self.token}}],
            "contexts": [{"name": "gpumedic-sim", "context": {
                "cluster": "gpumedic-sim", "user": "gpumedic-sim-admin", "namespace": namespace,
            }}],
            "current-context": "gpumedic-sim",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default", token: str | None = None) -> Path:
        """Write a kubeconfig for ``kubernetes.config.load_kube_config(config_file=path)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace=namespace, token=token), sort_keys=False))
        return path

    def api_client(self, token: str | None = None) -> ApiClient:
        """A real ``kubernetes.client.ApiClient`` for this emulator (the global config is untouched)."""
        from kubernetes import config

        return config.new_client_from_config_dict(self.kubeconfig(token=token))

    # ---------------------------------------------------------------- faults and logs

    def fault(
        self,
        pattern: str,
        count: int | None = 1,
        *,
        mode: Literal["status", "reset", "delay"] = "status",
        status: int = 503,
        method: str | None = None,
        delay_s: float = 0.0,
        retry_after: int | None = None,
    ) -> Fault:
        """Arm a fault on the next ``count`` requests whose path matches the glob ``pattern``.

        Faults are checked before authentication, like a failing load balancer in front of
        the apiserver. ``count=None`` arms it until :meth:`clear_faults`.
        """
        if mode == "status" and not 500 <= status <= 599:
            raise ValueError("status faults must be 5xx")
        armed = Fault(pattern, mode, count, status, method, delay_s, retry_after)
        with self._lock:
            self._faults.append(armed)
        return armed

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_logs(self) -> None:
        with self._lock:
            self.request_log.clear()
            self.eviction_log.clear()

    def pdb_violations(self) -> list[EvictionRecord]:
        """Healthy pods taken (evicted or deleted) while their budget allowed no disruption.

        An eviction can never produce one; a direct DELETE bypasses budgets and can.
        """
        with self._lock:
            return [
                r for r in self.eviction_log
                if r.outcome in ("evicted", "deleted") and r.pdb is not None and r.pod_healthy
                and (r.disruptions_allowed or 0) <= 0
            ]

    # ---------------------------------------------------------------- Python-side API: nodes

    def add_node(
        self,
        name: str,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        ready: bool = True,
        *,
        annotations: dict[str, str] | None = None,
        unschedulable: bool = False,
        taints: list[JsonObj] | None = None,
        boot_id: str | None = None,
        internal_ip: str | None = None,
    ) -> JsonObj:
        """Register a node as its kubelet would, with ``gpus`` ``nvidia.com/gpu`` devices."""
        now = time.time()
        all_labels = {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
        }
        all_labels.update(labels or {})
        capacity = {"cpu": "128", "memory": "2113248024Ki", "ephemeral-storage": "3750000000Ki",
                    "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110"}
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
        allocatable = dict(capacity, cpu="126", memory="2112199448Ki")
        spec: JsonObj = {"providerID": f"sim://{name}"}
        if unschedulable:
            spec["unschedulable"] = True
        if taints:
            spec["taints"] = copy.deepcopy(taints)
        address = internal_ip or f"10.0.{self._rng.randrange(0, 255)}.{self._rng.randrange(1, 255)}"
        node: JsonObj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": all_labels, "annotations": dict(annotations or {})},
            "spec": spec,
            "status": {
                "capacity": capacity,
                "allocatable": allocatable,
                "conditions": [
                    self._node_condition("MemoryPressure", False, now),
                    self._node_condition("DiskPressure", False, now),
                    self._node_condition("PIDPressure", False, now),
                    self._node_condition("Ready", ready, now),
                ],
                "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": self._uid().replace("-", ""),
                    "systemUUID": self._uid(),
                    "bootID": boot_id or self._uid(),
                    "kernelVersion": "6.8.0-49-generic",
                    "osImage": "Ubuntu 24.04.1 LTS",
                    "containerRuntimeVersion": "containerd://1.7.24",
                    "kubeletVersion": self.git_version,
                    "kubeProxyVersion": self.git_version,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        with self._lock:
            self._reap_locked()
            if ("", name) in self._objects["nodes"]:
                raise ValueError(f"node {name!r} already exists")
            self._check_valid(_NODES, node)
            self._create_locked(_NODES, node)
            return copy.deepcopy(self._objects["nodes"][("", name)])

    @staticmethod
    def _node_condition(kind: str, value: bool, now: float) -> JsonObj:
        if kind == "Ready":
            reason = "KubeletReady" if value else "KubeletNotReady"
            message = "kubelet is posting ready status" if value else "container runtime is down"
        else:
            reason = {
                "MemoryPressure": "KubeletHasSufficientMemory", "DiskPressure": "KubeletHasNoDiskPressure",
                "PIDPressure": "KubeletHasSufficientPID",
            }[kind]
            message = f"kubelet has no {kind}"
        stamp = _timestamp(now)
        return {"type": kind, "status": "True" if value else "False", "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp, "reason": reason, "message": message}

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._reap_locked()
            if ("", name) not in self._objects["nodes"]:
                raise KeyError(name)
            self._delete_locked(_NODES, ("", name))

    def get_node(self, name: str) -> JsonObj:
        with self._lock:
            self._reap_locked()
            return copy.deepcopy(self._objects["nodes"][("", name)])

    def list_nodes(self) -> list[JsonObj]:
        with self._lock:
            self._reap_locked()
            return [copy.deepcopy(n) for _, n in sorted(self._objects["nodes"].items())]

    def set_node_ready(self, name: str, ready: bool, *, reason: str | None = None, message: str | None = None) -> None:
        """Flip the node's ``Ready`` condition, as its kubelet (or the node controller) would."""
        now = time.time()

        def change(node: JsonObj) -> None:
            for condition in node["status"]["conditions"]:
                if condition["type"] == "Ready":
                    status = "True" if ready else "False"
                    if condition["status"] != status:
                        condition["lastTransitionTime"] = _timestamp(now)
                    condition["status"] = status
                    condition["lastHeartbeatTime"] = _timestamp(now)
                    condition["reason"] = reason or ("KubeletReady" if ready else "KubeletNotReady")
                    condition["message"] = message or (
                        "kubelet is posting ready status" if ready else "container runtime is down"
                    )

        self._mutate(_NODES, ("", name), change)

    def set_boot_id(self, name: str, boot_id: str) -> None:
        """A reboot, as the kubelet reports it: ``status.nodeInfo.bootID`` changes."""
        self._mutate(_NODES, ("", name), lambda node: node["status"]["nodeInfo"].__setitem__("bootID", boot_id))

    def set_node_gpus(self, name: str, *, capacity: int | None = None, allocatable: int | None = None) -> None:
        """What the device plugin reports, e.g. allocatable drops when a GPU falls off the bus."""

        def change(node: JsonObj) -> None:
            if capacity is not None:
                node["status"]["capacity"][GPU_RESOURCE] = str(capacity)
            if allocatable is not None:
                node["status"]["allocatable"][GPU_RESOURCE] = str(allocatable)

        self._mutate(_NODES, ("", name), change)

    # ---------------------------------------------------------------- Python-side API: pods

    def add_namespace(self, name: str) -> JsonObj:
        with self._lock:
            if ("", name) not in self._objects["namespaces"]:
                self._create_namespace_locked(name)
            return copy.deepcopy(self._objects["namespaces"][("", name)])

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str | None,
        *,
        owner_kind: str | None = None,
        owner_name: str | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        gpus: int = 0,
        phase: str = "Running",
        ready: bool | None = None,
        mirror: bool = False,
        termination_grace_period_s: int = 30,
    ) -> JsonObj:
        """Place a pod as its controller and kubelet would.

        ``owner_kind`` (``DaemonSet``, ``ReplicaSet``, ``StatefulSet``, ``Job`` ...) adds a
        controller ownerReference to ``owner_name`` (default: the pod name without its last
        ``-suffix``). ``mirror`` makes it a static pod's mirror (annotation
        ``kubernetes.io/config.mirror``, owned by its Node). ``ready`` defaults to
        ``phase == "Running"``. The namespace is created if missing.
        """
        now = time.time()
        ready = (phase == "Running") if ready is None else ready
        metadata: JsonObj = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        annotations = dict(annotations or {})
        owner_refs: list[JsonObj] = []
        if owner_kind is not None:
            owner = owner_name or (name.rsplit("-", 1)[0] if "-" in name else name)
            owner_refs.append({
                "apiVersion": _OWNER_API_VERSIONS.get(owner_kind, "apps/v1"), "kind": owner_kind,
                "name": owner, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{owner_kind}/{owner}")),
                "controller": True, "blockOwnerDeletion": True,
            })
        if mirror:
            config_hash = self._uid().replace("-", "")[:32]
            annotations.update({MIRROR_ANNOTATION: config_hash, "kubernetes.io/config.hash": config_hash,
                                "kubernetes.io/config.source": "file", "kubernetes.io/config.seen": _timestamp(now)})
            if owner_kind is None and node is not None:
                with self._lock:
                    node_obj = self._objects["nodes"].get(("", node))
                node_uid = node_obj["metadata"]["uid"] if node_obj else self._uid()
                owner_refs.append({"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
                                   "controller": True})
        if owner_refs:
            metadata["ownerReferences"] = owner_refs
        if annotations:
            metadata["annotations"] = annotations
        resources: JsonObj = {}
        if gpus:
            resources = {"limits": {GPU_RESOURCE: str(gpus)}, "requests": {GPU_RESOURCE: str(gpus)}}
        spec: JsonObj = {
            "containers": [{
                "name": "main", "image": "registry.local/gpumedic/workload:1.0",
                "imagePullPolicy": "IfNotPresent", "resources": resources,
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": termination_grace_period_s,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "enableServiceLinks": True,
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
            ],
        }
        if owner_kind == "DaemonSet":
            # The DaemonSet controller adds these so its pods survive cordons and node trouble.
            spec["tolerations"] = [
                {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": effect}
                for t, effect in (("not-ready", "NoExecute"), ("unreachable", "NoExecute"),
                                  ("disk-pressure", "NoSchedule"), ("memory-pressure", "NoSchedule"),
                                  ("pid-pressure", "NoSchedule"), ("unschedulable", "NoSchedule"))
            ]
        if node is not None:
            spec["nodeName"] = node
        pod: JsonObj = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
                        "status": self._pod_status(phase, ready, node, now)}
        with self._lock:
            self._reap_locked()
            if ("", namespace) not in self._objects["namespaces"]:
                self._create_namespace_locked(namespace)
            if (namespace, name) in self._objects["pods"]:
                raise ValueError(f"pod {namespace}/{name} already exists")
            self._check_valid(_PODS, pod)
            self._create_locked(_PODS, pod)
            return copy.deepcopy(self._objects["pods"][(namespace, name)])

    def _pod_status(self, phase: str, ready: bool, node: str | None, now: float) -> JsonObj:
        stamp = _timestamp(now)
        status: JsonObj = {"phase": phase, "qosClass": "BestEffort"}
        if node is not None:
            with self._lock:
                node_obj = self._objects["nodes"].get(("", node))
            host_ip = node_obj["status"]["addresses"][0]["address"] if node_obj else "10.0.0.1"
            status.update({
                "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": f"10.244.{self._rng.randrange(0, 255)}.{self._rng.randrange(1, 255)}",
                "startTime": stamp,
            })
            status["podIPs"] = [{"ip": status["podIP"]}]
        running = phase == "Running"
        status["conditions"] = [
            {"type": "PodReadyToStartContainers", "status": "True" if running else "False",
             "lastProbeTime": None, "lastTransitionTime": stamp},
            {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp},
            {"type": "Ready", "status": "True" if ready else "False", "lastProbeTime": None,
             "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastProbeTime": None,
             "lastTransitionTime": stamp},
            {"type": "PodScheduled", "status": "True" if node else "False", "lastProbeTime": None,
             "lastTransitionTime": stamp},
        ]
        return status

    def set_pod_phase(self, namespace: str, name: str, phase: str, *, ready: bool | None = None) -> None:
        """Move a pod to ``phase`` (and Ready to ``ready``, default: ``phase == "Running"``)."""
        ready = (phase == "Running") if ready is None else ready
        now = time.time()

        def change(pod: JsonObj) -> None:
            pod["status"]["phase"] = phase
            for condition in pod["status"].get("conditions") or []:
                if condition["type"] in ("Ready", "ContainersReady"):
                    status = "True" if ready else "False"
                    if condition["status"] != status:
                        condition["lastTransitionTime"] = _timestamp(now)
                    condition["status"] = status

        self._mutate(_PODS, (namespace, name), change)

    def remove_pod(self, namespace: str, name: str) -> None:
        """The pod is gone at once (a kubelet finished it, or a force delete)."""
        with self._lock:
            self._reap_locked()
            if (namespace, name) not in self._objects["pods"]:
                raise KeyError(f"{namespace}/{name}")
            self._delete_locked(_PODS, (namespace, name))

    def get_pod(self, namespace: str, name: str) -> JsonObj:
        with self._lock:
            self._reap_locked()
            return copy.deepcopy(self._objects["pods"][(namespace, name)])

    def list_pods(self, node: str | None = None, *, namespace: str | None = None) -> list[JsonObj]:
        with self._lock:
            self._reap_locked()
            return [
                copy.deepcopy(p) for (ns, _), p in sorted(self._objects["pods"].items())
                if (node is None or p["spec"].get("nodeName") == node) and (namespace is None or ns == namespace)
            ]

    def set_owner_replicas(self, namespace: str, owner_kind: str, owner_name: str, replicas: int) -> None:
        """Pin the replica count the disruption controller reads for a controller."""
        with self._lock:
            key = (namespace, owner_kind, owner_name)
            self._replicas[key] = replicas
            self._replicas_pinned.add(key)

    # ---------------------------------------------------------------- Python-side API: PDBs

    def add_pdb(
        self,
        namespace: str,
        name: str,
        selector: dict[str, str] | JsonObj | None,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
        *,
        unhealthy_pod_eviction_policy: str | None = None,
    ) -> JsonObj:
        """Create a ``policy/v1`` PodDisruptionBudget.

        ``selector`` is either plain ``matchLabels`` (``{"app": "x"}``) or a full
        ``LabelSelector`` (``{"matchLabels": ..., "matchExpressions": ...}``); ``{}`` selects
        every pod in the namespace, ``None`` none.
        """
        if selector is not None and not ({"matchLabels", "matchExpressions"} & selector.keys()) and selector:
            selector = {"matchLabels": dict(selector)}
        spec: JsonObj = {"selector": selector}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        if unhealthy_pod_eviction_policy is not None:
            spec["unhealthyPodEvictionPolicy"] = unhealthy_pod_eviction_policy
        pdb: JsonObj = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        with self._lock:
            self._reap_locked()
            if ("", namespace) not in self._objects["namespaces"]:
                self._create_namespace_locked(namespace)
            if (namespace, name) in self._objects["poddisruptionbudgets"]:
                raise ValueError(f"pdb {namespace}/{name} already exists")
            self._check_valid(_PDBS, pdb)
            self._create_locked(_PDBS, pdb)
            return self._render(_PDBS, self._objects["poddisruptionbudgets"][(namespace, name)])

    def get_pdb(self, namespace: str, name: str) -> JsonObj:
        """The PDB with its status as the disruption controller would compute it now."""
        with self._lock:
            self._reap_locked()
            return self._render(_PDBS, self._objects["poddisruptionbudgets"][(namespace, name)])

    def remove_pdb(self, namespace: str, name: str) -> None:
        with self._lock:
            self._delete_locked(_PDBS, (namespace, name))

    # ---------------------------------------------------------------- snapshot / restore

    def snapshot(self) -> JsonObj:
        """The whole state (objects, resourceVersion counter, pending terminations), deep-copied."""
        with self._lock:
            self._reap_locked()
            return {
                "resource_version": self._rv,
                "objects": {
                    plural: [copy.deepcopy(o) for _, o in sorted(objs.items())]
                    for plural, objs in self._objects.items()
                },
                "removals": [[ns, name, at, uid] for (ns, name), (at, uid) in self._removals.items()],
                "replicas": [[*k, v, k in self._replicas_pinned] for k, v in self._replicas.items()],
            }

    def restore(self, state: JsonObj) -> None:
        """Replace the state with a :meth:`snapshot`.

        The resourceVersion counter never goes backwards, the watch history is dropped (a
        watch resuming from an older version gets 410 Expired and must relist, as after an
        etcd restore) and open watches are ended.
        """
        with self._changed:
            self._objects = {plural: {} for plural in _KINDS}
            for plural, objs in state["objects"].items():
                for obj in objs:
                    self._objects[plural][_key(obj)] = copy.deepcopy(obj)
            self._rv = max(self._rv, int(state["resource_version"])) + 1
            self._history.clear()
            self._history_floor = self._rv
            self._restore_generation += 1
            self._removals = {(ns, name): (at, uid) for ns, name, at, uid in state.get("removals", [])}
            self._replicas = {(ns, kind, name): n for ns, kind, name, n, _ in state.get("replicas", [])}
            self._replicas_pinned = {(ns, kind, name) for ns, kind, name, _, pinned in state.get("replicas", [])
                                     if pinned}
            self._changed.notify_all()

    # ---------------------------------------------------------------- store internals (lock held)

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, kind: _Kind, type_: str, obj: JsonObj, old: JsonObj | None, rv: int) -> None:
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0].rv
        self._history.append(_Event(rv, kind.plural, type_, obj, old))
        self._changed.notify_all()

    def _create_namespace_locked(self, name: str) -> None:
        self._create_locked(_NAMESPACES, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        })

    def _create_locked(self, kind: _Kind, obj: JsonObj) -> JsonObj:
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta = obj.setdefault("metadata", {})
        meta["uid"] = self._uid()
        meta["creationTimestamp"] = _timestamp(time.time())
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(transient, None)
        if kind is _PDBS:
            meta["generation"] = 1
        if not kind.namespaced:
            meta.pop("namespace", None)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        key = _key(obj)
        self._objects[kind.plural][key] = obj
        if kind is _PODS:
            self._note_replicas(obj)
        self._record(kind, "ADDED", obj, None, rv)
        return obj

    def _replace_locked(self, kind: _Kind, obj: JsonObj) -> JsonObj:
        key = _key(obj)
        old = self._objects[kind.plural][key]
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._objects[kind.plural][key] = obj
        self._record(kind, "MODIFIED", obj, old, rv)
        return obj

    def _delete_locked(self, kind: _Kind, key: tuple[str, str]) -> JsonObj:
        old = self._objects[kind.plural].pop(key)
        if kind is _PODS:
            self._removals.pop(key, None)
        rv = self._next_rv()
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = str(rv)
        self._record(kind, "DELETED", final, old, rv)
        if kind is _NAMESPACES:
            for plural in ("pods", "poddisruptionbudgets"):
                for child in [k for k in self._objects[plural] if k[0] == key[1]]:
                    self._delete_locked(_KINDS[plural], child)
        return final

    def _mutate(self, kind: _Kind, key: tuple[str, str], change: Callable[[JsonObj], None]) -> JsonObj:
        with self._lock:
            self._reap_locked()
            current = self._objects[kind.plural].get(key)
            if current is None:
                raise KeyError("/".join(p for p in key if p))
            updated = copy.deepcopy(current)
            change(updated)
            return copy.deepcopy(self._replace_locked(kind, updated))

    def _note_replicas(self, pod: JsonObj) -> None:
        controller = _controller_of(pod)
        if controller is None:
            return
        ns = pod["metadata"]["namespace"]
        key = (ns, controller["kind"], controller["name"])
        if key in self._replicas_pinned:
            return
        live = sum(
            1 for (pns, _), p in self._objects["pods"].items()
            if pns == ns and not p["metadata"].get("deletionTimestamp")
            and (c := _controller_of(p)) is not None and c["kind"] == key[1] and c["name"] == key[2]
        )
        self._replicas[key] = max(self._replicas.get(key, 0), live)

    def _reap_locked(self) -> None:
        now = time.time()
        for key, (at, uid) in list(self._removals.items()):
            if at <= now:
                self._removals.pop(key, None)
                pod = self._objects["pods"].get(key)
                if pod is not None and pod["metadata"].get("uid") == uid:
                    self._delete_locked(_PODS, key)

    def _reap_loop(self) -> None:
        while not self._stopping.wait(0.02):
            with self._lock:
                if self._removals:
                    self._reap_locked()

    # ---------------------------------------------------------------- PDB arithmetic

    def _pdbs_for(self, pod: JsonObj) -> list[JsonObj]:
        ns = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        return [
            pdb for (pns, _), pdb in sorted(self._objects["poddisruptionbudgets"].items())
            if pns == ns and _labels_match(_selector_from_label_selector(pdb["spec"].get("selector")), labels)
        ]

    def _pdb_status(self, pdb: JsonObj) -> JsonObj:
        ns = pdb["metadata"]["namespace"]
        reqs = _selector_from_label_selector(pdb["spec"].get("selector"))
        pods = [
            p for (pns, _), p in sorted(self._objects["pods"].items())
            if pns == ns and _labels_match(reqs, p["metadata"].get("labels"))
        ]
        healthy = sum(1 for p in pods if not p["metadata"].get("deletionTimestamp") and _is_ready(p))
        disrupted = {
            p["metadata"]["name"]: p["metadata"]["deletionTimestamp"]
            for p in pods if p["metadata"].get("deletionTimestamp")
            and any(c.get("type") == "DisruptionTarget" for c in p["status"].get("conditions") or [])
        }
        spec = pdb["spec"]
        min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
        sync_error: str | None = None
        expected = desired = 0
        if max_unavailable is not None or isinstance(min_available, str):
            scales: dict[tuple[str, str], int] = {}
            for pod in pods:
                controller = _controller_of(pod)
                if controller is None:
                    continue  # unmanaged pods are left out of the expected count
                if controller["kind"] not in _SCALABLE_OWNERS:
                    sync_error = f'found no controllers for pod "{pod["metadata"]["name"]}"'
                    break
                owner = (controller["kind"], controller["name"])
                scales[owner] = self._replicas.get((ns, *owner), 0)
            expected = sum(scales.values())
            if max_unavailable is not None:
                desired = max(0, expected - _scaled(max_unavailable, expected))
            else:
                desired = _scaled(min_available, expected)
        elif min_available is not None:
            desired, expected = int(min_available), len(pods)
        generation = pdb["metadata"].get("generation", 1)
        now = _timestamp(time.time())
        if sync_error is not None:
            allowed = 0
            condition = {"type": "DisruptionAllowed", "status": "False", "reason": "SyncFailed",
                         "message": sync_error, "observedGeneration": generation, "lastTransitionTime": now}
        else:
            allowed = max(0, healthy - desired)
            condition = {
                "type": "DisruptionAllowed", "status": "True" if allowed > 0 else "False",
                "reason": "SufficientPods" if allowed > 0 else "InsufficientPods", "message": "",
                "observedGeneration": generation, "lastTransitionTime": now,
            }
        status: JsonObj = {
            "observedGeneration": generation, "disruptionsAllowed": allowed, "currentHealthy": healthy,
            "desiredHealthy": desired, "expectedPods": expected, "conditions": [condition],
        }
        if disrupted:
            status["disruptedPods"] = disrupted
        return status

    def _render(self, kind: _Kind, obj: JsonObj) -> JsonObj:
        out = copy.deepcopy(obj)
        if kind is _PDBS:
            out["status"] = self._pdb_status(obj)
        return out

    # ---------------------------------------------------------------- validation

    def _check_types(self, kind: _Kind, obj: JsonObj) -> None:
        """Shape errors the apiserver's JSON decoder reports as 400."""
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise _bad_request("json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta")
        for map_field in ("labels", "annotations"):
            value = meta.get(map_field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise _bad_request(
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{map_field} of type string"
                )
        spec = obj.get("spec") or {}
        if kind is _NODES:
            if "unschedulable" in spec and not isinstance(spec["unschedulable"], bool):
                raise _bad_request("json: cannot unmarshal into Go struct field NodeSpec.spec.unschedulable of "
                                   "type bool")
            if "taints" in spec and not isinstance(spec["taints"], list):
                raise _bad_request("json: cannot unmarshal into Go struct field NodeSpec.spec.taints of type "
                                   "[]v1.Taint")

    def _validation_errors(self, kind: _Kind, obj: JsonObj) -> list[_FieldError]:
        errors: list[_FieldError] = []
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name:
            errors.append(_FieldError("metadata.name", "Required", detail="name or generateName is required"))
        elif kind in (_NODES, _PODS, _PDBS) and (len(name) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(name)):
            errors.append(_FieldError("metadata.name", "Invalid", name, _SUBDOMAIN_MSG))
        for key, value in (meta.get("labels") or {}).items():
            for problem in _qualified_name_problems(key):
                errors.append(_FieldError("metadata.labels", "Invalid", key, problem))
            for problem in _label_value_problems(value):
                errors.append(_FieldError("metadata.labels", "Invalid", value, problem))
        for key in meta.get("annotations") or {}:
            for problem in _qualified_name_problems(key.lower()):
                errors.append(_FieldError("metadata.annotations", "Invalid", key, problem))
        spec = obj.get("spec") or {}
        if kind is _NODES:
            seen: set[tuple[str, str]] = set()
            for i, taint in enumerate(spec.get("taints") or []):
                path = f"spec.taints[{i}]"
                if not isinstance(taint, dict):
                    errors.append(_FieldError(path, "Invalid", taint, "must be an object"))
                    continue
                key = taint.get("key") or ""
                if not key:
                    errors.append(_FieldError(f"{path}.key", "Required"))
                else:
                    errors.extend(_FieldError(f"{path}.key", "Invalid", key, p) for p in _qualified_name_problems(key))
                errors.extend(_FieldError(f"{path}.value", "Invalid", taint.get("value"), p)
                              for p in _label_value_problems(str(taint.get("value") or "")))
                effect = taint.get("effect")
                if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                    if not effect:
                        errors.append(_FieldError(f"{path}.effect", "Required"))
                    else:
                        errors.append(_FieldError(f"{path}.effect", "NotSupported", effect,
                                                  '"NoExecute", "NoSchedule", "PreferNoSchedule"'))
                if (key, str(effect)) in seen:
                    errors.append(_FieldError(path, "Duplicate", taint, "taints must be unique by key and effect pair"))
                seen.add((key, str(effect)))
        elif kind is _PODS:
            containers = spec.get("containers")
            if not isinstance(containers, list) or not containers:
                errors.append(_FieldError("spec.containers", "Required"))
            else:
                names: set[str] = set()
                for i, container in enumerate(containers):
                    cname = container.get("name") if isinstance(container, dict) else None
                    if not cname:
                        errors.append(_FieldError(f"spec.containers[{i}].name", "Required"))
                    elif cname in names:
                        errors.append(_FieldError(f"spec.containers[{i}].name", "Duplicate", cname))
                    elif not _DNS1123_LABEL_RE.fullmatch(cname) or len(cname) > 63:
                        errors.append(_FieldError(f"spec.containers[{i}].name", "Invalid", cname,
                                                  "a lowercase RFC 1123 label must consist of lower case "
                                                  "alphanumeric characters or '-'"))
                    names.add(cname or "")
        elif kind is _PDBS:
            if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
                errors.append(_FieldError(
                    "spec", "Invalid", spec, "minAvailable and maxUnavailable cannot be both set"
                ))
            for fname in ("minAvailable", "maxUnavailable"):
                if spec.get(fname) is not None:
                    errors.extend(_int_or_percent_problems(f"spec.{fname}", spec[fname]))
            selector = spec.get("selector")
            if selector is not None:
                for expr in selector.get("matchExpressions") or []:
                    if expr.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
                        errors.append(_FieldError("spec.selector.matchExpressions.operator", "Invalid",
                                                  expr.get("operator"), "not a valid selector operator"))
            policy = spec.get("unhealthyPodEvictionPolicy")
            if policy is not None and policy not in ("IfHealthyBudget", "AlwaysAllow"):
                errors.append(_FieldError("spec.unhealthyPodEvictionPolicy", "NotSupported", policy,
                                          '"AlwaysAllow", "IfHealthyBudget"'))
        return errors

    def _check_valid(self, kind: _Kind, obj: JsonObj) -> None:
        self._check_types(kind, obj)
        errors = self._validation_errors(kind, obj)
        if errors:
            raise _invalid(kind, obj["metadata"].get("name") or "", errors)

    def _prepare_update(self, kind: _Kind, old: JsonObj, new: JsonObj, *, status_only: bool) -> JsonObj:
        """Apply the registry strategy: restore what a client cannot change, then validate."""
        self._check_types(kind, new)
        name = old["metadata"]["name"]
        errors: list[_FieldError] = []
        for immutable in ("name", "namespace", "uid"):
            if immutable == "namespace" and not kind.namespaced:
                continue
            given = new["metadata"].get(immutable)
            if given not in (None, "") and given != old["metadata"].get(immutable):
                errors.append(_FieldError(f"metadata.{immutable}", "Invalid", given, "field is immutable"))
        if errors:
            raise _invalid(kind, name, errors)
        if status_only:
            updated = copy.deepcopy(old)
            updated["status"] = copy.deepcopy(new.get("status") or {})
        else:
            updated = copy.deepcopy(new)
            if "status" in old:
                updated["status"] = copy.deepcopy(old["status"])
            else:
                updated.pop("status", None)
        updated["apiVersion"], updated["kind"] = kind.api_version, kind.kind
        meta = updated.setdefault("metadata", {})
        for managed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                        "deletionGracePeriodSeconds", "generation"):
            if managed in old["metadata"]:
                meta[managed] = old["metadata"][managed]
            else:
                meta.pop(managed, None)
        if kind is _PODS and not status_only:
            self._check_pod_spec_update(old, updated)
        if kind is _PDBS and updated.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        errors = self._validation_errors(kind, updated)
        if errors:
            raise _invalid(kind, name, errors)
        return updated

    @staticmethod
    def _check_pod_spec_update(old: JsonObj, new: JsonObj) -> None:
        def mutable_removed(spec: JsonObj) -> JsonObj:
            spec = copy.deepcopy(spec)
            for group in ("containers", "initContainers"):
                for container in spec.get(group) or []:
                    container.pop("image", None)
            for mutable in ("activeDeadlineSeconds", "terminationGracePeriodSeconds", "tolerations"):
                spec.pop(mutable, None)
            return spec

        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        old_tolerations = old_spec.get("tolerations") or []
        new_tolerations = new_spec.get("tolerations") or []
        if mutable_removed(old_spec) != mutable_removed(new_spec) or any(
            t not in new_tolerations for t in old_tolerations
        ):
            raise _invalid(_PODS, old["metadata"]["name"], [_FieldError(
                "spec", "Forbidden",
                detail="pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                "(allow it to be set to 1 if it was previously negative)",
            )])

    # ---------------------------------------------------------------- HTTP entry point

    def _handle(self, req: _Handler, method: str) -> None:
        split = urlsplit(req.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length > 0 else b""
        content_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower() or None

        def record(status: int | None, fault: str | None = None) -> None:
            with self._lock:
                self.request_log.append(RequestRecord(method, path, split.query, status, fault, content_type))

        with self._lock:
            armed = next((f for f in self._faults if f._take(method, path)), None)
        if armed is not None:
            if armed.mode == "reset":
                record(None, "reset")
                req.reset_connection()
                return
            if armed.mode == "status":
                headers = {"Retry-After": str(armed.retry_after)} if armed.retry_after is not None else {}
                reason = {503: "ServiceUnavailable", 504: "Timeout"}.get(armed.status, "InternalError")
                message = {503: "the server is currently unable to handle the request",
                           504: "the server was unable to return a response in the time allotted"}.get(
                    armed.status, "an error on the server (\"injected fault\") has prevented the request "
                    "from succeeding")
                record(armed.status, "status")
                req.send_json(armed.status, _status_body(armed.status, reason, message, {}), headers)
                return
            time.sleep(armed.delay_s)

        account = self._authenticated(req.headers.get("Authorization"))
        if account is None:
            record(401)
            req.send_json(401, _status_body(401, "Unauthorized", "Unauthorized", None))
            return

        try:
            route = self._route(path)
            if account is not _ADMIN and route.special is None:
                _authorize(account, route, method, query)
            if route.special is not None:
                code, payload = self._serve_special(route, method)
                record(code)
                if isinstance(payload, str):
                    req.send_text(code, payload)
                else:
                    req.send_json(code, payload)
                return
            if method == "GET" and route.name is None and _query_flag(query, "watch"):
                self._serve_watch(req, route, query, on_start=lambda: record(200))
                return
            with self._lock:
                self._reap_locked()
                code, payload = self._dispatch(route, method, query, body, content_type)
        except _ApiError as error:
            record(error.code)
            req.send_json(error.code, error.status(), error.headers)
            return
        except Exception:  # a bug in the emulator must still answer like a server
            log.exception("kube-api emulator: internal error on %s %s", method, path)
            record(500)
            req.send_json(500, _status_body(500, "InternalError", "internal error in the emulator", {}))
            return
        # Logged before the reply goes out, so a client that got its answer sees its record.
        record(code)
        req.send_json(code, payload)

    def _authenticated(self, header: str | None) -> tuple[str, tuple[JsonObj, ...]] | None:
        """Who sent the request: `_ADMIN`, a service account (its user and rules), or None."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header[len("Bearer "):].strip().encode()
        if hmac.compare_digest(given, self.token.encode()):
            return _ADMIN
        with self._lock:
            accounts = list(self._accounts.items())
        found = None
        for token, account in accounts:  # every token compared, in constant time each
            if hmac.compare_digest(given, token.encode()):
                found = account
        return found

    @staticmethod
    def _route(path: str) -> _Route:
        parts = [p for p in path.split("/") if p]
        if parts in (["version"], ["api"], ["apis"], ["api", "v1"], ["apis", "policy"], ["apis", "policy", "v1"],
                     ["healthz"], ["livez"], ["readyz"]):
            return _Route(None, special="/".join(parts))
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:3] == ["apis", "policy", "v1"]:
            group, rest = "policy", parts[3:]
        else:
            raise _route_not_found()
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _route_not_found()
        kind = _KINDS.get(rest[0])
        if kind is None or kind.group != group or (namespace is not None and not kind.namespaced):
            raise _route_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in kind.subresources:
            raise _route_not_found()
        if kind.namespaced and name is not None and namespace is None:
            raise _route_not_found()
        return _Route(kind, namespace, name, sub)

    def _serve_special(self, route: _Route, method: str) -> tuple[int, Any]:
        if method not in ("GET", "HEAD"):
            raise _method_not_allowed()
        special = route.special
        if special in ("healthz", "livez", "readyz"):
            return 200, "ok"
        if special == "version":
            major, minor = self.git_version.lstrip("v").split(".")[:2]
            return 200, {
                "major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
                "minCompatibilityMajor": major, "minCompatibilityMinor": str(max(0, int(minor) - 1)),
                "gitVersion": self.git_version, "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2025-06-17T18:29:47Z", "goVersion": "go1.24.4", "compiler": "gc",
                "platform": "linux/amd64",
            }
        if special == "api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]}
        policy = {"groupVersion": "policy/v1", "version": "v1"}
        if special == "apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "policy", "versions": [policy], "preferredVersion": policy}]}
        if special == "apis/policy":
            return 200, {"kind": "APIGroup", "apiVersion": "v1", "name": "policy", "versions": [policy],
                         "preferredVersion": policy}
        group = "policy" if special == "apis/policy/v1" else ""
        resources: list[JsonObj] = []
        for kind in _KINDS.values():
            if kind.group != group:
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append({"name": kind.plural, "singularName": kind.singular, "namespaced": kind.namespaced,
                              "kind": kind.kind, "verbs": verbs, "shortNames": list(kind.short_names)})
            for sub in sorted(kind.subresources):
                sub_kind = "Eviction" if sub == "eviction" else kind.kind
                sub_group = {"group": "policy", "version": "v1"} if sub == "eviction" else {}
                resources.append({"name": f"{kind.plural}/{sub}", "singularName": "", "namespaced": kind.namespaced,
                                  "kind": sub_kind, **sub_group,
                                  "verbs": ["create"] if sub == "eviction" else ["get", "patch", "update"]})
        return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                     "groupVersion": "policy/v1" if group else "v1", "resources": resources}

    def _dispatch(
        self, route: _Route, method: str, query: dict[str, list[str]], body: bytes, content_type: str | None
    ) -> tuple[int, Any]:
        kind = route.kind
        assert kind is not None
        if route.name is None:
            if method in ("GET", "HEAD"):
                return 200, self._list(kind, route.namespace, query)
            if method == "POST" and (route.namespace is not None or not kind.namespaced):
                return 201, self._create_from_request(kind, route.namespace, self._parse_body(body))
            raise _method_not_allowed()
        if route.subresource == "eviction":
            if method != "POST":
                raise _method_not_allowed()
            return self._evict(route.namespace or "", route.name, self._parse_body(body), query)
        key = (route.namespace or "", route.name)
        status_only = route.subresource == "status"
        if method in ("GET", "HEAD"):
            return 200, self._render(kind, self._get_or_404(kind, key))
        if method == "PUT":
            return 200, self._render(kind, self._update(kind, key, self._parse_body(body), status_only))
        if method == "PATCH":
            return 200, self._render(kind, self._patch(kind, key, body, content_type, status_only))
        if method == "DELETE" and not status_only:
            return self._delete_from_request(kind, key, query, body)
        raise _method_not_allowed()

    @staticmethod
    def _parse_body(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as error:
            raise _bad_request(f"error decoding request body: {error}") from None

    def _get_or_404(self, kind: _Kind, key: tuple[str, str]) -> JsonObj:
        obj = self._objects[kind.plural].get(key)
        if obj is None:
            raise _not_found(kind, key[1])
        return obj

    def _matcher(self, kind: _Kind, namespace: str | None, query: dict[str, list[str]]) -> Callable[[JsonObj], bool]:
        label_reqs = _parse_label_selector(_query_value(query, "labelSelector") or "")
        field_terms = _parse_field_selector(_query_value(query, "fieldSelector") or "", kind)

        def matches(obj: JsonObj) -> bool:
            meta = obj.get("metadata") or {}
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            return _labels_match(label_reqs, meta.get("labels")) and _fields_match(field_terms, obj)

        return matches

    def _list(self, kind: _Kind, namespace: str | None, query: dict[str, list[str]]) -> JsonObj:
        matches = self._matcher(kind, namespace, query)
        items = [obj for _, obj in sorted(self._objects[kind.plural].items()) if matches(obj)]
        list_meta: JsonObj = {"resourceVersion": str(self._rv)}
        token = _query_value(query, "continue")
        if token:
            try:
                start_after = json.loads(base64.urlsafe_b64decode(token.encode()))
            except ValueError:
                raise _bad_request("continue key is not valid: illegal base64 data") from None
            items = [o for o in items if list(_key(o)) > start_after["key"]]
            list_meta["resourceVersion"] = str(start_after["rv"])
        limit_text = _query_value(query, "limit")
        if limit_text and int(limit_text) > 0 and len(items) > int(limit_text):
            limit = int(limit_text)
            remaining = len(items) - limit
            items = items[:limit]
            list_meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"key": list(_key(items[-1])), "rv": int(list_meta["resourceVersion"])}).encode()
            ).decode()
            list_meta["remainingItemCount"] = remaining
        rendered = []
        for obj in items:
            item = self._render(kind, obj)
            item.pop("kind", None)  # list items carry no kind / apiVersion on the wire
            item.pop("apiVersion", None)
            rendered.append(item)
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": list_meta, "items": rendered}

    def _create_from_request(self, kind: _Kind, namespace: str | None, obj: Any) -> JsonObj:
        if not isinstance(obj, dict):
            raise _bad_request(f"the body of the request was not a {kind.kind} object")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta")
        if kind.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request("the namespace of the provided object does not match the namespace sent on "
                                   "the request")
            meta["namespace"] = namespace
            if ("", namespace) not in self._objects["namespaces"]:
                raise _not_found(_NAMESPACES, namespace or "")
        if not meta.get("name") and meta.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(self._rng.choice(alphabet) for _ in range(5))
        meta.pop("resourceVersion", None)
        if kind is _PODS:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif kind is _PDBS:
            obj.pop("status", None)
        elif kind is _NAMESPACES:
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name")
        self._check_valid(kind, obj)
        if _key(obj) in self._objects[kind.plural]:
            raise _already_exists(kind, meta["name"])
        return self._render(kind, self._create_locked(kind, obj))

    def _update(self, kind: _Kind, key: tuple[str, str], obj: Any, status_only: bool) -> JsonObj:
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise _bad_request(f"the body of the request was not a {kind.kind} object")
        body_name = obj["metadata"].get("name")
        if body_name != key[1]:
            raise _bad_request(f"the name of the object ({body_name}) does not match the name on the URL ({key[1]})")
        if kind.namespaced and obj["metadata"].get("namespace") not in (None, "", key[0]):
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        old = self._get_or_404(kind, key)
        given_rv = obj["metadata"].get("resourceVersion")
        if given_rv not in (None, "") and str(given_rv) != old["metadata"]["resourceVersion"]:
            raise _conflict(kind, key[1])
        updated = self._prepare_update(kind, old, obj, status_only=status_only)
        if updated == old:
            return old  # an update that changes nothing does not bump the resourceVersion
        return self._replace_locked(kind, updated)

    def _patch(
        self, kind: _Kind, key: tuple[str, str], body: bytes, content_type: str | None, status_only: bool
    ) -> JsonObj:
        accepted = ("application/json-patch+json", "application/merge-patch+json",
                    "application/strategic-merge-patch+json")
        if content_type not in accepted:
            raise _ApiError(415, "UnsupportedMediaType",
                            f"the body of the request was in an unknown format - accepted media types include: "
                            f"{', '.join(accepted)}", {})
        patch = self._parse_body(body)
        old = self._get_or_404(kind, key)
        current = copy.deepcopy(old)
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                patched = json_patch(current, patch)
            except _PatchError as error:
                log.debug("kube-api emulator: JSON patch rejected: %s", error)
                raise _patch_rejected() from None
        elif content_type == "application/merge-patch+json":
            if not isinstance(patch, dict):
                raise _bad_request(f"json: cannot unmarshal into Go value of type {kind.kind}")
            patched = merge_patch(current, patch)
        else:
            if not isinstance(patch, dict):
                raise _bad_request("invalid JSON document")
            try:
                patched = _smp_map(current, patch, ()) or {}
            except _SmpError as error:
                if error.code == 400:
                    raise _bad_request(str(error)) from None
                raise _ApiError(500, "", str(error)) from None
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise _bad_request(f"the patched object is not a {kind.kind}")
        patched_rv = patched["metadata"].get("resourceVersion")
        if patched_rv not in (None, "") and str(patched_rv) != old["metadata"]["resourceVersion"]:
            raise _conflict(kind, key[1])
        updated = self._prepare_update(kind, old, patched, status_only=status_only)
        if updated == old:
            return old  # a no-op patch does not bump the resourceVersion
        return self._replace_locked(kind, updated)

    # ---------------------------------------------------------------- delete and evict

    def _delete_options(self, query: dict[str, list[str]], body: bytes) -> JsonObj:
        options = self._parse_body(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise _bad_request("the body of the request was not DeleteOptions")
        grace = _query_value(query, "gracePeriodSeconds")
        if grace is not None:
            try:
                options["gracePeriodSeconds"] = int(grace)
            except ValueError:
                raise _bad_request(f"gracePeriodSeconds: invalid value {grace!r}") from None
        if _query_value(query, "dryRun"):
            options["dryRun"] = query["dryRun"]
        return options

    def _check_preconditions(self, kind: _Kind, obj: JsonObj, options: JsonObj) -> None:
        pre = options.get("preconditions") or {}
        name = obj["metadata"]["name"]
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise _conflict(kind, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                        f"UID in object meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise _conflict(kind, name, f"Precondition failed: ResourceVersion in precondition: "
                                        f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                        f"{obj['metadata']['resourceVersion']}")

    def _delete_from_request(
        self, kind: _Kind, key: tuple[str, str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, Any]:
        obj = self._get_or_404(kind, key)
        options = self._delete_options(query, body)
        self._check_preconditions(kind, obj, options)
        dry_run = bool(options.get("dryRun"))
        if kind is _PODS:
            pdbs = self._pdbs_for(obj)
            pdb_status = self._pdb_status(pdbs[0]) if len(pdbs) == 1 else None
            result = obj if dry_run else self._terminate_pod(obj, options.get("gracePeriodSeconds"), condition=None)
            self._log_disruption("delete", obj, "dry_run" if dry_run else "deleted", 200,
                                 pdbs[0] if len(pdbs) == 1 else None, pdb_status)
            return 200, self._render(kind, result)
        if dry_run:
            return 200, {**_SUCCESS, "details": {**_details(kind, key[1]), "uid": obj["metadata"]["uid"]}}
        final = copy.deepcopy(self._delete_locked(kind, key))
        if kind is _NAMESPACES:
            final["status"] = {"phase": "Terminating"}
            final["metadata"]["deletionTimestamp"] = _timestamp(time.time())
            return 200, final
        return 200, {**_SUCCESS, "details": {**_details(kind, key[1]), "uid": final["metadata"]["uid"]}}

    def _terminate_pod(self, pod: JsonObj, grace: int | None, condition: JsonObj | None) -> JsonObj:
        """Start (or shorten) a graceful deletion; returns the pod as the DELETE reply shows it."""
        key = _key(pod)
        phase = pod["status"].get("phase")
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if not pod["spec"].get("nodeName") or phase in ("Succeeded", "Failed"):
            grace = 0  # nothing runs it, or it is done: deleted at once (pod strategy CheckGracefulDelete)
        updated = copy.deepcopy(pod)
        if condition is not None:
            conditions = updated["status"].setdefault("conditions", [])
            conditions[:] = [c for c in conditions if c.get("type") != condition["type"]] + [condition]
        delay = min(float(grace), self.eviction_delay)
        if grace == 0 or delay <= 0:
            if condition is not None:
                self._replace_locked(_PODS, updated)
            return self._delete_locked(_PODS, key)
        now = time.time()
        existing = updated["metadata"].get("deletionGracePeriodSeconds")
        if existing is not None and existing <= grace:
            if condition is not None:
                return self._replace_locked(_PODS, updated)
            return pod
        updated["metadata"]["deletionTimestamp"] = _timestamp(now + grace)
        updated["metadata"]["deletionGracePeriodSeconds"] = grace
        stored = self._replace_locked(_PODS, updated)
        self._removals[key] = (now + delay, stored["metadata"]["uid"])
        return stored

    def _log_disruption(
        self, via: Literal["eviction", "delete"], pod: JsonObj,
        outcome: Literal["evicted", "deleted", "refused", "not_found", "error", "dry_run"], code: int,
        pdb: JsonObj | None, pdb_status: JsonObj | None, message: str = "",
    ) -> None:
        self.eviction_log.append(EvictionRecord(
            at=time.time(), via=via, namespace=pod["metadata"].get("namespace", ""), pod=pod["metadata"]["name"],
            node=pod.get("spec", {}).get("nodeName"), outcome=outcome, code=code,
            pdb=pdb["metadata"]["name"] if pdb else None,
            disruptions_allowed=pdb_status["disruptionsAllowed"] if pdb_status else None,
            current_healthy=pdb_status["currentHealthy"] if pdb_status else None,
            desired_healthy=pdb_status["desiredHealthy"] if pdb_status else None,
            pod_healthy=_is_ready(pod) and not pod["metadata"].get("deletionTimestamp") if "status" in pod else None,
            message=message,
        ))

    def _evict(self, namespace: str, name: str, body: Any, query: dict[str, list[str]]) -> tuple[int, Any]:
        pod = self._objects["pods"].get((namespace, name))
        if pod is None:
            self._log_disruption("eviction", {"metadata": {"namespace": namespace, "name": name}}, "not_found",
                                 404, None, None)
            raise _not_found(_PODS, name)
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was not an Eviction object")
        if (body.get("metadata") or {}).get("name") != name:
            raise _bad_request("name in URL does not match name in Eviction object")
        options = dict(body.get("deleteOptions") or {})
        if _query_value(query, "dryRun"):
            options["dryRun"] = query["dryRun"]
        dry_run = bool(options.get("dryRun"))
        self._check_preconditions(_PODS, pod, options)
        disruption_condition = {
            "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting", "lastProbeTime": None, "lastTransitionTime": _timestamp(time.time()),
        }
        phase = pod["status"].get("phase")
        pdbs = self._pdbs_for(pod)
        pdb = pdbs[0] if len(pdbs) == 1 else None
        pdb_status = self._pdb_status(pdb) if pdb is not None else None
        ignore_pdb = phase in ("Pending", "Succeeded", "Failed") or bool(pod["metadata"].get("deletionTimestamp"))
        if not ignore_pdb and len(pdbs) > 1:
            message = ("This pod has more than one PodDisruptionBudget, which the eviction subresource does not "
                       "support.")
            self._log_disruption("eviction", pod, "error", 500, None, None, message)
            return 500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": message, "code": 500}
        if not ignore_pdb and pdb is not None and pdb_status is not None:
            unhealthy_may_go = False
            if not _is_ready(pod):
                policy = pdb["spec"].get("unhealthyPodEvictionPolicy")
                unhealthy_may_go = policy == "AlwaysAllow" or (
                    pdb_status["currentHealthy"] >= pdb_status["desiredHealthy"] > 0
                )
            if not unhealthy_may_go and pdb_status["disruptionsAllowed"] <= 0:
                condition = pdb_status["conditions"][0]
                if condition["reason"] == "SyncFailed":
                    cause = (f"The disruption budget {pdb['metadata']['name']} does not allow evicting pods "
                             f"currently because it failed sync: {condition['message']}")
                elif pdb_status["currentHealthy"] <= pdb_status["desiredHealthy"]:
                    cause = (f"The disruption budget {pdb['metadata']['name']} needs "
                             f"{pdb_status['desiredHealthy']} healthy pods and has "
                             f"{pdb_status['currentHealthy']} currently")
                else:
                    cause = f"The disruption budget {pdb['metadata']['name']} does not allow evicting pods currently"
                self._log_disruption("eviction", pod, "refused", 429, pdb, pdb_status, cause)
                raise _ApiError(
                    429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                    {"causes": [{"reason": "DisruptionBudget", "message": cause}]},
                )
        if dry_run:
            self._log_disruption("eviction", pod, "dry_run", 201, pdb, pdb_status)
        else:
            self._log_disruption("eviction", pod, "evicted", 201, pdb, pdb_status)
            self._terminate_pod(pod, options.get("gracePeriodSeconds"), condition=disruption_condition)
        return 201, {**_SUCCESS, "code": 201}

    # ---------------------------------------------------------------- watch

    def _serve_watch(
        self, req: _Handler, route: _Route, query: dict[str, list[str]], on_start: Callable[[], None]
    ) -> None:
        kind = route.kind
        assert kind is not None
        matches = self._matcher(kind, route.namespace, query)  # selector errors: 400 before streaming
        timeout_text = _query_value(query, "timeoutSeconds")
        try:
            timeout = float(timeout_text or 0)
        except ValueError:
            raise _bad_request(f"invalid timeoutSeconds: {timeout_text}") from None
        if timeout <= 0:  # 0 or absent: the server picks (minRequestTimeout in the apiserver)
            timeout = self.watch_default_timeout_s
        deadline = time.monotonic() + timeout
        rv_text = _query_value(query, "resourceVersion")
        events: list[tuple[str, JsonObj]] = []
        with self._lock:
            self._reap_locked()
            generation = self._restore_generation
            if rv_text in (None, "", "0"):
                cursor = self._rv
                events = [("ADDED", self._render(kind, o)) for _, o in sorted(self._objects[kind.plural].items())
                          if matches(o)]
            else:
                try:
                    cursor = int(rv_text or "0")
                except ValueError:
                    raise _bad_request(f"invalid resource version: {rv_text}") from None
                if cursor < self._history_floor:
                    events = [("ERROR", _status_body(
                        410, "Expired", f"too old resource version: {cursor} ({self._history_floor + 1})", None))]
                    deadline = 0.0
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Transfer-Encoding", "chunked")
        req.send_header("Audit-Id", str(uuid.uuid4()))
        req.send_header("Cache-Control", "no-cache, private")
        req.end_headers()
        on_start()

        def send(batch: Iterable[tuple[str, JsonObj]]) -> bool:
            try:
                for type_, obj in batch:
                    data = (json.dumps({"type": type_, "object": obj}, separators=(",", ":")) + "\n").encode()
                    req.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                req.wfile.flush()
                return True
            except OSError:
                return False

        if not send(events):
            req.close_connection = True
            return
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with self._changed:
                if self._restore_generation != generation:
                    break
                pending = [e for e in self._history if e.rv > cursor and e.plural == kind.plural]
                if not pending:
                    self._changed.wait(min(remaining, 0.5))
                    continue
                cursor = pending[-1].rv
                batch = []
                for event in pending:
                    now_match = matches(event.obj)
                    was_match = event.old is not None and matches(event.old)
                    if event.type == "ADDED" and now_match:
                        batch.append(("ADDED", self._render(kind, event.obj)))
                    elif event.type == "MODIFIED":
                        if now_match and was_match:
                            batch.append(("MODIFIED", self._render(kind, event.obj)))
                        elif now_match:
                            batch.append(("ADDED", self._render(kind, event.obj)))
                        elif was_match:
                            batch.append(("DELETED", self._render(kind, event.obj)))
                    elif event.type == "DELETED" and was_match:
                        batch.append(("DELETED", self._render(kind, event.obj)))
            if batch and not send(batch):
                req.close_connection = True
                return
        try:
            req.wfile.write(b"0\r\n\r\n")
            req.wfile.flush()
        except OSError:
            req.close_connection = True
