"""The supervisor: the one loop that owns all run state.

    tasks ─► Supervisor ─────── Calls ───────► WorkerPool (P processes, an event loop each)
             │ Graph (DAG, ranks)                    │ one request each, stateless
             │ ReadyQueue (per bucket)               │
             │ Budget (RPM/TPM per provider/model)   │
             │ InFlightTarget (rate × latency)       │
             │ Endpoints (base URLs, adaptive caps)  │
             │ Timers (retries)                      │
             │ Journal ◄── entries ◄── Outcomes ◄────┘
             └─► dependents released only after their parents' entries are committed

It blocks in exactly one place, ``WorkerPool.wait``, on the outcome pipes, the
worker sentinels and its own wakeup pipe, with a timeout that ends at the next
deadline: a retry timer, the moment a blocked bucket may spend again, a progress
refresh, the next in-flight target refresh while ready work waits, or the end of
the stop grace. Nothing polls and nothing sleeps.

Every outcome of one wake-up is journaled in a single transaction (a group
commit) before any dependent is released, so a dependent that ran proves its
parents' results are on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from turborun.account import account_problem
from turborun.accounting import Accounts
from turborun.budget import FIRST_PROBES, Bucket, Budget, retry_delay_s, should_retry
from turborun.checkpoint import Journal
from turborun.concurrency import BucketLoad, InFlightTarget, rate_demand
from turborun.config import Config
from turborun.endpoints import Endpoint, Endpoints
from turborun.entries import failure_entry, outcome_entry
from turborun.exceptions import JournalWriteError
from turborun.flex import fall_back, served_tier
from turborun.graph import READY, RUNNING, Graph, longest_path, topological_order
from turborun.latency import LatencyModel
from turborun.metrics import Metrics, ModelStats
from turborun.pool import WorkerPool
from turborun.pricing import Pricing
from turborun.records import (
    AUTH,
    CAPACITY,
    CONNECTION,
    FN_PROVIDER,
    TIMEOUT,
    Call,
    Outcome,
)
from turborun.resume import plan_resume
from turborun.scheduler import ReadyQueue, Timers, sort_key
from turborun.spend import Reservation, SpendCaps
from turborun.status import DEPENDENCY_FAILED, FAILED, SKIPPED, SUCCEEDED, WORKER_DIED, Status
from turborun.tasks import Task
from turborun.templates import render_body
from turborun.timeline import ModelSample, Timeline
from turborun.tokens import UNESTIMATED, TokenEstimator

log = logging.getLogger("turborun")

_FN_BUCKET = ("fn", "")
REQUEST_TOO_LARGE = "request_too_large"  # error code: more tokens than a minute allows
_MAX_DEATHS_PER_NODE = 3  # a node that took down this many workers fails instead
_MAX_WAIT_S = 1.0  # an upper bound on one wait, never a poll interval
_TARGET_REFRESH_S = 0.25  # how often the in-flight target is recomputed, at most
_REFRESH_SPACING = 20.0  # ... and no sooner than this many times its own cost later

DoneCallback = Callable[[str, dict[str, Any]], None]


@dataclasses.dataclass(slots=True)
class Progress:
    """What the progress display needs from the supervisor."""

    done: int
    total: int
    failed: int
    retrying: int
    rate_limited: int
    tokens_per_min: int
    tpm_limit: float | None
    cost_usd: float | None
    in_flight: int = 0  # requests and steps handed to workers, not yet answered
    target: int = 0  # requests the pool may hold in flight now
    paused: tuple[str, ...] = ()  # "provider/model: why it is not sending", per paused bucket
    cost_cap_usd: float | None = None  # --max-cost
    spent_usd: float | None = None  # against the cap: this run and earlier attempts of it
    projected_usd: float | None = None  # spent so far ÷ done × total
    eta_s: float | None = None  # the remaining work against the binding constraint


class _PerNode:
    """What the loop keeps per node: parallel lists indexed by node (a struct of arrays:
    the hot paths index a list, and ``add`` keeps every list the same length)."""

    __slots__ = (
        "attempts", "cost", "ready_at", "queued_s", "duration_s", "endpoint", "sent_at",
        "reservation",
    )  # fmt: skip

    def __init__(self) -> None:
        self.attempts: list[int] = []  # attempts sent (a call lost with a worker is given back)
        self.cost: list[int] = []  # tokens reserved by the attempt in flight
        self.ready_at: list[float] = []  # when it last became ready
        self.queued_s: list[float] = []  # ready → first sent (-1: not sent yet)
        self.duration_s: list[float] = []  # measured, for the critical-path lower bound
        self.endpoint: list[Endpoint | None] = []  # where the attempt in flight went
        self.sent_at: list[float] = []  # when the attempt in flight was handed over
        self.reservation: list[Reservation | None] = []  # held against the spend caps

    def add(self) -> None:
        self.attempts.append(0)
        self.cost.append(0)
        self.ready_at.append(0.0)
        self.queued_s.append(-1.0)
        self.duration_s.append(0.0)
        self.endpoint.append(None)
        self.sent_at.append(0.0)
        self.reservation.append(None)


class Supervisor:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        budget: Budget,
        pricing: Pricing,
        latency: LatencyModel,
        *,
        body_of: Callable[[Task], dict[str, Any]],
        pool: WorkerPool,
        target: InFlightTarget,
        endpoints: Endpoints,
        on_done: DoneCallback | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        spend: SpendCaps | None = None,
    ) -> None:
        self.config = config
        self.spend = spend if spend is not None and spend.active else None
        self._capped: dict[Hashable, str] = {}  # bucket → the cap that holds it now
        self._cap_logged: set[str] = set()  # caps already said to be reached
        self._account: dict[str, str] = {}  # provider → why it refused the account
        self._spend_warned = 0.0  # the highest fraction of the cap already warned about
        self.journal = journal
        self.budget = budget
        self.pricing = pricing
        self.latency = latency
        self.pool = pool
        self.target = target
        self.endpoints = endpoints
        self._loads: dict[Hashable, BucketLoad] = {}
        self._next_target = 0.0
        self._body_of = body_of
        self._estimator = TokenEstimator()  # for tasks loaded UNESTIMATED
        self._on_done = on_done
        self._on_progress = on_progress
        self._clock = clock
        self._rng = rng or random.Random()
        self.graph = Graph()
        self.tasks: list[Task] = []
        self.index: dict[str, int] = {}
        self._deps: list[tuple[int, ...]] = []
        self.ready = ReadyQueue(separate=(_FN_BUCKET,))
        self.timers = Timers()
        self.metrics = Metrics(workers=target.value)
        self.accounts = Accounts(self.metrics)  # the figures outcomes add up to
        self._nodes = _PerNode()
        self._deaths: dict[int, int] = {}
        self._capacity_hits: dict[int, int] = {}  # node -> flex capacity answers (flex.py)
        self._open = 0  # nodes not finished
        self._done = 0
        self._disabled: dict[str, str] = {}  # provider → why (401/403)
        self._paused: dict[tuple[str, str], str] = {}  # bucket → kind of pause logged
        self._given_up: dict[Hashable, tuple[str, str]] = {}  # bucket → (code, why)
        self.resumed: set[str] = set()
        self._inbox: queue.SimpleQueue[list[Task]] = queue.SimpleQueue()
        # The wakeup pipe: other threads (Runner.submit, a signal handler) write a byte to
        # end the loop's wait. Closed by close(), which the owner calls once they are gone;
        # a wake after that is dropped under the lock instead of writing to a descriptor
        # number the process may have given to another file since.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)  # drained until empty, never waited on
        self._wake_lock = threading.RLock()  # re-entrant: a signal handler may wake
        self._wake_open = True
        self._accepting = False  # Runner: more tasks may come
        self._stop_requested = threading.Event()
        self._stop_deadline: float | None = None
        self._next_progress = 0.0
        self._started = 0.0
        self.timeline: Timeline | None = None  # set by the caller: samples for the report

    # ---- input -------------------------------------------------------------

    def add_batch(self, tasks: list[Task], previous: dict[str, tuple[str, str]]) -> None:
        """Add a whole task set. ``previous`` maps custom_id → (status, fingerprint)
        of the journal being resumed: matching successes are not sent again."""
        first = len(self.tasks)
        self._extend(tasks)
        nodes = range(first, len(self.tasks))
        durations = [self._expected_s(self.tasks[n]) for n in nodes]
        ready = self.graph.add_many([self._deps[n] for n in nodes], durations)
        plan = plan_resume(self.graph.deps, self.tasks, previous, first)
        resumed = plan.resumed
        self.metrics.changed += plan.changed
        self.metrics.rerun_descendants += plan.rerun_descendants
        released: list[int] = []
        for node in topological_order(self.graph.deps):
            if node in resumed:
                released.extend(self.graph.succeed(node))
                self._finish_count(node, SUCCEEDED)
                self.resumed.add(self.tasks[node].custom_id)
        self.metrics.resumed += len(resumed)
        for node in ready + released:
            if node not in resumed and self.graph.state[node] == READY:
                self._push_ready(node)

    def submit(self, tasks: list[Task]) -> None:
        """Thread-safe: add tasks whose dependencies were submitted before (Runner)."""
        self._inbox.put(tasks)
        self.wake()

    def _take_inbox(self) -> None:
        while True:
            try:
                tasks = self._inbox.get(block=False)
            except queue.Empty:
                return
            for task in tasks:
                self._extend([task])
                node = len(self.tasks) - 1
                _, ready = self.graph.add(self._deps[node], self._expected_s(task))
                if ready:
                    self._push_ready(node)
                elif self.graph.state[node] == SKIPPED:
                    self._skip([node], "a dependency had already failed")

    def _extend(self, tasks: list[Task]) -> None:
        first = len(self.tasks)
        for offset, task in enumerate(tasks):  # index first: a file may name later lines
            self.index[task.custom_id] = first + offset
        for task in tasks:
            self._deps.append(tuple(self.index[d] for d in task.depends_on))
            self.tasks.append(task)
            self._nodes.add()
            self._open += 1
            self.metrics.total += 1

    def _expected_s(self, task: Task) -> float:
        if task.provider == FN_PROVIDER:
            return self.latency.expected_s(FN_PROVIDER, task.fn or "", 0)
        return self.latency.expected_s(task.provider, task.model, task.max_output_tokens)

    # ---- control from other threads -----------------------------------------

    def wake(self) -> None:
        with self._wake_lock:
            if not self._wake_open:
                return  # the run is over: nothing waits
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    def close(self) -> None:
        """Close the wakeup pipe; for the owner, after ``run`` has returned and the
        threads that may wake the loop are gone (a later ``wake`` does nothing)."""
        with self._wake_lock:
            if not self._wake_open:
                return
            self._wake_open = False
            os.close(self._wake_r)
            os.close(self._wake_w)

    def request_stop(self) -> None:
        """Stop dispatching; in-flight requests get ``config.grace_s`` to finish."""
        self._stop_requested.set()
        self.wake()

    def keep_accepting(self, accepting: bool) -> None:
        self._accepting = accepting
        self.wake()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    # ---- the loop ------------------------------------------------------------

    def run(self) -> Metrics:
        if not self._finished(self._clock()):
            self.pool.wait_started()  # a resume with nothing to do never waits for it
        self._started = self._clock()
        try:
            while True:
                self._take_inbox()
                now = self._clock()
                if self._stop_requested.is_set() and self._stop_deadline is None:
                    self._stop_deadline = now + self.config.grace_s
                    log.warning("stopping: %d requests in flight", self.pool.in_flight())
                if self._finished(now):
                    break
                for node in self.timers.pop_due(now):
                    self._push_ready(node)
                wake_at = self._dispatch(now) if self._stop_deadline is None else None
                self._report_progress(now)
                self._sample_timeline()
                events = self.pool.wait(self._timeout(now, wake_at), [self._wake_r])
                if events.woken:
                    self._drain_wakeups()
                self._absorb(events.outcomes)
                self._requeue_lost(events.lost)
        finally:
            self.metrics.makespan_s = self._clock() - self._started
            self._report_progress(self._clock(), force=True)
            self._sample_timeline(force=True)
            self.accounts.close(
                pending=self._open,
                critical_path_s=longest_path(self._deps, self._nodes.duration_s),
                peak_target=self.target.peak,
            )
        return self.metrics

    def _finished(self, now: float) -> bool:
        if self._stop_deadline is not None:
            if self.pool.in_flight() == 0 or now >= self._stop_deadline:
                self.metrics.interrupted = self._open > 0
                return True
            return False
        if self._open == 0 and not self._accepting and self._inbox.empty():
            return True
        held = self._held()
        if held is not None and self.pool.in_flight() == 0:
            self.metrics.stopped_by = held
            return True
        return False

    def _held(self) -> str | None:
        """Why the run cannot go on (a cap bound, a provider refused the account) when
        nothing else can move: None while anything may still be sent."""
        if not (self._capped or self._account) or len(self.timers):
            return None
        if self.ready.best() is not None or self.ready.next_alarm() is not None:
            return None
        if self.ready.count(_FN_BUCKET):
            return None
        reasons = [f"{which} is reached" for which in dict.fromkeys(self._capped.values())]
        if reasons and self.spend is not None:
            reasons[-1] += f" (${self.spend.spent_usd:.4f} spent)"
        return "; ".join([*reasons, *dict.fromkeys(self._account.values())])

    def _timeout(self, now: float, wake_at: float | None) -> float:
        deadlines = [now + _MAX_WAIT_S]
        if wake_at is not None:
            deadlines.append(wake_at)
        due = self.timers.next_due()
        if due is not None and self._stop_deadline is None:
            deadlines.append(due)
        if self._on_progress is not None:
            deadlines.append(self._next_progress)
        if len(self.ready) and self.target.fixed is None:
            deadlines.append(self._next_target)  # the target may grow: ready work waits for it
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        return max(0.0, min(deadlines) - now)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # ---- dispatch ---------------------------------------------------------------

    def _bucket_key(self, task: Task) -> tuple[str, str]:
        return _FN_BUCKET if task.provider == FN_PROVIDER else (task.provider, task.model)

    def _bucket(self, key: Hashable) -> Bucket | None:
        if key == _FN_BUCKET:
            return None
        provider, model = key  # type: ignore[misc]
        return self.budget.bucket(provider, model)

    def _push_ready(self, node: int) -> None:
        task = self.tasks[node]
        if task.prompt_tokens == UNESTIMATED:
            task = self.tasks[node] = self._counted(task)
        self.graph.mark_ready(node)
        self._nodes.ready_at[node] = self._clock()
        tokens = task.prompt_tokens + task.max_output_tokens
        key = sort_key(
            self.config.strategy, task.priority, self.graph.rank_s[node], tokens, task.index
        )
        self.ready.push(self._bucket_key(task), key, node)

    def _counted(self, task: Task) -> Task:
        """The task with its prompt tokens counted (tasks loaded for a resume)."""
        try:
            body = self._body_of(task)
            tokens = self._estimator.estimate(task.provider, task.url, body)[0]
        except Exception:  # the body was read at load; never let a count stop the run
            log.exception("cannot count the prompt tokens of %s", task.custom_id)
            tokens = 0
        return dataclasses.replace(task, prompt_tokens=tokens)

    def _dispatch(self, now: float) -> float | None:
        """Send as many ready nodes as the in-flight target, the endpoints and the budgets
        allow; return the earliest moment a blocked bucket may spend again (None:
        nothing is waiting on a budget). Python steps go first, up to the step threads
        free (they have no budget); then the best head among the buckets that may spend,
        each blocked bucket set aside until when it may (ReadyQueue), so a choice costs
        O(log buckets) however many models the run has."""
        self._refresh_target(now)
        steps = self.pool.steps_in_flight()
        room = self.target.value - (self.pool.in_flight() - steps)
        step_room = self.pool.fn_slots - steps
        calls: list[Call] = []
        while step_room > 0 and self.ready.count(_FN_BUCKET):
            node = self.ready.pop(_FN_BUCKET)
            if self.graph.state[node] == READY:
                call = self._prepare(node, _FN_BUCKET, 0, now, None)
                if call is not None:
                    calls.append(call)
                    step_room -= 1
        self.ready.wake_due(now)
        while room > 0:
            head = self.ready.best()
            if head is None:
                break
            _, node, bucket_key = head
            if self.graph.state[node] != READY:
                self.ready.pop(bucket_key)  # skipped while it waited
                continue
            cost = self._reserve_cost(bucket_key, node)
            refusal = self._refusal(bucket_key, node, cost)
            if refusal is not None:
                self.ready.pop(bucket_key)
                code, message = refusal
                attempts = self._nodes.attempts[node]
                self._finalize([(node, failure_entry(self.tasks[node], code, message,
                                                     attempts=attempts))])  # fmt: skip
                continue
            provider = self.tasks[node].provider
            if provider in self._account:
                self.ready.sleep(bucket_key, math.inf, "account")  # pending until a resume
                continue
            at, endpoint, reason = self._may_send(bucket_key, node, cost, now)
            if at > now:
                self.ready.sleep(bucket_key, at, reason)
                continue
            if self.spend is not None and not self._reserve(bucket_key, node):
                continue
            self.ready.pop(bucket_key)
            call = self._prepare(node, bucket_key, cost, now, endpoint)
            if call is not None:
                calls.append(call)
                room -= 1
        if calls:
            self.pool.send(calls)
            in_flight = self.pool.in_flight()
            self.metrics.peak_in_flight = max(self.metrics.peak_in_flight, in_flight)
        return self.ready.next_alarm() if room > 0 else None

    def _reserve(self, bucket_key: Hashable, node: int) -> bool:
        """Hold the node's worst-case cost against the caps (turborun/spend.py). False
        when it would pass one: its model waits until an answer gives back part of a
        reservation; the run ends (the rest pending) once nothing is in flight and
        nothing fits."""
        assert self.spend is not None
        task = self.tasks[node]
        r = self.spend.worst_case(
            task.provider, task.model, task.prompt_tokens, task.max_output_tokens
        )
        refused = self.spend.why_not(r)
        if refused is None:
            self._nodes.reservation[node] = r
            return True
        _, which = refused
        if which not in self._cap_logged:
            self._cap_logged.add(which)
            log.warning(
                "%s is reached for %s/%s: spent $%.4f, $%.4f held by %d requests in flight",
                which, *r.model, self.spend.spent_usd, self.spend.reserved_usd,
                self.pool.in_flight(),
            )  # fmt: skip
        self._capped[bucket_key] = which
        self.ready.sleep(bucket_key, math.inf, "cap")
        return False

    def _refusal(self, bucket_key: Hashable, node: int, cost: int) -> tuple[str, str] | None:
        """(error code, message) when the node can never be sent: its provider refused
        our key, its server never answered, or it needs more tokens than a minute allows."""
        task = self.tasks[node]
        if task.provider in self._disabled:
            return AUTH, self._disabled[task.provider]
        given_up = self._given_up.get(bucket_key)
        if given_up is not None:
            return given_up
        bucket = self._bucket(bucket_key)
        too_large = None if bucket is None else bucket.too_large(cost)
        return None if too_large is None else (REQUEST_TOO_LARGE, too_large)

    def _may_send(
        self, bucket_key: Hashable, node: int, cost: int, now: float
    ) -> tuple[float, Endpoint | None, str]:
        """(when the node's bucket may spend ``cost``, the endpoint to send it to, what an
        infinite wait waits for: "outcome" of the bucket or room at an "endpoint")."""
        bucket = self._bucket(bucket_key)
        task = self.tasks[node]
        if bucket is None:
            return now, None, ""
        at = bucket.ready_at(cost)
        if at > now:
            return at, None, "outcome"
        endpoint = self.endpoints.choose(task.provider, task.model, _unlimited(bucket), now)
        if endpoint is None:
            return self.endpoints.ready_at(task.provider, task.model), None, "endpoint"
        return now, endpoint, ""

    def _refresh_target(self, now: float) -> None:
        """Little's law per bucket with work (concurrency.py), summed into the target."""
        if now < self._next_target:
            return
        started = time.perf_counter()
        self.ready.wake_waiting()  # a safety net: buckets waiting for an event look again
        demands = []
        for bucket in self.budget.buckets():
            key = (bucket.provider, bucket.model)
            pending = bucket.in_flight + self.ready.count(key)
            if pending <= 0:
                continue
            demands.append(min(float(pending), self._demand(bucket, now)))
        self.target.update(demands)
        # O(buckets): with thousands of models busy at once (~50 µs each) a refresh every
        # 0.25 s took 40 % of the loop; spacing refreshes by 20 × their cost caps it at 5 %.
        took_s = time.perf_counter() - started
        self._next_target = now + max(_TARGET_REFRESH_S, _REFRESH_SPACING * took_s)

    def _demand(self, bucket: Bucket, now: float) -> float:
        if bucket.state() == "learning":
            return max(bucket.in_flight + 1.0, FIRST_PROBES)
        endpoints = self.endpoints
        if bucket.rpm is None and bucket.tpm is None:
            return endpoints.allowance(bucket.provider, bucket.model, adaptive=True)
        load = self._loads.get((bucket.provider, bucket.model)) or BucketLoad()
        output = int(load.tokens_per_request)
        expected = self.latency.expected_s(bucket.provider, bucket.model, output)
        latency = load.latency_s(now, expected)
        demand = rate_demand(bucket.rpm, bucket.tpm, load.tokens_per_request, latency)
        return min(demand, endpoints.allowance(bucket.provider, bucket.model, adaptive=False))

    def _reserve_cost(self, bucket_key: Hashable, node: int) -> int:
        bucket = self._bucket(bucket_key)
        if bucket is None:
            return 0
        task = self.tasks[node]
        return bucket.cost(task.prompt_tokens, task.max_output_tokens)

    def _prepare(
        self, node: int, bucket_key: Hashable, cost: int, now: float, endpoint: Endpoint | None
    ) -> Call | None:
        task = self.tasks[node]
        if task.provider in self._disabled:
            self._finalize(
                [
                    (
                        node,
                        failure_entry(
                            task,
                            AUTH,
                            self._disabled[task.provider],
                            attempts=self._nodes.attempts[node],
                        ),
                    )
                ]
            )
            return None
        try:
            body = self._render(task)
            fallback = self.config.flex_fallback
            if fallback and self._capacity_hits.get(node, 0) >= fallback:
                body = fall_back(task.provider, body)  # --flex-fallback: the standard tier
        except Exception as exc:  # a body that cannot be read back or rendered
            entry = failure_entry(
                task,
                "render_error",
                f"{type(exc).__name__}: {exc}",
                attempts=self._nodes.attempts[node],
            )
            self._finalize([(node, entry)])
            return None
        bucket = self._bucket(bucket_key)
        reservation = self._nodes.reservation[node]
        if reservation is not None and self.spend is not None:
            self.spend.reserve(reservation)
        if bucket is not None:
            bucket.spend(cost)
            self._load(bucket_key).sent(now, cost)
            if self.timeline is not None:
                self.timeline.sent(bucket_key, cost)
        if endpoint is not None:
            self.endpoints.sent(endpoint, now)
        self._nodes.endpoint[node] = endpoint
        self._nodes.sent_at[node] = now
        self._nodes.cost[node] = cost
        self._nodes.attempts[node] += 1
        if self._nodes.queued_s[node] < 0:
            self._nodes.queued_s[node] = now - self._nodes.ready_at[node]
        self.graph.mark_running(node)
        return Call(
            custom_id=task.custom_id,
            attempt=self._nodes.attempts[node],
            provider=task.provider,
            method=task.method,
            url=task.url,
            body=body,
            fn=task.fn,
            timeout_s=self.config.timeout_s,
            base_url=None if endpoint is None else endpoint.url,
            resources=task.resources,  # --backend ray places such steps
        )

    def _load(self, bucket_key: Hashable) -> BucketLoad:
        load = self._loads.get(bucket_key)
        if load is None:
            load = self._loads[bucket_key] = BucketLoad()
        return load

    def _render(self, task: Task) -> bytes:
        if task.provider == FN_PROVIDER:
            inputs = {}
            for dep in task.depends_on:
                entry = self.journal.get(dep) or {}
                inputs[dep] = {"text": entry.get("text"), "value": entry.get("body")}
            return orjson.dumps(inputs)
        body = self._body_of(task)
        if task.templated:
            outputs = {}
            for dep in task.depends_on:
                entry = self.journal.get(dep) or {}
                outputs[dep] = entry.get("text") or ""
            body = render_body(body, outputs)
        return orjson.dumps(body)

    # ---- outcomes ---------------------------------------------------------------

    def _absorb(self, outcomes: list[Outcome]) -> None:
        finished: list[tuple[int, dict[str, Any]]] = []
        now = self._clock()
        for outcome in outcomes:
            node = self.index.get(outcome.custom_id)
            if node is None or self.graph.state[node] != RUNNING:
                continue
            entry = self._settle(node, outcome, now)
            if entry is not None:
                finished.append((node, entry))
        if finished:
            self._finalize(finished)

    def _settle(self, node: int, outcome: Outcome, now: float) -> dict[str, Any] | None:
        """Account one outcome; return the node's entry if it is finished."""
        task = self.tasks[node]
        self.accounts.model(_model_key(task))  # listed in the summary, even if refused
        bucket_key = self._bucket_key(task)
        bucket = self._bucket(bucket_key)
        if not outcome.ok and task.provider != FN_PROVIDER:
            problem = account_problem(outcome.status_code, outcome.body)
            if problem is not None:
                self._refused_account(node, problem, outcome)
                return None
        quota_parked = False
        if bucket is not None:
            quota_parked = bucket.settle(outcome, self._nodes.cost[node], task.prompt_tokens)
            if outcome.ok:
                self._load(bucket_key).observe(outcome.latency_s)
            self.ready.wake(bucket_key)  # its budget or breaker may have changed
        endpoint = self._nodes.endpoint[node]
        if endpoint is not None:
            self.endpoints.settle(endpoint, outcome, self._nodes.sent_at[node], now)
            self.ready.wake_waiting("endpoint")
        cost = self.pricing.cost_usd(
            task.provider,
            task.model,
            outcome.input_tokens,
            outcome.output_tokens,
            outcome.cached_tokens or 0,
            tier=served_tier(outcome.body),  # flex answers at flex prices
        )
        self.accounts.attempt(_model_key(task), outcome, cost)
        self._settle_spend(node, outcome, cost)
        if outcome.error_kind == CAPACITY:
            self._capacity_hits[node] = self._capacity_hits.get(node, 0) + 1
        self._nodes.duration_s[node] = outcome.latency_s
        if outcome.ok:
            self.latency.observe(
                task.provider,
                task.model or task.fn or "",
                task.max_output_tokens,
                outcome.latency_s,
            )
            return self._entry(node, outcome, cost)
        if outcome.error_kind == AUTH:
            self._disable(task.provider, outcome)
        elif quota_parked:
            self._nodes.attempts[node] -= 1  # the quota, not the request, was at fault
            self._push_ready(node)
            return None
        elif bucket is not None and (bucket.unreachable or bucket_key in self._given_up):
            code, message = self._give_up(bucket_key, bucket, outcome, endpoint)
            return failure_entry(task, code, message, attempts=self._nodes.attempts[node])
        elif should_retry(outcome, self._nodes.attempts[node], self.config.max_retries):
            escalate = bucket is None or not bucket.healthy()
            delay = retry_delay_s(
                self._nodes.attempts[node], outcome.retry_after_s, self._rng, escalate=escalate
            )
            self.accounts.retry(_model_key(task))
            self.graph.mark_ready(node)
            self.timers.add(now + delay, node)
            return None
        return self._entry(node, outcome, cost)

    def _settle_spend(self, node: int, outcome: Outcome, cost: float | None) -> None:
        """Replace the node's reservation by what its answer cost. An answer without
        usage, a timeout or a dropped connection (the provider may have done the work)
        keeps the whole reservation as spent; other errors cost nothing."""
        reservation = self._nodes.reservation[node]
        self._nodes.reservation[node] = None
        if reservation is None or self.spend is None:
            return
        if outcome.error_kind in (TIMEOUT, CONNECTION):
            usd, tokens = None, None
        elif outcome.ok:
            usd = cost
            known = outcome.input_tokens is not None and outcome.output_tokens is not None
            tokens = (outcome.input_tokens or 0) + (outcome.output_tokens or 0) if known else None
        else:
            usd = cost or 0.0
            tokens = (outcome.input_tokens or 0) + (outcome.output_tokens or 0)
        self.spend.settle(reservation, usd, tokens)
        if self._capped:
            self._capped.clear()  # part of a reservation came back: each model tries again
            self.ready.wake_waiting("cap")
        fraction = self.spend.fraction()
        for mark in (0.5, 0.8):
            if fraction is not None and fraction >= mark > self._spend_warned:
                self._spend_warned = mark
                log.warning(
                    "%d %% of the spend cap used ($%.4f spent)", round(mark * 100),
                    self.spend.spent_usd,
                )  # fmt: skip

    def _give_back(self, node: int, *, billed: bool) -> None:
        """Undo what the node's attempt took (its bucket's budget, its endpoint's slot,
        the attempt itself) when the attempt was no fault of the request: a refused
        account, a dead worker process. ``billed``: the provider may have done the work,
        so its spend reservation stays spent (a cap holds whatever was billed)."""
        bucket_key = self._bucket_key(self.tasks[node])
        bucket = self._bucket(bucket_key)
        if bucket is not None:
            bucket.release(self._nodes.cost[node])
            self.ready.wake(bucket_key)
        endpoint = self._nodes.endpoint[node]
        if endpoint is not None:
            self.endpoints.release(endpoint)
            self.ready.wake_waiting("endpoint")
        reservation = self._nodes.reservation[node]
        self._nodes.reservation[node] = None
        if reservation is not None and self.spend is not None:
            if billed:
                self.spend.settle(reservation, None, None)
            else:
                self.spend.release(reservation)
        self._nodes.attempts[node] -= 1

    def _refused_account(self, node: int, problem: str, outcome: Outcome) -> None:
        """The provider says the account cannot pay: nothing more goes to it in this run,
        the task waits (pending) for a resume once the account is fixed, and nothing of
        the answer counts against the model's limits or health."""
        task = self.tasks[node]
        self._give_back(node, billed=False)
        if task.provider not in self._account:
            why = (
                f"{task.provider} refused the account (HTTP {outcome.status_code}: {problem}); "
                f"its tasks stay pending: fix the account (credit, quota, spend limit), "
                "then resume"
            )
            self._account[task.provider] = why
            log.error("%s", why)
        self._push_ready(node)

    def _entry(self, node: int, outcome: Outcome, cost: float | None) -> dict[str, Any]:
        endpoint = self._nodes.endpoint[node]
        return outcome_entry(
            self.tasks[node],
            outcome,
            attempts=self._nodes.attempts[node],
            queued_s=self._nodes.queued_s[node],
            cost_usd=cost,
            endpoint=None if endpoint is None else endpoint.label,
        )

    def _give_up(
        self, bucket_key: Hashable, bucket: Bucket, outcome: Outcome, endpoint: Endpoint | None
    ) -> tuple[str, str]:
        """A bucket whose server never answered (Bucket.unreachable): its queued and
        retrying tasks fail now, and so does each of its tasks that comes later."""
        given_up = self._given_up.get(bucket_key)
        if given_up is not None:
            return given_up
        where = "" if endpoint is None else f" ({endpoint.label})"
        message = f"{bucket.provider}/{bucket.model}{where}: {bucket.unreachable}"
        code = outcome.error_kind or "connection"
        self._given_up[bucket_key] = given_up = (code, message)
        nodes = self.ready.drain(bucket_key)
        nodes += self.timers.remove(lambda n: self._bucket_key(self.tasks[n]) == bucket_key)
        failed = [
            (n, failure_entry(self.tasks[n], code, message, attempts=self._nodes.attempts[n]))
            for n in dict.fromkeys(nodes)
            if self.graph.state[n] == READY
        ]
        log.error("%s; %d more of its tasks fail with it", message, len(failed))
        if failed:
            self._finalize(failed)
        return given_up

    def _disable(self, provider: str, outcome: Outcome) -> None:
        if provider in self._disabled:
            return
        why = (
            f"{provider} refused our API key (HTTP {outcome.status_code}): "
            f"{outcome.error_message or ''}; no more requests go to {provider}"
        )
        self._disabled[provider] = why
        log.error("%s", why)
        self.ready.wake_all()  # its queued tasks fail when they come up

    def _requeue_lost(self, lost: list[Call]) -> None:
        """Calls held by a worker process that died go back to the ready queue."""
        if lost:
            log.warning("a worker process died holding %d calls; re-queued", len(lost))
        failed = []
        for call in lost:
            node = self.index[call.custom_id]
            if self.graph.state[node] != RUNNING:
                continue
            # The pool's failure, not the provider's; but the request may have reached it.
            self._give_back(node, billed=True)
            self._deaths[node] = self._deaths.get(node, 0) + 1
            if self._deaths[node] >= _MAX_DEATHS_PER_NODE:
                message = f"worker processes died {self._deaths[node]} times running this task"
                failed.append(
                    (
                        node,
                        failure_entry(
                            self.tasks[node],
                            WORKER_DIED,
                            message,
                            attempts=self._nodes.attempts[node],
                        ),
                    )
                )
            else:
                self._push_ready(node)
        if failed:
            self._finalize(failed)

    # ---- finishing nodes ----------------------------------------------------------

    def _finalize(self, finished: list[tuple[int, dict[str, Any]]]) -> None:
        """Journal (one transaction), then release or skip dependents."""
        if not self._journaled([(self.tasks[n].custom_id, e) for n, e in finished]):
            return  # not done: the nodes stay pending for --resume
        skipped: list[int] = []
        for node, entry in finished:
            self._finish_count(node, entry["status"])
            self._notify(node, entry)
            if entry["status"] == SUCCEEDED:
                for child in self.graph.succeed(node):
                    self._push_ready(child)
            else:
                skipped.extend(self.graph.fail(node))
        if skipped:
            self._skip(skipped, "a dependency failed")

    def _skip(self, nodes: list[int], why: str) -> None:
        entries = []
        for node in nodes:
            task = self.tasks[node]
            failed = [
                d for d in task.depends_on if self.graph.state[self.index[d]] in (FAILED, SKIPPED)
            ]
            message = f"{why}: {', '.join(failed[:5])}" if failed else why
            entries.append(
                (node, failure_entry(task, DEPENDENCY_FAILED, message, attempts=0, status=SKIPPED))
            )
        if not self._journaled([(self.tasks[n].custom_id, e) for n, e in entries]):
            return
        for node, entry in entries:
            self._finish_count(node, SKIPPED)
            self._notify(node, entry)

    def _journaled(self, entries: list[tuple[str, dict[str, Any]]]) -> bool:
        """Commit ``entries``; a failed commit (a full disk) stops dispatching. The
        journal logs why and keeps the error for the caller; later commits still try."""
        try:
            self.journal.record_many(entries)
        except JournalWriteError:
            self.request_stop()
            return False
        return True

    def _finish_count(self, node: int, status: Status) -> None:
        self._open -= 1
        self._done += 1
        sent = self._nodes.attempts[node] > 0
        self.accounts.finished(_model_key(self.tasks[node]), status, sent=sent)

    def _notify(self, node: int, entry: dict[str, Any]) -> None:
        if self._on_done is not None:
            try:
                self._on_done(self.tasks[node].custom_id, entry)
            except Exception:  # a user's callback must not take the run down
                log.exception("completion callback failed")

    # ---- reporting ------------------------------------------------------------------

    def _report_progress(self, now: float, force: bool = False) -> None:
        """Every 0.5 s: log new pauses (with or without a display), then tell the display."""
        if now < self._next_progress and not force:
            return
        self._next_progress = now + 0.5
        buckets = self.budget.buckets()
        paused = self._pauses(buckets)
        if self._on_progress is None:
            return
        limits = [b.tpm for b in buckets if b.tpm]
        self._on_progress(
            Progress(
                done=self._done,
                total=self.metrics.total,
                failed=self.metrics.failed,
                retrying=len(self.timers),
                rate_limited=self.metrics.rate_limited,
                tokens_per_min=sum(b.tokens_last_minute() for b in buckets),
                tpm_limit=sum(limits) if limits else None,
                cost_usd=self.metrics.cost_usd,
                in_flight=self.pool.in_flight(),
                target=self.target.value,
                paused=paused,
                cost_cap_usd=None if self.spend is None else self.spend.max_cost_usd,
                spent_usd=None if self.spend is None else self.spend.spent_usd,
                projected_usd=self._projected_usd(),
                eta_s=self._eta_s(buckets),
            )
        )

    def _projected_usd(self) -> float | None:
        """What the whole run will have cost at this run's cost per finished task."""
        cost, done = self.metrics.cost_usd, self._done - self.metrics.resumed
        if cost is None or done <= 0:
            return None
        earlier = 0.0 if self.spend is None else self.spend.spent_usd - cost
        return earlier + cost / done * (self.metrics.total - self.metrics.resumed)

    def _eta_s(self, buckets: list[Bucket]) -> float | None:
        """Time left from the remaining work against what binds it: per model, its
        requests left over its request rate (RPM, or TPM over tokens per request); all
        of them, over what the in-flight target holds at the latencies seen; the longest
        chain of work left. None before anything is known."""
        bounds = []
        for bucket in buckets:
            key = (bucket.provider, bucket.model)
            queued = self.ready.count(key)
            if not queued:
                continue
            rates = []
            if bucket.rpm:
                rates.append(bucket.rpm / 60.0)
            load = self._loads.get(key)
            if bucket.tpm and load is not None and load.tokens_per_request > 0:
                rates.append(bucket.tpm / 60.0 / load.tokens_per_request)
            if rates:
                bounds.append(queued / min(rates))
        m = self.metrics
        if m.latencies_s and self.target.value:  # mean attempt latency so far
            bounds.append(self._open * (m.busy_s / len(m.latencies_s)) / self.target.value)
        heads = self.ready.heads()
        if heads:
            bounds.append(max(self.graph.rank_s[node] for _, node, _ in heads))
        return max(bounds) if bounds else None

    def _pauses(self, buckets: list[Bucket]) -> tuple[str, ...]:
        """Why each paused bucket is not sending; every new reason goes to the run log."""
        paused = []
        for bucket in buckets:
            reason = bucket.pause_reason()
            key = (bucket.provider, bucket.model)
            if reason is None:
                self._paused.pop(key, None)
                continue
            text = f"{bucket.provider}/{bucket.model}: {reason}"
            paused.append(text)
            kind = re.sub(r"[\d.]+", "#", reason.split(":", 1)[0])
            if self._paused.get(key) != kind:
                self._paused[key] = kind
                # a short hold after a 429 is ordinary: the run log only
                log.log(logging.INFO if kind.startswith("held") else logging.WARNING, "%s", text)
        return tuple(paused)

    def _sample_timeline(self, force: bool = False) -> None:
        """About once a second (the loop wakes at least that often): what the report plots
        over time (turborun/timeline.py)."""
        timeline = self.timeline
        if timeline is None or not (force or timeline.due()):
            return
        limits = {(b.provider, b.model): b for b in self.budget.buckets()}
        models = []
        models_seen = self.accounts.models
        for key in sorted(models_seen.keys() | limits.keys()):
            stats = models_seen.get(key) or ModelStats(*key)
            bucket = limits.get(key)
            models.append(
                ModelSample(
                    stats.provider,
                    stats.model,
                    answered=stats.requests,
                    tokens=stats.input_tokens + stats.output_tokens,
                    rate_limited=stats.rate_limited,
                    retries=stats.retries,
                    rpm=None if bucket is None else bucket.rpm,
                    tpm=None if bucket is None else bucket.tpm,
                    in_flight=0 if bucket is None else bucket.in_flight,
                )
            )
        timeline.sample(
            in_flight=self.pool.in_flight(),
            target=self.target.value,
            ready=len(self.ready),
            retrying=len(self.timers),
            done=self._done,
            models=models,
        )


def _model_key(task: Task) -> tuple[str, str]:
    """Whose figures a task's attempts add to: its model, or its step's function."""
    return (task.provider, task.model or task.fn or "")


def _unlimited(bucket: Bucket) -> bool:
    """No rate limit known and none to learn: a server that sends no rate-limit
    headers, whose endpoints' adaptive limits bound what is in flight."""
    return bucket.rpm is None and bucket.tpm is None and bucket.state() != "learning"
