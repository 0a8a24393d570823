"""The circuit breaker of one budget bucket: it pauses a (provider, model) that is down.

Health is judged by the failure RATE of the requests SENT in a recent stretch, not by the
order outcomes arrive in. Fast 5xx answers arrive before slow successes: with hundreds in
flight, the first outcomes of every burst are failures even at a 10 % error rate (300 sent
at once at 30 %: 90 failures within 20 ms, then ~40 more from the refilled slots, before
the first success at 200 ms), so counting outcomes as they arrive (8 consecutive failures,
or the last N outcomes) mistakes an ordinary error rate for an outage. The requests sent
are known at once, and which of them failed only grows as outcomes come in: failures /
requests sent can understate a stretch's failure rate, never overstate it, whatever the
order outcomes arrive in.

The rule. A failure (5xx, timeout, connection error, invalid body; not 4xx, not 429) is
dated by when its request was sent, ``now - latency`` (``settle`` does not name its
request). Each failure judges the requests sent up to its own date: the last WINDOW of
them or those of the last MIN_SPAN_S, whichever reaches further back, never before the
breaker last closed. It opens when at least ``failures`` of them failed (MIN_FAILURES by
default) and those are at least FAILURE_FRACTION of the requests sent. Requests still in
flight, answered with a 4xx or 429, or lost with their worker process count as not
failed. ``now - latency`` runs a little late (the time between the supervisor and a
worker), which never moves a failure before its request; MIN_SPAN_S keeps the stretch
long beside those milliseconds.

Constants:

* FAILURE_FRACTION 0.8: a bucket failing four requests in five is effectively down, and
  retries would only burn attempts; at 30 % retries still get through, and a pause would
  cost more than it saves.
* MIN_FAILURES 20 among the last WINDOW 50 requests: enough that chance cannot fake an
  outage. A healthy server at a 30 % error rate fails >= 20 of the first <= 25 requests
  after a start or a close with probability ~7e-7, >= 40 of 50 later ~4e-13; at 10 %
  below 1e-15. More requests in MIN_SPAN_S only make it rarer.
* MIN_SPAN_S 1 s. A dead server (every answer a failure) opens it at the 20th failure when
  requests go one at a time; with C in flight, once most of those sent up to a failure
  have failed too (about C outcomes, all of them sent already); a server that dies after
  running well, after ~0.8 s of sends.
* Cool-down: ``cooldown_s`` (30 s by default), then one probe request: any answer that is
  not a failure closes the breaker; a failure doubles the cool-down, up to
  MAX_COOLDOWN_S (60 s), so a server that comes back is noticed within a minute.
  Outcomes of requests sent before the breaker opened are ignored: they were judged.
* A bucket that has never had an answer (``unreached``: every attempt refused, reset or
  timed out) cools down a third as long (10 s by default) and does not double: probing a
  closed port costs nothing, and its bucket gives up after a bounded time (buckets.py,
  ``Bucket.unreachable``), which short cool-downs keep close to its nominal value.

``healthy()`` tells the retry delay whether to escalate (backoff.py): the failures among
the requests judged at the last failure are under HEALTHY_SHARE of them. Being dated by
their sending, the first fast failures of a burst are judged against the whole burst
(1 of 120), while a lone request failing again is judged against itself (2 of 2).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter

from turborun.records import CONNECTION, INVALID_RESPONSE, SERVER_ERROR, TIMEOUT

BREAKER_KINDS = frozenset({SERVER_ERROR, TIMEOUT, CONNECTION, INVALID_RESPONSE})
WINDOW = 50  # requests judged at least ...
MIN_SPAN_S = 1.0  # ... or those of this long, whichever reaches further back
MIN_FAILURES = 20  # failures among them before it may open (Budget's breaker_failures)
FAILURE_FRACTION = 0.8
MAX_COOLDOWN_S = 60.0
UNREACHED_COOLDOWN_SHARE = 1 / 3  # of the first cool-down, for a bucket never answered
HEALTHY_SHARE = 0.5
MAX_LOG = 20_000  # send times kept per bucket; the older half is dropped beyond it
_INF = math.inf


class Breaker:
    """Opens on a failure rate (see the module docstring); then a cool-down, one probe,
    and a doubled cool-down each time the probe fails. ``reason`` says why it is open
    and for how long ("48 of the last 50 requests failed (server_error 30, connection
    18); pausing 30 s"), ``evidence`` the same without the pause."""

    def __init__(self, failures: int = MIN_FAILURES, cooldown_s: float = 30.0) -> None:
        self.min_failures = max(1, failures)
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max(MAX_COOLDOWN_S, cooldown_s)
        self.cooldown_s = cooldown_s
        self.open = False
        self.open_until = -_INF
        self.probe_in_flight = False
        self.reason: str | None = None
        self.evidence = ""
        self._sends: list[float] = []  # send times, ascending (the clock is monotonic)
        self._failed_at: list[float] = []  # send times of failed requests, ascending
        self._failed_kind: list[str] = []  # ... and their kinds
        self._opened_at = _INF  # requests sent earlier were judged when it opened
        self._since = -_INF  # when it last closed: the stretch judged starts no earlier
        self.unreached = False  # no answer yet at all: short cool-downs, no doubling
        self._share = 0.0  # failures / requests judged at the last failure

    def healthy(self) -> bool:
        """Closed, and the last failure judged fewer than HEALTHY_SHARE of its stretch
        failed."""
        return not self.open and self._share < HEALTHY_SHARE

    def cooling(self, now: float) -> bool:
        return self.open and now < self.open_until

    # ---- events ---------------------------------------------------------------------

    def sent(self, now: float) -> None:
        """A request goes; once the cool-down is over, the first one is the probe."""
        self._sends.append(now)
        if len(self._sends) > MAX_LOG:
            self._forget(self._sends[len(self._sends) // 2])
        if self.open and now >= self.open_until:
            self.probe_in_flight = True

    def settle(self, error_kind: str | None, latency_s: float, now: float) -> None:
        """The outcome of one request: ``error_kind`` None for a success."""
        sent_by = now - max(0.0, latency_s)  # when it was sent, at the latest
        if self.open:
            # Only the probe goes while it is open (a cool-down or more after it opened).
            if self.probe_in_flight and sent_by >= self._opened_at:
                self._probe_answered(error_kind, now)
            return  # otherwise sent before it opened: judged already
        if error_kind in BREAKER_KINDS and sent_by >= self._since:
            if self._sends:  # no earlier than the oldest request remembered
                sent_by = max(sent_by, self._sends[0])
            at = bisect.bisect_right(self._failed_at, sent_by)
            self._failed_at.insert(at, sent_by)
            self._failed_kind.insert(at, str(error_kind))
            self._judge(sent_by, now)

    def release(self) -> None:
        """A request was lost with its worker process: no outcome (it counts as not
        failed). If the probe was in flight, it was the probe: the next request probes."""
        self.probe_in_flight = False

    # ---- judgement ------------------------------------------------------------------

    def _judge(self, end_s: float, now: float) -> None:
        """Judge the requests sent up to ``end_s``, when the failure just in was sent."""
        start_s = self._stretch_start(end_s)
        sends = self._sends
        sent = bisect.bisect_right(sends, end_s) - bisect.bisect_left(sends, start_s)
        low = bisect.bisect_left(self._failed_at, start_s)
        high = bisect.bisect_right(self._failed_at, end_s)
        failures = high - low
        self._share = failures / sent if sent else 1.0
        if sent > 0 and failures >= self.min_failures and failures >= FAILURE_FRACTION * sent:
            kinds = Counter(self._failed_kind[low:high])
            detail = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
            self.evidence = f"{failures} of the last {sent} requests failed ({detail})"
            self.open, self._opened_at = True, now
            self._pause(now, self.evidence)

    def _stretch_start(self, end_s: float) -> float:
        """The stretch judged reaches back over the last WINDOW requests sent by
        ``end_s`` or MIN_SPAN_S, whichever is longer, to the breaker's last closing."""
        start_s = end_s - MIN_SPAN_S
        last = bisect.bisect_right(self._sends, end_s)  # sends up to end_s: [0, last)
        if last:
            start_s = min(start_s, self._sends[max(0, last - WINDOW)])
        return max(start_s, self._since)

    def _probe_answered(self, error_kind: str | None, now: float) -> None:
        self.probe_in_flight = False
        if error_kind in BREAKER_KINDS:
            if not self.unreached:
                self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
            self._pause(now, f"{self.evidence}; the probe request failed too ({error_kind})")
            return
        # The server answered: closed, judged afresh from now on.
        self.open, self.reason, self.cooldown_s = False, None, self.base_cooldown_s
        self._since = now
        self._share = 0.0
        self._forget(now)

    def _pause(self, now: float, why: str) -> None:
        cooldown_s = self.cooldown_s
        if self.unreached:
            cooldown_s = min(cooldown_s, self.base_cooldown_s * UNREACHED_COOLDOWN_SHARE)
        self.open_until = now + cooldown_s
        self.reason = f"{why}; pausing {seconds(cooldown_s)}"

    def _forget(self, before: float) -> None:
        """Drop the sends and failures dated before ``before``."""
        del self._sends[: bisect.bisect_left(self._sends, before)]
        drop = bisect.bisect_left(self._failed_at, before)
        del self._failed_at[:drop], self._failed_kind[:drop]


def seconds(duration_s: float) -> str:
    """ "0.4 s", "30 s", "2 min 5 s", "1 h 02 min"."""
    if duration_s < 10:
        return f"{max(0.0, duration_s):.1f} s"
    whole = round(duration_s)
    if whole < 120:
        return f"{whole} s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours} h {minutes:02d} min"
