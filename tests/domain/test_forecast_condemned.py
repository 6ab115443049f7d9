"""Alarms on GPUs the latest sweep already sends to a human are held: remediation asks about those."""

from __future__ import annotations

from gpumedic.domain.forecast import CondemnedGpu, GpuForecast, condemned_by, held_alarms
from gpumedic.domain.verdict import Action, GpuAssessment, NodeAssessment, Verdict, worst_action


def _gpu(index: int, action: Action) -> GpuAssessment:
    verdict = Verdict.HEALTHY if action is Action.NONE else Verdict.FAILED
    return GpuAssessment(index=index, verdict=verdict, action=action, reasons=(f"GPU {index}: {action}",))


def _node(name: str, *gpu_actions: Action, node_action: Action = Action.NONE) -> NodeAssessment:
    gpus = tuple(_gpu(i, a) for i, a in enumerate(gpu_actions))
    action = worst_action([node_action, *gpu_actions])
    return NodeAssessment(node=name, verdict=Verdict.FAILED if action is not Action.NONE else Verdict.HEALTHY,
                          action=action, reasons=(), gpus=gpus)


def _forecast(node: str, gpu: int | None, alarm: bool = True) -> GpuForecast:
    return GpuForecast(node, gpu, 0.9 if alarm else 0.01, None, ("a remap failure",), (), alarm=alarm)


def test_replace_and_inspect_send_a_gpu_to_a_human_repairs_do_not() -> None:
    sweep = [
        _node("a", Action.NONE, Action.REPLACE, Action.RESET_GPU),
        _node("b", Action.INSPECT, Action.REBOOT),
        _node("c", Action.MONITOR, Action.RESTART_APP),
    ]
    assert condemned_by(sweep, "s1") == [
        CondemnedGpu("a", 1, Action.REPLACE, "s1"),
        CondemnedGpu("b", 0, Action.INSPECT, "s1"),
    ]


def test_a_node_condemned_by_its_own_findings_is_condemned_as_a_whole() -> None:
    # No GPU to blame (a fabric fault, say): every GPU on it is the human's to decide on.
    [whole] = condemned_by([_node("a", Action.NONE, Action.NONE, node_action=Action.INSPECT)], "s1")
    assert whole == CondemnedGpu("a", None, Action.INSPECT, "s1")
    held = held_alarms([_forecast("a", 0), _forecast("a", 1, alarm=False), _forecast("b", 0)], [whole])
    assert list(held) == [("a", 0)]


def test_only_alarms_on_condemned_gpus_are_held() -> None:
    condemned = [CondemnedGpu("a", 1, Action.REPLACE, "s1")]
    forecasts = [_forecast("a", 1), _forecast("a", 2), _forecast("b", 1), _forecast("a", None)]
    assert held_alarms(forecasts, condemned) == {("a", 1): condemned[0]}
    assert held_alarms([_forecast("a", 1, alarm=False)], condemned) == {}  # no alarm: nothing to hold
    assert held_alarms(forecasts, []) == {}


def test_the_reason_names_the_sweep_and_what_it_decided_and_survives_json() -> None:
    gpu = CondemnedGpu("gpu-node-05", 2, Action.REPLACE, "sweep-20261208T000924Z-8befa7")
    assert CondemnedGpu.from_json(gpu.to_json()) == gpu
    node = CondemnedGpu("gpu-node-06", None, Action.INSPECT, "s2")
    assert CondemnedGpu.from_json(node.to_json()) == node
    why = gpu.why_held()
    assert "sweep-20261208T000924Z-8befa7" in why and "GPU 2" in why and "replace" in why
    assert "the node" in node.why_held()


def test_a_node_the_sweep_cannot_assess_keeps_the_earlier_sweeps_word() -> None:
    """Powered off while its part is swapped, it is still condemned; assessed again, it says for itself."""
    earlier = [CondemnedGpu("a", 1, Action.REPLACE, "s1"), CondemnedGpu("b", 0, Action.INSPECT, "s1"),
               CondemnedGpu("gone", 3, Action.REPLACE, "s1")]
    dark = NodeAssessment(node="a", verdict=Verdict.UNKNOWN, action=Action.NONE, reasons=("unreachable",), gpus=())
    now = condemned_by([dark, _node("b", Action.NONE), _node("c", Action.REPLACE)], "s2", earlier)
    assert now == [CondemnedGpu("a", 1, Action.REPLACE, "s1"), CondemnedGpu("c", 0, Action.REPLACE, "s2")]
    assert "sweep s1" in now[0].why_held()  # the sweep that decided, not the one that could not look
