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
  per second), and it absorbs ~25 ms of jitter between our send and the provider's
  clock. A request always fits an empty window, so one larger than a window's cap
  still goes, alone.
* Until WARM_S after its first answer a bucket keeps WARM_MARGIN (5 %) instead, in pace
  and in the one-second window: sends reach the provider least evenly while a run opens
  its connections and meets its first answers.

Unknown limits: FIRST_PROBES probe requests go first and the first answer's
x-ratelimit-* headers set the limits (read per provider: Groq's request headers count
per day); an answer without headers means unlimited. While no probe has answered, the
probes allowed in flight double every PROBE_PATIENCE_S (4, 8, 16, ...): a slow start,
not a stall.

Costs are estimated prompt tokens (times a learned actual/estimated ratio) plus the
requested output, or ``DEFAULT_OUTPUT_RESERVATION`` when the body asks for none.

Health: the circuit breaker (breaker.py) pauses a bucket whose recent outcomes are
mostly failures. A bucket that has never had an answer at all (every attempt refused, reset
or timed out: a closed port, no network, a wrong host) gives up after ``give_up_s`` (two
first cool-downs, 60 s by default) counted from its first request: ``unreachable`` then
says why, and the supervisor fails its tasks instead of probing forever. A request whose
cost exceeds the bucket's tokens-per-minute limit can never be sent: ``too_large`` says
so, and the supervisor fails it at once. A request lost with a dead worker process is
``release``d instead of settled: it frees its slot without counting as a failure.
``pause_reason`` says why a bucket is not sending, when the reason is not ordinary pacing.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable

from turborun.budget.breaker import MIN_FAILURES, Breaker, seconds
from turborun.budget.limit_signals import LimitMessage, number, reset_s
from turborun.budget.pacing import Pace, Window
from turborun.config import Limit
from turborun.records import CONNECTION, RATE_LIMITED, TIMEOUT, Outcome

# Pace at 97.5 % of a limit; windows are 2.5 % longer than the provider's. At 2 % (20 ms)
# a 30,000 RPM run at 3 s answers on 2 busy cores still drew 1-5 per-second 429s per
# 6,000 requests (CPU contention delays some sends by 20-30 ms more than others); at
# 2.5 %, and with quiet_gc.py, 0 in 11 of 21 runs, 1-10 in the others (stalls of up to
# 60 ms, in the first seconds: see WARM_MARGIN; with it, 0 in 12 of 12). A run can use
# at most 1/(1 + jitter) of a limit without a 429: a 3 % margin throughout would leave
# bench_ratelimit at its 0.97 floor.
MARGIN = 0.025
# GCRA tolerance: a late wake-up (or a wait the windows imposed) of up to this much is
# caught up instead of lost. The windows below cap what it can add to any second. Kept
# small for requests: a larger one lets the schedule run ahead into the window cap, whose
# expiries then echo the first burst every second. Larger for tokens, where mixed costs
# make the windows bind anyway (TPM-bound, max_tokens 50-2,000, fake-clock simulation:
# 0.946 of the limit at 20 ms, 0.957 at 100 ms).
REQUEST_BURST_S = 0.02
TOKEN_BURST_S = 0.1
WINDOW_MARGIN = MARGIN  # windows 2.5 % longer than the provider's: ~25 ms of jitter absorbed
# Until WARM_S after a bucket's first answer, pace and the one-second window keep
# WARM_MARGIN instead: a run's first seconds open its connections and then meet its first
# answers, and sends reach the provider least evenly then (send-to-arrival p99 18-32 ms,
# max up to 60 ms in the first 3 s of a 30,000 RPM run at 3 s answers, against 5-13 ms
# after); the per-second 429s that MARGIN alone left came from windows starting there.
# 6,000 requests at 3 s, 30,000 RPM: 0 x 429 in 12 of 12 runs at 1.08 x the bound
# (scripts/bench_inflight.py --only limit --repeat 6); bench_ratelimit 0.973 (0.975).
WARM_MARGIN = 0.05
WARM_S = 1.0
_SECOND_S = 1.0 / (1.0 - WINDOW_MARGIN)  # the one-second window's length, then ...
_WARM_SECOND_S = 1.0 / (1.0 - WARM_MARGIN)  # ... and in a bucket's first seconds
# Reserved output of a request that names no max_tokens: OpenAI charges the request's
# own estimate then, and the simulator 16 tokens (the OpenAI cookbook reserves 15).
# A bucket whose successes report no output tokens (embeddings) reserves none.
DEFAULT_OUTPUT_RESERVATION = 16
SLOWDOWN = 0.8  # a short-window 429 multiplies the pace by this ...
# ... but by this when it names a per-second window whose limit is the one we pace for:
# our pace was right and a few requests arrived later than sent, together with the next
# (send-to-arrival jitter of tens of ms); a fifth of the rate for a minute cost a run at
# 30,000 RPM 20 % of its throughput for one such 429.
JITTER_SLOWDOWN = 0.97
MIN_PACE = 0.05
RECOVERY_PER_S = 0.2 / 60  # ... and successes win it back, +20 % of the limit a minute
HOLD_WITHOUT_RETRY_AFTER_S = 1.0  # a 429 without retry-after holds its bucket this long
DAILY_RETRY_AFTER_S = 60.0  # a 429 asking to wait longer is an exhausted daily quota
DEFAULT_PARK_S = 60.0  # an exhausted daily quota that names no reset: ask again then
MAX_MINUTE_HOLD_S = 60.0  # remaining 0 on a per-minute limit: at most a minute
# A bucket with an unknown limit sends FIRST_PROBES probes and waits for the first one's
# headers; while none has answered (long generations take 10-60 s), the probes allowed in
# flight double every PROBE_PATIENCE_S, so a slow first answer delays the batch by seconds,
# not minutes. Four rather than one: the limits are known at the fastest of four
# latencies, not at one draw (6,000 requests at 3 s ± 30 %, 30,000 RPM learned: the
# probe's wait was 2.1-3.9 s, the run 1.27-1.34 × its bound; see DESIGN.md). A model
# whose limit is below four requests at once answers at most three 429s, whose messages
# or headers then teach the limit.
FIRST_PROBES = 4
PROBE_PATIENCE_S = 2.0
MIN_TRAFFIC_TO_LEARN = 10  # requests in the last minute before a 429 may set a limit
RATIO_BOUNDS = (0.25, 4.0)
RATIO_DECAY = 0.98  # actual/estimated prompt ratio: weight of the past per observation

_INF = math.inf


class Budget:
    """The buckets of one run, one per (provider, model), created on first use.
    ``breaker_failures``: the fewest failures among the requests a circuit breaker judges
    before it may open (with 80 % of them failed; see breaker.py);
    ``breaker_cooldown_s``: its first cool-down."""

    def __init__(
        self,
        limit_for: Callable[[str, str], Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        breaker_failures: int = MIN_FAILURES,
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
        breaker_failures: int = MIN_FAILURES,
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
        # One configured dimension is enough to start at its pace; the other is learned
        # from the headers as answers come (waiting for a probe costs a whole latency).
        self._learning = configured.rpm is None and configured.tpm is None
        self._probes_in_flight = 0
        self._probes_started_at = -_INF  # when the current round of probes began
        self._hold_until = -_INF  # retry-after, or a per-minute limit at remaining 0
        self._hold_cause = ""  # what set _hold_until, for pause_reason
        self._park_until = -_INF  # an exhausted daily quota
        self._request_pace = Pace(REQUEST_BURST_S)
        self._token_pace = Pace(TOKEN_BURST_S)
        self._second = Window(_WARM_SECOND_S)
        self._minute = Window(60.0 / (1.0 - WINDOW_MARGIN))
        self._estimated_sum = 0.0
        self._actual_sum = 0.0
        self._produces_output: bool | None = False if "embed" in model.lower() else None
        self._breaker = Breaker(breaker_failures, breaker_cooldown_s)
        self._breaker.unreached = True  # until the first answer of any kind
        self.answered = False
        self._warm_until = _INF  # WARM_MARGIN until then: WARM_S after the first answer
        self._give_up_s = 2.0 * breaker_cooldown_s
        self._first_sent: float | None = None
        self._unanswered: Counter[str] = Counter()  # attempts with no answer, by kind
        self.unreachable: str | None = None  # why the bucket gave up; None: it has not

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

    def too_large(self, tokens: int) -> str | None:
        """Why a request costing ``tokens`` can never be sent (more than the bucket's
        tokens-per-minute limit, configured or learned), or None."""
        limit = _lower(self.configured.tpm, self._learned_tpm)
        if limit is None or tokens <= limit:
            return None
        configured = self.configured.tpm is not None and self.configured.tpm <= limit
        source = "configured" if configured else "learned from the provider"
        return (
            f"the request needs {tokens:,} tokens (prompt estimate + max output tokens) but "
            f"{self.provider}/{self.model} allows {limit:,.0f} tokens per minute ({source}): "
            "it can never be sent; lower its max_tokens"
        )

    def healthy(self) -> bool:
        """Most recent requests succeed: a retry need not wait longer each time."""
        return self._breaker.healthy()

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
            if self._probes_in_flight >= FIRST_PROBES:
                # FIRST_PROBES × 2**k probes allowed after k patience periods: the next
                # one may go once that exceeds those in flight.
                doublings = (self._probes_in_flight // FIRST_PROBES).bit_length()
                return max(at, self._probes_started_at + PROBE_PATIENCE_S * doublings)
            return at
        rpm, tpm = self.rpm, self.tpm
        if rpm is None and tpm is None:
            return at
        margin = self._margin(now)
        request_rate, token_rate = _rate(rpm, margin), _rate(tpm, margin)
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
        if self._first_sent is None:
            self._first_sent = now
        if self._learning:
            if not self._probes_in_flight:
                self._probes_started_at = now
            self._probes_in_flight += 1
        self._breaker.sent(now)
        margin = self._margin(now)
        self._request_pace.spend(now, _rate(self.rpm, margin), 1)
        self._token_pace.spend(now, _rate(self.tpm, margin), tokens)
        self._second.add(now, 1, tokens)
        self._minute.add(now, 1, tokens)

    def tokens_last_minute(self) -> int:
        now = self._clock()
        self._minute.prune(now)
        return int(self._minute.sum_since(now - 60.0))

    def state(self) -> str:
        """ "ok" | "learning" | "slowed" | "parked" | "open" (breaker) | "probing".
        ``pause_reason`` says why, in words."""
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

    def pause_reason(self) -> str | None:
        """Why the bucket is not sending, when it is not ordinary pacing: the circuit
        breaker (open or probing), a daily quota (parked until when) or a hold (a 429's
        retry-after, or remaining 0 this minute; for how long). None otherwise. When
        several apply, the one that lasts longest."""
        now = self._clock()
        reasons: list[tuple[float, str]] = []
        if self._breaker.open:
            reasons.append(self._breaker_reason(now))
        if now < self._park_until:
            reasons.append((self._park_until, self._park_reason(now)))
        if now < self._hold_until:
            left = seconds(self._hold_until - now)
            reasons.append((self._hold_until, f"held {left} more: {self._hold_cause}"))
        return max(reasons)[1] if reasons else None

    def _park_reason(self, now: float) -> str:
        left = self._park_until - now
        wall = time.strftime("%H:%M", time.localtime(time.time() + left))
        return f"daily quota exhausted: parked until {wall} (in {seconds(left)})"

    def _breaker_reason(self, now: float) -> tuple[float, str]:
        breaker = self._breaker
        if breaker.cooling(now):
            left = seconds(breaker.open_until - now)
            note = self._unreached_note(now)
            return breaker.open_until, f"circuit breaker open: {breaker.reason} ({left} left){note}"
        why = f"circuit breaker probing: {breaker.evidence}{self._unreached_note(now)}"
        if breaker.probe_in_flight:
            return _INF, f"{why}; waiting for the probe request's answer"
        return breaker.open_until, f"{why}; sending one probe request"

    def _unreached_note(self, now: float) -> str:
        if self.answered or self._first_sent is None:
            return ""
        left = seconds(max(0.0, self._first_sent + self._give_up_s - now))
        return f"; no answer yet from the server: its tasks fail in {left} unless it answers"

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
        self._note_reach(outcome, now)
        self._breaker.settle(outcome.error_kind, outcome.latency_s, now)
        if self._learning and self._probes_in_flight:
            self._probes_in_flight -= 1
            # An HTTP answer taught what it could; what it did not tell stays unlimited.
            # No answer at all (timeout, connection) teaches nothing: probe again.
            self._learning = outcome.status_code is None
        return quota

    def _note_reach(self, outcome: Outcome, now: float) -> None:
        """Any HTTP answer proves the server reachable; until one comes, attempts refused,
        reset or timed out count toward giving up after ``give_up_s``."""
        if outcome.status_code is not None:
            if not self.answered:
                self._warm_until = now + WARM_S
            self.answered = True
            self._breaker.unreached = False
            return
        if self.answered or outcome.error_kind not in (CONNECTION, TIMEOUT):
            return
        self._unanswered[str(outcome.error_kind)] += 1
        since = self._first_sent if self._first_sent is not None else now
        if self.unreachable is None and now - since >= self._give_up_s:
            attempts = sum(self._unanswered.values())
            kinds = ", ".join(f"{k} {n}" for k, n in self._unanswered.most_common())
            self.unreachable = (
                f"no answer at all from the server in {seconds(now - since)} "
                f"({attempts} attempts: {kinds}; last: {outcome.error_message or '-'}); "
                "giving up on its tasks"
            )

    def release(self, tokens: int) -> None:
        """A request this bucket paid for was lost with a dead worker process: no answer
        at all. Frees what ``spend`` took (its in-flight slot, a probe slot while learning,
        the breaker's probe if it was the probe) without counting as a failure and without
        learning anything. Its ``tokens`` stay spent: the request may have reached the
        provider."""
        del tokens  # stays in the windows and the pace: charged, not refunded
        self.in_flight = max(0, self.in_flight - 1)
        self._slow_stale = max(0, self._slow_stale - 1)  # its outcome will not come
        if self._learning and self._probes_in_flight:
            self._probes_in_flight -= 1  # still learning: the next probe may go
        self._breaker.release()

    def _learn_headers(self, headers: dict[str, str], now: float) -> None:
        if not headers:
            return
        tokens_limit = number(headers.get("x-ratelimit-limit-tokens"))
        if tokens_limit is not None and tokens_limit > 0:
            self._learned_tpm = tokens_limit
        if number(headers.get("x-ratelimit-remaining-tokens")) == 0:
            self._hold_minute(headers.get("x-ratelimit-reset-tokens"), now, "tokens")
        requests_limit = number(headers.get("x-ratelimit-limit-requests"))
        remaining_requests = number(headers.get("x-ratelimit-remaining-requests"))
        if self.provider == "groq":  # Groq's request headers count per DAY
            self.daily_requests = requests_limit
            if remaining_requests == 0:
                self._park(reset_s(headers.get("x-ratelimit-reset-requests")), now)
            return
        if requests_limit is not None and requests_limit > 0:
            self._learned_rpm = requests_limit
        if remaining_requests == 0:
            self._hold_minute(headers.get("x-ratelimit-reset-requests"), now, "requests")

    def _hold_minute(self, reset: str | None, now: float, dimension: str) -> None:
        wait_s = reset_s(reset)
        wait_s = HOLD_WITHOUT_RETRY_AFTER_S if wait_s is None else min(wait_s, MAX_MINUTE_HOLD_S)
        self._hold(now + wait_s, f"the provider reported 0 {dimension} left this minute")

    def _hold(self, until: float, cause: str) -> None:
        if until > self._hold_until:
            self._hold_until, self._hold_cause = until, cause

    def _park(self, wait_s: float | None, now: float) -> None:
        self._park_until = max(self._park_until, now + (wait_s or DEFAULT_PARK_S))

    def _on_rate_limited(self, outcome: Outcome, now: float, stale: bool) -> bool:
        message = LimitMessage.parse(outcome.error_message or "")
        retry_after_s = outcome.retry_after_s
        wait_s = retry_after_s if retry_after_s is not None else message.wait_s
        groq_quota = self.provider == "groq" and (
            number(outcome.rate_headers.get("x-ratelimit-remaining-requests")) == 0
        )
        if message.daily or groq_quota or (wait_s is not None and wait_s > DAILY_RETRY_AFTER_S):
            reset = reset_s(outcome.rate_headers.get("x-ratelimit-reset-requests"))
            self._park(wait_s if wait_s is not None else reset, now)
            return True
        learned = self._learn_from_message(message) or self._learn_from_traffic(message, now)
        if not learned and not stale:
            factor = JITTER_SLOWDOWN if self._paced_for(message) else SLOWDOWN
            self._pace_factor = max(MIN_PACE, self._pace_factor * factor)
            self._slow_stale = self.in_flight  # their fate was sealed before this slow-down
        self._last_recovery = now
        if wait_s is None:
            self._hold(now + HOLD_WITHOUT_RETRY_AFTER_S, "a 429 without retry-after")
        else:
            self._hold(now + wait_s, f"a 429 asked to retry after {seconds(wait_s)}")
        return False

    def _paced_for(self, message: LimitMessage) -> bool:
        """A per-second 429 whose limit is (at least) the one we pace for."""
        if not message.per_second or message.limit_per_min is None:
            return False
        base = self.configured.rpm if message.kind == "requests" else self.configured.tpm
        learned = self._learned_rpm if message.kind == "requests" else self._learned_tpm
        limit = _lower(base, learned)
        return limit is not None and message.limit_per_min >= limit * (1.0 - MARGIN)

    def _learn_from_message(self, message: LimitMessage) -> bool:
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

    def _learn_from_traffic(self, message: LimitMessage, now: float) -> bool:
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
        self._token_pace.shift(_rate(self.tpm, self._margin(now)), difference)
        if difference > 0:
            # Under-charged: the provider's windows hold more than ours. Charging the rest
            # now errs late (the safe side); an over-charge simply expires.
            self._second.add(now, 0, difference)
            self._minute.add(now, 0, difference)

    def _margin(self, now: float) -> float:
        """WARM_MARGIN until WARM_S after the first answer, then MARGIN (the one-second
        window's length follows)."""
        if now < self._warm_until:
            return WARM_MARGIN
        self._second.span_s = _SECOND_S
        return MARGIN

    def _recover(self, now: float) -> None:
        if self._pace_factor < 1.0:
            elapsed = max(0.0, now - self._last_recovery)
            self._pace_factor = min(1.0, self._pace_factor + RECOVERY_PER_S * elapsed)
        self._last_recovery = now


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _rate(per_minute: float | None, margin: float) -> float | None:
    """Pace per second for a per-minute limit, ``margin`` below it."""
    return None if per_minute is None else per_minute * (1.0 - margin) / 60.0
