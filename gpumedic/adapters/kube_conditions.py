"""Each sweep's verdicts written to the Nodes as conditions (`gpumedic.domain.node_condition`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from gpumedic.adapters.errors import AdapterError
from gpumedic.adapters.kube_nodes import KubeNodes, NodeMissingError, NotAllowedError
from gpumedic.domain.node_condition import NodeCondition, next_condition


@dataclass(slots=True)
class ConditionsPublished:
    """What became of each node's condition. `refused`: the API server's 401/403, after which
    nothing more was tried (every other node would get the same answer)."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # already said the same, or a newer sweep's word
    missing: list[str] = field(default_factory=list)  # no Node of that name in the cluster
    failed: dict[str, str] = field(default_factory=dict)  # node -> error
    refused: str | None = None
    not_tried: list[str] = field(default_factory=list)  # after a refusal

    def summary(self) -> str:
        parts = [f"{len(self.written)} written", f"{len(self.unchanged)} unchanged"]
        parts += [f"{len(self.missing)} not in the cluster"] if self.missing else []
        parts += [f"{len(self.failed)} failed"] if self.failed else []
        parts += [f"{len(self.not_tried) + 1} refused by the API server"] if self.refused else []
        return "node conditions: " + ", ".join(parts)


def _news(previous: NodeCondition | None, *, found: NodeCondition, refresh: timedelta) -> NodeCondition | None:
    return next_condition(previous, found, refresh)


def publish_conditions(
    kube: KubeNodes, found: Mapping[str, NodeCondition], refresh: timedelta, label_selector: str | None = None
) -> ConditionsPublished:
    """Write what each sweep `found` per node, where `next_condition` says it is news.

    The nodes matching `label_selector` are read in one list; a node outside it, or a lone node
    (a readmitted one: listing the fleet for it would cost more than the write), is read on its
    own. A node whose write fails is reported and the next one is tried: the next sweep writes it
    again.
    """
    views = {view.name: view for view in kube.list_nodes(label_selector)} if len(found) > 1 else {}
    out = ConditionsPublished()
    pending = list(found.items())
    for i, (node, condition) in enumerate(pending):
        try:
            written = kube.update_condition(node, condition.type, partial(_news, found=condition, refresh=refresh),
                                            known=views.get(node))
        except NodeMissingError:
            out.missing.append(node)
        except NotAllowedError as err:
            out.refused = str(err)
            out.not_tried = [name for name, _ in pending[i + 1 :]]
            break
        except AdapterError as err:
            out.failed[node] = str(err)
        else:
            (out.written if written is not None else out.unchanged).append(node)
    return out
