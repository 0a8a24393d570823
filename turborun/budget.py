"""Rate-limit budgets: RPM/TPM pacing per (provider, model), learning limits from
response headers and 429s, daily-quota parking and a circuit breaker.

Owned and called by the supervisor only (one thread); time comes from an injected
clock, so the logic is tested without sleeping. The supervisor asks ``ready_at(cost)``
("when may a request of this cost go?"), waits exactly that long in its one wait,
then ``spend``s, and later ``settle``s every outcome once.

Pacing. Providers enforce per-minute limits over short windows too (a 6,000 RPM
limit acts as 100 requests in any second), so a bucket must never send a minute's
worth at once. Two mechanisms, per dimension (requests and tokens):

* GCRA (virtual scheduling) at ``limit/60 * (1 - MARGIN)`` per second spreads sends
  evenly: a request waits until its whole cost fits the schedule. A small burst
  tolerance (``REQUEST_BURST_S``, ``TOKEN_BURST_S``) keeps the milliseconds a late
  wake-up would otherwise lose forever (the schedule, not the wake-up, sets the next
  slot).
* Sliding-window logs, the hard guarantee GCRA alone lacks (it may overrun a window by
  one request's cost): at most ``limit/60`` in any ``1/(1 - WINDOW_MARGIN)`` s and at
  most ``limit`` in any ``60/(1 - WINDOW_MARGIN)`` s. The margin is time rather than
  count, so it also holds for small limits (10 RPM: ten requests per 1.02 s, not nine
  per second), and it absorbs ~20 ms of jitter between our send and the provider's
  clock. A request always fits an empty window, so one larger than a window's cap
  still goes, alone.

Unknown limits: one probe request goes first and its x-ratelimit-* headers set the
limits (read per provider: Groq's request headers count per day); an answer without
headers means unlimited. While no probe has answered, the probes allowed in flight
double every PROBE_PATIENCE_S (1, 2, 4, 8, ...): a slow start, not a stall.

Costs are estimated prompt tokens (times a learned actual/estimated ratio) plus the
requested output, or ``DEFAULT_OUTPUT_RESERVATION`` when the body asks for none.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import deque
from collections.abc import Callable

from turborun.config import Limit
from turborun.records import (
    CONNECTION,
    INVALID_RESPONSE,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    Outcome,
)

MARGIN = 0.02  # pace at 98 % of a limit; windows are 2 % longer than the provider's
# GCRA tolerance: a late wake-up (or a wait the windows imposed) of up to this much is
# caught up instead of lost. The windows below cap what it can add to any second. Kept
# small for requests: a larger one lets the schedule run ahead into the window cap, whose
# expiries then echo the first burst every second. Larger for tokens, where mixed costs
# make the windows bind anyway (TPM-bound, max_tokens 50-2,000, fake-clock simulation:
# 0.946 of the limit at 20 ms, 0.957 at 100 ms).
REQUEST_BURST_S = 0.02
TOKEN_BURST_S = 0.1
WINDOW_MARGIN = MARGIN  # windows 2 % longer than the provider's: ~20 ms of jitter absorbed
# Reserved output of a request that names no max_tokens: OpenAI charges the request's
# own estimate then, and the simulator 16 tokens (the OpenAI cookbook reserves 15).
# A bucket whose successes report no output tokens (embeddings) reserves none.
DEFAULT_OUTPUT_RESERVATION = 16
SLOWDOWN = 0.8  # a short-window 429 multiplies the pace by this ...
MIN_PACE = 0.05
RECOVERY_PER_S = 0.2 / 60  # ... and successes win it back, +20 % of the limit a minute
HOLD_WITHOUT_RETRY_AFTER_S = 1.0  # a 429 without retry-after holds its bucket this long
DAILY_RETRY_AFTER_S = 60.0  # a 429 asking to wait longer is an exhausted daily quota
DEFAULT_PARK_S = 60.0  # an exhausted daily quota that names no reset: ask again then
MAX_MINUTE_HOLD_S = 60.0  # remaining 0 on a per-minute limit: at most a minute
MAX_COOLDOWN_S = 300.0
# A bucket with an unknown limit sends one probe and waits for its headers; while none has
# answered (long generations take 10-60 s), the probes allowed in flight double every
# PROBE_PATIENCE_S, so a slow first answer delays the batch by seconds, not minutes.
PROBE_PATIENCE_S = 2.0
MIN_TRAFFIC_TO_LEARN = 10  # requests in the last minute before a 429 may set a limit
BREAKER_KINDS = frozenset({SERVER_ERROR, TIMEOUT, CONNECTION, INVALID_RESPONSE})
RATIO_BOUNDS = (0.25, 4.0)
RATIO_DECAY = 0.98  # actual/estimated prompt ratio: weight of the past per observation
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_JITTER_S = 0.25  # at most this much added to a server's retry-after

_INF = math.inf


class _Window:
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
        if _fits(requests, tokens, max_requests, max_tokens, cost):
            return -_INF  # not ``now``: a caller's earlier clock reading must see "go"
        for _, last, spent_requests, spent_tokens in self.entries:
            requests -= spent_requests
            tokens -= spent_tokens
            if _fits(requests, tokens, max_requests, max_tokens, cost):
                return last + self.span_s
        return -_INF  # unreachable: an empty window always fits

    def sum_since(self, since: float) -> float:
        return sum(e[3] for e in self.entries if e[1] > since)


def _fits(requests: float, tokens: float, max_requests: float | None,
          max_tokens: float | None, cost: int) -> bool:  # fmt: skip
    if requests < 0.5:  # empty: any single request fits (it may exceed a cap alone)
        return True
    if max_requests is not None and requests + 1 > max_requests + 1e-9:
        return False
    return max_tokens is None or tokens + cost <= max_tokens + 1e-9


class _Pace:
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


class Budget:
    """The buckets of one run, one per (provider, model), created on first use."""

    def __init__(
        self,
        limit_for: Callable[[str, str], Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        breaker_failures: int = 8,
        breaker_cooldown_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._limit_for = limit_for
        self._clock = clock
        self._breaker_failures = breaker_failures
        self._breaker_cooldown_s = breaker_cooldown_s
        self.rng = rng if rng is not None else random.Random()
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def bucket(self, provider: str, model: str) -> Bucket:
        key = (provider, model)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(
                provider,
                model,
                self._limit_for(provider, model),
                clock=self._clock,
                breaker_failures=self._breaker_failures,
                breaker_cooldown_s=self._breaker_cooldown_s,
            )
        return bucket

    def buckets(self) -> list[Bucket]:
        return list(self._buckets.values())


class Bucket:
    """Pacing and health of one (provider, model). ``rpm``/``tpm``: the per-minute
    limits in force (configured or learned, times the 429 slow-down); None: none known,
    not paced in that dimension."""

    def __init__(
        self,
        provider: str,
        model: str,
        configured: Limit,
        *,
        clock: Callable[[], float],
        breaker_failures: int = 8,
        breaker_cooldown_s: float = 30.0,
    ) -> None:
        self.provider = provider
        self.model = model
        self.configured = configured
        self.rate_limited = 0
        self.in_flight = 0
        self._clock = clock
        self._learned_rpm: float | None = None
        self._learned_tpm: float | None = None
        self.daily_requests: float | None = None  # Groq's per-day request quota, if told
        self._pace_factor = 1.0
        self._last_recovery = 0.0
        self._slow_stale = 0  # outcomes still due from before the last slow-down
        self._learning = configured.rpm is None or configured.tpm is None
        self._probes_in_flight = 0
        self._probes_started_at = -_INF  # when the current round of probes began
        self._hold_until = -_INF  # retry-after, or a per-minute limit at remaining 0
        self._park_until = -_INF  # an exhausted daily quota
        self._request_pace = _Pace(REQUEST_BURST_S)
        self._token_pace = _Pace(TOKEN_BURST_S)
        self._second = _Window(1.0 / (1.0 - WINDOW_MARGIN))
        self._minute = _Window(60.0 / (1.0 - WINDOW_MARGIN))
        self._estimated_sum = 0.0
        self._actual_sum = 0.0
        self._produces_output: bool | None = False if "embed" in model.lower() else None
        self._breaker = _Breaker(breaker_failures, breaker_cooldown_s)

    # ---- limits in force ------------------------------------------------------------

    @property
    def rpm(self) -> float | None:
        base = _lower(self.configured.rpm, self._learned_rpm)
        return None if base is None else base * self._pace_factor

    @property
    def tpm(self) -> float | None:
        base = _lower(self.configured.tpm, self._learned_tpm)
        return None if base is None else base * self._pace_factor

    def prompt_ratio(self) -> float:
        """Actual/estimated prompt tokens seen so far (1.0 before any usage came back)."""
        if self._estimated_sum <= 0:
            return 1.0
        low, high = RATIO_BOUNDS
        return min(high, max(low, self._actual_sum / self._estimated_sum))

    def cost(self, prompt_tokens: int, max_output_tokens: int) -> int:
        """Tokens a request reserves: its prompt estimate corrected by the learned ratio,
        plus its requested output (or DEFAULT_OUTPUT_RESERVATION when it names none,
        0 for a bucket whose answers carry no output tokens, such as embeddings)."""
        output = max_output_tokens
        if output <= 0:
            output = 0 if self._produces_output is False else DEFAULT_OUTPUT_RESERVATION
        return math.ceil(max(prompt_tokens, 0) * self.prompt_ratio()) + output

    # ---- pacing ---------------------------------------------------------------------

    def ready_at(self, tokens: int) -> float:
        """Earliest clock() time a request costing ``tokens`` may be sent (≤ now: now);
        math.inf while only an outcome can unblock it (the breaker's probe in flight)."""
        now = self._clock()
        at = max(self._hold_until, self._park_until)
        breaker = self._breaker
        if breaker.open:
            if now < breaker.open_until:
                return max(at, breaker.open_until)
            if breaker.probe_in_flight:
                return _INF
        if self._learning:
            if self._probes_in_flight:
                # 2**k probes allowed after k patience periods: the next one may go
                # once 2**k exceeds those in flight.
                doublings = self._probes_in_flight.bit_length()
                return max(at, self._probes_started_at + PROBE_PATIENCE_S * doublings)
            return at
        rpm, tpm = self.rpm, self.tpm
        if rpm is None and tpm is None:
            return at
        request_rate, token_rate = _rate(rpm), _rate(tpm)
        at = max(
            at,
            self._request_pace.ready_at(request_rate, 1),
            self._token_pace.ready_at(token_rate, tokens),
        )
        per_s_requests = None if rpm is None else rpm / 60
        per_s_tokens = None if tpm is None else tpm / 60
        at = max(at, self._second.ready_at(now, per_s_requests, per_s_tokens, tokens))
        return max(at, self._minute.ready_at(now, rpm, tpm, tokens))

    def spend(self, tokens: int) -> None:
        """A request costing ``tokens`` is sent now."""
        now = self._clock()
        self.in_flight += 1
        if self._learning:
            if not self._probes_in_flight:
                self._probes_started_at = now
            self._probes_in_flight += 1
        if self._breaker.open and now >= self._breaker.open_until:
            self._breaker.probe_in_flight = True
        self._request_pace.spend(now, _rate(self.rpm), 1)
        self._token_pace.spend(now, _rate(self.tpm), tokens)
        self._second.add(now, 1, tokens)
        self._minute.add(now, 1, tokens)

    def tokens_last_minute(self) -> int:
        now = self._clock()
        self._minute.prune(now)
        return int(self._minute.sum_since(now - 60.0))

    def state(self) -> str:
        """ "ok" | "learning" | "slowed" | "parked" | "open" (breaker) | "probing"."""
        now = self._clock()
        if self._breaker.open:
            return "open" if now < self._breaker.open_until else "probing"
        if now < self._park_until:
            return "parked"
        if self._learning:
            return "learning"
        if self._pace_factor < 1.0 or now < self._hold_until:
            return "slowed"
        return "ok"

    # ---- outcomes -------------------------------------------------------------------

    def settle(self, outcome: Outcome, tokens: int, prompt_tokens: int) -> bool:
        """Account one outcome of a request this bucket paid for (exactly once). True: a
        429 from an exhausted daily quota; re-queue the request without counting an
        attempt, the bucket stays parked until the quota resets."""
        now = self._clock()
        self.in_flight = max(0, self.in_flight - 1)
        stale = self._slow_stale > 0  # sent before the last slow-down took effect
        self._slow_stale = max(0, self._slow_stale - 1)
        self._learn_headers(outcome.rate_headers, now)
        quota = False
        if outcome.error_kind == RATE_LIMITED:
            self.rate_limited += 1
            quota = self._on_rate_limited(outcome, now, stale)
        elif outcome.ok:
            self._reconcile(outcome, prompt_tokens, now)
            self._recover(now)
        self._breaker.settle(outcome.error_kind, now, self.in_flight)
        if self._learning and self._probes_in_flight:
            self._probes_in_flight -= 1
            # An HTTP answer taught what it could; what it did not tell stays unlimited.
            # No answer at all (timeout, connection) teaches nothing: probe again.
            self._learning = outcome.status_code is None
        return quota

    def _learn_headers(self, headers: dict[str, str], now: float) -> None:
        if not headers:
            return
        tokens_limit = _number(headers.get("x-ratelimit-limit-tokens"))
        if tokens_limit is not None and tokens_limit > 0:
            self._learned_tpm = tokens_limit
        if _number(headers.get("x-ratelimit-remaining-tokens")) == 0:
            self._hold_minute(headers.get("x-ratelimit-reset-tokens"), now)
        requests_limit = _number(headers.get("x-ratelimit-limit-requests"))
        remaining_requests = _number(headers.get("x-ratelimit-remaining-requests"))
        if self.provider == "groq":  # Groq's request headers count per DAY
            self.daily_requests = requests_limit
            if remaining_requests == 0:
                self._park(_reset_s(headers.get("x-ratelimit-reset-requests")), now)
            return
        if requests_limit is not None and requests_limit > 0:
            self._learned_rpm = requests_limit
        if remaining_requests == 0:
            self._hold_minute(headers.get("x-ratelimit-reset-requests"), now)

    def _hold_minute(self, reset: str | None, now: float) -> None:
        wait_s = _reset_s(reset)
        wait_s = HOLD_WITHOUT_RETRY_AFTER_S if wait_s is None else min(wait_s, MAX_MINUTE_HOLD_S)
        self._hold_until = max(self._hold_until, now + wait_s)

    def _park(self, wait_s: float | None, now: float) -> None:
        self._park_until = max(self._park_until, now + (wait_s or DEFAULT_PARK_S))

    def _on_rate_limited(self, outcome: Outcome, now: float, stale: bool) -> bool:
        message = _LimitMessage.parse(outcome.error_message or "")
        retry_after_s = outcome.retry_after_s
        wait_s = retry_after_s if retry_after_s is not None else message.wait_s
        groq_quota = self.provider == "groq" and (
            _number(outcome.rate_headers.get("x-ratelimit-remaining-requests")) == 0
        )
        if message.daily or groq_quota or (wait_s is not None and wait_s > DAILY_RETRY_AFTER_S):
            reset = _reset_s(outcome.rate_headers.get("x-ratelimit-reset-requests"))
            self._park(wait_s if wait_s is not None else reset, now)
            return True
        learned = self._learn_from_message(message) or self._learn_from_traffic(message, now)
        if not learned and not stale:
            self._pace_factor = max(MIN_PACE, self._pace_factor * SLOWDOWN)
            self._slow_stale = self.in_flight  # their fate was sealed before this slow-down
        self._last_recovery = now
        hold_s = HOLD_WITHOUT_RETRY_AFTER_S if wait_s is None else wait_s
        self._hold_until = max(self._hold_until, now + hold_s)
        return False

    def _learn_from_message(self, message: _LimitMessage) -> bool:
        """A 429 that names the limit it hit ("... (RPM): Limit 30, Used 30 ...") teaches
        that limit when it is below the one in force; True if it did."""
        if message.limit_per_min is None:
            return False
        if message.kind == "requests":
            if self.rpm is None or message.limit_per_min < self.rpm:
                self._learned_rpm = _lower(self._learned_rpm, message.limit_per_min)
                return True
        elif message.kind == "tokens" and (self.tpm is None or message.limit_per_min < self.tpm):
            self._learned_tpm = _lower(self._learned_tpm, message.limit_per_min)
            return True
        return False

    def _learn_from_traffic(self, message: _LimitMessage, now: float) -> bool:
        """A 429 on a dimension with no known limit whose message names none: start from
        SLOWDOWN times what the last minute let through, once that says something (a
        429 among the first few requests teaches only its retry-after)."""
        self._minute.prune(now)
        if self._minute.requests < MIN_TRAFFIC_TO_LEARN:
            return False
        if message.kind == "tokens":
            if self.tpm is not None:
                return False
            self._learned_tpm = max(1.0, SLOWDOWN * self._minute.tokens)
            return True
        if self.rpm is not None:
            return False
        self._learned_rpm = max(1.0, SLOWDOWN * (self._minute.requests - 1))
        return True

    def _reconcile(self, outcome: Outcome, prompt_tokens: int, now: float) -> None:
        """The provider charged its own prompt count: correct the ledger by the
        difference and learn the actual/estimated ratio that ``cost`` applies."""
        if outcome.output_tokens is not None:
            if outcome.output_tokens > 0:
                self._produces_output = True
            elif self._produces_output is None:
                self._produces_output = False
        actual = outcome.input_tokens
        if actual is None or prompt_tokens <= 0:
            return
        difference = actual - math.ceil(prompt_tokens * self.prompt_ratio())
        self._estimated_sum = self._estimated_sum * RATIO_DECAY + prompt_tokens
        self._actual_sum = self._actual_sum * RATIO_DECAY + actual
        self._token_pace.shift(_rate(self.tpm), difference)
        if difference > 0:
            # Under-charged: the provider's windows hold more than ours. Charging the rest
            # now errs late (the safe side); an over-charge simply expires.
            self._second.add(now, 0, difference)
            self._minute.add(now, 0, difference)

    def _recover(self, now: float) -> None:
        if self._pace_factor < 1.0:
            elapsed = max(0.0, now - self._last_recovery)
            self._pace_factor = min(1.0, self._pace_factor + RECOVERY_PER_S * elapsed)
        self._last_recovery = now


class _Breaker:
    """Consecutive failures (5xx, timeouts, connection, invalid bodies; not 4xx, not
    429) open the breaker for a cool-down; then one probe goes: success closes it,
    failure re-opens it for twice as long (at most MAX_COOLDOWN_S)."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.threshold = max(1, failures)
        self.base_cooldown_s = cooldown_s
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open = False
        self.open_until = -_INF
        self.probe_in_flight = False
        self.stale = 0  # outcomes of requests sent before the breaker opened

    def settle(self, error_kind: str | None, now: float, in_flight: int) -> None:
        failed = error_kind in BREAKER_KINDS
        if self.open:
            if self.stale > 0:
                self.stale -= 1
            elif self.probe_in_flight:
                self.probe_in_flight = False
                if failed:
                    self.cooldown_s = min(self.cooldown_s * 2, MAX_COOLDOWN_S)
                    self.open_until = now + self.cooldown_s
                else:  # the server answered: closed
                    self.open, self.failures = False, 0
                    self.cooldown_s = self.base_cooldown_s
            return
        if failed:
            self.failures += 1
            if self.failures >= self.threshold:
                self.open, self.open_until, self.stale = True, now + self.cooldown_s, in_flight
        elif error_kind is None:
            self.failures = 0


class _LimitMessage:
    """What a 429's message says: "... on requests per min (RPM): Limit 30, Used 30,
    Requested 1. Please try again in 2s." (OpenAI and Groq word them alike)."""

    __slots__ = ("kind", "daily", "limit_per_min", "wait_s")

    _WINDOW = re.compile(r"\b([RT])P([SMDH])\b")
    _WORDS = re.compile(r"\b(requests|tokens) per (second|sec|min|minute|hour|day)\b", re.I)
    _LIMIT = re.compile(r"\bLimit:?\s*([0-9][0-9,]*(?:\.[0-9]+)?)")
    _WAIT = re.compile(r"try again in\s*([0-9][0-9.hmsµun]*)", re.I)
    _DAILY = re.compile(r"per day|\bdaily\b|\b[RT]PD\b", re.I)
    _PER_MIN = {"S": 60.0, "M": 1.0, "H": 1 / 60, "D": None}

    def __init__(self) -> None:
        self.kind: str | None = None  # "requests" | "tokens"
        self.daily = False
        self.limit_per_min: float | None = None
        self.wait_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> _LimitMessage:
        message = cls()
        window = cls._WINDOW.search(text)
        period: str | None = None
        if window is not None:
            message.kind = "requests" if window.group(1) == "R" else "tokens"
            period = window.group(2)
        else:
            words = cls._WORDS.search(text)
            if words is not None:
                message.kind = words.group(1).lower()
                period = words.group(2)[0].upper()
        message.daily = bool(cls._DAILY.search(text))
        limit = cls._LIMIT.search(text)
        scale = cls._PER_MIN.get(period) if period is not None else None
        if limit is not None and scale is not None:
            message.limit_per_min = float(limit.group(1).replace(",", "")) * scale
        wait = cls._WAIT.search(text)
        if wait is not None:
            message.wait_s = parse_reset(wait.group(1).rstrip("."))
        return message


def retry_delay_s(attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
    """Delay before the next attempt (``attempt``: the 1-based attempt that failed): the
    server's retry-after when given (never earlier, plus a little jitter so a crowd told
    the same moment does not return at once), else exponential backoff from 0.5 s,
    doubling, capped at 30 s, with equal jitter (half fixed, half random)."""
    if retry_after_s is not None and retry_after_s >= 0:
        return retry_after_s + rng.uniform(0.0, min(RETRY_AFTER_JITTER_S, 0.1 * retry_after_s))
    base_s = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(max(attempt - 1, 0), 30))
    return base_s / 2 + rng.uniform(0.0, base_s / 2)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_reset(value: str) -> float | None:
    """Seconds of a reset header: Go durations ("1s", "6m0s", "250ms", "1h2m3.5s") or a
    plain number of seconds ("0.2"); None when it is neither."""
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _reset_s(value: str | None) -> float | None:
    return None if value is None else parse_reset(value)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _rate(per_minute: float | None) -> float | None:
    """Pace per second for a per-minute limit, MARGIN below it."""
    return None if per_minute is None else per_minute * (1.0 - MARGIN) / 60.0
