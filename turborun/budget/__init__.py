"""The budget wing: what a request may spend and when, per (provider, model).

    buckets.py        Budget and its Buckets: RPM/TPM pacing, limits learned from
                      headers and 429s, daily-quota parking, giving up on a dead server
    pacing.py         GCRA pace and sliding windows, per dimension
    breaker.py        the circuit breaker: a bucket's health from its recent outcomes
    limit_signals.py  rate-limit headers and 429 messages, read per provider
    backoff.py        whether a failed attempt goes again, and after how long

The rest of turborun uses it through the names below; the modules inside are its own.
"""

from __future__ import annotations

from turborun.budget.backoff import is_retryable, retry_delay_s, should_retry
from turborun.budget.buckets import (
    DEFAULT_OUTPUT_RESERVATION,
    FIRST_PROBES,
    MARGIN,
    Bucket,
    Budget,
)

__all__ = [
    "DEFAULT_OUTPUT_RESERVATION",
    "FIRST_PROBES",
    "MARGIN",
    "Bucket",
    "Budget",
    "is_retryable",
    "retry_delay_s",
    "should_retry",
]
