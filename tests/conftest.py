"""Shared fixtures: one simulator process for the whole session, and a raw HTTP helper."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from turborun.checkpoint import Journal
from turborun.simulator import Simulator

# The session simulator limits this model only (far above any test's use), so answers for
# it carry x-ratelimit-* headers; every other model is unlimited and has none.
LIMITED_MODEL = "sim-limited"


@dataclass(frozen=True)
class SimResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


def sim_post(sim: Simulator, path: str, body: Any, *, timeout_s: float = 10.0) -> SimResponse:
    """POST ``body`` (a dict, or raw bytes) to the simulator with plain http.client."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=timeout_s)
    try:
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return SimResponse(response.status, headers, response.read())
    finally:
        connection.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """One simulator (no latency; limits only for LIMITED_MODEL) shared by the session; its
    request log is shared too, so find your requests by content, not by position."""
    with Simulator(latency_s=0.0, limits={LIMITED_MODEL: (1_000_000, 1_000_000_000)}) as sim:
        yield sim


@pytest.fixture(scope="session")
def post() -> Callable[..., SimResponse]:
    return sim_post


def journaled(checkpoint: Path) -> dict[str, dict[str, Any]]:
    """Every entry of a run's journal, read from disk."""
    journal = Journal(checkpoint / "journal")
    try:
        return dict(journal.entries())
    finally:
        journal.close()


def children(pid: int) -> set[int]:
    """Pids of a process's children, from /proc."""
    found: set[int] = set()
    for task_dir in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task_dir / "children").read_text().split()}
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return found
