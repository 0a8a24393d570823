"""P worker processes, each with its own channel, holding any number of Calls.

Why not multiprocessing.Pool or one shared Queue: a process SIGKILLed while
using a shared queue stalls the survivors, and Pool hangs on a dead worker
(../shared/FACTS.md). Here every process has its own pipes; the pool knows
which Calls each holds and learns of a death through ``Process.sentinel``: the
dead process's Calls come back to the caller and a replacement starts.

The pool sets no limit of its own: the supervisor decides how many Calls are in
flight (its target follows rate × latency, docs/DESIGN.md) and hands each to the
process holding the fewest, HTTP calls and Python steps counted apart (a process
runs ``fn_threads`` steps at once). A process starts each HTTP Call at once on its
event loop, so nothing waits inside a worker: anything not yet handed over can
still be reordered, delayed or cancelled.

A process whose Python steps keep running past their timeout (threads cannot be
stopped; worker.py) asks to be recycled: it gets no more Calls, a replacement starts
at once, and it is told to stop once every Call it holds is answered.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from turborun.exceptions import WorkerStartError
from turborun.records import FN_PROVIDER, Call, Outcome
from turborun.worker import RECYCLE_ATTEMPT, WorkerSettings, worker_main

log = logging.getLogger("turborun")

# anyio's asyncio backend and streams are imported by an async client's first request
# (~25 ms): loaded here, the first requests of a run leave on time instead of in a burst.
_PRELOAD = (
    "turborun.worker",
    "turborun.providers",
    "openai",
    "groq",
    "anyio._backends._asyncio",
    "anyio._core._sockets",
    "anyio.streams.memory",
    "anyio.streams.stapled",
)
MAIN_GUARD_HINT = (
    "worker processes import the main module first, so a script that starts a run "
    'at import time must do so under `if __name__ == "__main__":`'
)


@dataclass(slots=True)
class _Slot:
    process: BaseProcess
    calls: Connection  # supervisor → worker
    outcomes: Connection  # worker → supervisor
    held: dict[str, Call] = field(default_factory=dict)
    steps: int = 0  # Python steps among ``held``
    draining: bool = False  # replaced (stuck steps): no new Calls, stops once ``held`` is empty
    stopping: bool = False  # told to stop


@dataclass(slots=True)
class PoolEvents:
    """What one wait brought: outcomes, Calls lost with a dead process, whether
    an extra connection (the supervisor's wakeup) became ready."""

    outcomes: list[Outcome] = field(default_factory=list)
    lost: list[Call] = field(default_factory=list)
    woken: list[Connection] = field(default_factory=list)
    deaths: int = 0


class WorkerPool:
    def __init__(
        self,
        processes: int,
        settings: WorkerSettings,
        start_method: str = "forkserver",
    ) -> None:
        if start_method not in ("spawn", "forkserver"):
            raise ValueError("workers start with spawn or forkserver, never plain fork")
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports the SDKs once; each worker is then a cheap fork of
            # a single-threaded process (never of our threaded supervisor): 4 workers
            # start in ~0.3 s instead of ~2 s, and so does a replacement.
            self._ctx.set_forkserver_preload(list(_PRELOAD))
        self._processes = processes
        self._settings = settings
        self._slots: list[_Slot] = []
        self._started = False  # every process said hello
        self._launcher: threading.Thread | None = None
        self._launch_error: BaseException | None = None
        self.deaths = 0

    @property
    def processes(self) -> int:
        return self._processes

    @property
    def fn_slots(self) -> int:
        """Python steps the pool runs at once."""
        return self._processes * self._settings.fn_threads

    def start(self, timeout_s: float = 120.0) -> None:
        self._launch()
        self.wait_started(timeout_s)

    def launch(self) -> None:
        """Start every process without waiting for it: the processes import their
        modules while the caller reads its journal and builds its graph. A thread
        starts them, since the first start waits for the fork server's preload."""
        self._launcher = threading.Thread(target=self._launch, name="turborun-launch")
        self._launcher.start()

    def _launch(self) -> None:
        try:
            for _ in range(self._processes):
                self._slots.append(self._spawn())
        except BaseException as error:  # re-raised by wait_started()
            self._launch_error = error

    def _join_launcher(self) -> None:
        if self._launcher is not None:
            self._launcher.join()
            self._launcher = None
        if self._launch_error is not None:
            error, self._launch_error = self._launch_error, None
            self.kill()
            raise WorkerStartError(f"worker processes could not start: {error}") from error

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Wait until each process has imported its modules and said hello, so a run's
        clock starts with a ready pool and a process that cannot start is an error
        here (WorkerStartError) rather than an endless respawn later. Idempotent."""
        if self._started:
            return
        self._join_launcher()
        pending = {slot.outcomes: slot for slot in self._slots}
        deadline = time.monotonic() + timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            sentinels = {slot.process.sentinel: slot for slot in pending.values()}
            ready = wait(list(pending) + list(sentinels), max(0.0, remaining))
            if not ready:
                self.kill()
                raise WorkerStartError(f"worker processes did not start within {timeout_s:.0f} s")
            for handle in ready:
                slot = sentinels.get(handle) or pending[handle]
                if handle in pending and self._hello(slot):
                    del pending[handle]
                elif slot.outcomes in pending:
                    slot.process.join(5)  # its pipe closed: it is exiting
                    self.kill()
                    raise WorkerStartError(
                        f"a worker process exited at start (exit code "
                        f"{slot.process.exitcode}; its error is above); {MAIN_GUARD_HINT}"
                    )
        self._started = True

    @staticmethod
    def _hello(slot: _Slot) -> bool:
        try:
            slot.outcomes.recv()
        except (EOFError, OSError):
            return False
        return True

    def _spawn(self) -> _Slot:
        call_reader, call_writer = self._ctx.Pipe(duplex=False)
        outcome_reader, outcome_writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(self._settings, call_reader, outcome_writer, dict(os.environ)),
            daemon=True,
            name="turborun-worker",
        )
        process.start()
        call_reader.close()  # the child has its own copies; ours would mask EOF
        outcome_writer.close()
        return _Slot(process, call_writer, outcome_reader)

    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process.pid is not None]

    def alive(self) -> int:
        return sum(1 for s in self._slots if s.process.is_alive())

    def in_flight(self) -> int:
        """Calls handed over and not yet answered, steps included."""
        return sum(len(s.held) for s in self._slots)

    def steps_in_flight(self) -> int:
        return sum(s.steps for s in self._slots)

    def send(self, calls: list[Call]) -> None:
        """Hand each Call to the process holding the fewest of its kind (HTTP calls
        and Python steps are balanced apart)."""
        batches: dict[int, list[Call]] = {}
        active = [i for i, s in enumerate(self._slots) if not s.draining]
        requests = {i: len(self._slots[i].held) - self._slots[i].steps for i in active}
        steps = {i: self._slots[i].steps for i in active}
        for call in calls:
            load = steps if call.provider == FN_PROVIDER else requests
            i = min(active, key=load.__getitem__)
            load[i] += 1
            batches.setdefault(i, []).append(call)
        for i, batch in batches.items():
            slot = self._slots[i]
            for call in batch:
                slot.held[call.custom_id] = call
                slot.steps += call.provider == FN_PROVIDER
            try:
                slot.calls.send(batch)
            except (OSError, ValueError):
                pass  # dying process: its sentinel fires and the Calls come back as lost

    def wait(self, timeout: float | None, extra: list[Connection] = ()) -> PoolEvents:
        """Block until an outcome, a death or an extra connection, or the timeout."""
        events = PoolEvents()
        by_handle: dict[object, tuple[str, int]] = {}
        for i, slot in enumerate(self._slots):
            by_handle[slot.outcomes] = ("out", i)
            by_handle[slot.process.sentinel] = ("dead", i)
        ready = wait(list(by_handle) + list(extra), timeout)
        dead: list[_Slot] = []
        slots = list(self._slots)
        for handle in ready:
            kind, i = by_handle.get(handle, ("extra", -1))
            if kind == "out":
                self._receive(slots[i], events)
            elif kind == "dead":
                dead.append(slots[i])
            else:
                events.woken.append(handle)  # type: ignore[arg-type]
        for slot in dead:
            if slot.draining:
                self._retire(slot, events)
            else:
                self._replace(self._slots.index(slot), events)
        for slot in self._slots:
            if slot.draining and not slot.held and not slot.stopping:
                slot.stopping = True
                with contextlib.suppress(OSError, ValueError):
                    slot.calls.send(None)
        return events

    def _receive(self, slot: _Slot, events: PoolEvents) -> None:
        try:
            while True:
                batch = slot.outcomes.recv()
                for outcome in batch:
                    if not outcome.custom_id and outcome.attempt == RECYCLE_ATTEMPT:
                        self._recycle(slot)
                        continue
                    call = slot.held.pop(outcome.custom_id, None)
                    if call is not None:
                        slot.steps -= call.provider == FN_PROVIDER
                        events.outcomes.append(outcome)
                if not slot.outcomes.poll(0):
                    return
        except (EOFError, OSError):
            return  # the sentinel reports the death

    def _recycle(self, slot: _Slot) -> None:
        """The process has too many Python steps stuck past their timeout: start its
        replacement now and let it finish what it holds."""
        if slot.draining:
            return
        slot.draining = True
        log.warning(
            "a worker process has Python steps still running long past their timeout: "
            "replacing it (it stops once its %d calls in flight are answered)",
            len(slot.held),
        )
        self._slots.append(self._spawn())

    def _retire(self, slot: _Slot, events: PoolEvents) -> None:
        """A draining process has exited: nothing to replace."""
        if slot.outcomes.poll(0):
            self._receive(slot, events)
        slot.process.join(timeout=1)
        events.lost.extend(slot.held.values())  # none, unless it died holding Calls
        for conn in (slot.calls, slot.outcomes):
            conn.close()
        self._slots.remove(slot)

    def _replace(self, i: int, events: PoolEvents) -> None:
        slot = self._slots[i]
        if slot.outcomes.poll(0):
            self._receive(slot, events)  # answers it managed to send before dying
        slot.process.join(timeout=1)
        events.lost.extend(slot.held.values())
        events.deaths += 1
        self.deaths += 1
        for conn in (slot.calls, slot.outcomes):
            conn.close()
        self._slots[i] = self._spawn()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ask every process to stop, then make sure they have. Processes that were
        never waited for hold no work: they are killed, not waited for."""
        with contextlib.suppress(WorkerStartError):
            self._join_launcher()
        for slot in self._slots:
            if not self._started:
                slot.process.kill()
                continue
            try:
                slot.calls.send(None)
            except (OSError, ValueError):
                pass
        for slot in self._slots:
            slot.process.join(timeout_s)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1)
            slot.calls.close()
            slot.outcomes.close()
        self._slots = []

    def kill(self) -> None:
        for slot in self._slots:
            if slot.process.is_alive():
                slot.process.kill()
        self._slots = []
