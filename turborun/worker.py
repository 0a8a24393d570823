"""Worker process entry: an event loop for HTTP calls, a few threads for Python steps.

Workers are stateless. They hold their SDK clients and nothing else: no budget,
no journal, no retry, no sleeping. Each process has its own pair of pipes to the
supervisor (a SIGKILLed process corrupts only its own channel, never a queue
shared with the others):

    supervisor ──calls pipe──► main thread ─┬─► event loop: one task per HTTP Call (async SDK)
                                            └─► thread pool: Python steps (fn)
    supervisor ◄─outcomes pipe── sender thread ◄─ SimpleQueue ◄─┘

A Python step is the task's failure whatever it raises (SystemExit and
KeyboardInterrupt included) and fails when it runs past its Call's timeout. A thread
cannot be stopped, so a step past its deadline is reported failed at the deadline, its
thread is left to finish (its late result is dropped) and the steps that come next get
fresh threads. When MAX_STUCK_STEPS such threads are still running in one process, the
process asks to be recycled: the pool sends it nothing more, starts a replacement, and
stops it once the calls it holds are answered (docs/DESIGN.md, "Python steps").

An HTTP call waiting for its answer costs a coroutine and a socket, not a thread,
so one process holds thousands in flight (docs/DESIGN.md, "Requests in flight").
The process exits on its own when the supervisor is gone: the calls pipe reads
EOF once the supervisor's end is closed (also by a kill -9), and a watchdog
notices the parent pid change as a second line of defence. Ctrl-C reaches the
whole process group: workers ignore SIGINT and let the supervisor decide.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from turborun.fdlimit import raise_open_file_limit
from turborun.quiet_gc import quiet_gc
from turborun.records import FN_ERROR, FN_PROVIDER, Call, Outcome

_WATCHDOG_PERIOD_S = 0.5
# The first message of every process: an Outcome for no node, meaning "ready".
_HELLO = Outcome("", 0, None, None, None, None)
# Steps past their timeout whose threads still run, in one process, before it asks to be
# replaced: each holds a thread (and whatever the step holds) until it returns.
MAX_STUCK_STEPS = 16
# An Outcome for no node asking the pool to replace this process (see MAX_STUCK_STEPS).
RECYCLE_ATTEMPT = -1
_PRUNE_AT = 1024  # deadlines kept before those of finished steps are dropped


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    fn_threads: int  # Python steps run at once in this process
    timeout_s: float
    base_urls: dict[str, str]
    api_keys: dict[str, str] = field(repr=False)  # crosses to the child in memory only


def worker_main(
    settings: WorkerSettings,
    calls: Connection,
    outcomes: Connection,
    environ: dict[str, str] | None = None,
) -> None:
    """Serve Calls until the supervisor says stop (None) or disappears.

    ``environ``: the supervisor's environment when this process was started. A
    fork-server child would otherwise see the environment the fork server had
    when it started, and Python steps that read variables would see stale ones.
    """
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise_open_file_limit()  # one socket per request in flight
    from turborun.providers import Providers  # after start: clients belong to this process

    providers = Providers(settings.api_keys, settings.base_urls, settings.timeout_s)
    outbox: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
    loop = _start_loop()
    # before the hello: a run's clock starts with clients ready
    asyncio.run_coroutine_threadsafe(providers.warm_up(), loop).result()
    secrets = [key for key in settings.api_keys.values() if key]
    steps = _Steps(settings.fn_threads, outbox, loop, secrets)
    threading.Thread(target=_send, args=(outbox, outcomes), daemon=True).start()
    threading.Thread(target=_watchdog, args=(os.getppid(),), daemon=True).start()
    quiet_gc()  # see quiet_gc.py: no collection pauses while requests are in flight
    outbox.put(_HELLO)  # ready: modules imported, threads started
    running: set[asyncio.Task[None]] = set()

    async def http(call: Call) -> None:
        outbox.put(await providers.acall(call))

    def start(batch: list[Call]) -> None:  # on the loop
        for call in batch:
            task = loop.create_task(http(call))
            running.add(task)
            task.add_done_callback(running.discard)

    while True:
        try:
            message = calls.recv()
        except (EOFError, OSError):
            os._exit(0)
        if message is None:
            os._exit(0)
        batch = [call for call in message if call.provider != FN_PROVIDER]
        if len(batch) < len(message):
            steps.submit([c for c in message if c.provider == FN_PROVIDER], providers.call)
        if batch:
            loop.call_soon_threadsafe(start, batch)


class _Steps:
    """Python steps on threads, each bounded by its Call's ``timeout_s`` (see the module
    docstring). Outcomes go to ``outbox``. Deadlines wait in one heap served by a single
    timer on the event loop; deadlines of steps that finished are dropped in bulk, so a
    run of 100,000 quick steps keeps no timer per step."""

    def __init__(
        self,
        threads: int,
        outbox: queue.SimpleQueue[Outcome],
        loop: asyncio.AbstractEventLoop,
        secrets: list[str],
    ) -> None:
        self._threads = max(1, threads)
        self._outbox = outbox
        self._loop = loop
        self._secrets = secrets
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], float] = {}  # (custom_id, attempt) → start
        self._executor = self._new_executor()
        self.stuck = 0  # threads still running a step that was failed at its deadline
        self._recycle_asked = False
        # (due on the loop's clock, custom_id, attempt, timeout_s); the loop's thread only
        self._deadlines: list[tuple[float, str, int, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self._threads, thread_name_prefix="turborun-fn")

    def submit(self, calls: list[Call], run: Callable[[Call], Outcome]) -> None:
        """Start each step on a thread; arm its deadline on the event loop (one wake-up
        of the loop for the whole batch)."""
        for call in calls:
            key = (call.custom_id, call.attempt)
            with self._lock:
                self._running[key] = time.perf_counter()
                executor = self._executor
            executor.submit(self._run, call, key, run)
        self._loop.call_soon_threadsafe(self._arm, calls)

    def _arm(self, calls: list[Call]) -> None:
        now = self._loop.time()
        for call in calls:
            due = now + call.timeout_s
            heapq.heappush(self._deadlines, (due, call.custom_id, call.attempt, call.timeout_s))
        if len(self._deadlines) > _PRUNE_AT and len(self._deadlines) > 4 * len(self._running):
            with self._lock:
                running = set(self._running)
            self._deadlines = [d for d in self._deadlines if (d[1], d[2]) in running]
            heapq.heapify(self._deadlines)
        self._schedule()

    def _schedule(self) -> None:
        first = self._deadlines[0][0] if self._deadlines else math.inf
        if first == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, first
        if first < math.inf:
            self._timer = self._loop.call_at(first, self._expire_due)

    def _expire_due(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, custom_id, attempt, timeout_s = heapq.heappop(self._deadlines)
            self._expire(custom_id, attempt, timeout_s)
        self._schedule()

    def _run(self, call: Call, key: tuple[str, int], run: Callable[[Call], Outcome]) -> None:
        start = time.perf_counter()
        try:
            outcome = run(call)
        except BaseException as error:  # SystemExit, KeyboardInterrupt, ...: its failure
            message = self._scrub(_describe(error))
            outcome = _step_failure(call.custom_id, call.attempt, message, start)
        with self._lock:
            current = self._running.pop(key, None) is not None
            if not current:
                self.stuck -= 1  # failed at its deadline already: the result is dropped
        if current:
            self._outbox.put(outcome)

    def _expire(self, custom_id: str, attempt: int, timeout_s: float) -> None:
        """On the event loop, at the step's deadline."""
        with self._lock:
            start = self._running.pop((custom_id, attempt), None)
            if start is None:
                return  # it finished in time
            self.stuck += 1
            # The stuck thread belongs to the old executor; the next steps get fresh ones.
            old, self._executor = self._executor, self._new_executor()
            recycle = self.stuck >= MAX_STUCK_STEPS and not self._recycle_asked
            self._recycle_asked = self._recycle_asked or recycle
        old.shutdown(wait=False)  # its other threads finish what they hold, then exit
        message = (
            f"Python step still running after the {timeout_s:g} s timeout (--timeout): "
            "failed; its thread cannot be stopped and is left to finish"
        )
        self._outbox.put(_step_failure(custom_id, attempt, message, start))
        if recycle:
            self._outbox.put(Outcome("", RECYCLE_ATTEMPT, None, None, None, None))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _step_failure(custom_id: str, attempt: int, message: str, start: float) -> Outcome:
    return Outcome(custom_id, attempt, None, FN_ERROR, message, None,
                   latency_s=time.perf_counter() - start, pid=os.getpid())  # fmt: skip


def _start_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="turborun-loop", daemon=True).start()
    return loop


def _send(outbox: queue.SimpleQueue[Outcome], outcomes: Connection) -> None:
    """Send outcomes as they come, all that are waiting in one message."""
    while True:
        batch = [outbox.get()]
        while True:
            try:
                batch.append(outbox.get(block=False))
            except queue.Empty:
                break
        try:
            outcomes.send(batch)
        except (OSError, ValueError):
            os._exit(0)  # supervisor gone: stop, do not send more requests


def _watchdog(parent: int) -> None:
    while True:
        time.sleep(_WATCHDOG_PERIOD_S)
        if os.getppid() != parent:
            os._exit(0)
