"""Budget: pacing, learning, 429 slow-down, daily parking, circuit breaker. Pure logic
with a fake clock (no sleeping); the simulator's own limit windows
(turborun.simulator.limits.ModelLimit) judge whether a pace would draw 429s."""

from __future__ import annotations

import bisect
import heapq
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from turborun.budget import DEFAULT_OUTPUT_RESERVATION, Bucket, Budget
from turborun.budget.backoff import retry_delay_s, should_retry
from turborun.budget.breaker import MAX_COOLDOWN_S, MIN_FAILURES, WINDOW, seconds
from turborun.budget.buckets import (
    FIRST_PROBES,
    MARGIN,
    PROBE_PATIENCE_S,
    WARM_MARGIN,
    WARM_S,
)
from turborun.budget.limit_signals import parse_reset
from turborun.config import Limit
from turborun.records import CLIENT_ERROR, RATE_LIMITED, SERVER_ERROR, TIMEOUT, Outcome
from turborun.simulator.limits import ModelLimit


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_budget(
    limits: dict[tuple[str, str], Limit] | None = None, **kwargs: float
) -> tuple[Budget, FakeClock]:
    clock = FakeClock()
    table = limits or {}
    budget = Budget(lambda p, m: table.get((p, m), Limit()), clock=clock, **kwargs)  # type: ignore[arg-type]
    return budget, clock


def ok(headers: dict[str, str] | None = None, **usage: int) -> Outcome:
    return Outcome("q", 1, 200, None, None, None, rate_headers=headers or {}, **usage)


def rate_limited(
    retry_after_s: float | None = 1.0, message: str = "", headers: dict[str, str] | None = None
) -> Outcome:
    return Outcome("q", 1, 429, RATE_LIMITED, message, retry_after_s, rate_headers=headers or {})


def failure(kind: str = SERVER_ERROR, latency_s: float = 0.0) -> Outcome:
    status = {SERVER_ERROR: 500, CLIENT_ERROR: 400, RATE_LIMITED: 429}.get(kind)
    return Outcome("q", 1, status, kind, "boom", None, latency_s=latency_s)


def send_now(bucket: Bucket, clock: FakeClock, tokens: int = 10) -> None:
    assert bucket.ready_at(tokens) <= clock.now
    bucket.spend(tokens)


@dataclass
class Run:
    sends: list[tuple[float, int]] = field(default_factory=list)
    rejected: int = 0

    def max_in_window(self, span_s: float) -> tuple[int, int]:
        """Most requests and tokens sent within any half-open window of ``span_s``."""
        times = [t for t, _ in self.sends]
        totals = [0]
        for _, cost in self.sends:
            totals.append(totals[-1] + cost)
        most_requests = most_tokens = 0
        for j, t in enumerate(times):
            i = bisect.bisect_right(times, t - span_s)
            most_requests = max(most_requests, j + 1 - i)
            most_tokens = max(most_tokens, totals[j + 1] - totals[i])
        return most_requests, most_tokens

    def per_minute(self, skip_s: float = 1.0) -> tuple[float, float]:
        """Requests and tokens per minute after the first ``skip_s`` seconds."""
        start = self.sends[0][0] + skip_s
        steady = [(t, c) for t, c in self.sends if t >= start]
        span_s = steady[-1][0] - steady[0][0]
        return (len(steady) - 1) / span_s * 60, sum(c for _, c in steady[1:]) / span_s * 60


def drive(
    limit: Limit,
    cost: Callable[[random.Random], int],
    duration_s: float,
    *,
    lateness_s: float = 0.003,
    latency_s: float = 0.5,
    seed: int = 7,
) -> Run:
    """A supervisor in miniature: ask ready_at, wake up to ``lateness_s`` late, spend,
    settle each request ``latency_s`` later; the simulator's windows judge each send."""
    rng = random.Random(seed)
    budget, clock = make_budget({("openai", "m"): limit})
    bucket = budget.bucket("openai", "m")
    judge = ModelLimit(limit.rpm, limit.tpm, None, clock.now)
    run = Run()
    pending: list[float] = []
    end = clock.now + duration_s
    tokens = bucket.cost(0, cost(rng))
    while clock.now < end:
        while pending and pending[0] <= clock.now:
            pending.pop(0)
            bucket.settle(ok(), 0, 0)
        at = bucket.ready_at(tokens)
        if at > clock.now:
            wake = min(at, pending[0]) if pending else at  # an outcome may unblock it sooner
            clock.now = wake + rng.uniform(0, lateness_s)
            continue
        bucket.spend(tokens)
        run.sends.append((clock.now, tokens))
        run.rejected += judge.admit(clock.now, tokens) is not None
        pending.append(clock.now + latency_s)
        tokens = bucket.cost(0, cost(rng))
    return run


# ---- pacing ---------------------------------------------------------------------------


def test_requests_are_paced_evenly_at_6000_rpm_despite_late_wakeups() -> None:
    run = drive(Limit(rpm=6000, tpm=10**12), lambda rng: 10, duration_s=30)
    most_requests, _ = run.max_in_window(1.0)
    assert most_requests <= 6000 / 60
    steady = Run([send for send in run.sends if send[0] >= run.sends[0][0] + 1.0])
    assert steady.max_in_window(0.1)[0] <= 6000 / 600 + 3  # spread within the second too
    rpm, _ = run.per_minute()
    assert rpm >= 0.97 * 6000
    assert run.rejected == 0


@pytest.mark.parametrize("rpm", [30, 600, 60_000])
def test_pacing_draws_no_429_at_small_and_large_limits(rpm: int) -> None:
    run = drive(Limit(rpm=rpm, tpm=10**12), lambda rng: 10, duration_s=10 if rpm > 1000 else 130)
    assert run.rejected == 0
    assert run.max_in_window(1.0)[0] <= max(1, rpm / 60)
    assert run.per_minute(skip_s=2.0)[0] >= 0.97 * rpm


def test_tpm_bound_mix_spends_at_least_95_percent_without_429() -> None:
    tpm = 2_000_000
    run = drive(Limit(rpm=10_000, tpm=tpm), lambda rng: 50 + rng.randint(50, 2000), 60)
    _, most_tokens = run.max_in_window(1.0)
    assert most_tokens <= tpm / 60
    _, tokens_per_min = run.per_minute()
    assert tokens_per_min >= 0.95 * tpm
    assert run.rejected == 0


def test_request_larger_than_a_second_of_tokens_goes_alone() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(rpm=1000, tpm=6000)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock, 50)
    at = bucket.ready_at(500)  # a second's worth is 100 tokens
    assert clock.now < at < math.inf
    clock.now = at
    send_now(bucket, clock, 500)
    assert bucket.ready_at(10) > clock.now + 1.0  # nothing shares its second


def test_late_wakeup_is_not_lost() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(rpm=6000, tpm=10**12)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock, 1)
    bucket.settle(ok(), 1, 0)
    clock.now += WARM_S  # past the first seconds' wider margin
    for _ in range(200):
        clock.now = max(clock.now, bucket.ready_at(1)) + 0.002  # always 2 ms late
        bucket.spend(1)
    start = clock.now
    for _ in range(980):
        clock.now = max(clock.now, bucket.ready_at(1)) + 0.002
        bucket.spend(1)
    assert clock.now - start <= 10.0 * 1.01  # 97.5 a second, the lateness caught up


def test_the_first_seconds_keep_a_wider_margin() -> None:
    """Until WARM_S after the first answer, pace and the one-second window keep
    WARM_MARGIN (sends reach the provider least evenly while connections open and the
    first answers arrive); after, MARGIN."""
    budget, clock = make_budget({("openai", "m"): Limit(rpm=6000, tpm=10**12)})
    bucket = budget.bucket("openai", "m")

    def sent_in(seconds: float) -> int:
        end, count = clock.now + seconds, 0
        while True:
            clock.now = max(clock.now, bucket.ready_at(1))
            if clock.now >= end:
                return count
            bucket.spend(1)
            count += 1

    assert sent_in(10.0) <= 100 * (1 - WARM_MARGIN) * 10 + 2  # no answer yet
    bucket.settle(ok(), 1, 0)
    clock.now += WARM_S
    assert sent_in(10.0) >= 100 * (1 - MARGIN) * 10 - 2


def test_a_free_bucket_answers_go_to_a_caller_whose_clock_reading_is_older() -> None:
    ticks = iter(range(10**6))
    budget = Budget(lambda p, m: Limit(6000, 10**9), clock=lambda: 1000 + next(ticks) * 1e-6)
    for bucket in (budget.bucket("openai", "m"), Budget(lambda p, m: Limit()).bucket("o", "m")):
        now = bucket._clock()  # the supervisor read the clock before asking
        assert bucket.ready_at(10) <= now


# ---- learning -------------------------------------------------------------------------


OPENAI_HEADERS = {
    "x-ratelimit-limit-requests": "600",
    "x-ratelimit-remaining-requests": "599",
    "x-ratelimit-reset-requests": "100ms",
    "x-ratelimit-limit-tokens": "60000",
    "x-ratelimit-remaining-tokens": "59990",
    "x-ratelimit-reset-tokens": "10ms",
}
GROQ_HEADERS = {
    "x-ratelimit-limit-requests": "14400",
    "x-ratelimit-remaining-requests": "14399",
    "x-ratelimit-reset-requests": "6s",
    "x-ratelimit-limit-tokens": "6000",
    "x-ratelimit-remaining-tokens": "5990",
    "x-ratelimit-reset-tokens": "100ms",
}


def test_unknown_limit_sends_first_probes_then_learns_openai_headers() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "gpt-4o-mini")
    assert bucket.state() == "learning"
    for _ in range(FIRST_PROBES):
        send_now(bucket, clock)
    assert bucket.ready_at(10) == clock.now + PROBE_PATIENCE_S  # no more until then
    bucket.settle(ok(OPENAI_HEADERS), 10, 5)
    assert (bucket.rpm, bucket.tpm) == (600, 60000)
    assert bucket.state() == "ok"
    assert bucket.ready_at(10) < math.inf


def test_groq_request_headers_count_per_day_not_per_minute() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("groq", "llama-3.1-8b-instant")
    send_now(bucket, clock)
    bucket.settle(ok(GROQ_HEADERS), 10, 5)
    assert bucket.tpm == 6000
    assert bucket.rpm is None  # 14,400 is a daily quota, not requests per minute
    assert bucket.daily_requests == 14400


def test_groq_per_minute_requests_are_learned_from_a_429() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("groq", "llama-3.1-8b-instant")
    send_now(bucket, clock)
    bucket.settle(ok(GROQ_HEADERS), 10, 5)
    send_now(bucket, clock)
    message = (
        "Rate limit reached for model `llama-3.1-8b-instant` in organization `org_x` service "
        "tier `on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. "
        "Please try again in 2s."
    )
    assert bucket.settle(rate_limited(2.0, message, GROQ_HEADERS), 10, 5) is False
    assert bucket.rpm == 30
    assert bucket.ready_at(10) >= clock.now + 2.0


def test_groq_429_without_a_limit_in_its_message_learns_from_traffic() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("groq", "llama-3.1-8b-instant")
    send_now(bucket, clock)
    bucket.settle(ok(GROQ_HEADERS), 10, 5)
    for _ in range(40):
        bucket.spend(10)
    bucket.settle(rate_limited(1.0, "Too many requests", GROQ_HEADERS), 10, 5)
    assert bucket.rpm is not None and bucket.rpm < 41


def test_a_429_among_the_first_requests_sets_no_limit() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(rate_limited(0.7, "Simulated error 429."), 10, 5)
    assert bucket.rpm is None
    assert bucket.ready_at(10) == pytest.approx(clock.now + 0.7)


def test_answer_without_headers_means_unlimited() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "local-model")
    send_now(bucket, clock)
    bucket.settle(ok(), 10, 5)
    assert (bucket.rpm, bucket.tpm) == (None, None)
    for _ in range(1000):
        send_now(bucket, clock)


def test_probe_without_an_answer_probes_again() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    for _ in range(FIRST_PROBES):
        send_now(bucket, clock)
    bucket.settle(failure(TIMEOUT), 10, 5)
    assert bucket.state() == "learning"
    send_now(bucket, clock)  # the timed-out probe's place
    assert bucket.ready_at(10) > clock.now


def test_slow_probes_let_more_probes_go_after_a_while() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    for _ in range(FIRST_PROBES):
        send_now(bucket, clock)
    assert bucket.ready_at(10) > clock.now
    clock.now += PROBE_PATIENCE_S
    send_now(bucket, clock)
    bucket.settle(ok(OPENAI_HEADERS), 10, 5)  # a later one answers first
    assert bucket.state() == "ok"
    for _ in range(FIRST_PROBES):
        bucket.settle(ok(OPENAI_HEADERS), 10, 5)
    assert bucket.in_flight == 0


def test_unanswered_probes_double_every_patience_period() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    start = clock.now
    sent_at = []
    while clock.now < start + 4 * PROBE_PATIENCE_S:
        at = bucket.ready_at(10)
        if at <= clock.now:
            bucket.spend(10)
            sent_at.append(clock.now - start)
        else:
            clock.now = at
    # FIRST_PROBES (4) probes, then 8 in flight after one period, 16 after two, 32 after three.
    patience, first = PROBE_PATIENCE_S, FIRST_PROBES
    assert sent_at == (
        [0.0] * first + [patience] * first + [2 * patience] * 2 * first
        + [3 * patience] * 4 * first
    )  # fmt: skip
    assert bucket.in_flight == 8 * first
    bucket.settle(ok(OPENAI_HEADERS), 10, 5)
    assert bucket.state() == "ok"  # the first answer ends the probing


def test_configured_limit_is_never_raised_by_headers() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(rpm=100, tpm=1000)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(ok(OPENAI_HEADERS), 10, 5)
    assert (bucket.rpm, bucket.tpm) == (100, 1000)


def test_remaining_zero_holds_until_reset() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(rpm=6000, tpm=10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    headers = dict(OPENAI_HEADERS, **{"x-ratelimit-remaining-tokens": "0"})
    headers["x-ratelimit-reset-tokens"] = "1.5s"
    bucket.settle(ok(headers), 10, 5)
    assert bucket.ready_at(10) == pytest.approx(clock.now + 1.5)


# ---- 429s ---------------------------------------------------------------------------


def test_429_slows_only_that_bucket_and_respects_retry_after() -> None:
    limits = {("openai", "a"): Limit(600, 10**9), ("openai", "b"): Limit(600, 10**9)}
    budget, clock = make_budget(limits)
    a, b = budget.bucket("openai", "a"), budget.bucket("openai", "b")
    send_now(a, clock)
    assert a.settle(rate_limited(retry_after_s=3.0), 10, 5) is False
    assert a.rate_limited == 1
    assert a.rpm is not None and a.rpm < 600
    assert a.ready_at(10) >= clock.now + 3.0
    assert a.state() == "slowed"
    assert b.rpm == 600 and b.ready_at(10) <= clock.now and b.state() == "ok"


def test_slowdown_recovers_with_successes() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(600, 10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(rate_limited(0.5), 10, 5)
    slowed = bucket.rpm
    assert slowed is not None
    for _ in range(800):  # 60 s and more at the slowed pace
        clock.now = max(clock.now, bucket.ready_at(10))
        bucket.spend(10)
        bucket.settle(ok(), 10, 5)
    assert bucket.rpm == 600
    assert bucket.state() == "ok"


def test_429s_of_requests_already_in_flight_slow_down_once() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(600, 10**9)})
    bucket = budget.bucket("openai", "m")
    for _ in range(5):
        bucket.spend(10)
    for _ in range(5):
        bucket.settle(rate_limited(0.1), 10, 5)
    assert bucket.rpm == pytest.approx(600 * 0.8)


def test_per_second_429_at_the_paced_limit_slows_only_a_little() -> None:
    """A 429 naming the per-second window of the very limit we pace for comes from
    requests arriving later than sent: hold for its retry-after, barely slow down. A
    per-second limit below ours is a real slowdown."""
    limits = {("openai", "m"): Limit(30_000, 10**9), ("openai", "n"): Limit(60_000, 10**9)}
    budget, clock = make_budget(limits)
    bucket, lower = budget.bucket("openai", "m"), budget.bucket("openai", "n")
    send_now(bucket, clock)
    send_now(lower, clock)
    jitter = "Rate limit reached on requests per second (RPS): Limit 500, Used 500, Requested 1."
    bucket.settle(rate_limited(0.02, jitter), 10, 5)
    assert bucket.rpm == pytest.approx(30_000 * 0.97)
    assert bucket.ready_at(10) >= clock.now + 0.02
    lower.settle(rate_limited(0.02, jitter), 10, 5)  # 500/s is below the 1,000/s we pace for
    assert lower.rpm == pytest.approx(30_000)  # learned from the message


@pytest.mark.parametrize(
    ("outcome", "provider"),
    [
        (rate_limited(3600.0), "openai"),
        (rate_limited(5.0, "Limit 14400, Used 14400 on requests per day (RPD)"), "groq"),
        (
            rate_limited(
                5.0, headers=dict(GROQ_HEADERS, **{"x-ratelimit-remaining-requests": "0"})
            ),
            "groq",
        ),  # fmt: skip
    ],
)
def test_daily_quota_429_parks_the_bucket_and_returns_true(outcome: Outcome, provider: str) -> None:
    budget, clock = make_budget({(provider, "m"): Limit(600, 10**9)})
    bucket = budget.bucket(provider, "m")
    send_now(bucket, clock)
    assert bucket.settle(outcome, 10, 5) is True
    assert bucket.state() == "parked"
    assert bucket.rpm == 600  # no slow-down: the pace was not at fault
    park = bucket.ready_at(10)
    assert park >= clock.now + (outcome.retry_after_s or 0)
    clock.now = park
    assert bucket.ready_at(10) <= clock.now


# ---- circuit breaker -------------------------------------------------------------------


@dataclass
class Burst:
    opened_after: int | None = None  # outcomes settled when the breaker first opened
    settled: int = 0
    longest_failure_run: int = 0


def burst(
    error_rate: float,
    *,
    concurrency: int,
    tasks: int = 3000,
    fail_latency_s: float = 0.02,
    ok_latency_s: float = 0.2,
    late_s: float = 0.01,
    seed: int = 11,
) -> Burst:
    """A supervisor in miniature against a server that answers 5xx fast and successes
    slowly: ``concurrency`` requests in flight, every freed slot refilled at once, a
    failed task retried at once. Each burst's failures arrive before any of its successes.
    Workers report latencies up to ``late_s`` short (the trip to and from a worker)."""
    rng = random.Random(seed)
    budget, clock = make_budget({("openai", "m"): Limit(10**9, 10**12)})
    bucket = budget.bucket("openai", "m")
    events: list[tuple[float, int, bool, float]] = []  # (due, seq, failed, latency)
    result, run, left, seq = Burst(), 0, tasks, 0
    while left and result.settled < 20 * tasks:
        while bucket.in_flight < concurrency and bucket.ready_at(10) <= clock.now:
            bucket.spend(10)
            failed = rng.random() < error_rate
            latency = (fail_latency_s if failed else ok_latency_s) * rng.uniform(0.9, 1.1)
            seq += 1
            heapq.heappush(events, (clock.now + latency, seq, failed, latency))
        if not events:
            clock.now = bucket.ready_at(10)
            continue
        clock.now, _, failed, latency = heapq.heappop(events)
        reported = latency - rng.uniform(0, late_s)
        bucket.settle(failure(SERVER_ERROR, reported) if failed else ok(), 10, 5)
        result.settled += 1
        run = run + 1 if failed else 0
        result.longest_failure_run = max(result.longest_failure_run, run)
        left -= not failed
        if result.opened_after is None and bucket.state() == "open":
            result.opened_after = result.settled
    return result


@pytest.mark.parametrize("concurrency", [10, 120, 300, 1000])
@pytest.mark.parametrize("error_rate", [0.1, 0.3])
def test_failures_arriving_first_never_open_the_breaker(
    error_rate: float, concurrency: int
) -> None:
    run = burst(error_rate, concurrency=concurrency)
    assert run.opened_after is None
    if concurrency >= 300:  # what a count of consecutive failures mistook for an outage
        assert run.longest_failure_run >= MIN_FAILURES


def test_a_dead_server_opens_the_breaker_at_the_minimum_failure_count() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)})
    bucket = budget.bucket("openai", "m")
    for i in range(MIN_FAILURES):
        assert bucket.state() == "ok"
        clock.now = max(clock.now, bucket.ready_at(10))
        bucket.spend(10)
        clock.now += 0.05
        bucket.settle(failure(SERVER_ERROR if i % 2 else TIMEOUT, 0.05), 10, 5)
    assert bucket.state() == "open"
    assert bucket._breaker.reason == (
        "20 of the last 20 requests failed (timeout 10, server_error 10); pausing 30 s"
    )


@pytest.mark.parametrize(("concurrency", "fail_latency_s"), [(20, 0.02), (300, 0.02), (300, 120.0)])
def test_a_dead_server_with_many_in_flight_opens_once_those_have_failed(
    concurrency: int, fail_latency_s: float
) -> None:
    run = burst(1.0, concurrency=concurrency, fail_latency_s=fail_latency_s)
    assert run.opened_after is not None
    assert run.opened_after <= concurrency + WINDOW


def test_failures_after_successes_open_it_only_at_the_failure_fraction() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)})
    bucket = budget.bucket("openai", "m")
    for i in range(WINDOW + 40):  # one at a time, 0.1 s apart
        clock.now += 0.1
        bucket.spend(10)
        clock.now += 0.01
        bucket.settle(failure(SERVER_ERROR, 0.01) if i >= WINDOW else ok(), 10, 5)
        if i < WINDOW + 39:  # 8 consecutive failures opened the old breaker
            assert bucket.state() == "ok"
    assert bucket.state() == "open"  # 40 of the last 50: 80 %


def test_the_first_outcomes_of_a_burst_are_judged_against_all_it_sent() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(10**7, 10**12)})
    bucket = budget.bucket("openai", "m")
    for _ in range(100):  # sent at once; the rest are still in flight
        bucket.spend(10)
    clock.now += 0.02
    for _ in range(79):  # the fast 5xx come back first
        bucket.settle(failure(SERVER_ERROR, 0.02), 10, 5)
    assert bucket.state() == "ok"
    bucket.settle(failure(SERVER_ERROR, 0.02), 10, 5)
    assert bucket.state() == "open"  # 80 of the 100 sent
    assert bucket._breaker.reason == (
        "80 of the last 100 requests failed (server_error 80); pausing 30 s"
    )


def _open_breaker(bucket: Bucket, clock: FakeClock, failures: int = MIN_FAILURES) -> None:
    for _ in range(failures):
        bucket.spend(10)
        bucket.settle(failure(), 10, 5)
    assert bucket.state() == "open"


def test_breaker_opens_probes_once_and_closes_on_success() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)}, breaker_failures=3)
    bucket = budget.bucket("openai", "m")
    _open_breaker(bucket, clock, 3)
    assert bucket.ready_at(10) == pytest.approx(clock.now + 30.0)
    clock.now += 30.0
    assert bucket.state() == "probing"
    send_now(bucket, clock)
    assert bucket.ready_at(10) == math.inf  # only the probe
    bucket.settle(ok(), 10, 5)
    assert bucket.state() == "ok"
    assert bucket.ready_at(10) < math.inf
    assert bucket.pause_reason() is None


def test_failed_probes_double_the_cooldown_up_to_the_cap() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)}, breaker_failures=2)
    bucket = budget.bucket("openai", "m")
    _open_breaker(bucket, clock, 2)
    for cooldown in (30.0, 60.0, MAX_COOLDOWN_S, MAX_COOLDOWN_S):
        assert bucket.ready_at(10) == pytest.approx(clock.now + cooldown)
        clock.now += cooldown
        send_now(bucket, clock)
        bucket.settle(failure(TIMEOUT), 10, 5)
        assert bucket.state() == "open"
    assert MAX_COOLDOWN_S == 60.0


def test_outcomes_of_requests_sent_before_it_opened_are_ignored() -> None:
    limits = {("openai", "m"): Limit(60000, 10**9)}
    budget, clock = make_budget(limits, breaker_failures=5)
    bucket = budget.bucket("openai", "m")
    for _ in range(100):  # sent at once: 80 fail after a second, 20 are answered later
        bucket.spend(10)
    clock.now += 1.0
    for _ in range(80):
        bucket.settle(failure(TIMEOUT, 1.0), 10, 5)
    assert bucket.state() == "open"
    for _ in range(10):  # neither closes it nor takes the probe's place
        bucket.settle(ok(), 10, 5)
    assert bucket.state() == "open"
    clock.now += 30.0
    send_now(bucket, clock)
    bucket.settle(ok(), 10, 5)
    assert bucket.state() == "ok"
    for _ in range(2):
        send_now(bucket, clock)
        bucket.settle(ok(), 10, 5)
    for _ in range(10):  # judged already: they do not reopen it
        bucket.settle(failure(TIMEOUT, 31.0), 10, 5)
    assert bucket.state() == "ok"


def test_client_errors_and_429s_do_not_trip_the_breaker() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)}, breaker_failures=2)
    bucket = budget.bucket("openai", "m")
    for kind in (SERVER_ERROR, CLIENT_ERROR, RATE_LIMITED, CLIENT_ERROR):
        bucket.spend(10)
        bucket.settle(failure(kind), 10, 5)
    assert bucket.state() != "open"


def test_release_does_not_count_towards_the_breaker() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)})
    bucket = budget.bucket("openai", "m")
    for _ in range(3 * MIN_FAILURES):  # a worker process killed with all of them
        bucket.spend(10)
    spent = bucket.tokens_last_minute()
    for _ in range(3 * MIN_FAILURES):
        bucket.release(10)
    assert bucket.state() == "ok"
    assert bucket.in_flight == 0
    assert bucket.tokens_last_minute() == spent  # they may have reached the provider
    for _ in range(MIN_FAILURES - 1):  # nor did they fill the window
        bucket.spend(10)
        bucket.settle(failure(), 10, 5)
    assert bucket.state() == "ok"


def test_release_frees_the_breakers_probe() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)})
    bucket = budget.bucket("openai", "m")
    _open_breaker(bucket, clock)
    clock.now += 30.0
    send_now(bucket, clock)
    assert bucket.ready_at(10) == math.inf
    bucket.release(10)
    assert bucket.state() == "probing"
    assert bucket.ready_at(10) <= clock.now  # another probe may go
    send_now(bucket, clock)
    bucket.settle(ok(), 10, 5)
    assert bucket.state() == "ok"


def test_release_frees_a_learning_probe_without_learning() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    for _ in range(FIRST_PROBES):
        send_now(bucket, clock)
    assert bucket.ready_at(10) > clock.now
    bucket.release(10)
    assert bucket.state() == "learning"
    assert bucket.in_flight == FIRST_PROBES - 1
    send_now(bucket, clock)  # the next probe goes at once


def test_release_of_a_request_sent_before_a_slowdown_leaves_the_next_429_effective() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(600, 10**9)})
    bucket = budget.bucket("openai", "m")
    bucket.spend(10)
    bucket.spend(10)
    bucket.settle(rate_limited(0.1), 10, 5)
    bucket.release(10)  # lost: its 429 will never come
    clock.now += 1.0
    bucket.spend(10)
    bucket.settle(rate_limited(0.1), 10, 5)
    assert bucket.rpm == pytest.approx(600 * 0.8 * 0.8)


# ---- pause reasons ------------------------------------------------------------------------


def test_pause_reason_is_none_while_only_pacing() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60, 10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    assert bucket.ready_at(10) > clock.now
    assert bucket.pause_reason() is None
    bucket.settle(rate_limited(0.5), 10, 5)
    clock.now += 1.0
    assert bucket.state() == "slowed"
    assert bucket.pause_reason() is None


def test_pause_reason_of_the_breaker_in_each_state() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)})
    bucket = budget.bucket("openai", "m")
    _open_breaker(bucket, clock)
    evidence = "20 of the last 20 requests failed (server_error 20)"
    assert bucket.pause_reason() == (f"circuit breaker open: {evidence}; pausing 30 s (30 s left)")
    clock.now += 25.5
    assert bucket.pause_reason() == (f"circuit breaker open: {evidence}; pausing 30 s (4.5 s left)")
    clock.now += 4.5
    assert bucket.pause_reason() == (
        f"circuit breaker probing: {evidence}; sending one probe request"
    )
    send_now(bucket, clock)
    assert bucket.pause_reason() == (
        f"circuit breaker probing: {evidence}; waiting for the probe request's answer"
    )
    bucket.settle(failure(TIMEOUT), 10, 5)
    assert bucket.pause_reason() == (
        f"circuit breaker open: {evidence}; the probe request failed too (timeout); "
        "pausing 60 s (60 s left)"
    )


def test_pause_reason_of_a_daily_quota_says_until_when() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(600, 10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    assert bucket.settle(rate_limited(3600.0), 10, 5) is True
    reason = bucket.pause_reason()
    assert reason is not None
    assert re.fullmatch(r"daily quota exhausted: parked until \d\d:\d\d \(in 1 h 00 min\)", reason)


def test_pause_reason_of_a_hold_says_for_how_long_and_why() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(600, 10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(rate_limited(3.0), 10, 5)
    assert bucket.pause_reason() == "held 3.0 s more: a 429 asked to retry after 3.0 s"
    clock.now += 3.0
    send_now(bucket, clock)
    headers = dict(OPENAI_HEADERS, **{"x-ratelimit-remaining-tokens": "0"})
    headers["x-ratelimit-reset-tokens"] = "12s"
    bucket.settle(ok(headers), 10, 5)
    assert bucket.pause_reason() == (
        "held 12 s more: the provider reported 0 tokens left this minute"
    )
    clock.now += 12.0
    assert bucket.pause_reason() is None


def test_pause_reason_names_the_longest_of_several() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(6000, 10**9)})
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(rate_limited(3600.0), 10, 5)
    _open_breaker(bucket, clock)
    assert (bucket.pause_reason() or "").startswith("daily quota exhausted")


@pytest.mark.parametrize(
    ("duration_s", "text"),
    [(0.44, "0.4 s"), (30.0, "30 s"), (119.6, "2 min"), (125.0, "2 min 5 s"), (3720, "1 h 02 min")],
)
def test_seconds_reads_naturally(duration_s: float, text: str) -> None:
    assert seconds(duration_s) == text


# ---- costs and bookkeeping ----------------------------------------------------------------


def test_cost_reserves_prompt_plus_output_or_a_default() -> None:
    budget, _ = make_budget()
    bucket = budget.bucket("openai", "gpt-4o-mini")
    assert bucket.cost(100, 50) == 150
    assert bucket.cost(100, 0) == 100 + DEFAULT_OUTPUT_RESERVATION
    assert budget.bucket("openai", "text-embedding-3-small").cost(100, 0) == 100


def test_usage_without_output_tokens_stops_the_default_reservation() -> None:
    budget, clock = make_budget({("openai", "embedder"): Limit(600, 10**6)})
    bucket = budget.bucket("openai", "embedder")
    send_now(bucket, clock)
    bucket.settle(ok(input_tokens=100, output_tokens=0), 100, 100)
    assert bucket.cost(100, 0) == 100


def test_systematic_underestimate_raises_later_costs() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)})
    bucket = budget.bucket("openai", "m")
    for _ in range(50):
        bucket.spend(100)
        bucket.settle(ok(input_tokens=130, output_tokens=10), 110, 100)
    assert bucket.cost(100, 10) == pytest.approx(140, abs=1)


def test_in_flight_counts_spends_minus_settles() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)})
    bucket = budget.bucket("openai", "m")
    for _ in range(3):
        bucket.spend(10)
    bucket.settle(ok(), 10, 5)
    assert bucket.in_flight == 2


def test_tokens_last_minute_counts_only_the_last_60_seconds() -> None:
    budget, clock = make_budget({("openai", "m"): Limit(60000, 10**9)})
    bucket = budget.bucket("openai", "m")
    bucket.spend(100)
    clock.now += 30
    bucket.spend(50)
    assert bucket.tokens_last_minute() == 150
    clock.now += 40
    assert bucket.tokens_last_minute() == 50


def test_buckets_are_created_once_per_provider_and_model() -> None:
    calls: list[tuple[str, str]] = []

    def limit_for(provider: str, model: str) -> Limit:
        calls.append((provider, model))
        return Limit(60, 6000)

    budget = Budget(limit_for, clock=FakeClock())
    assert budget.bucket("openai", "a") is budget.bucket("openai", "a")
    budget.bucket("groq", "a")
    assert calls == [("openai", "a"), ("groq", "a")]
    assert len(budget.buckets()) == 2


# ---- helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("1h2m3.5s", 3723.5),
        ("0.2", 0.2),
        ("2m59.56s", 179.56),
        ("0s", 0.0),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("-1", None),
    ],
)
def test_parse_reset(text: str, seconds: float | None) -> None:
    parsed = parse_reset(text)
    assert parsed == (None if seconds is None else pytest.approx(seconds))


def test_retryable_failures_go_again_until_the_retries_are_spent() -> None:
    def failed(status: int | None, kind: str) -> Outcome:
        return Outcome("t", 1, status, kind, "x", None)

    for retryable in (failed(429, RATE_LIMITED), failed(503, SERVER_ERROR), failed(None, TIMEOUT),
                      failed(408, CLIENT_ERROR), failed(409, CLIENT_ERROR)):  # fmt: skip
        assert should_retry(retryable, attempts=1, max_retries=5)
        assert should_retry(retryable, attempts=5, max_retries=5)  # the 6th attempt goes
        assert not should_retry(retryable, attempts=6, max_retries=5)  # it failed: final
        assert not should_retry(retryable, attempts=1, max_retries=0)
    assert not should_retry(failed(400, CLIENT_ERROR), attempts=1, max_retries=5)


def test_retry_delay_is_never_earlier_than_retry_after() -> None:
    rng = random.Random(1)
    for retry_after in (0.0, 0.3, 2.0, 45.0):
        for attempt in range(1, 8):
            assert retry_delay_s(attempt, retry_after, rng) >= retry_after


def test_retry_delay_backs_off_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    first = [retry_delay_s(1, None, rng) for _ in range(100)]
    third = [retry_delay_s(3, None, rng) for _ in range(100)]
    late = [retry_delay_s(40, None, rng) for _ in range(100)]
    assert all(0.25 <= d <= 0.5 for d in first)
    assert all(1.0 <= d <= 2.0 for d in third)
    assert all(15.0 <= d <= 30.0 for d in late)
    assert len(set(first)) > 50


# ---- a server that never answers, requests that never fit, retry escalation ----------


def no_answer(kind: str = "connection") -> Outcome:
    return Outcome("q", 1, None, kind, "Connection error.", None, latency_s=0.001)


def test_a_bucket_never_answered_gives_up_after_two_first_cooldowns() -> None:
    """The default bound, by arithmetic on a fake clock: cool-downs of 10 s (a third of
    30 s, never doubled) while nothing ever answered; the first failure 60 s or more
    after the first request gives up."""
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    first = clock.now
    probes = 0
    while bucket.unreachable is None:
        at = bucket.ready_at(10)
        assert at < math.inf
        clock.now = max(clock.now, at)
        send_now(bucket, clock)
        clock.now += 0.001
        bucket.settle(no_answer(), 10, 0)
        probes += 1
        assert clock.now - first < 75, "still trying after the bound"
    gave_up_after = clock.now - first
    assert 60 <= gave_up_after <= 60 + 10 + 0.1
    assert "no answer at all from the server in" in bucket.unreachable
    assert f"{probes} attempts: connection {probes}" in bucket.unreachable
    # the cool-downs were 10 s: about 20 refusals open it, then one probe per 10 s
    assert MIN_FAILURES <= probes <= MIN_FAILURES + 7


def test_one_answer_of_any_kind_means_the_bucket_is_never_given_up() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    send_now(bucket, clock)
    bucket.settle(failure(SERVER_ERROR), 10, 0)  # an HTTP answer: the server is there
    for _ in range(200):
        clock.now = max(clock.now + 1.0, bucket.ready_at(10))
        send_now(bucket, clock)
        bucket.settle(no_answer("timeout"), 10, 0)
    assert bucket.unreachable is None
    assert "no answer yet" not in (bucket.pause_reason() or "")


def test_pause_reason_of_a_never_answered_bucket_says_when_it_gives_up() -> None:
    budget, clock = make_budget()
    bucket = budget.bucket("openai", "m")
    for _ in range(MIN_FAILURES):
        clock.now = max(clock.now, bucket.ready_at(10))
        send_now(bucket, clock)
        bucket.settle(no_answer(), 10, 0)
    reason = bucket.pause_reason() or ""
    assert reason.startswith("circuit breaker open: ")
    assert "pausing 10 s" in reason
    assert reason.endswith(
        "no answer yet from the server: its tasks fail in 60 s unless it answers"
    )


def test_a_request_over_the_tpm_is_too_large_configured_or_learned() -> None:
    budget, _ = make_budget({("openai", "c"): Limit(tpm=10_000)})
    configured = budget.bucket("openai", "c")
    assert configured.too_large(10_000) is None
    assert "allows 10,000 tokens per minute (configured)" in (configured.too_large(10_001) or "")
    learned = budget.bucket("openai", "l")
    assert learned.too_large(10**9) is None  # nothing known: it may go
    learned.spend(10)
    learned.settle(ok({"x-ratelimit-limit-tokens": "200000"}), 10, 0)
    message = learned.too_large(1_000_016) or ""
    assert "needs 1,000,016 tokens" in message
    assert "allows 200,000 tokens per minute (learned from the provider)" in message


def test_retries_escalate_only_while_most_requests_fail() -> None:
    rng = random.Random(1)
    assert max(retry_delay_s(5, None, rng, escalate=False) for _ in range(100)) <= 0.5
    assert min(retry_delay_s(5, None, rng, escalate=True) for _ in range(100)) >= 4.0
    budget, clock = make_budget({("openai", "m"): Limit(rpm=1e9, tpm=1e12)})
    bucket = budget.bucket("openai", "m")
    for _ in range(100):  # 30 % failing, failures first: healthy
        send_now(bucket, clock)
        clock.now += 0.01
    for _ in range(30):
        bucket.settle(failure(SERVER_ERROR), 10, 0)
    assert bucket.healthy()
    for _ in range(25):  # then only failures: past half, before the breaker opens
        send_now(bucket, clock)
        clock.now += 0.01
        bucket.settle(failure(SERVER_ERROR), 10, 0)
    assert bucket.state() != "open"
    assert not bucket.healthy()
