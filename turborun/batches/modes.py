"""``"mode": "batch"`` on tasks (SPEC §11): which route a run takes.

A run goes one way as a whole: live, or through the Batch APIs. A task's ``mode``
(``"live"`` or ``"batch"``) says which it needs; the run's ``--via`` is the default for
tasks without one. Every API task of a run must end up on the same route: a file whose
API tasks all say ``"mode": "batch"`` runs through batches without ``--via batch``, and a
file that mixes the two is refused before anything is sent (exit 2), naming the lines
(mixed runs are not supported yet; docs/BATCH.md). Python steps have no route.

The task reader ignores keys it does not know, so the modes are read here: a file without
the text ``"mode"`` costs one scan of its bytes (mmap), nothing more.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from turborun.exceptions import InputError, Problem
from turborun.records import FN_PROVIDER
from turborun.tasks import TaskSet

MODES = ("live", "batch")
_MAX_NAMED = 5  # lines named in a mixed-modes problem


def requested_via(
    via: str, taskset: TaskSet, items: Iterable[Mapping[str, Any]] | None = None
) -> str:
    """The route of the run: ``via`` unless the tasks' modes say otherwise; InputError
    when they disagree among themselves or name no known mode."""
    modes = _modes(taskset, items)
    if not modes:
        return via
    where = str(taskset.path) if taskset.path is not None else "<tasks>"
    problems = [
        Problem(where, taskset.tasks[i].line, f'unknown mode {mode!r} (use "live" or "batch")')
        for i, mode in modes.items()
        if mode not in MODES
    ]
    if problems:
        raise InputError(problems)
    routes: dict[str, list[int]] = {}
    for i, task in enumerate(taskset.tasks):
        if task.provider != FN_PROVIDER:
            routes.setdefault(modes.get(i, via), []).append(task.line)
    if len(routes) > 1:
        lines = routes["batch"] if via == "live" else routes["live"]
        shown = ", ".join(str(n) for n in lines[:_MAX_NAMED])
        more = f" and {len(lines) - _MAX_NAMED} more" if len(lines) > _MAX_NAMED else ""
        other = "batch" if via == "live" else "live"
        message = (
            f'tasks on lines {shown}{more} ask for "mode": "{other}" but the others run '
            f"{via}: a run goes live or through the Batch APIs as a whole (give every API "
            "task the same mode, or none and --via)"
        )
        raise InputError([Problem(where, lines[0], message)])
    return next(iter(routes)) if routes else via


def _modes(taskset: TaskSet, items: Iterable[Mapping[str, Any]] | None) -> dict[int, Any]:
    """Task index -> its "mode", for the tasks that have one."""
    if items is not None:
        return {i: item["mode"] for i, item in enumerate(items) if item.get("mode") is not None}
    fileno = taskset.fileno()
    if fileno is None:
        return {}
    try:
        data = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file
        return {}
    with data:
        if data.find(b'"mode"') < 0:
            return {}
        found = {}
        for i, task in enumerate(taskset.tasks):
            if task.offset < 0:
                continue
            line = orjson.loads(data[task.offset : task.offset + task.length])
            if line.get("mode") is not None:
                found[i] = line["mode"]
        return found
