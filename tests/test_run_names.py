from __future__ import annotations

from gpumedic.run_names import order_name, run_name, shard_name


def test_a_run_is_named_after_what_it_acts_on() -> None:
    assert run_name("remediate-{node}", {"node": "gpu-node-03", "dry_run": False}) == "remediate-gpu-node-03"
    assert run_name("{kind}-decision-{node}", {"kind": "replace", "node": "n1", "timeout_s": 60}) == \
        "replace-decision-n1"
    assert run_name("{depth}-sweep", {"depth": "quick", "emit_events": True}) == "quick-sweep"


def test_a_run_that_changes_nothing_or_raises_nothing_says_so() -> None:
    assert run_name("remediate-{node}", {"node": "n1", "dry_run": True}) == "remediate-n1-dry-run"
    assert run_name("{depth}-sweep", {"depth": "full", "emit_events": False}) == "full-sweep-report-only"
    assert run_name("file-pending-tickets", {"fleet_file": "f", "dry_run": True}) == "file-pending-tickets-dry-run"


def test_an_order_names_the_gpu_where_the_forecast_named_one() -> None:
    assert run_name(order_name, {"node": "n1", "gpu": 5, "dry_run": False}) == "order-n1-gpu5"
    assert run_name(order_name, {"node": "n1", "gpu": 0, "dry_run": True}) == "order-n1-gpu0-dry-run"
    assert run_name(order_name, {"node": "n1", "gpu": None}) == "order-n1"


def test_a_shard_is_named_by_the_nodes_it_collects() -> None:
    assert shard_name(["a-00", "a-01", "a-02"]) == "collect-a-00..a-02-3-nodes"
    assert shard_name(["a-00"]) == "collect-a-00"
    assert shard_name([]) == "collect-no-nodes"
