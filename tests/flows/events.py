"""Reading back the events flows emitted, from the Prefect test server's event feed."""

from __future__ import annotations

from typing import Any


def event_payloads(name: str) -> list[dict[str, Any]]:
    """The payload of every event called `name` the server has received, oldest first."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        response = client._client.post("/events/filter", json={"filter": {"event": {"name": [name]}, "order": "ASC"}})
    response.raise_for_status()
    return [e["payload"] for e in response.json()["events"]]
