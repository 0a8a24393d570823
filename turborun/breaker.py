"""The circuit breaker of one budget bucket."""

from __future__ import annotations

import math

from turborun.records import CONNECTION, INVALID_RESPONSE, SERVER_ERROR, TIMEOUT

BREAKER_KINDS = frozenset({SERVER_ERROR, TIMEOUT, CONNECTION, INVALID_RESPONSE})
MAX_COOLDOWN_S = 300.0
_INF = math.inf


class Breaker:
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
