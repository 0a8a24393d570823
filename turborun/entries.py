"""Journal entries: what a finished node leaves behind (written by the supervisor only)."""

from __future__ import annotations

import time
from typing import Any

from turborun.records import Outcome
from turborun.status import FAILED, SUCCEEDED, Status
from turborun.tasks import Task


def outcome_entry(
    task: Task,
    outcome: Outcome,
    *,
    attempts: int,
    queued_s: float,
    cost_usd: float | None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """The entry of a node whose last attempt produced ``outcome`` (at ``endpoint``: the
    base URL that answered, or the provider's name for its configured one)."""
    error = None
    if not outcome.ok:
        error = {"code": outcome.error_kind or "error", "message": outcome.error_message or ""}
    return {
        "status": SUCCEEDED if outcome.ok else FAILED,
        "fingerprint": task.fingerprint,
        "provider": task.provider,
        "model": task.model or (task.fn or ""),
        "attempts": attempts,
        "status_code": outcome.status_code,
        "request_id": outcome.request_id,
        "body": outcome.body,
        "text": outcome.text,
        "error": error,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cached_tokens": outcome.cached_tokens,
        "cost_usd": cost_usd,
        "latency_s": round(outcome.latency_s, 6),
        "queued_s": round(queued_s, 6),
        "endpoint": endpoint,
        "finished_at": time.time(),
    }


def failure_entry(
    task: Task, code: str, message: str, *, attempts: int, status: Status = FAILED
) -> dict[str, Any]:
    """A node that ends without an outcome of its own (skipped, refused, lost)."""
    return {
        "status": status,
        "fingerprint": task.fingerprint,
        "provider": task.provider,
        "model": task.model or (task.fn or ""),
        "attempts": attempts,
        "status_code": None,
        "request_id": None,
        "body": None,
        "text": None,
        "error": {"code": code, "message": message},
        "input_tokens": None,
        "output_tokens": None,
        "cached_tokens": None,
        "cost_usd": None,
        "latency_s": 0.0,
        "queued_s": 0.0,
        "finished_at": time.time(),
    }
