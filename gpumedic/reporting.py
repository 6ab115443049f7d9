"""Sweep results as the operator reads them: JSON document, table rows, markdown report.

Pure formatting: no Prefect and no I/O, so the CLI, the flow's artifacts and the tests
all render the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpumedic.domain.history import Sample
from gpumedic.domain.observation import Observation, dark_spell_text, unseen
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.verdict import Action, NodeAssessment, Verdict
from gpumedic.domain.wording import first_named

if TYPE_CHECKING:
    from gpumedic.domain.forecast import HazardModel, SilentGpu
    from gpumedic.refit import RefitOutcome


def sweep_document(
    sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment],
    observations: Mapping[str, Observation] | None = None, remediation: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `gpumedic sweep --json` document: one entry per node in the fleet.

    `last_seen`: the latest sweep that could assess the node (this one, unless it is unknown;
    None when no sweep the store remembers has). `remediation`: for a node that needs it, what the
    sweep did about it (None for the others).
    """
    observations = observations or {}
    remediation = remediation or {}

    def last_seen(node: str) -> str | None:
        seen = observations[node].seen_at if node in observations else None
        return None if seen is None else seen.isoformat()

    return {
        "sweep_id": sweep_id,
        "started": started.isoformat(),
        "nodes": [
            {
                "node": a.node,
                "verdict": str(a.verdict),
                "action": str(a.action),
                "last_seen": last_seen(a.node),
                "remediation": remediation.get(a.node),
                "reasons": list(a.reasons) + [r for g in a.gpus for r in g.reasons if r not in a.reasons],
                "gpus": [
                    {"index": g.index, "verdict": str(g.verdict), "action": str(g.action), "reasons": list(g.reasons)}
                    for g in a.gpus
                ],
            }
            for a in assessments
        ],
    }


def age_text(span: timedelta) -> str:
    """A span as an operator reads it: minutes under an hour and a half, then hours, then days."""
    seconds = max(span.total_seconds(), 0.0)
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def unseen_text(observation: Observation) -> str:
    """How long a node has gone unseen, as the report says it ("" when the latest sweep saw it)."""
    if not observation.unseen:
        return ""
    return f"{dark_spell_text(observation)} ({age_text(observation.unseen_for)})"


def needs_attention(a: NodeAssessment) -> bool:
    return a.verdict is not Verdict.HEALTHY or a.action is not Action.NONE


def node_risk(risks: Mapping[tuple[str, int | None], float], node: str) -> tuple[int | None, float] | None:
    """The riskiest GPU of `node` in the latest forecast, if it has one."""
    mine = [(gpu, risk) for (name, gpu), risk in risks.items() if name == node]
    return max(mine, key=lambda item: item[1]) if mine else None


def _risk_text(risk: tuple[int | None, float] | None) -> str:
    if risk is None:
        return "-"
    gpu, value = risk
    return f"{value:.0%} (GPU {gpu})" if gpu is not None else f"{value:.0%}"


def table_rows(
    assessments: Sequence[NodeAssessment], risks: Mapping[tuple[str, int | None], float] | None = None,
    observations: Mapping[str, Observation] | None = None, remediation: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """One row per unhealthy or unknown node, most severe first, with its latest forecast risk,
    for a node this sweep could not assess how long no sweep has, and for one that needs
    remediation what the sweep did about it (`remediation`)."""
    risks = risks or {}
    observations = observations or {}
    remediation = remediation or {}
    rows = []
    for a in sorted(assessments, key=lambda a: (-a.action.rank, -a.verdict.rank, a.node)):
        if not needs_attention(a):
            continue
        gpus = ", ".join(f"{g.index}:{g.verdict}" for g in a.gpus if g.verdict is not Verdict.HEALTHY)
        reasons = a.all_reasons
        rows.append({
            "node": a.node,
            "verdict": str(a.verdict),
            "action": str(a.action),
            "gpus": gpus or "-",
            "forecast risk": _risk_text(node_risk(risks, a.node)),
            "not seen for": age_text(o.unseen_for) if (o := observations.get(a.node)) and o.unseen else "-",
            "remediation": remediation.get(a.node, "-"),
            "reasons": "; ".join(reasons)[:500],
        })
    return rows


def markdown_report(
    sweep_id: str, started: datetime, assessments: Sequence[NodeAssessment], elapsed_s: float,
    risks: Mapping[tuple[str, int | None], float] | None = None, risk_window: RiskWindow = UNRECORDED,
    observations: Mapping[str, Observation] | None = None, unseen_alert_after: timedelta | None = None,
    depth_note: str = "", remediation: Mapping[str, str] | None = None,
) -> str:
    """`risks`: the latest forecast's risk per GPU, a probability of failure in `risk_window`.
    `observations`: per node, when a sweep last saw it; those this sweep could not assess are
    listed as blind spots, marked where they have been dark for `unseen_alert_after` or more.
    `depth_note`: what a quick sweep did not read, under the opening line. `remediation`: per node
    that needs it, what the sweep did about it."""
    risks = risks or {}
    remediation = remediation or {}
    verdicts = Counter(a.verdict for a in assessments)
    actions = Counter(a.action for a in assessments)
    lines = [
        f"# Fleet sweep `{sweep_id}`",
        "",
        f"Started {started.isoformat()}; {len(assessments)} nodes, "
        f"{sum(len(a.gpus) for a in assessments)} GPUs assessed in {elapsed_s:.1f} s.",
        "",
        *([depth_note, ""] if depth_note else []),
        "| verdict | nodes |",
        "|---|---|",
        *[f"| {v} | {verdicts.get(v, 0)} |" for v in Verdict],
        "",
        "| recommended action | nodes |",
        "|---|---|",
        *[f"| {a} | {actions[a]} |" for a in sorted(actions, key=lambda a: -a.rank)],
        "",
    ]
    swept = {a.node for a in assessments}
    lines += _blind_spot_lines([o for n, o in (observations or {}).items() if n in swept], assessments,
                               unseen_alert_after)
    riskiest = sorted(((r, n, g) for (n, g), r in risks.items() if n in swept), reverse=True)[:5]
    if riskiest:
        lines += [f"Highest forecast risk of failure {risk_window} (latest failure-forecast run):", ""]
        lines += [f"- {n} {'node' if g is None else f'GPU {g}'}: {r:.0%}" for r, n, g in riskiest]
        lines.append("")
    attention = [a for a in assessments if needs_attention(a)]
    if not attention:
        lines.append("All nodes are healthy.")
        return "\n".join(lines) + "\n"
    lines.append("## Nodes that need attention")
    for a in sorted(attention, key=lambda a: (-a.action.rank, a.node)):
        lines += ["", f"### {a.node}: **{a.verdict}**, recommended action **{a.action}**"]
        if (risk := node_risk(risks, a.node)) is not None:
            lines.append(f"- forecast risk of failure {risk_window}: {_risk_text(risk)}")
        if a.node in remediation:
            lines.append(f"- remediation: {remediation[a.node]}")
        lines += [f"- {reason}" for reason in a.reasons]
        for g in a.gpus:
            lines += [f"- GPU {g.index} ({g.verdict}, {g.action}): {reason}" for reason in g.reasons]
    lines += ["", "Actions `reset_gpu` and above start a remediation workflow (event `gpumedic.node.unhealthy`), "
              "except where a run would only stop (an approval pending, a replacement on order, a node opted out): "
              "each node's remediation line says which."]
    return "\n".join(lines) + "\n"


def _blind_spot_lines(
    observations: Sequence[Observation], assessments: Sequence[NodeAssessment], alert_after: timedelta | None
) -> list[str]:
    dark = unseen(observations)
    if not dark:
        return []
    why = {a.node: next(iter(a.all_reasons), "-") for a in assessments}
    lines = [
        "## Blind spots",
        "",
        f"{len(dark)} node(s) this sweep could not assess, longest dark first. Nothing is done to a node that "
        "cannot be assessed; every failure it has stays hidden until it is seen again."
        + (f" Those dark for {age_text(alert_after)} or more (**bold**) are announced once per dark spell "
           "(event `gpumedic.node.unseen`)."
           if alert_after else ""),
        "",
        "| node | unseen | this sweep |",
        "|---|---|---|",
    ]
    for o in dark:
        overdue = alert_after is not None and o.unseen_for >= alert_after
        node = f"**{o.node}**" if overdue else o.node
        lines.append(f"| {node} | {unseen_text(o)} | {why.get(o.node, '-')[:200].replace('|', '/')} |")
    return [*lines, ""]


def summary_line(assessments: Sequence[NodeAssessment]) -> str:
    verdicts = Counter(str(a.verdict) for a in assessments)
    return ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))


# -- failure forecasts ------------------------------------------------------------------------

_BARS = "▁▂▃▄▅▆▇█"

# The evidence drawn for each of the riskiest GPUs: daily increases of these counters.
CHART_FIELDS: tuple[tuple[str, str], ...] = (
    ("ecc_sbe_aggregate", "correctable ECC / day"),
    ("remapped_rows_uncorrectable", "uncorrectable remapped rows / day"),
    ("pcie_replay", "PCIe replays / day"),
    ("nvlink_crc_errors", "NVLink CRC errors / day"),
    ("xid", "Xid events / day"),
)


def sparkline(values: Sequence[float]) -> str:
    """A text chart that renders in any markdown viewer, the Prefect UI included."""
    top = max(values, default=0.0)
    if top <= 0:
        return _BARS[0] * len(values)
    return "".join(_BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1) + 0.5))] for v in values)


def daily_increments(samples: Sequence[Sample], field: str, *, now: datetime, days: int) -> list[float]:
    """Per-day increase of a cumulative counter (a drop is a counter reset, not negative errors);
    for `xid`, the number of events per day."""
    start = now - timedelta(days=days)
    per_day = [0.0] * days
    ordered = sorted((s for s in samples if s.field == field and start <= s.time <= now), key=lambda s: s.time)
    previous: float | None = None
    for s in ordered:
        day = min(days - 1, int((s.time - start).total_seconds() // 86400))
        if field == "xid":
            per_day[day] += 1
            continue
        if previous is not None:
            per_day[day] += s.value - previous if s.value >= previous else s.value
        previous = s.value
    return per_day


def alarm_label(forecast: Any) -> str:
    """"yes", "held" (an alarm that raised no request: its GPU is remediation's) or "" (a `GpuForecast` or a
    stored one)."""
    return ("yes" if forecast.held is None else "held") if forecast.alarm else ""


def evidence(forecast: Any) -> list[str]:
    """Why a held alarm raised no request, then the evidence behind the risk."""
    return ([forecast.held] if forecast.held is not None else []) + list(forecast.factors)


def forecast_rows(
    forecasts: Sequence[Any], silent: Sequence[SilentGpu] = (), *, now: datetime | None = None, limit: int = 50
) -> list[dict[str, str]]:
    """The riskiest scored GPUs, then the silent ones (risk unknown), at most `limit` of each. A held alarm
    (its GPU is remediation's) says so, and why, before its evidence."""
    rows = [
        {
            "node": f.node,
            "gpu": "-" if f.gpu is None else str(f.gpu),
            "risk": f"{f.risk:.1%}",
            "alarm": alarm_label(f),
            "lead time": f"~{f.lead_time_hours:.0f} h" if f.lead_time_hours else "-",
            "evidence": "; ".join(evidence(f)) or "-",
        }
        for f in forecasts[:limit]
    ]
    return rows + [
        {"node": s.node, "gpu": "-" if s.gpu is None else str(s.gpu), "risk": "unknown", "alarm": "",
         "lead time": "-", "evidence": silent_text(s, now)}
        for s in silent[:limit]
    ]


# A rack that went dark is hundreds of GPUs; the report shows the longest-silent and counts the rest.
SILENT_ROWS = 100


def silent_text(gpu: SilentGpu, now: datetime | None) -> str:
    ago = "" if now is None else f", {age_text(gpu.silent_for(now))} ago"
    return f"not scored: no telemetry since {gpu.last_sample:%Y-%m-%d %H:%M} UTC{ago}"


def forecast_markdown(
    forecasts: Sequence[Any], charts: dict[tuple[str, int | None], dict[str, list[float]]], *, now: datetime,
    window: RiskWindow, chart_days: int, model_note: str = "", silent: Sequence[SilentGpu] = (),
    departed: Sequence[str] = (),
) -> str:
    alarms = [f for f in forecasts if f.alarm]
    on_hold = sum(f.held is not None for f in alarms)
    lines = [
        f"# GPU failure forecast, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"{len(forecasts)} GPUs scored; {len(alarms)} above the alarm threshold "
        f"(probability of failure {window})"
        + (f", {on_hold} of them on GPUs the latest sweep already sends to a human: no order for those."
           if on_hold else "."),
        "",
    ]
    if silent:
        lines += [f"{len(silent)} GPUs not scored: no telemetry lately, and a GPU nobody can read is not a healthy "
                  "one. Their risk is unknown until a sweep reads them again (see the end of this report).", ""]
    if departed:
        shown = first_named(departed, SILENT_ROWS)
        one = len(departed) == 1
        lines += [f"{len(departed)} {'node' if one else 'nodes'} with history in the store {'is' if one else 'are'} "
                  "no longer in the fleet (its file's list, or the Nodes its label selector matches), so not scored: "
                  f"{shown}.", ""]
    if model_note:
        lines += [f"Model: {model_note}.", ""]
    if forecasts:
        unseen = ", ".join(str(c) for c in forecasts[0].unpredictable_classes)
        lines += [f"Not predictable from telemetry, so never in these risks: {unseen}.", ""]
    for f in forecasts[: len(charts)]:
        gpu = "node" if f.gpu is None else f"GPU {f.gpu}"
        alarm = {"yes": " (alarm)", "held": " (alarm, held)"}.get(alarm_label(f), "")
        lines += [f"## {f.node} {gpu}: {f.risk:.1%}{alarm}", ""]
        lines += [f"- {factor}" for factor in evidence(f)] or ["- no single factor stands out"]
        series = charts.get((f.node, f.gpu), {})
        if series:
            lines += ["", f"Last {chart_days} days, oldest first:", "", "```"]
            for field, label in CHART_FIELDS:
                values = series.get(field)
                if values and any(values):
                    lines.append(f"{label:<36} {sparkline(values)}  max {max(values):g}")
            lines += ["```"]
        lines.append("")
    if alarms:
        lines.append("Each alarm raises a proactive-maintenance request: a human approves or rejects an "
                     "\"Order Replacement\" ticket in the Prefect UI"
                     + (" (not a held one: its GPU's remediation asks the human instead)." if on_hold else "."))
    if silent:
        lines += ["", "## Not scored: no telemetry lately", "", "| node | gpu | last reading | silent for |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {s.node} | {'node' if s.gpu is None else s.gpu} | {s.last_sample:%Y-%m-%d %H:%M} UTC | "
                  f"{age_text(s.silent_for(now))} |" for s in silent[:SILENT_ROWS]]
        if len(silent) > SILENT_ROWS:
            lines += ["", f"... and {len(silent) - SILENT_ROWS} more (the run's result names them all)."]
    return "\n".join(lines) + "\n"


def refit_markdown(
    outcome: RefitOutcome,
    *,
    path: Path | None,
    archived: Path | None,
    now: datetime,
    prior: HazardModel,
    dry_run: bool = False,
) -> str:
    """The weekly refit's report: the decision first, then the evidence an SRE needs to trust or undo it."""
    if dry_run:
        decision = "would adopt a refitted model" if outcome.adopted is not None else "would keep the model in use"
        title = f"# Forecast model refit (dry run), {now:%Y-%m-%d %H:%M} UTC: {decision}"
    else:
        decision = "adopted a refitted model" if outcome.adopted is not None else "kept the model in use"
        title = f"# Forecast model refit, {now:%Y-%m-%d %H:%M} UTC: {decision}"
    lines = [title, "", f"{'A real run would have ' if dry_run else ''}{outcome.reason}.", ""]
    check = outcome.check
    if check is not None and check.judged:
        lines += [
            f"Check on the {check.hours:,} hours since {check.until:%Y-%m-%d %H:%M} UTC, which the candidate "
            f"was not fitted on (prevalence {check.prevalence:.4f}; PR-AUC: higher ranks failing GPUs first):",
            "",
            "| model | PR-AUC |",
            "| --- | --- |",
            f"| shipped (the prior) | {check.prior_pr_auc:.3f} |",
            f"| fitted on this fleet | {check.fitted_pr_auc:.3f} |",
            "",
        ]
    fit = outcome.final or outcome.candidate
    if fit is not None:
        lines += [
            f"{'Fitted' if outcome.adopted is not None else 'The candidate was fitted'} on {fit.rows:,} training rows "
            f"from {fit.first:%Y-%m-%d} to {fit.last:%Y-%m-%d}, "
            f"{fit.failures} incidents by cause: {fit.causes_text}. Incidents whose evidence named no part "
            "(recorded as `remediation:<action>`) count under \"other\".",
            "",
            "Largest moves from the shipped model (log-odds per standardised unit):",
            "",
            "```",
            *largest_moves(prior, fit.model),
            "```",
            "",
        ]
    if dry_run:
        lines.append(
            "Dry run: no model file was written. "
            + (f"`{path}` is unchanged." if path is not None else
               "The fleet file names no `forecast_model`; name one to let the weekly refit install what it adopts.")
        )
    elif outcome.adopted is not None:
        lines.append(f"The daily forecast reads it from `{path}` from its next run.")
        if archived is not None:
            lines.append(f"The model it replaced is kept as `{archived}`: copy it over `{path}` to roll back.")
    else:
        lines.append(f"`{path}` is unchanged.")
    return "\n".join(lines) + "\n"


def largest_moves(prior: HazardModel, model: HazardModel, top: int = 3) -> list[str]:
    """What the fleet's history changed, one line per cause: the coefficients that moved most
    (log-odds per standardised unit)."""
    lines = []
    for before, after in zip(prior.causes, model.causes, strict=True):
        moves = sorted(zip(after.features, before.coef, after.coef, strict=True), key=lambda m: -abs(m[2] - m[1]))[:top]
        shown = ", ".join(f"{f} {b:+.2f} -> {a:+.2f}" for f, b, a in moves if abs(a - b) >= 0.005)
        intercept = f"intercept {before.intercept:+.2f} -> {after.intercept:+.2f}"
        lines.append(f"{after.name:<8} {intercept}; {shown or 'nothing else moved'}")
    return lines
