"""What the Prefect server recorded about runs, read back through its API (as the UI reads it)."""

from __future__ import annotations

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun


def flow_runs_named(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def task_run_names(flow_run: FlowRun) -> set[str]:
    """The names of the run's task runs (recorded from events: poll for the ones expected)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return {r.name for r in runs}
