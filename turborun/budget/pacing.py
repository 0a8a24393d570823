"""Pacing primitives of a budget, both per dimension (requests or tokens):

* ``Pace``: GCRA (virtual scheduling). Sends are spread evenly at a rate; a request
  waits until its whole cost fits the schedule, with a small burst tolerance so the
  milliseconds a late wake-up would lose are kept (the schedule, not the wake-up, sets
  the next slot).
* ``Window``: a sliding-window log, the hard guarantee GCRA alone lacks (it may overrun
  a window by one request's cost). A request always fits an empty window, so one larger
  than a window's cap still goes, alone.

Times are the budget's clock readings; -inf means "now, whatever now is".
"""

from __future__ import annotations

import math
from collections import deque

_INF = math.inf


class Window:
    """Sends of the last ``span_s`` seconds as [first, last, requests, tokens], oldest
    first. Sends within ``span_s / 1000`` of an entry's first join it and expire with its
    last: memory and scans stay bounded, and expiry errs late (the safe side)."""

    __slots__ = ("span_s", "grain_s", "entries", "requests", "tokens")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.grain_s = span_s / 1000
        self.entries: deque[list[float]] = deque()
        self.requests = 0.0
        self.tokens = 0.0

    def prune(self, now: float) -> None:
        cutoff = now - self.span_s
        entries = self.entries
        while entries and entries[0][1] <= cutoff:
            _, _, requests, tokens = entries.popleft()
            self.requests -= requests
            self.tokens -= tokens

    def add(self, now: float, requests: int, tokens: float) -> None:
        entries = self.entries
        if entries and now - entries[-1][0] < self.grain_s:
            last = entries[-1]
            last[1] = max(last[1], now)
            last[2] += requests
            last[3] += tokens
        else:
            entries.append([now, now, requests, tokens])
        self.requests += requests
        self.tokens += tokens

    def ready_at(self, now: float, max_requests: float | None, max_tokens: float | None,
                 cost: int) -> float:  # fmt: skip
        """Earliest time a request of ``cost`` fits (-inf if it fits already)."""
        self.prune(now)
        requests, tokens = self.requests, self.tokens
        if fits(requests, tokens, max_requests, max_tokens, cost):
            return -_INF  # not ``now``: a caller's earlier clock reading must see "go"
        for _, last, spent_requests, spent_tokens in self.entries:
            requests -= spent_requests
            tokens -= spent_tokens
            if fits(requests, tokens, max_requests, max_tokens, cost):
                return last + self.span_s
        return -_INF  # unreachable: an empty window always fits

    def sum_since(self, since: float) -> float:
        return sum(e[3] for e in self.entries if e[1] > since)


def fits(requests: float, tokens: float, max_requests: float | None,
          max_tokens: float | None, cost: int) -> bool:  # fmt: skip
    if requests < 0.5:  # empty: any single request fits (it may exceed a cap alone)
        return True
    if max_requests is not None and requests + 1 > max_requests + 1e-9:
        return False
    return max_tokens is None or tokens + cost <= max_tokens + 1e-9


class Pace:
    """GCRA for one dimension: ``tat`` is the theoretical time the sends so far are paid
    for. A request of increment ``cost/rate`` may go when ``tat + increment`` is at most
    ``burst_s`` ahead of now."""

    __slots__ = ("tat", "burst_s")

    def __init__(self, burst_s: float) -> None:
        self.tat = -_INF
        self.burst_s = burst_s

    def ready_at(self, rate_per_s: float | None, cost: float) -> float:
        if rate_per_s is None:
            return -_INF
        return self.tat + cost / rate_per_s - self.burst_s

    def spend(self, now: float, rate_per_s: float | None, cost: float) -> None:
        if rate_per_s is None:
            return
        increment = cost / rate_per_s
        self.tat = max(self.tat, now - increment) + increment

    def shift(self, rate_per_s: float | None, tokens: float) -> None:
        if rate_per_s is not None and self.tat > -_INF:
            self.tat += tokens / rate_per_s
