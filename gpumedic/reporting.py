"""Sweep results as the operator reads them: JSON document, table rows, markdown report.

Pure formatting: no Prefect and no I/O, so the CLI, the flow's artifacts and the tests
all render the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gpumedic.domain.verdict import Action, NodeAssessment, Verdict


def sweep_document(sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment]) -> dict[str, Any]:
    """The `gpumedic sweep --json` document: one entry per node in the fleet."""
    return {
        "sweep_id": sweep_id,
        "started": started.isoformat(),
        "nodes": [
            {
                "node": a.node,
                "verdict": str(a.verdict),
                "action": str(a.action),
                "reasons": list(a.reasons) + [r for g in a.gpus for r in g.reasons if r not in a.reasons],
                "gpus": [
                    {"index": g.index, "verdict": str(g.verdict), "action": str(g.action), "reasons": list(g.reasons)}
                    for g in a.gpus
                ],
            }
            for a in assessments
        ],
    }


def needs_attention(a: NodeAssessment) -> bool:
    return a.verdict is not Verdict.HEALTHY or a.action is not Action.NONE


def table_rows(assessments: Sequence[NodeAssessment]) -> list[dict[str, str]]:
    """One row per unhealthy or unknown node, most severe first."""
    rows = []
    for a in sorted(assessments, key=lambda a: (-a.action.rank, -a.verdict.rank, a.node)):
        if not needs_attention(a):
            continue
        gpus = ", ".join(f"{g.index}:{g.verdict}" for g in a.gpus if g.verdict is not Verdict.HEALTHY)
        reasons = list(a.reasons) + [r for g in a.gpus for r in g.reasons]
        rows.append({
            "node": a.node,
            "verdict": str(a.verdict),
            "action": str(a.action),
            "gpus": gpus or "-",
            "reasons": "; ".join(reasons)[:500],
        })
    return rows


def markdown_report(sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment], elapsed_s: float) -> str:
    verdicts = Counter(a.verdict for a in assessments)
    actions = Counter(a.action for a in assessments)
    lines = [
        f"# Fleet sweep `{sweep_id}`",
        "",
        f"Started {started.isoformat()}; {len(assessments)} nodes, "
        f"{sum(len(a.gpus) for a in assessments)} GPUs assessed in {elapsed_s:.1f} s.",
        "",
        "| verdict | nodes |",
        "|---|---|",
        *[f"| {v} | {verdicts.get(v, 0)} |" for v in Verdict],
        "",
        "| recommended action | nodes |",
        "|---|---|",
        *[f"| {a} | {actions[a]} |" for a in sorted(actions, key=lambda a: -a.rank)],
        "",
    ]
    attention = [a for a in assessments if needs_attention(a)]
    if not attention:
        lines.append("All nodes are healthy.")
        return "\n".join(lines) + "\n"
    lines.append("## Nodes that need attention")
    for a in sorted(attention, key=lambda a: (-a.action.rank, a.node)):
        lines += ["", f"### {a.node}: **{a.verdict}**, recommended action **{a.action}**"]
        lines += [f"- {reason}" for reason in a.reasons]
        for g in a.gpus:
            lines += [f"- GPU {g.index} ({g.verdict}, {g.action}): {reason}" for reason in g.reasons]
    lines += ["", "Actions `reset_gpu` and above start a remediation workflow (event `gpumedic.node.unhealthy`)."]
    return "\n".join(lines) + "\n"


def summary_line(assessments: Sequence[NodeAssessment]) -> str:
    verdicts = Counter(str(a.verdict) for a in assessments)
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
