"""The run's attempts and its timeline as columns, from ``timeline.jsonl``
(turborun/timeline.py): consecutive samples merged so that a report of a week-long run
plots about TIMELINE_POINTS points."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turborun.checkpoint import pid_alive
from turborun.timeline import read_timeline

TIMELINE_POINTS = 1200  # points kept per series: samples merged beyond
_MODEL_FIELDS = (
    "sent",
    "sent_tokens",
    "answered",
    "tokens",
    "rate_limited",
    "retries",
    "rpm",
    "tpm",
    "in_flight",
)
_GAUGES = ("rpm", "tpm", "in_flight")


@dataclass(slots=True)
class Attempt:
    """One invocation of the run (a resume is a new attempt)."""

    started_at: float
    ended_at: float | None = None  # None: no end record (still running, or killed)
    state: str = "running"
    total: int = 0
    resumed: int = 0
    changed: int = 0
    rerun_descendants: int = 0
    pending: int | None = None
    last_seen: float = 0.0  # the attempt's last record
    pid: int | None = None


def read_attempts(folder: Path) -> list[Attempt]:
    attempts: list[Attempt] = []
    for record in read_timeline(folder):
        kind, t = record.get("kind"), float(record["t"])
        if kind == "start":
            attempts.append(
                Attempt(
                    started_at=t,
                    total=int(record.get("total") or 0),
                    resumed=int(record.get("resumed") or 0),
                    changed=int(record.get("changed") or 0),
                    rerun_descendants=int(record.get("rerun_descendants") or 0),
                    last_seen=t,
                    pid=record.get("pid"),
                )
            )
        elif attempts:
            attempts[-1].last_seen = t
            if kind == "end":
                attempts[-1].ended_at = t
                attempts[-1].state = str(record.get("state") or "finished")
                attempts[-1].pending = record.get("pending")
    for attempt in attempts[:-1]:
        if attempt.ended_at is None:
            attempt.state = "killed"  # a later attempt started: this one never ended
    if attempts and attempts[-1].ended_at is None and not pid_alive(attempts[-1].pid):
        attempts[-1].state = "killed"
    return attempts


# ---- the timeline, merged to a bounded number of points --------------------------------


def timeline_series(folder: Path, points: int = TIMELINE_POINTS) -> dict[str, Any]:
    """The timeline's samples as columns, consecutive samples of one attempt merged so
    that at most about ``points`` remain: counters summed, gauges at their maximum
    (limits: the last known). ``attempt`` numbers each point's attempt (from 0)."""
    samples = list(_samples(folder))
    if not samples:
        return {"t": [], "dt": [], "attempt": [], "models": {}}
    step = max(1, -(-len(samples) // points))
    labels = sorted({label for _, s in samples for label in s.get("models", {})})
    columns: dict[str, list[Any]] = {
        name: [] for name in ("t", "dt", "attempt", "in_flight", "target", "ready", "retrying")
    }
    columns["done"] = []
    per_model: dict[str, dict[str, list[Any]]] = {
        label: {name: [] for name in _MODEL_FIELDS} for label in labels
    }
    for group in _groups(samples, step):
        attempt, last = group[-1]
        columns["t"].append(last["t"])
        columns["dt"].append(round(sum(s.get("dt", 0.0) for _, s in group), 3))
        columns["attempt"].append(attempt)
        for name in ("in_flight", "target", "retrying"):
            columns[name].append(max(int(s.get(name) or 0) for _, s in group))
        columns["ready"].append(int(last.get("ready") or 0))
        columns["done"].append(sum(int(s.get("done") or 0) for _, s in group))
        for label in labels:
            _merge_model(per_model[label], [s.get("models", {}).get(label) for _, s in group])
    return {**columns, "models": per_model}


def _samples(folder: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    attempt = -1
    for record in read_timeline(folder):
        if record["kind"] == "start":
            attempt += 1
        elif record["kind"] == "sample":
            yield max(0, attempt), record


def _groups(
    samples: list[tuple[int, dict[str, Any]]], step: int
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    group: list[tuple[int, dict[str, Any]]] = []
    for item in samples:
        if group and (len(group) >= step or group[-1][0] != item[0]):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _merge_model(columns: dict[str, list[Any]], values: list[list[Any] | None]) -> None:
    present = [v for v in values if isinstance(v, list) and len(v) >= len(_MODEL_FIELDS)]
    for position, name in enumerate(_MODEL_FIELDS):
        if name in ("rpm", "tpm"):
            known = [v[position] for v in present if v[position] is not None]
            columns[name].append(known[-1] if known else None)
        elif name in _GAUGES:
            columns[name].append(max((v[position] for v in present), default=0))
        else:
            columns[name].append(sum(v[position] for v in present))
