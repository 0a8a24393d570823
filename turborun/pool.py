"""P worker processes × T threads, each process with its own channel.

Why not multiprocessing.Pool or one shared Queue: a process SIGKILLed while
using a shared queue stalls the survivors, and Pool hangs on a dead worker
(../shared/FACTS.md). Here every process has its own pipes; the pool knows
which Calls each holds and learns of a death through ``Process.sentinel``: the
dead process's Calls come back to the caller and a replacement starts.

Each process holds at most as many Calls as it has threads. CPython's executor
queues one extra Call to keep threads busy; here that extra Call costs more than
it saves: with few threads per process it is picked by the next free thread
ahead of a critical-path node that becomes ready a moment later (measured by
scripts/bench_dag.py: 4 workers, 56.7 units with one extra against 52.x
without), while the supervisor's round trip it would hide is well under a
millisecond. Anything not yet handed over can still be reordered, delayed or
cancelled.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from turborun.exceptions import WorkerStartError
from turborun.records import Call, Outcome
from turborun.worker import WorkerSettings, worker_main

_PRELOAD = ("turborun.worker", "turborun.providers", "openai", "groq")
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
        threads: int,
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
        self.threads = threads
        self._settings = settings
        self._slots: list[_Slot] = []
        self._started = False  # every process said hello
        self._launcher: threading.Thread | None = None
        self._launch_error: BaseException | None = None
        self.deaths = 0

    @property
    def capacity(self) -> int:
        return self._processes * self.threads

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
        return sum(len(s.held) for s in self._slots)

    def free(self) -> int:
        return sum(self.threads - len(s.held) for s in self._slots)

    def send(self, calls: list[Call]) -> None:
        """Hand Calls to the processes with the most room. The caller never sends
        more than ``free()``."""
        batches: dict[int, list[Call]] = {}
        room = [self.threads - len(s.held) for s in self._slots]
        for call in calls:
            i = max(range(len(room)), key=room.__getitem__)
            room[i] -= 1
            batches.setdefault(i, []).append(call)
        for i, batch in batches.items():
            slot = self._slots[i]
            for call in batch:
                slot.held[call.custom_id] = call
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
        dead: list[int] = []
        for handle in ready:
            kind, i = by_handle.get(handle, ("extra", -1))
            if kind == "out":
                self._receive(self._slots[i], events)
            elif kind == "dead":
                dead.append(i)
            else:
                events.woken.append(handle)  # type: ignore[arg-type]
        for i in dead:
            self._replace(i, events)
        return events

    def _receive(self, slot: _Slot, events: PoolEvents) -> None:
        try:
            while True:
                batch = slot.outcomes.recv()
                for outcome in batch:
                    if slot.held.pop(outcome.custom_id, None) is not None:
                        events.outcomes.append(outcome)
                if not slot.outcomes.poll(0):
                    return
        except (EOFError, OSError):
            return  # the sentinel reports the death

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
