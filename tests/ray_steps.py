"""Python steps (``fn``) for the Ray backend's tests and benchmark: imported on the
cluster's nodes (by Ray actors, or by Ray tasks for steps that ask for resources)."""

from __future__ import annotations

import os
import time
from typing import Any


def where(deps: dict[str, Any]) -> dict[str, Any]:
    """The Ray node and process that ran this step, and the inputs it received."""
    import ray

    return {
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "deps": sorted(deps),
    }


def nap(deps: dict[str, Any]) -> str:
    time.sleep(0.2)
    return f"napped after {len(deps)}"


def burn(deps: dict[str, Any]) -> int:
    """About 0.2 s of pure-Python CPU: one core's work, whatever the threads."""
    total, end = 0, time.thread_time() + 0.2
    while time.thread_time() < end:
        total += sum(range(1000))
    return len(deps)


def text_of(deps: dict[str, Any]) -> str:
    """A deterministic function of the step's inputs (results compared across backends)."""
    return "|".join(f"{k}={deps[k]['text']}" for k in sorted(deps))


def where_slowly(deps: dict[str, Any]) -> dict[str, Any]:
    """``where`` after 0.3 s: steps that overlap need more than one node's CPUs."""
    time.sleep(0.3)
    return where(deps)
