"""Properties of assess_node that must hold for any input, checked with hypothesis."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gpumedic.domain.assess import assess_node, summarise
from gpumedic.domain.policy import HealthPolicy
from gpumedic.domain.telemetry import GpuTelemetry, NodeTelemetry, NvLinkState, XidEvent
from gpumedic.domain.verdict import Action, Finding, Verdict

POLICY = HealthPolicy()
BUSES = ["0000:3b:00.0", "00000000:5D:00.0", "0001:00:00.0", "0000:ff:1f.7"]
XID_TEXTS = [
    "",
    "GPU has fallen off the bus.",
    "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)",
    "GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)",
    "RLW_RXPIPE Nonfatal XC0 i0 Link 11 (0x0 0x1)",
    "NETIR_LINK_EVT Fatal XC0 i0 Link 3 (0x0 0x0)",
]

bus_ids = st.one_of(st.none(), st.sampled_from(BUSES), st.text(max_size=20))
gpus = st.builds(GpuTelemetry, pci_bus_id=bus_ids)
xid_events = st.builds(
    XidEvent,
    code=st.integers(min_value=-5, max_value=200),
    pci_bus_id=bus_ids,
    time=st.one_of(st.none(), st.datetimes()),
    text=st.one_of(st.sampled_from(XID_TEXTS), st.text(max_size=80)),
)


@st.composite
def nodes(draw: st.DrawFn, *, errors: st.SearchStrategy[list[str]] | None = None) -> NodeTelemetry:
    return NodeTelemetry(
        node="n",
        collected_at=draw(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC)))),
        source="ssh",
        gpus=tuple(draw(st.lists(gpus, max_size=4))),
        expected_gpu_count=draw(st.one_of(st.none(), st.integers(min_value=-2, max_value=10**12))),
        xid_events=tuple(draw(st.lists(xid_events, max_size=6))),
        collection_errors=tuple(draw(errors if errors is not None else st.lists(st.text(max_size=30), max_size=2))),
    )


prior_histories = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(st.text(max_size=20), st.sampled_from(BUSES)), st.sets(st.integers(0, 200))),
    st.dictionaries(st.integers(-2, 10), st.sets(st.integers(0, 200))),
)


@settings(max_examples=300)
@given(nodes(errors=st.lists(st.text(max_size=30), min_size=1, max_size=3)), prior_histories)
def test_a_node_with_a_collection_error_is_never_healthy(telemetry: NodeTelemetry, prior: object) -> None:
    result = assess_node(telemetry, POLICY, prior_xids=prior)  # type: ignore[arg-type]
    assert result.verdict in (Verdict.UNKNOWN, Verdict.FAILED)


@settings(max_examples=300)
@given(nodes(), st.one_of(st.none(), nodes()), prior_histories)
def test_assessment_never_raises_for_arbitrary_telemetry(
    telemetry: NodeTelemetry, previous: NodeTelemetry | None, prior: object
) -> None:
    result = assess_node(telemetry, POLICY, previous=previous, prior_xids=prior)  # type: ignore[arg-type]
    assert len(result.gpus) == len(telemetry.gpus)
    for gpu in result.gpus:
        if gpu.verdict is Verdict.HEALTHY:
            assert gpu.action is Action.NONE


findings = st.builds(Finding, verdict=st.sampled_from(Verdict), action=st.sampled_from(Action), reason=st.text())


@given(st.lists(findings), findings)
def test_adding_a_finding_never_lowers_the_verdict_or_action(found: list[Finding], extra: Finding) -> None:
    verdict, action, _, _ = summarise(found)
    more_verdict, more_action, _, _ = summarise([*found, extra])
    assert more_action.rank >= action.rank
    assert more_verdict.rank >= verdict.rank


@settings(max_examples=300)
@given(nodes(), xid_events)
def test_adding_an_xid_never_lowers_the_node_action(telemetry: NodeTelemetry, event: XidEvent) -> None:
    before = assess_node(telemetry, POLICY)
    after = assess_node(dataclasses.replace(telemetry, xid_events=(*telemetry.xid_events, event)), POLICY)
    assert after.action.rank >= before.action.rank


def _worsen(gpu: GpuTelemetry, how: str) -> GpuTelemetry:
    if how == "dbe":
        return dataclasses.replace(gpu, ecc_dbe_volatile=max(gpu.ecc_dbe_volatile or 0, 0) + 1)
    if how == "remap_failure":
        return dataclasses.replace(gpu, row_remap_failure=True)
    if how == "remap_pending":
        return dataclasses.replace(gpu, row_remap_pending=True)
    if how == "link_down":
        links = gpu.nvlinks or (NvLinkState(link=0, active=True),)
        return dataclasses.replace(gpu, nvlinks=(dataclasses.replace(links[0], active=False), *links[1:]))
    if how == "hot":
        return dataclasses.replace(gpu, temperature_c=1000.0, temp_slowdown_c=90.0)
    raise AssertionError(how)


@settings(max_examples=300)
@given(
    nodes(),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["dbe", "remap_failure", "remap_pending", "link_down", "hot"]),
)
def test_worse_gpu_evidence_never_lowers_the_node_action(telemetry: NodeTelemetry, pick: int, how: str) -> None:
    if not telemetry.gpus:
        return
    target = pick % len(telemetry.gpus)
    before = assess_node(telemetry, POLICY)
    worse = tuple(_worsen(g, how) if i == target else g for i, g in enumerate(telemetry.gpus))
    after = assess_node(dataclasses.replace(telemetry, gpus=worse), POLICY)
    assert after.action.rank >= before.action.rank
    assert after.action is not Action.NONE


def test_naive_and_aware_sweeps_do_not_make_a_rate() -> None:
    gpu = GpuTelemetry(index=0, ecc_sbe_volatile=10**9)
    now = NodeTelemetry("n", datetime(2025, 1, 1, 12, tzinfo=UTC), "ssh", gpus=(gpu,))
    then = NodeTelemetry("n", datetime(2025, 1, 1, 10), "ssh", gpus=(dataclasses.replace(gpu, ecc_sbe_volatile=0),))
    assert assess_node(now, POLICY, previous=then).verdict is Verdict.HEALTHY
