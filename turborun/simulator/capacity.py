"""Finite serving capacity for the simulator's self-hosted mode (a vLLM/llama.cpp-like server).

At most ``slots`` requests are in service at once; the others wait in a FIFO queue of at
most ``queue_limit`` (None: unbounded). A request in service holds its slot for its service
time (its latency), then its answer is delivered and the oldest waiting request enters
service, so N > slots outstanding requests are served at slots / service time and their
latency grows with the queue. A request whose client goes away is ``cancel``-ed: it leaves
the queue, or frees its slot at once.

Times are run with ``asyncio``'s ``call_later`` on the running loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

WAITING, SERVING, DONE = "waiting", "serving", "done"


class Job:
    """One admitted request: its service time, its state, and who to tell when it is done."""

    __slots__ = ("service_s", "state", "handle", "on_done")

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.state = WAITING
        self.handle: asyncio.TimerHandle | None = None
        self.on_done: Callable[[], None] | None = None  # set by the connection that owns it


class Capacity:
    """``slots`` servers in front of one FIFO queue; counts and peaks for the request log."""

    __slots__ = ("slots", "queue_limit", "in_service", "waiting", "queue", "peak_in_service",
                 "peak_waiting")  # fmt: skip

    def __init__(self, slots: int, queue_limit: int | None) -> None:
        self.slots = slots
        self.queue_limit = queue_limit
        self.in_service = 0
        self.waiting = 0  # live jobs in ``queue`` (cancelled ones stay there until popped)
        self.queue: deque[Job] = deque()
        self.peak_in_service = 0
        self.peak_waiting = 0

    def full(self) -> bool:
        """True when every slot is busy and the queue holds ``queue_limit`` requests."""
        return (
            self.in_service >= self.slots
            and self.queue_limit is not None
            and self.waiting >= self.queue_limit
        )

    def place(self, service_s: float) -> Job:
        """Start a job now if a slot is free, else queue it (the caller checked ``full``)."""
        job = Job(service_s)
        if self.in_service < self.slots:
            self._start(job)
        else:
            self.queue.append(job)
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: free the job's slot or its place in the queue."""
        if job.state == SERVING:
            if job.handle is not None:
                job.handle.cancel()
            job.state = DONE
            self.in_service -= 1
            self._promote()
        elif job.state == WAITING:
            job.state = DONE  # skipped when it reaches the head of the queue
            self.waiting -= 1

    def counts(self) -> dict[str, int]:
        return {
            "in_service": self.in_service,
            "waiting": self.waiting,
            "peak_in_service": self.peak_in_service,
            "peak_waiting": self.peak_waiting,
        }

    def _start(self, job: Job) -> None:
        job.state = SERVING
        self.in_service += 1
        self.peak_in_service = max(self.peak_in_service, self.in_service)
        job.handle = asyncio.get_running_loop().call_later(job.service_s, self._finish, job)

    def _finish(self, job: Job) -> None:
        job.state = DONE
        self.in_service -= 1
        self._promote()  # before delivering: a pipelined next request queues behind others
        if job.on_done is not None:
            job.on_done()

    def _promote(self) -> None:
        queue = self.queue
        while queue and self.in_service < self.slots:
            job = queue.popleft()
            if job.state == WAITING:
                self.waiting -= 1
                self._start(job)
