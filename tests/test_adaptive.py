"""Adaptive concurrency: unit behaviour with a fake clock, and the target behaviour against a
small seeded discrete-event simulation of a self-hosted server (K slots, service time S
with uniform jitter ±30 %, a FIFO queue of at most Q, 503 at once beyond it)."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from turborun.adaptive import (
    BACKOFF,
    FIRST_ROUND_MIN,
    PROBE_EVERY,
    ROUND_DIVISOR,
    ROUND_MIN,
    AdaptiveLimit,
)

INF = float("inf")


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) per change
    done: list[float] = field(default_factory=list)  # completion times of answered requests
    rejected: list[float] = field(default_factory=list)  # times of 503s
    peak_in_flight: int = 0

    def limits_after(self, t: float) -> list[int]:
        before = [limit for at, limit in self.limits if at <= t]
        return before[-1:] + [limit for at, limit in self.limits if at > t]

    def throughput(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.done) / (end - start)


class Sim:
    """Server and client in one event loop. The client keeps min(limit, demand) requests in
    flight and re-sends a 503'd request at once; ``slow_at`` multiplies S by ``slow_by``
    from that time on (a server that got slower)."""

    def __init__(self, k: int, s: float, q: int, *, seed: int, initial: int = 8,
                 demand: float = INF, maximum: int = 100_000, slow_at: float = INF,
                 slow_by: float = 1.0) -> None:  # fmt: skip
        self.k, self.s, self.q, self.demand = k, s, q, demand
        self.slow_at, self.slow_by = slow_at, slow_by
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.limiter = AdaptiveLimit(initial=initial, maximum=maximum, clock=self.clock)
        self.events: list[tuple[float, int, bool, float]] = []  # (at, seq, rejected, sent_at)
        self.seq = 0
        self.busy = 0
        self.queue: list[float] = []  # sent_at of queued requests (FIFO by index)
        self.head = 0
        self.in_flight = 0
        self.run = Run(limits=[(0.0, self.limiter.limit)])

    def schedule(self, at: float, rejected: bool, sent_at: float) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, rejected, sent_at))

    def serve(self, sent_at: float) -> None:
        self.busy += 1
        slow = self.slow_by if self.clock.now >= self.slow_at else 1.0
        self.schedule(self.clock.now + self.s * slow * self.rng.uniform(0.7, 1.3), False, sent_at)

    def pump(self) -> None:
        while self.in_flight < min(self.limiter.limit, self.demand):
            self.in_flight += 1
            self.run.peak_in_flight = max(self.run.peak_in_flight, self.in_flight)
            self.limiter.sent(self.in_flight)
            now = self.clock.now
            if self.busy < self.k:
                self.serve(now)
            elif len(self.queue) - self.head < self.q:
                self.queue.append(now)
            else:
                self.schedule(now + 0.001 * self.s, True, now)

    def answer(self, rejected: bool, sent_at: float) -> None:
        now = self.clock.now
        self.in_flight -= 1
        if rejected:
            self.run.rejected.append(now)
        else:
            self.busy -= 1
            self.run.done.append(now)
            if self.head < len(self.queue):
                self.head += 1
                self.serve(self.queue[self.head - 1])
        self.limiter.observe(sent_at, now - sent_at, overloaded=rejected)
        if self.limiter.limit != self.run.limits[-1][1]:
            self.run.limits.append((now, self.limiter.limit))

    def until(self, end: float) -> Run:
        self.pump()
        while self.events and self.events[0][0] < end:
            at, _, rejected, sent_at = heapq.heappop(self.events)
            self.clock.now = at
            self.answer(rejected, sent_at)
            self.pump()
        return self.run


# --- target behaviour -------------------------------------------------------------------

WARM_UP_S = 40.0
DURATION_S = 160.0


@pytest.mark.parametrize(("k", "q", "seed"), [(64, 64, 1), (8, 8, 2), (512, 128, 3)])
def test_settles_near_capacity(k: int, q: int, seed: int) -> None:
    """From 8, against K slots of S = 1 s: the limit settles within 0.8-1.5 K, throughput
    after the warm-up is >= 90 % of K / S, and 503s (slow start's last latency of growth
    past K + Q) happen in the first rounds only."""
    run = Sim(k, 1.0, q, seed=seed, initial=8).until(DURATION_S)
    settled = run.limits_after(WARM_UP_S)
    assert 0.8 * k <= min(settled) and max(settled) <= 1.5 * k, (k, min(settled), max(settled))
    assert run.throughput(WARM_UP_S, DURATION_S) >= 0.9 * k, run.throughput(WARM_UP_S, DURATION_S)
    assert all(t < 30.0 for t in run.rejected), run.rejected[-5:]


def test_slow_start_reaches_a_large_server_in_a_few_latencies() -> None:
    """Capacity 512 (queue 128), from 8: over the first 60 latencies the server does at
    least 70 % of its best work, and slow start's overshoot draws a handful of 503s, not
    hundreds (doubling once per round of 48+ outcomes instead: 0.64 of it and 817)."""
    run = Sim(512, 1.0, 128, seed=3, initial=8).until(60.0)
    assert len(run.done) >= 0.7 * 512 * 60, len(run.done) / (512 * 60)
    assert len(run.rejected) <= 10, len(run.rejected)


def test_settles_again_after_the_server_slows_down() -> None:
    """Twice as slow at t = 60 s (same slots): the baseline restarts, the limit does not
    collapse."""
    run = Sim(64, 1.0, 64, seed=4, slow_at=60.0, slow_by=2.0).until(400.0)
    settled = run.limits_after(150.0)
    assert 0.8 * 64 <= min(settled) and max(settled) <= 1.5 * 64, settled
    assert run.throughput(150.0, 400.0) >= 0.9 * 64 / 2.0


def test_application_limited_limit_does_not_grow() -> None:
    run = Sim(10**9, 1.0, 0, seed=5, initial=64, demand=10).until(200.0)
    assert max(limit for _, limit in run.limits) == 64
    assert run.peak_in_flight == 10


def test_no_load_jitter_does_not_read_as_queueing() -> None:
    """K far above demand: latencies jitter ±30 % yet the limit grows to the maximum..."""
    run = Sim(10**9, 1.0, 0, seed=6, maximum=1000).until(60.0)
    assert run.limits[-1][1] == 1000
    # ... or to the demand (at most twice it: slow start's last latency of growth)
    run = Sim(10**9, 1.0, 0, seed=7, demand=300).until(60.0)
    assert 300 <= run.limits[-1][1] <= 600


# --- units --------------------------------------------------------------------------------


def answer(limiter: AdaptiveLimit, clock: FakeClock, n: int, latency_s: float = 1.0, *,
           in_flight: int | None = None, overloaded: bool = False) -> None:  # fmt: skip
    """``n`` requests one after another, each answered ``latency_s`` after it was sent."""
    for _ in range(n):
        sent_at = clock.now
        limiter.sent(limiter.limit if in_flight is None else in_flight)
        clock.now += latency_s
        limiter.observe(sent_at, latency_s, overloaded=overloaded)


def one_round(limiter: AdaptiveLimit, clock: FakeClock, latency_s: float = 1.0,
              in_flight: int | None = None) -> None:  # fmt: skip
    """Answers until the limiter ends a round (its first answer starts the measurement)."""
    rounds = limiter.rounds
    while limiter.rounds == rounds:
        answer(limiter, clock, 1, latency_s, in_flight=in_flight)


def test_slow_start_takes_a_baseline_then_grows_one_per_answer_while_latency_holds() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    answer(limiter, clock, FIRST_ROUND_MIN)  # the first answer starts measuring: one short
    assert limiter.limit == 8 and limiter.rounds == 0
    answer(limiter, clock, 1)
    assert limiter.limit == 8 and limiter.rounds == 1  # the baseline round does not grow
    answer(limiter, clock, 1 + 40, latency_s=1.1)  # within 15 %: one more per answer
    assert limiter.limit == 48 and limiter.rounds == 1
    one_round(limiter, clock, latency_s=1.1)  # the round's 48th outcome ends it
    assert limiter.limit == 56 and limiter.state() == "slow start"
    answer(limiter, clock, 1 + 56)  # about doubles per latency (each round's first answer
    assert limiter.limit == 111  # only starts its measurement)


def test_unused_limit_does_not_grow() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=64, clock=clock)
    for _ in range(5):
        one_round(limiter, clock, in_flight=57)  # 57 < 90 % of 64
    assert limiter.limit == 64 and limiter.state() == "slow start"
    answer(limiter, clock, 1 + 10)  # in flight at the limit: it grows
    assert limiter.limit == 74


def test_overload_cuts_at_most_once_per_round() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=64, clock=clock)
    sent_before = clock.now
    clock.now += 1.0
    for _ in range(50):  # a burst of 503s of requests sent before: one cut
        limiter.observe(sent_before, 0.0, overloaded=True)
    cut = int(64 * BACKOFF)
    assert limiter.limit == cut and limiter.state() == "backing off"
    n = max(FIRST_ROUND_MIN, cut // ROUND_DIVISOR)  # the round's length (no baseline yet)
    answer(limiter, clock, n - 1, overloaded=True)  # fresh 503s: the round goes on
    assert limiter.limit == cut
    answer(limiter, clock, 1, overloaded=True)  # and its last outcome cuts once more
    assert limiter.limit == int(cut * BACKOFF)


def test_overload_ends_slow_start() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    one_round(limiter, clock)  # the baseline
    answer(limiter, clock, 1 + 8)
    assert limiter.limit == 16
    limiter.observe(clock.now - 0.5, 0.5, overloaded=True)
    assert limiter.limit == int(16 * BACKOFF) and limiter.state() == "backing off"
    one_round(limiter, clock)  # latency holds: additive growth, no more slow start
    assert limiter.limit == int(16 * BACKOFF) + 1 and limiter.state() == "steady"


def test_queueing_ends_slow_start_and_shrinks() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=64, clock=clock)
    one_round(limiter, clock)  # the baseline: 1 s
    assert limiter.limit == 64
    # Twice the latency: the round still grows one per answer until its end (63 answers,
    # when they reach half the limit, 127), whose median shows half of it queued: a cut,
    # slow start over.
    one_round(limiter, clock, latency_s=2.0)
    assert limiter.limit == int(127 * BACKOFF) and limiter.state() == "backing off"


def test_steady_holds_grows_and_probes() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=200, clock=clock)
    one_round(limiter, clock, in_flight=100)  # baseline 1 s
    assert limiter.limit == 200
    # queue = 200 × (1 - 1/1.2) = 33: between alpha (21) and beta (41.5): hold (the first
    # of these rounds unused, so slow start does not grow it before its end)
    one_round(limiter, clock, latency_s=1.2, in_flight=150)
    assert limiter.limit == 200 and limiter.state() == "steady"
    for _ in range(PROBE_EVERY - 2):
        one_round(limiter, clock, latency_s=1.2)
        assert limiter.limit == 200 and limiter.state() == "steady"
    one_round(limiter, clock, latency_s=1.2)  # a probe round at the no-queue estimate
    assert limiter.limit == int(200 / 1.2)
    one_round(limiter, clock, latency_s=1.0)  # measured: back
    assert limiter.limit == 200
    one_round(limiter, clock, latency_s=1.05)  # queue 9.5 < alpha: grow, limit/16 ...
    assert limiter.limit == 212
    one_round(limiter, clock, latency_s=1.05)  # ... then limit/8 per round
    assert limiter.limit == 212 + 212 // 8


def test_a_slower_server_restarts_the_baseline() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=100, clock=clock)
    one_round(limiter, clock, in_flight=50)  # the baseline: 1 s
    one_round(limiter, clock, latency_s=2.0, in_flight=50)  # "queueing": a deep cut
    assert limiter.limit == 70
    one_round(limiter, clock, latency_s=2.0)  # 30 % fewer in flight, no faster: no queue
    assert limiter.limit == 74 and limiter.state() == "steady"


def test_bounds() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=50, minimum=3, maximum=70, clock=clock)
    one_round(limiter, clock)
    answer(limiter, clock, 1 + 30)
    assert limiter.limit == 70  # growth clamped to the maximum
    for _ in range(20):
        answer(limiter, clock, ROUND_MIN, overloaded=True)
    assert limiter.limit == 3
    assert AdaptiveLimit(initial=0, minimum=2).limit == 2
    assert AdaptiveLimit(initial=10**9).limit == 100_000
    with pytest.raises(ValueError):
        AdaptiveLimit(minimum=0)
    with pytest.raises(ValueError):
        AdaptiveLimit(minimum=5, maximum=4)


def test_outcomes_sent_before_a_change_are_not_measured() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    one_round(limiter, clock)
    for _ in range(500):  # slow answers of requests sent before the round began
        limiter.observe(0.0, 5.0, overloaded=False)
    assert limiter.limit == 8 and limiter.state() == "slow start"


def test_zero_latencies_do_not_divide_by_zero() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(initial=8, clock=clock)
    one_round(limiter, clock, latency_s=0.0)
    answer(limiter, clock, 1 + 4, latency_s=0.0)
    assert limiter.limit == 12
