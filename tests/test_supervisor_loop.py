"""The supervisor's loop on a fake pool and a fake clock: each decision of the loop
(who goes after a 429, when a retry goes, what an auth failure disables, what a lost
call costs, when the stop grace ends a run) checked in milliseconds, no processes.

The fake pool answers each Call with what a script says (after a simulated latency);
its ``wait`` moves the fake clock forward to the next answer or to the end of the
timeout the supervisor asked for, so the run is a deterministic discrete-event
simulation of the real loop.
"""

from __future__ import annotations

import os
import random
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from turborun.budget import Budget
from turborun.checkpoint import Journal
from turborun.concurrency import InFlightTarget
from turborun.config import Config, Limit
from turborun.endpoints import Endpoints
from turborun.latency import LatencyModel
from turborun.pool import PoolEvents
from turborun.pricing import Pricing
from turborun.records import AUTH, RATE_LIMITED, SERVER_ERROR, Call, Outcome
from turborun.supervisor import Supervisor
from turborun.tasks import Task, tasks_from_dicts
from turborun.tokens import TokenEstimator

# What the script returns for one call: (latency_s, outcome) or LOST (the worker
# process holding the call dies after latency_s).
LOST = "lost"
Answer = tuple[float, "Outcome | str"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sent:
    call: Call
    at: float


@dataclass
class FakePool:
    clock: FakeClock
    script: Callable[[Call], Answer]
    fn_slots: int = 4
    sent: list[Sent] = field(default_factory=list)
    _pending: list[tuple[float, int, Call, Outcome | str]] = field(default_factory=list)
    _seq: int = 0

    def wait_started(self, timeout_s: float = 120.0) -> None:
        pass

    def in_flight(self) -> int:
        return len(self._pending)

    def steps_in_flight(self) -> int:
        return sum(1 for *_, call, _ in self._pending if call.provider == "fn")

    def send(self, calls: list[Call]) -> None:
        for call in calls:
            self.sent.append(Sent(call, self.clock.now))
            latency_s, answer = self.script(call)
            self._seq += 1
            self._pending.append((self.clock.now + latency_s, self._seq, call, answer))

    def wait(self, timeout: float | None, extra: list[Any] = ()) -> PoolEvents:
        events = PoolEvents()
        woken, _, _ = select.select(list(extra), [], [], 0)  # the supervisor's wakeup pipe
        if woken:
            events.woken.extend(woken)
            return events
        horizon = self.clock.now + (timeout if timeout is not None else 3600.0)
        due = min((p[0] for p in self._pending), default=None)
        if due is None or due > horizon:
            self.clock.now = horizon
            return events
        self.clock.now = max(self.clock.now, due)
        keep = []
        for at, seq, call, answer in sorted(self._pending, key=lambda p: (p[0], p[1])):
            if at > self.clock.now:
                keep.append((at, seq, call, answer))
            elif answer == LOST:
                events.lost.append(call)
                events.deaths += 1
            else:
                assert isinstance(answer, Outcome)
                events.outcomes.append(answer)
        self._pending = keep
        return events

    def of(self, custom_id: str) -> list[Sent]:
        return [s for s in self.sent if s.call.custom_id == custom_id]


def ok(call: Call, latency_s: float = 0.2) -> Answer:
    return latency_s, Outcome(
        call.custom_id,
        call.attempt,
        200,
        None,
        None,
        None,
        body=b'{"choices":[{"message":{"content":"fine"}}]}',
        text="fine",
        input_tokens=10,
        output_tokens=5,
        latency_s=latency_s,
    )


def error(
    call: Call,
    kind: str,
    status: int | None,
    *,
    latency_s: float = 0.05,
    retry_after_s: float | None = None,
) -> Answer:
    return latency_s, Outcome(
        call.custom_id,
        call.attempt,
        status,
        kind,
        f"{kind} ({status})",
        retry_after_s,
        latency_s=latency_s,
    )


def task(
    custom_id: str,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    depends_on: tuple[str, ...] = (),
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "custom_id": custom_id,
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": custom_id}],
            "max_tokens": 10,
        },
    }
    if provider != "openai":
        item["provider"] = provider
    if depends_on:
        item["depends_on"] = list(depends_on)
    return item


@dataclass
class Run:
    supervisor: Supervisor
    pool: FakePool
    clock: FakeClock
    journal: Journal

    def entry(self, custom_id: str) -> dict[str, Any]:
        found = self.journal.get(custom_id)
        assert found is not None, custom_id
        return found


def run(
    tmp_path: Path,
    items: list[dict[str, Any]],
    script: Callable[[Call], Answer],
    *,
    limit: Limit | None = None,
    workers: int = 8,
    before: Callable[[Run], None] | None = None,
    **config: Any,
) -> Run:
    clock = FakeClock()
    cfg = Config(checkpoint_dir=tmp_path, **config)
    journal = Journal(tmp_path / "journal")
    budget = Budget(lambda provider, model: limit or Limit(rpm=6000, tpm=10**7), clock=clock)
    endpoints = Endpoints(
        cfg.endpoints_for, cfg.endpoint_cap, default_label=lambda provider: provider, clock=clock
    )
    pool = FakePool(clock, script)
    taskset = tasks_from_dicts(items, TokenEstimator())
    bodies = {t.custom_id: t.body for t in taskset.tasks}

    def body_of(t: Task) -> dict[str, Any]:
        body = bodies[t.custom_id]
        assert body is not None
        return body

    supervisor = Supervisor(
        cfg,
        journal,
        budget,
        Pricing(),
        LatencyModel(None),
        body_of=body_of,
        pool=pool,  # type: ignore[arg-type]
        target=InFlightTarget(start=workers, ceiling=workers, fixed=workers),
        endpoints=endpoints,
        clock=clock,
        rng=random.Random(7),
    )
    supervisor.add_batch(taskset.tasks, {})
    result = Run(supervisor, pool, clock, journal)
    if before is not None:
        before(result)
    try:
        supervisor.run()
    finally:
        supervisor.close()
    return result


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_a_429_holds_its_model_while_another_model_proceeds(journal_dir: Path) -> None:
    def script(call: Call) -> Answer:
        if call.custom_id == "a" and call.attempt == 1:
            return error(call, RATE_LIMITED, 429, retry_after_s=2.0)
        return ok(call)

    items = [task("a", "gpt-4o-mini"), task("a2", "gpt-4o-mini")] + [
        task(f"b{i}", "gpt-4o") for i in range(5)
    ]
    r = run(journal_dir, items, script)
    assert all(r.entry(t["custom_id"])["status"] == "succeeded" for t in items)
    first_429_at = r.pool.of("a")[0].at + 0.05
    retry = r.pool.of("a")[1]
    assert retry.call.attempt == 2
    assert retry.at >= first_429_at + 2.0  # the server's retry-after, never earlier
    assert retry.at <= first_429_at + 2.0 + 0.25  # plus at most the jitter
    # the other model never waited for the 429's retry-after
    assert max(s.at for s in r.pool.sent if s.call.custom_id.startswith("b")) < first_429_at + 1
    assert r.supervisor.metrics.rate_limited == 1


def test_a_server_error_is_retried_at_the_backoff_time(journal_dir: Path) -> None:
    def script(call: Call) -> Answer:
        if call.attempt <= 2:
            return error(call, SERVER_ERROR, 500)
        return ok(call)

    r = run(journal_dir, [task("x")], script)
    sends = r.pool.of("x")
    assert [s.call.attempt for s in sends] == [1, 2, 3]
    first_gap = sends[1].at - (sends[0].at + 0.05)
    second_gap = sends[2].at - (sends[1].at + 0.05)
    assert 0.25 <= first_gap <= 0.5 + 1e-6  # base 0.5 s with equal jitter
    assert 0.5 <= second_gap <= 1.0 + 1e-6  # doubled
    entry = r.entry("x")
    assert entry["status"] == "succeeded" and entry["attempts"] == 3
    assert r.supervisor.metrics.retries == 2


def test_an_auth_failure_disables_its_provider_and_not_the_others(journal_dir: Path) -> None:
    def script(call: Call) -> Answer:
        if call.provider == "openai":
            return error(call, AUTH, 401, latency_s=0.05)
        return ok(call, latency_s=0.5)

    items = [task(f"o{i}") for i in range(20)] + [
        task(f"g{i}", "llama-3.1-8b-instant", provider="groq") for i in range(5)
    ]
    r = run(journal_dir, items, script, workers=4)
    openai_sent = [s for s in r.pool.sent if s.call.provider == "openai"]
    # Only what was in flight when the first 401 came back was sent; the rest fail unsent.
    assert len(openai_sent) <= 4
    for i in range(20):
        entry = r.entry(f"o{i}")
        assert entry["status"] == "failed"
        assert entry["error"]["code"] == AUTH
    assert all(r.entry(f"g{i}")["status"] == "succeeded" for i in range(5))


def test_a_lost_call_is_requeued_and_the_third_death_fails_the_node(journal_dir: Path) -> None:
    sends: dict[str, int] = {}

    def script(call: Call) -> Answer:
        sends[call.custom_id] = sends.get(call.custom_id, 0) + 1
        if call.custom_id == "cursed" or (call.custom_id == "unlucky" and sends["unlucky"] == 1):
            return 0.1, LOST
        return ok(call)

    r = run(journal_dir, [task("cursed"), task("unlucky"), task("fine")], script)
    assert len(r.pool.of("cursed")) == 3
    assert all(s.call.attempt == 1 for s in r.pool.of("cursed"))  # a death is not an attempt
    cursed = r.entry("cursed")
    assert cursed["status"] == "failed" and cursed["error"]["code"] == "worker_died"
    unlucky = r.entry("unlucky")
    assert unlucky["status"] == "succeeded" and unlucky["attempts"] == 1
    assert len(r.pool.of("unlucky")) == 2
    assert r.entry("fine")["status"] == "succeeded"
    # the pool's failure, not the provider's: no retry counted, the bucket keeps sending
    assert r.supervisor.metrics.retries == 0


def test_the_stop_grace_ends_a_run_whose_calls_never_answer(journal_dir: Path) -> None:
    def script(call: Call) -> Answer:
        if call.custom_id == "quick":
            return ok(call, latency_s=0.1)
        return 10_000.0, LOST  # hangs far past the grace

    def stop_soon(run_: Run) -> None:
        original = run_.pool.send

        def send_then_stop(calls: list[Call]) -> None:
            original(calls)
            run_.supervisor.request_stop()

        run_.pool.send = send_then_stop  # type: ignore[method-assign]

    started = FakeClock().now
    r = run(journal_dir, [task("quick"), task("hung")], script, before=stop_soon, grace_s=5.0)
    metrics = r.supervisor.metrics
    assert metrics.interrupted
    assert r.entry("quick")["status"] == "succeeded"  # finished within the grace
    assert r.journal.get("hung") is None  # pending, not failed: a resume sends it
    assert r.clock.now - started == pytest.approx(5.0, abs=0.01)


def test_a_wake_after_the_pipe_is_closed_writes_nowhere(journal_dir: Path) -> None:
    # Runner.submit or a signal handler may still call wake() once the run is over: it
    # must not write its byte to a descriptor number the process has handed out again.
    r = run(journal_dir, [task("a", "gpt-4o-mini")], ok)
    r.supervisor.close()  # closed once: run() leaves the pipe to its owner
    r.supervisor.close()
    reused_r, reused_w = os.pipe()  # most likely the numbers the wakeup pipe had
    try:
        os.set_blocking(reused_r, False)
        r.supervisor.wake()
        r.supervisor.submit([])
        r.supervisor.request_stop()
        with pytest.raises(BlockingIOError):
            os.read(reused_r, 1)
    finally:
        os.close(reused_r)
        os.close(reused_w)
