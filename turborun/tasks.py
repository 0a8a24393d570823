"""Read and validate task files (SPEC §2): one JSON object per line.

Everything is checked before anything is sent, and every problem is reported at
once, as ``Problem(path, line, message)`` sorted by line (the CLI prints
``FILE:LINE: message``). Rules, including the choices SPEC leaves open:

* Lines are split on ``\\n`` and parsed as strict JSON by orjson: ``NaN`` and
  ``Infinity`` are malformed; with duplicate keys the last one wins (as Python's
  ``json``). Blank and whitespace-only lines are skipped but keep their number.
  A UTF-8 byte order mark at the start of the file is ignored. Invalid UTF-8 is
  reported as such. A line over ``MAX_LINE_BYTES`` (16 MiB) is reported and not
  parsed, so a corrupt file cannot exhaust memory.
* ``custom_id``: required non-empty string, unique in the file (from Python it
  may be left out: ``task-<n>``, n = 1-based position). ``method``: only
  ``POST`` (as the Batch API). ``url``: a string starting with ``/``.
  ``provider``: ``openai`` or ``groq``. ``depends_on``: list of custom_ids of the
  same input; repeats are dropped. ``priority``: see ``parse_priority`` (64-bit
  integers; one written past that range is reported as written, not as the float
  orjson reads it as). ``fn``:
  ``package.module:function``, only its shape is checked here (workers import
  it). ``body``: a JSON object holding a non-empty string ``model``; required
  for API tasks, optional for ``fn`` steps, which call no provider (their
  provider is ``records.FN_PROVIDER``, their model "").
* Requested output (``max_tokens`` or its kin, × ``n``) over ``MAX_OUTPUT_TOKENS``
  (2**53) is a problem of its line: budgets count tokens in floats.
* A task file that is not a regular file (a FIFO, ``/dev/stdin`` on a pipe) is read
  once into an anonymous temporary file, which then serves the bodies at dispatch.
* An optional key given as ``null`` takes its default (tables exported from
  pandas and the like write missing cells as null).
* Unknown top-level keys are accepted and ignored: Batch API files and the
  tools that produce them may carry extra keys.
* Templates: ``{{ID}}`` in a string of ``body`` (not in keys; spaces inside the
  braces are trimmed) where ID is a task of the same input must name a declared
  dependency; braces naming no task stay as they are.
* Cycles: one cycle is reported per strongly connected group of tasks, on the
  line of its member that comes first; ``a -> b`` reads "a depends on b".
* ``load_tasks`` keeps one small ``Task`` per line (offset and length into the
  file), never the bodies: memory grows with the number of tasks, not their
  text. ``TaskSet.body`` re-reads a body at dispatch time through the handle
  opened for loading, so a file replaced (renamed over) during a run is not
  seen; a file rewritten in place is detected when a line no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from turborun.exceptions import InputError, Problem
from turborun.graph import find_cycle
from turborun.records import FN_PROVIDER
from turborun.templates import template_refs
from turborun.tokens import OUTPUT_KEYS, UNESTIMATED, TokenEstimator, output_tokens

PRIORITY_NAMES = {"critical": 1000, "high": 100, "normal": 10, "low": 1}
DEFAULT_PRIORITY = PRIORITY_NAMES["normal"]
PROVIDERS = ("openai", "groq")
DEFAULT_METHOD = "POST"
DEFAULT_URL = "/v1/chat/completions"
MAX_LINE_BYTES = 16 * 1024 * 1024
# Priorities are 64-bit integers: a larger one is a mistake, not an order of business.
MIN_PRIORITY, MAX_PRIORITY = -(2**63), 2**63 - 1
# Requested output (max_tokens × n) above 2**53 tokens cannot be counted exactly as a
# float, which the budgets and the latency model compute in; no model produces that much.
MAX_OUTPUT_TOKENS = 2**53
MAX_SHOWN_PROBLEMS = 20  # the command line prints this many problems, then a count

_FN = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*:[^\W\d]\w*")
_BOM = b"\xef\xbb\xbf"
_PRIORITY_HINT = "use an integer or one of critical/high/normal/low"
RESOURCE_NAMES = ("num_cpus", "num_gpus", "memory")  # a step's "resources" (--backend ray)


@dataclass(slots=True)
class Task:
    """One validated node. The body stays on disk (offset/length) until dispatch,
    so memory grows with the number of tasks, not with their text."""

    custom_id: str
    index: int  # position in the input (file order), 0-based
    line: int  # 1-based line of the task file; tasks given from Python: 1-based position
    provider: str  # "openai" | "groq" | "fn" (records.FN_PROVIDER) for Python steps
    method: str
    url: str
    model: str  # "" for fn steps
    depends_on: tuple[str, ...]
    priority: int
    fn: str | None
    prompt_tokens: int  # estimated; UNESTIMATED until the supervisor counts them
    max_output_tokens: int  # requested output (max_tokens / max_completion_tokens / ...)
    fingerprint: str  # of the definition: provider, method, url, body, fn, depends_on
    templated: bool  # the body holds {{ID}} references to dependencies
    body: dict[str, Any] | None = None  # in memory: tasks given from Python
    offset: int = -1  # else: the line's byte offset in the task file
    length: int = 0
    resources: tuple[tuple[str, float], ...] = ()  # a step's Ray resources (--backend ray)


@dataclass(slots=True)
class TaskSet:
    """A validated input. Not thread-safe: ``body`` shares one file handle."""

    tasks: list[Task]  # in input order
    by_id: dict[str, Task]
    path: Path | None  # the task file; None for tasks given from Python
    _file: IO[bytes] | None = field(default=None, repr=False)

    def body(self, task: Task) -> dict[str, Any]:
        """The task's unrendered body ({} for a fn step without one)."""
        if task.offset < 0 or self._file is None:
            return task.body if task.body is not None else {}
        self._file.seek(task.offset)
        raw = self._file.read(task.length)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or obj.get("custom_id") != task.custom_id:
            where = str(self.path)
            raise InputError([Problem(where, task.line, "the task file changed during the run")])
        body = obj.get("body")
        return body if isinstance(body, dict) else {}

    def fileno(self) -> int | None:
        """The descriptor the bodies are read from: the task file, or the copy a pipe
        was spooled into (never the path again: a FIFO can be read only once)."""
        return None if self._file is None else self._file.fileno()

    def providers(self) -> set[str]:
        """Providers that API tasks call (fn steps call none)."""
        return {t.provider for t in self.tasks if t.provider != FN_PROVIDER}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TaskSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tasks(path: Path, estimator: TokenEstimator | None) -> TaskSet:
    """Read and validate a task file; raise InputError listing every problem.
    ``estimator`` None leaves prompt tokens UNESTIMATED, for the supervisor to count
    when a task is about to run (a resume runs few of its tasks)."""
    path = Path(path)
    where = str(path)
    try:
        file = open(path, "rb", buffering=1 << 20)  # kept open by the TaskSet
    except FileNotFoundError:
        raise InputError([Problem(where, 0, "no such file")]) from None
    except IsADirectoryError:
        raise InputError([Problem(where, 0, "is a directory, not a task file")]) from None
    except OSError as error:
        raise InputError([Problem(where, 0, f"cannot read: {error.strerror}")]) from None
    try:
        file = _seekable(file, where)
        collector = _Collector(where, estimator, "line")
        for number, offset, raw, size in _lines(file):
            if raw is None:
                message = f"line is {size} bytes, over the 16 MiB limit"
                collector.problem(number, message)
                continue
            obj = _parse_line(raw, number, collector)
            if isinstance(obj, dict) and isinstance(obj.get("priority"), float):
                obj["priority"] = _priority_as_written(raw, obj["priority"])
            if obj is not None:
                scan = b"{{" in raw or b"\\u007" in raw
                collector.add(obj, number, offset=offset, length=len(raw), scan_refs=scan)
        tasks, by_id = collector.finish("no tasks in file")
    except BaseException:
        file.close()
        raise
    return TaskSet(tasks, by_id, path, file)


def tasks_from_dicts(
    items: Iterable[Mapping[str, Any]], estimator: TokenEstimator, *, source: str = "<tasks>"
) -> TaskSet:
    """Validate tasks given from Python; ``Task.line`` is the 1-based position.

    Bodies are kept in memory as JSON round-trip copies: a caller changing its
    dict afterwards cannot change what is sent, and a body orjson cannot
    serialize is a problem now rather than at dispatch.
    """
    collector = _Collector(source, estimator, "item")
    for number, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            collector.problem(number, f"a task must be a dict, got {type(item).__name__}")
            continue
        collector.add(item, number, default_id=f"task-{number}", keep_body=True)
    tasks, by_id = collector.finish("no tasks given")
    return TaskSet(tasks, by_id, None)


def parse_priority(value: Any) -> int | None:
    """An integer (not a bool) from MIN_PRIORITY to MAX_PRIORITY or a name of
    PRIORITY_NAMES (any case); None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if MIN_PRIORITY <= value <= MAX_PRIORITY else None
    if isinstance(value, str):
        return PRIORITY_NAMES.get(value.strip().lower())
    return None


def fingerprint(
    provider: str, method: str, url: str, body: Any, fn: str | None, depends_on: Sequence[str]
) -> str:
    """sha256 of what decides what is sent; key order and spacing of the body do not
    count (keys are sorted), priority does not."""
    definition = {
        "provider": provider,
        "method": method,
        "url": url,
        "body": body,
        "fn": fn,
        "depends_on": list(depends_on),
    }
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()


def problem_lines(problems: Sequence[Problem], limit: int = MAX_SHOWN_PROBLEMS) -> list[str]:
    """The first ``limit`` problems as ``FILE:LINE: message``, then one line counting the
    rest: a file of 100,000 bad lines is one mistake, not 100,000 lines to scroll."""
    shown = [str(problem) for problem in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"... and {len(problems) - limit} more problem(s) not shown")
    return shown


def _seekable(file: IO[bytes], where: str) -> IO[bytes]:
    """``file``, or, when it is not a regular file (a FIFO, a pipe on /dev/stdin, a
    terminal), its whole content spooled once into an anonymous temporary file: bodies
    are re-read by offset at dispatch, which a stream cannot do."""
    if stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        return file
    spool = tempfile.TemporaryFile(prefix="turborun-tasks-")
    try:
        with file:
            shutil.copyfileobj(file, spool, 1 << 20)
        spool.seek(0)
    except OSError as error:
        spool.close()
        raise InputError([Problem(where, 0, f"cannot read: {error.strerror}")]) from None
    return spool


def _priority_as_written(raw: bytes, parsed: float) -> Any:
    """orjson reads an integer beyond 64 bits as a float (1e+30); the standard library
    keeps it exact, so a message shows the priority as the file wrote it."""
    if not parsed.is_integer():
        return parsed
    try:
        return json.loads(raw).get("priority", parsed)
    except ValueError:
        return parsed


def _lines(file: IO[bytes]) -> Iterator[tuple[int, int, bytes | None, int]]:
    """(line number, byte offset, content without the newline or None if too long,
    size in bytes) of every non-blank line. A too-long line is skipped through in
    chunks, never held whole."""
    offset = 0
    number = 0
    while True:
        raw = file.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        start = offset
        offset += len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = file.readline(1 << 20)
                offset += len(raw)
                size += len(raw)
            yield number, start, None, size - 1 if raw.endswith(b"\n") else size
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
            start += len(_BOM)
        if raw.strip():
            yield number, start, raw, len(raw)


def _parse_line(raw: bytes, number: int, collector: _Collector) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            collector.problem(number, f"invalid UTF-8 (byte {bad.start + 1} of the line)")
            return None
        message = f"malformed JSON: {error}"
        if b"NaN" in raw or b"Infinity" in raw:
            message += " (NaN and Infinity are not JSON)"
        collector.problem(number, message)
        return None


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return "an integer too long to print"
    return text if len(text) <= 60 else text[:57] + "..."


class _Collector:
    """Checks tasks one by one, then across the input (dependencies, templates, cycles)."""

    def __init__(self, where: str, estimator: TokenEstimator | None, unit: str) -> None:
        self.where = where
        self.estimator = estimator
        self.unit = unit  # "line" or "item", for messages
        self.problems: list[Problem] = []
        self.tasks: list[Task] = []
        self.first: dict[str, int] = {}  # custom_id -> line where it first appears
        self.deps: dict[str, tuple[str, ...]] = {}  # first appearance only, for cycles
        self.links: list[tuple[int, tuple[str, ...], set[str]]] = []  # line, deps, refs
        self.seen_any = False
        self.strings: dict[str, str] = {}  # one copy of each url and model across tasks

    def _shared(self, text: str) -> str:
        return self.strings.setdefault(text, text)

    def problem(self, line: int, message: str) -> None:
        self.seen_any = True
        self.problems.append(Problem(self.where, line, message))

    def add(
        self,
        obj: Any,
        line: int,
        *,
        default_id: str | None = None,
        keep_body: bool = False,
        offset: int = -1,
        length: int = 0,
        scan_refs: bool = True,
    ) -> None:
        self.seen_any = True
        if not isinstance(obj, Mapping):
            self.problem(line, f"a task must be a JSON object, got {_json_kind(obj)}")
            return
        before = len(self.problems)
        custom_id = self._custom_id(obj.get("custom_id"), line, default_id)
        method = self._method(obj.get("method"), line)
        url = self._url(obj.get("url"), line)
        provider = self._provider(obj.get("provider"), line)
        depends_on = self._depends_on(obj.get("depends_on"), line)
        priority = self._priority(obj.get("priority"), line)
        fn = self._fn(obj.get("fn"), line)
        is_api = obj.get("fn") is None  # an invalid fn is still a step: no body needed
        resources = self._resources(obj.get("resources"), line, is_api)
        body = self._body(obj.get("body"), line, is_api, keep_body)
        model = self._model(body, line) if is_api and body is not None else ""
        refs = template_refs(body) if scan_refs and body is not None else set()
        if depends_on is not None:
            if refs or depends_on:
                self.links.append((line, depends_on, refs))
            if custom_id is not None and custom_id not in self.deps:
                self.deps[custom_id] = depends_on
        if len(self.problems) > before:
            return
        assert custom_id is not None and depends_on is not None and priority is not None
        if fn is not None:
            provider, prompt_tokens, max_output_tokens = FN_PROVIDER, 0, 0
        else:
            assert body is not None
            if self.estimator is None:
                prompt_tokens, max_output_tokens = UNESTIMATED, output_tokens(url, body)
            else:
                estimate = self._estimate(provider, url, body, line)
                if estimate is None:
                    return
                prompt_tokens, max_output_tokens = estimate
            if max_output_tokens > MAX_OUTPUT_TOKENS:
                self._output_too_large(body, line)
                return
        task = Task(
            custom_id=custom_id,
            index=len(self.tasks),
            line=line,
            provider=provider,
            method=method,
            url=self._shared(url),
            model=self._shared(model),
            depends_on=depends_on,
            priority=priority,
            fn=fn,
            prompt_tokens=prompt_tokens,
            max_output_tokens=max_output_tokens,
            fingerprint=fingerprint(provider, method, url, body, fn, depends_on),
            templated=not refs.isdisjoint(depends_on),
            body=body if keep_body else None,
            offset=offset,
            length=length,
            resources=resources,
        )
        self.tasks.append(task)

    def finish(self, empty_message: str) -> tuple[list[Task], dict[str, Task]]:
        """Cross-task checks; the tasks and their index, or InputError."""
        if not self.seen_any:
            self.problem(0, empty_message)
        for line, depends_on, refs in self.links:
            for dep in depends_on:
                if dep not in self.first:
                    self.problem(
                        line, f"unknown dependency {_show(dep)}: no task has this custom_id"
                    )
            for ref in sorted(r for r in refs if r in self.first and r not in depends_on):
                message = f"template {{{{{ref}}}}} refers to a task that is not in depends_on"
                self.problem(line, message)
        for cycle in _cycles(self.deps, self.first):
            members = " -> ".join([*cycle, cycle[0]])
            self.problem(self.first[cycle[0]], f"dependency cycle: {members}")
        if self.problems:
            self.problems.sort(key=lambda p: p.line)
            raise InputError(self.problems)
        return self.tasks, {t.custom_id: t for t in self.tasks}

    def _custom_id(self, value: Any, line: int, default_id: str | None) -> str | None:
        if value is None and default_id is not None:
            value = default_id
        if value is None:
            self.problem(line, "custom_id is required")
            return None
        if not isinstance(value, str) or not value:
            self.problem(line, f"custom_id must be a non-empty string, got {_show(value)}")
            return None
        first = self.first.setdefault(value, line)
        if first != line:
            self.problem(line, f"duplicate custom_id {_show(value)} (first on {self.unit} {first})")
        return value

    def _method(self, value: Any, line: int) -> str:
        if value is None or value == DEFAULT_METHOD:
            return DEFAULT_METHOD
        self.problem(line, f"method {_show(value)} is not supported: only POST")
        return DEFAULT_METHOD

    def _url(self, value: Any, line: int) -> str:
        if value is None:
            return DEFAULT_URL
        if isinstance(value, str) and value.startswith("/"):
            return value
        self.problem(line, f"url must be a path starting with '/', got {_show(value)}")
        return DEFAULT_URL

    def _provider(self, value: Any, line: int) -> str:
        if value is None:
            return PROVIDERS[0]
        if isinstance(value, str) and value in PROVIDERS:
            return value
        self.problem(line, f"unknown provider {_show(value)}: use one of {', '.join(PROVIDERS)}")
        return PROVIDERS[0]

    def _depends_on(self, value: Any, line: int) -> tuple[str, ...] | None:
        if value is None:
            return ()
        if isinstance(value, list | tuple) and all(isinstance(d, str) for d in value):
            return tuple(dict.fromkeys(value))
        self.problem(line, f"depends_on must be a list of custom_id strings, got {_show(value)}")
        return None

    def _priority(self, value: Any, line: int) -> int | None:
        if value is None:
            return DEFAULT_PRIORITY
        priority = parse_priority(value)
        if priority is None and isinstance(value, int) and not isinstance(value, bool):
            message = f"priority {_show(value)} is out of range: {MIN_PRIORITY} to {MAX_PRIORITY}"
            self.problem(line, message)
        elif priority is None:
            self.problem(line, f"bad priority {_show(value)}: {_PRIORITY_HINT}")
        return priority

    def _output_too_large(self, body: Mapping[str, Any], line: int) -> None:
        key = next((k for k in OUTPUT_KEYS if body.get(k) is not None), "max_tokens")
        asked = f"{key} = {_show(body.get(key))}"
        if body.get("n") is not None:
            asked = f"{key} × n = {_show(body.get(key))} × {_show(body['n'])}"
        limit = f"{MAX_OUTPUT_TOKENS} (2**53)"
        self.problem(line, f"{asked} output tokens is over the limit of {limit} per request")

    def _fn(self, value: Any, line: int) -> str | None:
        if value is None:
            return None
        if isinstance(value, str) and _FN.fullmatch(value):
            return value
        self.problem(line, f"fn must look like 'package.module:function', got {_show(value)}")
        return None

    # ---- resources: what a Python step asks Ray for (--backend ray) ----
    def _resources(self, value: Any, line: int, is_api: bool) -> tuple[tuple[str, float], ...]:
        if value is None:
            return ()
        if is_api:
            self.problem(line, "resources apply to Python steps (fn) only")
            return ()
        ok = isinstance(value, Mapping) and all(
            key in RESOURCE_NAMES
            and isinstance(amount, int | float)
            and not isinstance(amount, bool)
            and 0 <= amount < float("inf")
            for key, amount in value.items()
        )
        if not ok:
            names = ", ".join(RESOURCE_NAMES)
            self.problem(
                line,
                f"resources must map {names} to non-negative numbers, got {_show(value)}",
            )
            return ()
        return tuple(sorted(value.items()))

    # ---- end resources ----
    def _body(self, value: Any, line: int, required: bool, keep: bool) -> dict[str, Any] | None:
        if value is None:
            if required:
                self.problem(line, "body is required (a JSON object) for an API task")
            return None
        if not isinstance(value, Mapping):
            self.problem(line, f"body must be a JSON object, got {_json_kind(value)}")
            return None
        if not keep:
            return value  # type: ignore[return-value]  # parsed JSON: a dict
        try:
            return orjson.loads(orjson.dumps(value))  # type: ignore[no-any-return]
        except TypeError as error:  # orjson.JSONEncodeError is a TypeError
            self.problem(line, f"body is not JSON-serializable: {error}")
            return None

    def _model(self, body: Mapping[str, Any], line: int) -> str:
        model = body.get("model")
        if model is None:
            self.problem(line, "body.model is required")
            return ""
        if not isinstance(model, str) or not model:
            self.problem(line, f"body.model must be a non-empty string, got {_show(model)}")
            return ""
        return model

    def _estimate(
        self, provider: str, url: str, body: dict[str, Any], line: int
    ) -> tuple[int, int] | None:
        # A body the estimator cannot read would fail at the provider too; report it
        # here with its line instead of a traceback halfway through loading.
        try:
            assert self.estimator is not None
            return self.estimator.estimate(provider, url, body)
        except Exception as error:
            message = f"body cannot be read for token estimation: {type(error).__name__}: {error}"
            self.problem(line, message)
            return None


def _json_kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _cycles(deps: dict[str, tuple[str, ...]], first: dict[str, int]) -> list[list[str]]:
    """One cycle per strongly connected group (a self-dependency is one), each
    starting at its member that comes first in the input. O(V+E) overall:
    Tarjan's algorithm finds the groups, ``find_cycle`` one cycle inside each."""
    cycles = []
    for group in _strong_groups(deps):
        members = set(group)
        ordered = sorted(group, key=first.__getitem__)
        inside = {m: tuple(d for d in deps[m] if d in members) for m in ordered}
        cycle = find_cycle(inside)
        if cycle:
            start = min(range(len(cycle)), key=lambda i: first[cycle[i]])
            cycles.append(cycle[start:] + cycle[:start])
    return cycles


def _strong_groups(deps: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Strongly connected groups holding a cycle (iterative Tarjan; unknown ids ignored)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in deps:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, 0)]
        while work:
            node, i = work[-1]
            children = deps[node]
            if i < len(children):
                work[-1] = (node, i + 1)
                child = children[i]
                if child not in deps:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in deps[node]:
                    groups.append(group)
    return groups
