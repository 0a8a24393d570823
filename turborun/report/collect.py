"""What a report says, gathered from a run's checkpoint folder alone: ``run.json``, the
journal (one entry per finished node), ``timeline.jsonl`` (samples over time, see
turborun/timeline.py), the tail of ``run.log`` and, when ``run.json`` names a task file
that still exists, that file's ids and dependencies (to name what is pending and to
trace the critical path). Nothing here takes the run's lock: a report may be made while
the run goes on.

Memory stays proportional to the number of tasks with small constants: a few numbers
per node in arrays, the ids, and error groups rather than errors.
"""

from __future__ import annotations

import heapq
import os
import re
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from turborun.checkpoint import JOURNAL_DIR, LOG_FILE, Journal, read_meta
from turborun.report.series import Attempt, read_attempts, timeline_series
from turborun.status import DONE_STATUSES, FAILED, SKIPPED, SUCCEEDED

STATUSES = DONE_STATUSES
SLOWEST = 20
ERROR_EXAMPLES = 5
MAX_ERROR_GROUPS = 50
PENDING_EXAMPLES = 20
LOG_TAIL_BYTES = 256 * 1024
LOG_LINES = 30
# Parts of error messages that differ between otherwise equal errors: request ids,
# hex digests, numbers (retry-after seconds, token counts, limits).
_VOLATILE = re.compile(r"req_[0-9A-Za-z]+|\b[0-9a-f]{12,}\b|\d+(?:\.\d+)?")
STATUS_CODES = {SUCCEEDED: 0, FAILED: 1, SKIPPED: 2}  # Nodes.status

TaskInfo = tuple[str, tuple[str, ...], str]  # custom_id, depends_on, "provider/model"


@dataclass(slots=True)
class ModelTotals:
    """One (provider, model), or ``fn/module:function`` for a Python step."""

    label: str
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    attempts: int = 0
    retries: int = 0  # attempts beyond the first, over the journaled nodes
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latencies_s: array = field(default_factory=lambda: array("d"))


@dataclass(slots=True)
class ErrorGroup:
    status: str
    code: str
    message: str  # the first message of the group, as written
    count: int = 0
    examples: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Nodes:
    """Per journaled node: id, model index, status, when its last attempt was sent
    (finished_at - latency_s) and when it finished (wall time)."""

    ids: list[str] = field(default_factory=list)
    model: array = field(default_factory=lambda: array("i"))
    status: array = field(default_factory=lambda: array("b"))
    start: array = field(default_factory=lambda: array("d"))
    end: array = field(default_factory=lambda: array("d"))


@dataclass(slots=True)
class RunData:
    folder: Path
    meta: dict[str, Any]
    generated_at: float
    state: str
    models: dict[str, ModelTotals]
    labels: list[str]  # model index -> label, for Nodes.model
    nodes: Nodes
    errors: list[ErrorGroup]
    errors_total: int
    slowest: list[tuple[float, str, str, int, str]]  # latency, id, model, attempts, status
    attempts: list[Attempt]
    series: dict[str, Any]  # the merged timeline, columns (see timeline_series)
    pending: int
    pending_examples: list[str]
    deps: dict[str, tuple[str, ...]]  # only nodes that have dependencies
    log_lines: list[str]
    tasks_known: bool  # the task list was available (pending ids, dependencies)


def collect(
    folder: Path, *, journal: Journal | None = None, tasks: Iterable[TaskInfo] | None = None
) -> RunData:
    """Everything the report shows about the run in ``folder``. ``journal``: the run's
    open journal (the run writing its own report); otherwise it is opened here without
    the lock. ``tasks``: the run's tasks; otherwise read from the task file run.json
    names, when it still exists."""
    folder = Path(folder)
    meta = read_meta(folder)
    owned = journal is None
    if journal is None:
        journal = Journal(folder / JOURNAL_DIR)
    try:
        models, labels, nodes, groups, slowest = _read_journal(journal)
    finally:
        if owned:
            journal.close()
    if tasks is None:
        tasks = _read_task_file(meta.get("tasks_file"))
    task_list = None if tasks is None else list(tasks)
    deps: dict[str, tuple[str, ...]] = {}
    pending_examples: list[str] = []
    pending = 0
    if task_list is not None:
        finished = set(nodes.ids)
        for custom_id, depends_on, label in task_list:
            if depends_on:
                deps[custom_id] = depends_on
            if custom_id not in finished:
                pending += 1
                if len(pending_examples) < PENDING_EXAMPLES:
                    pending_examples.append(custom_id)
                totals = models.get(label)
                if totals is None:
                    totals = models[label] = ModelTotals(label)
                totals.tasks += 1
                totals.pending += 1
    else:
        pending = max(0, int(meta.get("total") or 0) - len(nodes.ids))
    attempts = read_attempts(folder)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.code, g.message))
    return RunData(
        folder=folder,
        meta=meta,
        generated_at=time.time(),
        state=_state(meta, attempts),
        models=dict(sorted(models.items())),
        labels=labels,
        nodes=nodes,
        errors=ordered[:MAX_ERROR_GROUPS],
        errors_total=sum(g.count for g in groups.values()),
        slowest=sorted(slowest, reverse=True),
        attempts=attempts,
        series=timeline_series(folder),
        pending=pending,
        pending_examples=pending_examples,
        deps=deps,
        log_lines=_log_tail(folder / LOG_FILE),
        tasks_known=task_list is not None,
    )


def _read_journal(
    journal: Journal,
) -> tuple[dict[str, ModelTotals], list[str], Nodes, dict[tuple[str, str, str], ErrorGroup], list]:
    """One pass over the journal. The loop is the report's hot path (100,000 entries in
    well under a second): plain locals, per-model sums in lists, the slowest tasks found
    once at the end."""
    models: dict[str, ModelTotals] = {}
    label_index: dict[str, int] = {}
    labels: list[str] = []
    sums: list[list[Any]] = []  # per model: the ModelTotals counters, in _SUMS order
    nodes = Nodes()
    ids, model_of, status_of = nodes.ids, nodes.model, nodes.status
    starts, ends = nodes.start, nodes.end
    latencies = array("d")  # per node; -1 for a node never sent (skipped)
    tries = array("i")
    groups: dict[tuple[str, str, str], ErrorGroup] = {}
    codes = STATUS_CODES
    skipped_code = codes[SKIPPED]
    for custom_id, entry in journal.entries():
        get = entry.get
        status = get("status")
        label = f"{get('provider') or ''}/{get('model') or ''}"
        index = label_index.get(label)
        if index is None:
            index = label_index[label] = len(labels)
            labels.append(label)
            models[label] = ModelTotals(label)
            sums.append([0, 0, 0, 0, 0, 0, 0, 0, None])
        row = sums[index]
        code = codes.get(status, skipped_code)
        attempts = get("attempts") or 0
        row[code] += 1  # succeeded, failed, skipped
        row[3] += attempts
        if attempts > 1:
            row[4] += attempts - 1
        row[5] += get("input_tokens") or 0
        row[6] += get("output_tokens") or 0
        cost = get("cost_usd")
        if cost is not None:
            row[8] = (row[8] or 0.0) + cost
        latency = get("latency_s") or 0.0
        finished_at = get("finished_at") or 0.0
        if code != skipped_code and attempts > 0:
            models[label].latencies_s.append(latency)
            latencies.append(latency)
        else:
            latencies.append(-1.0)
        tries.append(attempts)
        ids.append(custom_id)
        model_of.append(index)
        status_of.append(code)
        starts.append(finished_at - latency)
        ends.append(finished_at)
        if code:
            error = get("error")
            if isinstance(error, dict):
                _group_error(groups, str(status), error, custom_id, label)
    for label, row in zip(labels, sums, strict=True):
        totals = models[label]
        totals.succeeded, totals.failed, totals.skipped = row[0], row[1], row[2]
        totals.tasks = row[0] + row[1] + row[2]
        totals.attempts, totals.retries = row[3], row[4]
        totals.input_tokens, totals.output_tokens, totals.cost_usd = row[5], row[6], row[8]
    status_names = {code: name for name, code in codes.items()}
    top = heapq.nlargest(SLOWEST, range(len(ids)), key=latencies.__getitem__)
    slowest = [
        (latencies[i], ids[i], labels[model_of[i]], tries[i], status_names[status_of[i]])
        for i in top
        if latencies[i] >= 0
    ]
    return models, labels, nodes, groups, slowest


def _group_error(
    groups: dict[tuple[str, str, str], ErrorGroup],
    status: str,
    error: dict[str, Any],
    custom_id: str,
    label: str,
) -> None:
    code = str(error.get("code") or "error")
    message = str(error.get("message") or "")
    if status == SKIPPED:
        message = message.split(":", 1)[0]  # "a dependency failed: a, b": ids vary
    key = (status, code, _VOLATILE.sub("#", message)[:300])
    group = groups.get(key)
    if group is None:
        group = groups[key] = ErrorGroup(status, code, message[:300])
    group.count += 1
    group.models.add(label)
    if len(group.examples) < ERROR_EXAMPLES:
        group.examples.append(custom_id)


def _read_task_file(path: Any) -> list[TaskInfo] | None:
    """(custom_id, depends_on, label) of each task of the file, or None when there is no
    such file. Lines that do not parse are skipped: the run validated the file, and a
    report must not fail on a file edited since."""
    if not path:
        return None
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError:
        return None
    tasks: list[TaskInfo] = []
    with file:
        for line in file:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                continue
            depends_on = obj.get("depends_on") or ()
            depends = tuple(d for d in depends_on if isinstance(d, str))
            tasks.append((obj["custom_id"], depends, _task_label(obj)))
    return tasks


def _task_label(obj: dict[str, Any]) -> str:
    if obj.get("fn"):
        return f"fn/{obj['fn']}"
    body = obj.get("body") if isinstance(obj.get("body"), dict) else {}
    return f"{obj.get('provider') or 'openai'}/{body.get('model') or ''}"


def _state(meta: dict[str, Any], attempts: list[Attempt]) -> str:
    """finished | interrupted | running | killed (no end: the process died), from the
    last attempt; run.json's word when there is no timeline."""
    if attempts:
        return attempts[-1].state
    return str(meta.get("state") or "unknown")


def _log_tail(path: Path) -> list[str]:
    """The last warnings and errors of run.log (its last LOG_TAIL_BYTES)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - LOG_TAIL_BYTES))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    return lines[-LOG_LINES:]


def critical_path(data: RunData) -> list[int]:
    """Node indexes of the chain that ended last: from the node that finished last, back
    through the dependency that finished last, to a node without journaled parents."""
    nodes = data.nodes
    if not nodes.ids:
        return []
    index = {custom_id: i for i, custom_id in enumerate(nodes.ids)}
    node = max(range(len(nodes.ids)), key=nodes.end.__getitem__)
    chain = [node]
    seen = {node}
    while True:
        parents = [index[p] for p in data.deps.get(nodes.ids[node], ()) if p in index]
        parents = [p for p in parents if p not in seen]
        if not parents:
            break
        node = max(parents, key=nodes.end.__getitem__)
        chain.append(node)
        seen.add(node)
    chain.reverse()
    return chain


def percentiles(values: array) -> dict[str, float | None]:
    """p50/p90/p95/p99/max/mean of ``values`` (nearest rank); None when empty."""
    if not values:
        return {k: None for k in ("p50", "p90", "p95", "p99", "max", "mean")}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[max(0, min(n - 1, round(q / 100 * n + 0.5) - 1))], 4)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p95": rank(95),
        "p99": rank(99),
        "max": round(ordered[-1], 4),
        "mean": round(sum(ordered) / n, 4),
    }
