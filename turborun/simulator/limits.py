"""Rate limits the simulator enforces per model, and the headers it reports about them.

Each limited model has two rolling windows, 60 s (at most rpm requests and tpm tokens)
and 1 s (at most rpm/60 and tpm/60): providers enforce short windows too, so a burst of
a whole minute's budget draws 429s here as it would there. A request that finds a window
empty always fits that window, so an rpm below 60 (or a request larger than tpm/60)
still gets through, one at a time. Rejected requests are not charged.

An optional daily request quota (Groq style) is counted over simulated days of 86,400 s
from the server's start.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

DAY_S = 86_400.0
GROQ_DEFAULT_DAILY_REQUESTS = 14_400


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was refused and how long until it would fit."""

    kind: str  # "requests" | "tokens" (OpenAI's and Groq's error "type")
    retry_after_s: float
    window: str  # "RPS", "RPM", "TPS", "TPM", "RPD": names the limit in the message
    limit: float
    used: float
    requested: int


class _Window:
    """Charges of the last ``span_s`` seconds, oldest first, as [arrival, requests, tokens].

    Charges arriving within ``grain_s`` of a bucket's first arrival join that bucket (and
    expire with it): memory and the scan behind a 429's wait stay bounded (span/grain
    buckets) at thousands of requests/s, at the price of expiring up to one grain early.
    """

    __slots__ = ("span_s", "grain_s", "max_requests", "max_tokens", "entries", "count", "tokens")

    def __init__(self, span_s: float, max_requests: float | None, max_tokens: float | None):
        self.span_s = span_s
        self.grain_s = span_s / 1000
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.entries: deque[list[float]] = deque()
        self.count = 0
        self.tokens = 0

    def prune(self, now: float) -> None:
        entries = self.entries
        cutoff = now - self.span_s
        while entries and entries[0][0] <= cutoff:
            _, count, tokens = entries.popleft()
            self.count -= int(count)
            self.tokens -= int(tokens)

    def _fits(self, count: int, tokens: int, cost: int) -> bool:
        if count == 0:
            return True
        if self.max_requests is not None and count + 1 > self.max_requests:
            return False
        return self.max_tokens is None or tokens + cost <= self.max_tokens

    def wait_s(self, now: float, cost: int) -> float:
        """0 if the request fits now, else the time until enough old charges expire."""
        count, tokens = self.count, self.tokens
        if self._fits(count, tokens, cost):
            return 0.0
        for t, spent_requests, spent_tokens in self.entries:
            count -= int(spent_requests)
            tokens -= int(spent_tokens)
            if self._fits(count, tokens, cost):
                return max(t + self.span_s - now, 0.001)
        return 0.001  # unreachable: an empty window always fits

    def blocking_kind(self, cost: int) -> str:
        if self.count and self.max_requests is not None and self.count + 1 > self.max_requests:
            return "requests"
        return "tokens"

    def charge(self, now: float, cost: int) -> None:
        entries = self.entries
        if entries and now - entries[-1][0] < self.grain_s:
            entries[-1][1] += 1
            entries[-1][2] += cost
        else:
            entries.append([now, 1, cost])
        self.count += 1
        self.tokens += cost

    def reset_s(self, now: float) -> float:
        """Time until the oldest charge in the window expires (0 when empty)."""
        return max(self.entries[0][0] + self.span_s - now, 0.0) if self.entries else 0.0


class ModelLimit:
    """One model's windows and daily quota; times come from the caller's monotonic clock."""

    __slots__ = ("rpm", "tpm", "daily", "minute", "second", "day_start", "day_used")

    def __init__(
        self, rpm: float | None, tpm: float | None, daily: int | None, start: float
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.daily = daily
        self.minute = _Window(60.0, rpm, tpm)
        self.second = _Window(
            1.0, rpm / 60 if rpm is not None else None, tpm / 60 if tpm is not None else None
        )
        self.day_start = start
        self.day_used = 0

    def _roll_day(self, now: float) -> None:
        if now - self.day_start >= DAY_S:
            self.day_start += DAY_S * math.floor((now - self.day_start) / DAY_S)
            self.day_used = 0

    def admit(self, now: float, cost: int) -> Rejection | None:
        """Charge the request and return None, or refuse it without charging."""
        self._roll_day(now)
        if self.daily is not None and self.day_used >= self.daily:
            wait = self.day_start + DAY_S - now
            return Rejection("requests", wait, "RPD", self.daily, self.day_used, 1)
        self.minute.prune(now)
        self.second.prune(now)
        waits = [(w.wait_s(now, cost), w) for w in (self.second, self.minute)]
        wait, window = max(waits, key=lambda pair: pair[0])
        if wait > 0:
            return self._rejection(window, wait, cost)
        self.minute.charge(now, cost)
        self.second.charge(now, cost)
        self.day_used += 1
        return None

    def _rejection(self, window: _Window, wait: float, cost: int) -> Rejection:
        kind = window.blocking_kind(cost)
        per = "M" if window.span_s == 60.0 else "S"
        if kind == "requests":
            limit, used, requested = window.max_requests or 0.0, window.count, 1
        else:
            limit, used, requested = window.max_tokens or 0.0, window.tokens, cost
        return Rejection(kind, wait, ("R" if kind == "requests" else "T") + "P" + per,
                         limit, used, requested)  # fmt: skip

    def openai_headers(self, now: float) -> list[tuple[str, str]]:
        """x-ratelimit-* as OpenAI sends them: per-minute requests and tokens."""
        self.minute.prune(now)
        headers: list[tuple[str, str]] = []
        reset = format_duration(self.minute.reset_s(now))
        if self.rpm is not None:
            remaining = max(int(self.rpm) - self.minute.count, 0)
            headers += _triple("requests", int(self.rpm), remaining, reset)
        headers += self._token_headers(reset)
        return headers

    def groq_headers(self, now: float) -> list[tuple[str, str]]:
        """x-ratelimit-* as Groq sends them: requests per DAY, tokens per minute."""
        self._roll_day(now)
        self.minute.prune(now)
        daily = self.daily if self.daily is not None else GROQ_DEFAULT_DAILY_REQUESTS
        day_reset = format_duration(self.day_start + DAY_S - now)
        headers = _triple("requests", daily, max(daily - self.day_used, 0), day_reset)
        return headers + self._token_headers(format_duration(self.minute.reset_s(now)))

    def _token_headers(self, reset: str) -> list[tuple[str, str]]:
        if self.tpm is None:
            return []
        remaining = max(int(self.tpm) - self.minute.tokens, 0)
        return _triple("tokens", int(self.tpm), remaining, reset)


def _triple(what: str, limit: int, remaining: int, reset: str) -> list[tuple[str, str]]:
    return [
        (f"x-ratelimit-limit-{what}", str(limit)),
        (f"x-ratelimit-remaining-{what}", str(remaining)),
        (f"x-ratelimit-reset-{what}", reset),
    ]


def format_duration(seconds: float) -> str:
    """Go-style durations as the providers send them: "0s", "250ms", "1.5s", "6m0s", "1h2m3s"."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest_ms = divmod(ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rejection_message(rejection: Rejection, model: str, groq: bool) -> str:
    """The 429 message in the provider's wording (Groq: "Please try again in 5.289s")."""
    names = {
        "RPS": "requests per second (RPS)",
        "RPM": "requests per min (RPM)",
        "TPS": "tokens per second (TPS)",
        "TPM": "tokens per min (TPM)",
        "RPD": "requests per day (RPD)",
    }
    if groq:
        wait = format_duration(rejection.retry_after_s)
        return (
            f"Rate limit reached for model `{model}` in organization `org_simulated` service "
            f"tier `on_demand` on {names[rejection.window]}: Limit {rejection.limit:g}, "
            f"Used {rejection.used:g}, Requested {rejection.requested}. "
            f"Please try again in {wait}."
        )
    return (
        f"Rate limit reached for {model} in organization org-simulated on "
        f"{names[rejection.window]}: Limit {rejection.limit:g}, Used {rejection.used:g}, "
        f"Requested {rejection.requested}. "
        f"Please try again in {format_duration(rejection.retry_after_s)}."
    )
