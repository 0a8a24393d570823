"""Adaptive concurrency of one endpoint that publishes no rate limits (vLLM, llama.cpp,
Ollama): how many requests may be in flight to it now. A server past its capacity queues,
so latency climbs before it refuses anything; the limit follows TCP Vegas (Brakmo &
Peterson, 1994), with TCP's slow start and multiplicative decrease on overload (AIMD,
Jacobson, 1988). Netflix's concurrency-limits (VegasLimit, Gradient2Limit) is the
well-known implementation of the same ideas for request concurrency.

* Rounds. One decision per round; every decision begins one. Its first answer (of a
  request sent after the decision: one latency later, the new limit's queue is built)
  marks when measuring starts; the round ends after ``max(ROUND_MIN, limit //
  ROUND_DIVISOR)`` outcomes of requests sent from then on. Answers of requests sent
  before are ignored, overloads excepted.
* Latency of a round: the median of its latencies. Baseline: the minimum of the last
  ``WINDOW_ROUNDS`` round medians, never of single latencies (they jitter ±30 % at no load,
  so their minimum would always see "queueing"). Rounds, not minutes: answers take
  0.5-60 s, so 5 minutes could hold 5 medians (noisy) or 600 (their minimum drifts low
  and a server that got slower is noticed late); 30 rounds are always >= 60 latencies.
  Medians of fewer than ~50 answers are too noisy for a 10 % signal (the minimum of 30
  of them sits 2 standard errors low): hence ``ROUND_MIN``.
* Slow start: the first round (``FIRST_ROUND_MIN`` outcomes at the initial limit) gives
  the first baseline; from then on, as TCP's slow start, every answer of a request sent in
  the round adds one (the limit doubles per latency) while the limit is used (in-flight
  reached ``USED`` of it: an application-limited limit does not grow, as RFC 7661's cwnd
  validation). Each round's end checks its median: within ``NEAR`` of the baseline, slow
  start goes on; queueing or an overload ends it. Growing per answer, not by doubling
  once per round of 48+ outcomes, reaches a large server in a few latencies instead of
  tens, and overshoots it by one latency's growth at most: simulated over 60 latencies
  (tests/test_adaptive.py's server, 20 seeds), capacity 64 served 0.80 -> 0.88 of its
  best, capacity 512 (queue 128) 0.64 -> 0.76, and its 503s fell from 817 to 1-2 a run.
  The first baseline must come from the initial limit: grown during its own round, the
  baseline held queueing, and the limit settled up to 1.8 x a small server's capacity.
* Steady (Vegas): queue = limit × (1 - baseline / median). Below alpha = 0.1·limit + 1
  grow by limit/16, limit/8 from the second growth round in a row; above beta =
  0.2·limit + 1.5 shrink to the no-queue estimate ``limit - queue + alpha`` (at most by
  ``BACKOFF``). Thresholds and steps proportional to the limit converge a large server in
  as many rounds as a small one; the band (alpha 0.1, not Vegas's usual 0.05: above the
  baseline's own bias) is wider than a step, so the limit settles instead of oscillating.
* Overload (502/503/504, timeouts, refused/reset connections): limit × ``BACKOFF`` at
  once; at most one cut per round (a cut begins a round; overloads of requests sent
  before it are its own cause; fresh ones cut again when the round ends).
* Probe: Vegas keeps alpha..beta queued, so no steady median shows the no-load latency
  and the window would forget it (the baseline would creep up with the queue). Every
  ``PROBE_EVERY`` steady rounds, one round runs at the no-queue estimate ``limit ×
  baseline / median``, then the limit is restored (BBR's ProbeRTT, in the small).
* A server that got slower: a deep shrink (by ``1 - DEEP_CUT`` or more) whose next median
  is no faster (within ``NO_GAIN``) found no queue; the window restarts from that median.

Pure and clock-injected; not thread-safe (the supervisor owns it).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable

SLOW_START, STEADY, BACKING_OFF = "slow start", "steady", "backing off"
ROUND_MIN = 48  # outcomes per round: max(ROUND_MIN, limit // ROUND_DIVISOR)
FIRST_ROUND_MIN = 16  # the first round's, at the initial limit: the first baseline
ROUND_DIVISOR = 2
WINDOW_ROUNDS = 30  # baseline: the minimum of this many last round medians
NEAR = 1.15  # slow start: a median within 15 % of the baseline shows no queueing
USED = 0.9  # a limit is used when in-flight reached 90 % of it
ALPHA = (0.1, 1.0)  # steady: grow while queue < 0.1·limit + 1
BETA = (0.2, 1.5)  # steady: shrink once queue > 0.2·limit + 1.5
GROW_DIVISOR = 16  # steady growth: + max(1, limit // GROW_DIVISOR) per round,
GROW_DOUBLINGS = 1  # doubled from the second growth round in a row (limit/8)
BACKOFF = 0.7  # overload: limit × BACKOFF (also the deepest latency-driven cut)
DEEP_CUT = 0.85  # a shrink by 15 % or more, and the next median within
NO_GAIN = 0.95  # 5 % of the last: no queue was found, the server got slower
PROBE_EVERY = 20  # steady rounds between probe rounds (fewer than WINDOW_ROUNDS)


class AdaptiveLimit:
    """Requests allowed in flight to one endpoint, from its latencies and overloads."""

    def __init__(self, *, initial: int = 8, minimum: int = 1, maximum: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if minimum < 1 or maximum < minimum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        self.minimum, self.maximum = minimum, maximum
        self._clock = clock
        self._limit = self._clamp(initial)
        self._phase = SLOW_START
        self._medians: deque[float] = deque(maxlen=WINDOW_ROUNDS)
        self._steady_rounds = 0  # since the last probe round
        self._grown = 0  # consecutive steady rounds that grew the limit
        self._restore: int | None = None  # the limit to go back to after a probe round
        self._shrunk_from: float | None = None  # the median that made the last shrink
        self._rounds = 0
        self._begin_round(cut=False)

    @property
    def limit(self) -> int:
        return self._limit

    def state(self) -> str:
        return self._phase

    @property
    def rounds(self) -> int:
        """Rounds ended so far."""
        return self._rounds

    def sent(self, in_flight: int) -> None:
        if in_flight > self._peak:
            self._peak = in_flight

    def observe(self, sent_at: float, latency_s: float, *, overloaded: bool) -> None:
        if overloaded and not self._cut:
            self._decrease()
            return
        if sent_at < self._round_start:
            return  # sent before the last decision: says nothing about the current limit
        if overloaded:
            self._overloaded = True  # a cut began this round: the round's end cuts again
        elif self._measure_from is None:  # one latency after a change its queue is built:
            self._measure_from = self._clock()  # measure requests sent from now on
            return
        elif sent_at < self._measure_from:
            return
        else:
            self._samples.append(max(latency_s, 1e-6))  # a coarse clock may read 0 s
            if self._phase == SLOW_START and self._medians and self._peak >= USED * self._limit:
                self._limit = self._clamp(self._limit + 1)  # one per answer: x2 per latency
        self._outcomes += 1
        least = ROUND_MIN if self._medians else FIRST_ROUND_MIN
        if self._outcomes >= max(least, self._limit // ROUND_DIVISOR):
            self._end_round()

    def _begin_round(self, *, cut: bool) -> None:
        self._round_start = self._clock()
        self._measure_from: float | None = None
        self._samples: list[float] = []
        self._outcomes = 0
        self._overloaded = False
        self._peak = 0  # the largest in-flight reported by sent() this round
        self._cut = cut  # this round began with an overload cut

    def _set(self, limit: float, phase: str, *, cut: bool = False) -> None:
        self._limit = self._clamp(limit)
        self._phase = phase
        self._begin_round(cut=cut)

    def _clamp(self, limit: float) -> int:
        return max(self.minimum, min(self.maximum, int(limit)))

    def _decrease(self) -> None:
        self._restore = self._shrunk_from = None
        self._grown = 0
        self._set(self._limit * BACKOFF, BACKING_OFF, cut=True)

    def _end_round(self) -> None:
        self._rounds += 1
        if self._overloaded:
            self._decrease()
            return
        median = statistics.median(self._samples)
        if self._shrunk_from is not None and median >= NO_GAIN * self._shrunk_from:
            self._medians.clear()  # a deep cut, no faster: the server itself got slower
        self._shrunk_from = None
        self._medians.append(median)
        ratio = min(self._medians) / median
        if self._restore is not None:  # a probe round: the baseline is measured
            limit, self._restore = self._restore, None
            self._set(limit, STEADY)
            return
        if self._phase == SLOW_START and ratio * NEAR >= 1:
            self._set(self._limit, SLOW_START)  # it grew with each answer
        else:
            self._vegas(ratio, self._peak >= USED * self._limit, median)

    def _vegas(self, ratio: float, used: bool, median: float) -> None:
        """One steady round; ``ratio`` = baseline / median (at most 1)."""
        limit = self._limit
        queue = limit * (1 - ratio)
        alpha, beta = ALPHA[0] * limit + ALPHA[1], BETA[0] * limit + BETA[1]
        self._steady_rounds += 1
        if queue > beta:
            target = max(BACKOFF * limit, round(limit - queue + alpha))
            self._shrunk_from = median if target <= DEEP_CUT * limit else None
            self._set(target, BACKING_OFF)
        elif self._steady_rounds >= PROBE_EVERY:
            self._steady_rounds = 0
            self._restore = limit
            self._set(limit * ratio, STEADY)
        elif queue < alpha and used:
            self._grown += 1
            step = max(1, limit // GROW_DIVISOR) << min(self._grown - 1, GROW_DOUBLINGS)
            self._set(limit + step, STEADY)
            return
        else:
            self._set(limit, STEADY)
        self._grown = 0
