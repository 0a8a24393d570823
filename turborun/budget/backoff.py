"""Whether and when to try again after a failed attempt."""

from __future__ import annotations

import random

from turborun.records import RETRYABLE_KINDS, RETRYABLE_STATUS, Outcome

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_JITTER_S = 0.25  # at most this much added to a server's retry-after


def is_retryable(outcome: Outcome) -> bool:
    """408, 409, 429, 5xx, timeouts and dropped connections (SPEC §5); other errors are
    the request's own and fail at once."""
    return outcome.error_kind in RETRYABLE_KINDS or outcome.status_code in RETRYABLE_STATUS


def should_retry(outcome: Outcome, attempts: int, max_retries: int) -> bool:
    """Whether a node whose attempt number ``attempts`` failed with ``outcome`` goes
    again: a retryable failure with retries left (``max_retries`` after the first)."""
    return is_retryable(outcome) and attempts <= max_retries


def retry_delay_s(
    attempt: int, retry_after_s: float | None, rng: random.Random, *, escalate: bool = True
) -> float:
    """Delay before the next attempt (``attempt``: the 1-based attempt that failed): the
    server's retry-after when given (never earlier, plus a little jitter so a crowd told
    the same moment does not return at once), else exponential backoff from 0.5 s,
    doubling, capped at 30 s, with equal jitter (half fixed, half random).

    ``escalate`` False: the first step (0.25-0.5 s) whatever the attempt. The supervisor
    passes it when the request's bucket is healthy (most of its recent requests
    succeed): one task failing again at a 30 % error rate is chance, not a sign the
    server needs air, and doubling its delay only lengthens the run's tail (2,000 tasks
    at 30 % 5xx: 18 s instead of 4.3 s). A bucket in trouble escalates as before, and
    its circuit breaker pauses it when it is down."""
    if retry_after_s is not None and retry_after_s >= 0:
        return retry_after_s + rng.uniform(0.0, min(RETRY_AFTER_JITTER_S, 0.1 * retry_after_s))
    exponent = min(max(attempt - 1, 0), 30) if escalate else 0
    base_s = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**exponent)
    return base_s / 2 + rng.uniform(0.0, base_s / 2)
