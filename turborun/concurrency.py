"""How many requests to keep in flight: Little's law, per (provider, model).

Keeping a rate R busy at latency L takes R × L requests in flight. For each bucket
with work to do, the supervisor's target counts

    known limits:  R = min(RPM / 60, TPM / 60 / tokens per request) (the limits in
                   force, 429 slow-downs included), L = the 90th percentile of its
                   recent latencies (before any answer: the latency model's expectation,
                   or the age of its oldest request, whichever is longer), × HEADROOM;
    no limits:     what its endpoints' adaptive limits and caps allow (endpoints.py);
    still probing: its probes in flight plus one (at least FIRST_PROBES);

each at most what the bucket has in flight plus ready. The target is their sum,
never below ``start`` (120: what a run holds before it knows anything) and never
above ``ceiling`` (``--max-in-flight``, and what the open-file limit allows). A
fixed ``--workers N`` makes it N. The pacing still decides *when* each request
goes; the target only makes sure a paced request always finds room.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

HEADROOM = 1.25
LATENCY_SAMPLES = 256
HIGH_PERCENTILE = 0.9
COST_DECAY = 0.98  # weight of the past in the mean tokens per request


@dataclass(slots=True)
class BucketLoad:
    """What one bucket's demand is computed from: recent latencies, tokens per
    request, when it first sent."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    first_sent: float | None = None
    tokens_per_request: float = 0.0

    def sent(self, now: float, tokens: int) -> None:
        if self.first_sent is None:
            self.first_sent = now
            self.tokens_per_request = float(tokens)
        else:
            self.tokens_per_request = self.tokens_per_request * COST_DECAY + tokens * (
                1.0 - COST_DECAY
            )

    def observe(self, latency_s: float) -> None:
        self.latencies.append(latency_s)

    def high_latency_s(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)  # at most LATENCY_SAMPLES, a few times a second
        return ordered[min(len(ordered) - 1, int(HIGH_PERCENTILE * len(ordered)))]

    def latency_s(self, now: float, expected_s: float) -> float:
        """The latency to size for: measured high percentile; before any answer, the
        longer of the expectation and the oldest request's age."""
        high = self.high_latency_s()
        if high is not None:
            return high
        age = 0.0 if self.first_sent is None else now - self.first_sent
        return max(expected_s, age)


def rate_demand(
    rpm: float | None, tpm: float | None, tokens_per_request: float, latency_s: float
) -> float:
    """Requests in flight that keep a bucket with these limits busy (inf: no limit)."""
    rates = []
    if rpm is not None:
        rates.append(rpm / 60.0)
    if tpm is not None:
        rates.append(tpm / 60.0 / max(1.0, tokens_per_request))
    if not rates:
        return math.inf
    return min(rates) * latency_s * HEADROOM + 1.0


@dataclass(slots=True)
class InFlightTarget:
    """The pool's in-flight target. ``fixed``: ``--workers N`` (the target is N)."""

    start: int
    ceiling: int
    fixed: int | None = None
    value: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.value = self.fixed if self.fixed is not None else min(self.start, self.ceiling)
        self.peak = self.value

    def update(self, demands: list[float]) -> int:
        if self.fixed is None:
            total = sum(demands)
            wanted = self.ceiling if math.isinf(total) else math.ceil(total)
            self.value = max(1, min(self.ceiling, max(self.start, wanted)))
            self.peak = max(self.peak, self.value)
        return self.value
