"""The Python API: ``execute_batch`` for a whole task set, ``Runner`` for tasks
submitted one by one with futures (SPEC §7)."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Unpack

from turborun.caps import recorded_caps, spend_caps
from turborun.checkpoint import Checkpoint, Journal, default_run_name, read_meta
from turborun.config import Config, Settings, load_config
from turborun.exceptions import CheckpointError, ConfigError, InputError, Problem, TaskFailed
from turborun.metrics import Metrics
from turborun.pricing import Pricing
from turborun.results import check_results_path, default_results_path, write_results
from turborun.session import RunSession
from turborun.spend import SpendCaps
from turborun.status import SUCCEEDED, Status
from turborun.supervisor import Progress, Supervisor
from turborun.tasks import Task, TaskSet, fingerprint, load_tasks, tasks_from_dicts
from turborun.templates import template_refs
from turborun.timeline import Timeline
from turborun.tokens import TokenEstimator

log = logging.getLogger("turborun")


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one task, as journaled."""

    custom_id: str
    status: Status  # succeeded, failed or skipped (a str: compares equal to its text)
    text: str | None
    body: Any  # the provider's JSON answer, or a Python step's return value
    error: dict[str, str] | None
    attempts: int
    latency_s: float
    queued_s: float
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    @classmethod
    def from_entry(cls, custom_id: str, entry: Mapping[str, Any], resumed: bool) -> Result:
        return cls(
            custom_id=custom_id,
            status=Status(entry["status"]),
            text=entry.get("text"),
            body=entry.get("body"),
            error=entry.get("error"),
            attempts=entry.get("attempts", 0),
            latency_s=entry.get("latency_s", 0.0),
            queued_s=entry.get("queued_s", 0.0),
            input_tokens=entry.get("input_tokens"),
            output_tokens=entry.get("output_tokens"),
            cost_usd=entry.get("cost_usd"),
            resumed=resumed,
        )


class _JournalResults(Mapping[str, Result]):
    """Results read from the journal on access, so a million results cost no memory."""

    def __init__(self, folder: Path, ids: list[str], resumed: set[str], keep: Any) -> None:
        self._folder = folder
        self._ids = ids
        self._known = set(ids)
        self._resumed = resumed
        self._keep = keep  # a temporary checkpoint lives as long as its results
        self._journal: Journal | None = None

    def _open(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self._folder / "journal")
        return self._journal

    def __getitem__(self, custom_id: str) -> Result:
        if custom_id not in self._known:
            raise KeyError(custom_id)
        entry = self._open().get(custom_id)
        if entry is None:
            raise KeyError(f"{custom_id} has no result (the run was interrupted)")
        return Result.from_entry(custom_id, entry, custom_id in self._resumed)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class BatchResult:
    """What ``execute_batch`` returns once the run has ended (or was stopped).

    ``success_rate`` is succeeded / total (1.0 for an empty run); tasks never finished
    (an interrupted or capped run) count in the total, not as successes.
    """

    # custom_id → Result, in task order; read from the journal on access (a million
    # results cost no memory). A task never finished raises KeyError.
    results: Mapping[str, Result]
    metrics: Metrics  # counts, tokens, cost, latencies and timings of the run
    run_name: str  # the checkpoint's name ("run" for a private temporary checkpoint)
    checkpoint: Path  # the run's folder: journal, run.json, run.log (and the report)
    results_path: Path | None = None  # the results file written (None: none asked)
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM; --resume sends the rest
    extra: dict[str, Any] = field(default_factory=dict)  # room for callers' annotations
    # A journal commit failed (a full disk): the run stopped; what was journaled stays
    # and a resume sends the rest. None: every commit went through.
    journal_error: str | None = None
    # The results file could not be written at the end (the journal holds everything).
    results_error: str | None = None
    report_path: Path | None = None  # report.html in the checkpoint folder (None: not made)
    # Dispatch stopped with work pending that --resume can finish: a spend cap bound
    # (--max-cost, --max-tokens-total, a model's max_cost) or a provider refused the
    # account (quota, billing). None: the run was not held back.
    stopped_by: str | None = None

    @property
    def success_rate(self) -> float:
        total = self.metrics.total
        return self.metrics.succeeded / total if total else 1.0


def execute_batch(
    tasks: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    checkpoint: str | None = None,
    resume: bool = False,
    fresh: bool = False,
    output: str | os.PathLike[str] | None = None,
    config: Config | None = None,
    progress: Callable[[Progress], object] | bool | None = None,
    handle_signals: bool | None = None,
    accept_lost_journal: bool = False,
    **settings: Unpack[Settings],
) -> BatchResult:
    """Run a task set to the end and return its results.

    ``tasks``: a task-file path or dicts of the task-file schema. ``checkpoint``:
    the run name (its folder under the checkpoint dir); None with dicts keeps a
    private temporary checkpoint, None with a path uses the file's name.
    ``settings``: keyword-only, the names of ``turborun.config.Settings`` (the
    command line's flags: workers, strategy, rpm, max_cost, via, simulate, ...), read
    with the environment, ``.env`` and ``configs/`` by ``load_config``; ignored when
    ``config`` is given (a Config built beforehand, never changed by the run).
    ``output``: where to write
    the results file (default for a path: beside it; for dicts: none).
    ``progress``: a callable taking ``Progress`` snapshots, True for the command
    line's display on stderr (a tqdm bar on a terminal, else periodic lines), or
    None/False for none. ``handle_signals``: make
    SIGINT/SIGTERM stop the run gracefully (default: when on the main thread).
    ``resume`` continues an existing checkpoint (CheckpointNotFound when there is
    none). ``accept_lost_journal``: run a checkpoint whose journal is missing or empty
    although run.json records work done (every task not journaled is sent again).
    The results path is checked before anything is sent (ResultsPathError).
    """
    config = config or load_config(settings)
    display, owned = _progress_display(progress)
    estimator = TokenEstimator()
    if isinstance(tasks, str | os.PathLike):
        path = Path(tasks)
        output = output if output is not None else default_results_path(path)
        check_results_path(Path(output), path)
        # A resume sends few of its tasks: the supervisor counts prompt tokens of those
        # that run (tokenizing 100,000 prompts costs more than a second).
        taskset = load_tasks(path, None if resume else estimator)
        run_name = checkpoint or default_run_name(path)
    else:
        if output is not None:
            check_results_path(Path(output))
        items = list(tasks)
        taskset = tasks_from_dicts(items, estimator)
        run_name = checkpoint
    opening = _Opening(resume, fresh, accept_lost_journal)
    try:
        from turborun.batches.modes import requested_via  # "mode": "batch" on tasks

        via = requested_via(config.via, taskset, None if taskset.path else items)
        if via != config.via:
            config = replace(config, via=via)
        if config.via == "batch":  # the providers' Batch APIs (turborun/batches/)
            from turborun.batches import run_via_batch

            return run_via_batch(taskset, run_name, config, resume=resume, fresh=fresh,
                                 output=output, progress=display,
                                 handle_signals=handle_signals)  # fmt: skip
        return _run(taskset, run_name, config, opening, output, display, handle_signals)
    finally:
        taskset.close()
        if owned:
            display.close()


def _progress_display(progress: Any) -> tuple[Any, bool]:
    """(the callback, whether it is ours to close)."""
    if progress is None or progress is False:
        return None, False
    if progress is True:
        from turborun.progress import ProgressDisplay

        return ProgressDisplay(), True
    if callable(progress):
        return progress, False
    raise TypeError(f"progress must be a callable, True, False or None, not {progress!r}")


@dataclass(frozen=True, slots=True)
class _Opening:
    """How to open the run's checkpoint."""

    resume: bool
    fresh: bool
    accept_lost_journal: bool


def _run(
    taskset: TaskSet,
    run_name: str | None,
    config: Config,
    opening: _Opening,
    output: str | os.PathLike[str] | None,
    progress: Any,
    handle_signals: bool | None,
) -> BatchResult:
    # A cap that cannot bound the work is refused before a checkpoint is made.
    spend_caps(config, Pricing.load(Pricing.default_paths(Path.cwd())), taskset.tasks,
               recorded={}, journal_entries=(), warn=False)  # fmt: skip
    session = RunSession(
        config,
        run_name,
        resume=opening.resume,
        fresh=opening.fresh,
        providers=taskset.providers(),
        accept_lost_journal=opening.accept_lost_journal,
    )
    with session:
        assert session.checkpoint is not None
        checkpoint = session.checkpoint
        journal = checkpoint.journal
        previous = {cid: (e["status"], e["fingerprint"]) for cid, e in journal.entries()}
        caps = spend_caps(
            config,
            session.pricing,
            taskset.tasks,
            recorded=read_meta(checkpoint.folder) if opening.resume else {},
            journal_entries=journal.entries(),
        )
        supervisor = session.supervisor(taskset.body, on_progress=progress, spend=caps)
        supervisor.add_batch(taskset.tasks, previous)
        try:
            checkpoint.write_meta(_meta(taskset, session, "running", caps=caps))
        except OSError as exc:  # nothing was sent yet
            raise CheckpointError(
                f"cannot write {checkpoint.folder / 'run.json'}: {exc.strerror or exc}"
            ) from None
        timeline = _start_timeline(checkpoint.folder, supervisor, fresh=not opening.resume)
        restore = _install_signals(supervisor, session, handle_signals)
        metrics: Metrics | None = None
        try:
            metrics = supervisor.run()
            ended = "stopped" if journal.write_error is not None else None
            timeline.end(state=ended or _state(metrics), pending=metrics.pending)
        finally:
            restore()
            timeline.close()
            if metrics is None:  # the loop raised: run.json must not say "running"
                _try_write_meta(checkpoint, _meta(taskset, session, "crashed", caps=caps))
        ids = [t.custom_id for t in taskset.tasks]
        results_path, results_error = _write_results_file(
            output, journal, ids, session.run_name or "", supervisor.resumed
        )
        journal_error = None if journal.write_error is None else str(journal.write_error)
        state = "interrupted" if metrics.interrupted else "finished"
        if journal_error is not None or metrics.stopped_by is not None:
            state = "stopped"
        meta = _meta(taskset, session, state, metrics, caps=caps)
        if metrics.stopped_by is not None:
            meta["stopped_by"] = metrics.stopped_by
        meta.update(
            {
                k: v
                for k, v in (("journal_error", journal_error), ("results_error", results_error))
                if v
            }
        )
        _try_write_meta(checkpoint, meta)
        folder = checkpoint.folder
        private = session._tmp is not None  # noqa: SLF001 - a checkpoint that is not kept
        report_path = None if private else _write_report(folder, journal, taskset.tasks)
        if not private:
            _record_outputs(config.checkpoint_dir, journal, taskset.tasks, supervisor.resumed)
    keep = session._tmp  # noqa: SLF001 - handed over to the results it backs
    return BatchResult(
        results=_JournalResults(folder, ids, supervisor.resumed, keep),
        metrics=metrics,
        run_name=session.run_name or "",
        checkpoint=folder,
        results_path=results_path,
        interrupted=metrics.interrupted,
        journal_error=journal_error,
        results_error=results_error,
        report_path=report_path,
        stopped_by=metrics.stopped_by,
    )


def _state(metrics: Metrics) -> str:
    return "interrupted" if metrics.interrupted else "finished"


def _start_timeline(folder: Path, supervisor: Supervisor, *, fresh: bool) -> Timeline:
    """The run's samples over time for its report (turborun/timeline.py); a run that
    does not resume starts the file again."""
    timeline = Timeline(folder, fresh=fresh)
    m = supervisor.metrics
    timeline.start(
        total=m.total, resumed=m.resumed, changed=m.changed, rerun_descendants=m.rerun_descendants
    )
    supervisor.timeline = timeline
    return timeline


def _record_outputs(
    checkpoint_dir: Path, journal: Journal, tasks: list[Task], resumed: set[str]
) -> None:
    """Add this run's output/requested token sums to the machine's history, from which
    ``estimate`` predicts the likely output of later runs (turborun/estimate.py)."""
    from turborun.estimate import record_ratios, usage_sums

    try:
        fresh = ((cid, e) for cid, e in journal.entries() if cid not in resumed)
        record_ratios(checkpoint_dir, usage_sums(tasks, fresh))
    except Exception:  # only later estimates lose by it
        log.exception("could not record the run's output lengths")


def _write_report(folder: Path, journal: Journal, tasks: Iterable[Task]) -> Path | None:
    """report.html and report.json in the checkpoint folder (turborun/report/); a report
    that cannot be made is logged and never fails the run. Not for a private temporary
    checkpoint (Python API without a checkpoint name): nothing of it is left to read."""
    from turborun.report import write_report

    infos = [
        (t.custom_id, tuple(t.depends_on), f"{t.provider}/{t.model or t.fn or ''}") for t in tasks
    ]
    try:
        files = write_report(folder, journal=journal, tasks=infos)
    except OSError as exc:  # a full or read-only disk: said in one line, no traceback
        log.warning("could not write the run's report: %s", exc.strerror or exc)
        return None
    except Exception:
        log.exception("could not write the run's report")
        return None
    log.info("report: %s", files.html)
    return files.html


def _write_results_file(
    output: str | os.PathLike[str] | None,
    journal: Journal,
    ids: list[str],
    run_name: str,
    resumed: set[str],
) -> tuple[Path | None, str | None]:
    """(the path written, None) or (None, why it could not be): every request is paid
    for by now and the journal holds the results, so a failure here is reported, not
    raised (a resume with another -o writes them without sending anything)."""
    if output is None:
        return None, None
    path = Path(output)
    try:
        write_results(path, journal.get_many(ids), run_name=run_name, resumed=resumed)
    except OSError as exc:
        why = f"cannot write the results file {path}: {exc.strerror or exc}"
        log.error("%s", why)
        return None, why
    return path, None


def _try_write_meta(checkpoint: Checkpoint, meta: dict[str, Any]) -> None:
    try:
        checkpoint.write_meta(meta)
    except OSError as exc:
        log.warning(
            "cannot update %s (%s): it may still say %r",
            checkpoint.folder / "run.json",
            exc.strerror or exc,
            checkpoint.read_meta().get("state"),
        )


def _meta(
    taskset: TaskSet,
    session: RunSession,
    state: str,
    metrics: Metrics | None = None,
    *,
    caps: SpendCaps | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "run_name": session.run_name,
        "tasks_file": str(taskset.path) if taskset.path else None,
        "total": len(taskset.tasks),
        "pid": os.getpid(),
        "state": state,
        **recorded_caps(caps),
    }
    if metrics is not None:
        meta.update(
            succeeded=metrics.succeeded,
            failed=metrics.failed,
            skipped=metrics.skipped,
            wall_s=round(metrics.makespan_s, 3),
        )
    return meta


def _install_signals(supervisor: Supervisor, session: RunSession, handle: bool | None) -> Any:
    """First SIGINT/SIGTERM: graceful stop. Second SIGINT: exit at once; the
    journal stays consistent because every commit is atomic."""
    if handle is None:
        handle = threading.current_thread() is threading.main_thread()
    if not handle:
        return lambda: None

    def on_signal(signum: int, frame: Any) -> None:
        if supervisor.stopping and signum == signal.SIGINT:
            session.kill_workers()
            os._exit(130)
        supervisor.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, handler in old.items():
            signal.signal(s, handler)

    return restore


class Runner:
    """Submit tasks one by one; each returns a ``concurrent.futures.Future``.

    The future's result is a ``Result``; a task that fails or is skipped sets a
    ``TaskFailed`` exception carrying its ``Result``. ``depends_on`` takes futures
    or custom_ids of tasks submitted before.
    """

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        resume: bool = False,
        fresh: bool = False,
        config: Config | None = None,
        accept_lost_journal: bool = False,
        **settings: Unpack[Settings],
    ) -> None:
        self._config = config or load_config(settings)
        if self._config.max_cost is not None or self._config.max_tokens_total is not None:
            # A stream has no end to budget for: refused rather than silently ignored.
            raise ConfigError(
                "max_cost",
                None,
                "Runner takes no spend cap (max_cost, max_tokens_total); use execute_batch",
            )
        self._checkpoint = checkpoint
        self._resume = resume
        self._fresh = fresh
        self._accept_lost_journal = accept_lost_journal
        self._estimator = TokenEstimator()
        self._futures: dict[str, Future[Result]] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._session: RunSession | None = None
        self._supervisor: Supervisor | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.metrics: Metrics | None = None
        self.report_path: Path | None = None  # report.html, once the runner has exited

    def __enter__(self) -> Runner:
        providers = {"openai", "groq"} if self._config.simulate else set()
        self._session = RunSession(
            self._config,
            self._checkpoint,
            resume=self._resume,
            fresh=self._fresh,
            providers=providers,
            accept_lost_journal=self._accept_lost_journal,
        )
        self._session.__enter__()
        self._supervisor = self._session.supervisor(lambda t: t.body or {}, self._on_done)
        self._supervisor.keep_accepting(True)
        assert self._session.checkpoint is not None
        self._timeline = _start_timeline(
            self._session.checkpoint.folder, self._supervisor, fresh=not self._resume
        )
        self._thread = threading.Thread(target=self._loop, name="turborun-supervisor", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._supervisor is not None and self._session is not None
        try:
            self.metrics = self._supervisor.run()
        except BaseException as exc:  # surfaces in every pending future
            self._error = exc
            self._fail_pending(exc)
            return
        checkpoint = self._session.checkpoint
        failed = checkpoint.journal.write_error if checkpoint is not None else None
        if failed is not None:  # stopped by a journal that cannot be written
            self._error = failed
            self._fail_pending(failed)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(exc)

    def submit(
        self, task: Mapping[str, Any], depends_on: Sequence[Future[Result] | str] = ()
    ) -> Future[Result]:
        if self._supervisor is None:
            raise RuntimeError("use Runner as a context manager: with Runner() as run: ...")
        if self._error is not None:
            raise RuntimeError("the runner's supervisor stopped") from self._error
        item = dict(task)
        deps = [_dep_id(d) for d in (list(depends_on) + list(item.pop("depends_on", [])))]
        with self._lock:
            custom_id = item.setdefault("custom_id", f"task-{next(self._counter)}")
            built = self._build(item, deps)
            future: Future[Result] = Future()
            future.custom_id = custom_id  # type: ignore[attr-defined]
            self._futures[custom_id] = future
            self._known.add(custom_id)
        self._supervisor.submit([built])
        return future

    def _build(self, item: dict[str, Any], deps: list[str]) -> Task:
        custom_id = item["custom_id"]
        problems = []
        if custom_id in self._known:
            problems.append(f"duplicate custom_id {custom_id!r}")
        unknown = [d for d in deps if d not in self._known]
        if unknown:
            problems.append(f"unknown dependency {', '.join(unknown)} (submit it first)")
        undeclared = (template_refs(item.get("body") or {}) & self._known) - set(deps)
        if undeclared:
            problems.append(
                f"template {{{{{sorted(undeclared)[0]}}}}} refers to a task not in depends_on"
            )
        if problems:
            raise InputError([Problem("<submit>", 0, p) for p in problems])
        task = tasks_from_dicts([item], self._estimator, source="<submit>").tasks[0]
        task.depends_on = tuple(dict.fromkeys(deps))
        task.templated = bool(template_refs(item.get("body") or {}) & set(deps))
        task.index = len(self._known)
        task.fingerprint = fingerprint(
            task.provider, task.method, task.url, task.body, task.fn, task.depends_on
        )
        return task

    def _on_done(self, custom_id: str, entry: dict[str, Any]) -> None:
        body = entry.get("body")
        if isinstance(body, bytes | bytearray):
            import orjson

            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                body = body.decode("utf-8", "replace")
        result = Result.from_entry(custom_id, {**entry, "body": body}, False)
        with self._lock:
            future = self._futures.get(custom_id)
        if future is None or future.done():
            return
        if result.ok:
            future.set_result(result)
        else:
            future.set_exception(TaskFailed(result))

    def __exit__(self, *exc: object) -> None:
        assert self._supervisor is not None and self._session is not None
        if exc[0] is not None:
            self._supervisor.request_stop()
        self._supervisor.keep_accepting(False)
        if self._thread is not None:
            self._thread.join()
        self._end_run()
        self._session.close()
        self._session.cleanup_tmp()

    def _end_run(self) -> None:
        """The timeline's last record and the run's report (as execute_batch's)."""
        assert self._session is not None and self._supervisor is not None
        if self.metrics is not None:
            self._timeline.end(state=_state(self.metrics), pending=self.metrics.pending)
        self._timeline.close()
        checkpoint = self._session.checkpoint
        private = self._session._tmp is not None  # noqa: SLF001 - a checkpoint not kept
        if checkpoint is not None and not private:
            tasks = self._supervisor.tasks
            self.report_path = _write_report(checkpoint.folder, checkpoint.journal, tasks)


def _dep_id(dep: Future[Result] | str) -> str:
    if isinstance(dep, str):
        return dep
    custom_id = getattr(dep, "custom_id", None)
    if custom_id is None:
        raise TypeError("depends_on takes futures returned by Runner.submit or custom_ids")
    return custom_id
