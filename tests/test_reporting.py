"""The operator-facing renderings: sweep document, tables, markdown, forecast charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gpumedic.domain.history import Sample
from gpumedic.domain.observation import Observation
from gpumedic.domain.risk_window import UNRECORDED, RiskWindow
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict
from gpumedic.reporting import (
    daily_increments,
    markdown_report,
    sparkline,
    sweep_document,
    table_rows,
)

NOW = datetime(2026, 11, 20, tzinfo=UTC)
SICK = NodeAssessment("n2", Verdict.FAILED, Action.RESET_GPU, (),
                      (GpuAssessment(3, Verdict.FAILED, Action.RESET_GPU, ("GPU 3: 2 volatile DBE",)),))
WELL = NodeAssessment("n1", Verdict.HEALTHY, Action.NONE, (), (GpuAssessment(0, Verdict.HEALTHY, Action.NONE, ()),))


def test_sweep_document_lists_every_node_with_gpu_reasons_lifted_to_the_node() -> None:
    document = sweep_document("s1", NOW, [WELL, SICK])
    assert [n["node"] for n in document["nodes"]] == ["n1", "n2"]
    assert document["nodes"][1]["reasons"] == ["GPU 3: 2 volatile DBE"]
    assert document["nodes"][0]["reasons"] == []
    assert [n["remediation"] for n in document["nodes"]] == [None, None]
    said = sweep_document("s1", NOW, [WELL, SICK], remediation={"n2": "run requested"})
    assert [n["remediation"] for n in said["nodes"]] == [None, "run requested"]


def test_table_shows_only_nodes_needing_attention_with_their_forecast_risk() -> None:
    rows = table_rows([WELL, SICK], {("n2", 3): 0.42, ("n2", 1): 0.05, ("n1", 0): 0.9})
    assert [r["node"] for r in rows] == ["n2"]
    assert rows[0]["forecast risk"] == "42% (GPU 3)"


def test_the_report_says_what_the_sweep_did_about_each_node_needing_remediation() -> None:
    said = {"n2": "no run requested: incident inc-1 awaits a human's decision (replace)"}
    rows = table_rows([WELL, SICK, DARK], remediation=said)
    assert {r["node"]: r["remediation"] for r in rows} == {"n2": said["n2"], "n3": "-"}
    text = markdown_report("s1", NOW, [WELL, SICK], 1.5, remediation=said)
    assert f"- remediation: {said['n2']}" in text.split("### n2")[1]
    assert "remediation:" not in markdown_report("s1", NOW, [WELL, SICK], 1.5)


def test_markdown_report_names_the_riskiest_gpus_and_the_actions() -> None:
    text = markdown_report("s1", NOW, [WELL, SICK], 1.5, {("n2", 3): 0.42}, RiskWindow(3.0, 24.0))
    assert "Highest forecast risk of failure within 4 days of the forecast" in text
    assert "- forecast risk of failure within 4 days of the forecast: 42% (GPU 3)" in text
    assert "n2 GPU 3: 42%" in text
    assert "recommended action **reset_gpu**" in text
    assert "| healthy | 1 |" in text


def test_a_risk_is_stated_over_its_own_window_and_never_a_guessed_one() -> None:
    assert str(RiskWindow(7.0, 24.0)) == "within 8 days of the forecast"
    assert str(RiskWindow(7.0, 12.0)) == "within 7.5 days of the forecast"
    assert str(RiskWindow(1.0, 0.0)) == "within 1 day of the forecast"
    assert str(RiskWindow(2.5, 0.0)) == "within 2.5 days of the forecast"
    assert str(RiskWindow(7.0, None)).startswith("within 7 days of the forecast plus its model's lead (the lead was")
    assert "not recorded" in str(UNRECORDED)
    assert "not recorded" in markdown_report("s1", NOW, [SICK], 1.5, {("n2", 3): 0.42})


DARK = NodeAssessment("n3", Verdict.UNKNOWN, Action.NONE, ("n3: cannot connect to 10.0.0.3:22: timed out",), ())
NEVER = NodeAssessment("n4", Verdict.UNKNOWN, Action.NONE, (),
                       (GpuAssessment(1, Verdict.UNKNOWN, Action.NONE, ("GPU 1: no health data reported",)),))
SEEN = {
    "n1": Observation("n1", NOW, NOW, NOW - timedelta(days=9)),
    "n2": Observation("n2", NOW, NOW, NOW - timedelta(days=9)),
    "n3": Observation("n3", NOW, NOW - timedelta(hours=30), NOW - timedelta(days=9)),
    "n4": Observation("n4", NOW, None, NOW - timedelta(hours=2)),
}


def test_the_sweep_document_says_when_each_node_was_last_seen() -> None:
    nodes = {n["node"]: n for n in sweep_document("s1", NOW, [WELL, SICK, DARK, NEVER], SEEN)["nodes"]}
    assert nodes["n2"]["last_seen"] == NOW.isoformat()  # failed, but seen
    assert nodes["n3"]["last_seen"] == (NOW - timedelta(hours=30)).isoformat()
    assert nodes["n4"]["last_seen"] is None


def test_the_report_lists_blind_spots_longest_first_and_marks_those_past_the_alert() -> None:
    text = markdown_report("s1", NOW, [WELL, SICK, DARK, NEVER], 1.5, observations=SEEN,
                           unseen_alert_after=timedelta(hours=6))
    section = text[text.index("## Blind spots"):text.index("## Nodes that need attention")]
    assert "2 node(s) this sweep could not assess" in section
    assert "Those dark for 6.0 h or more (**bold**) are announced once per dark spell (event `gpumedic.node.unseen`)" \
        in section
    rows = section.split("|---|---|---|\n")[1].strip().splitlines()
    assert rows[0].startswith("| **n3** | not seen since 2026-11-18 18:00 UTC (30.0 h) | n3: cannot connect")
    assert rows[1] == ("| n4 | never seen: unknown in every sweep since the first, 2026-11-19 22:00 UTC (2.0 h) "
                       "| GPU 1: no health data reported |")
    assert table_rows([WELL, SICK, DARK], observations=SEEN)[1]["not seen for"] == "30.0 h"
    assert table_rows([WELL, SICK, DARK], observations=SEEN)[0]["not seen for"] == "-"
    assert "Blind spots" not in markdown_report("s1", NOW, [WELL, SICK], 1.5, observations=SEEN)


def test_sparkline_scales_to_the_largest_value() -> None:
    assert sparkline([0, 4, 8]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"


def test_daily_increments_treat_a_drop_as_a_counter_reset() -> None:
    start = NOW - timedelta(days=3)
    values = [(0, 10.0), (12, 30.0), (30, 5.0), (60, 9.0)]  # reset between hour 12 and 30
    samples = [Sample(start + timedelta(hours=h), "n", 0, "ecc_sbe_aggregate", v) for h, v in values]
    assert daily_increments(samples, "ecc_sbe_aggregate", now=NOW, days=3) == [20.0, 5.0, 4.0]


def test_a_quick_sweeps_report_says_what_it_did_not_read() -> None:
    from gpumedic.domain.deep_readings import quick_sweep_note

    note = quick_sweep_note(48)
    text = markdown_report("s1", NOW, [WELL, SICK], 1.5, depth_note=note)
    assert note in text and text.index(note) < text.index("| verdict | nodes |")
    assert "at most 48 h old" in note
    assert "not judged" in quick_sweep_note(0)
    assert "Quick sweep" not in markdown_report("s1", NOW, [WELL, SICK], 1.5)
