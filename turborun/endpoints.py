"""Endpoints: the base URLs that serve a (provider, model), chosen per request.

A model may be served by several base URLs (a fleet of vLLM servers): each request
goes to the endpoint with the fewest requests outstanding among those that may take
one. What may take one:

* an explicit cap per endpoint (``max_in_flight``) always holds;
* for a bucket with no known rate limit (a server that sends no rate-limit
  headers), the endpoint's adaptive limit (adaptive.py) holds too: it grows while
  latency holds and backs off on queueing and overload;
* an endpoint that keeps failing (REST_AFTER consecutive 502/503/504s, timeouts or
  connection errors) while its bucket has another endpoint is rested for REST_S,
  doubling up to MAX_REST_S, then probed with one request; its work goes to the
  others meanwhile. A sole endpoint is never rested: there is nowhere else to
  send, and its bucket's breaker and adaptive limit handle a failing server.

State is keyed by (provider, base URL): a server serving several models has one
adaptive limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from turborun.adaptive import AdaptiveLimit
from turborun.keys import display_url
from turborun.records import CONNECTION, SERVER_ERROR, TIMEOUT, Outcome

REST_AFTER = 3
REST_S = 2.0
MAX_REST_S = 60.0
ADAPTIVE_START = 8
OVERLOAD_STATUS = frozenset({502, 503, 504, 529})


def is_overload(outcome: Outcome) -> bool:
    """An answer that says the server could not take the request."""
    if outcome.error_kind in (TIMEOUT, CONNECTION):
        return True
    return outcome.error_kind == SERVER_ERROR and outcome.status_code in OVERLOAD_STATUS


@dataclass(slots=True)
class Endpoint:
    provider: str
    url: str | None  # None: the provider's configured base URL
    cap: int | None
    limiter: AdaptiveLimit
    label: str  # the base URL, or what the provider's configured one is called
    in_flight: int = 0
    failures: int = 0  # consecutive
    rest_until: float = -math.inf
    rest_s: float = REST_S
    probing: bool = False  # rested, and its probe is out
    shared: bool = False  # a bucket it serves has another endpoint: it may be rested

    def room(self, adaptive: bool, now: float) -> float:
        """Requests this endpoint may take now."""
        if now < self.rest_until or self.probing:
            return 0
        limits = [] if self.cap is None else [self.cap]
        if adaptive:
            limits.append(self.limiter.limit)
        return (min(limits) - self.in_flight) if limits else math.inf


class Endpoints:
    def __init__(
        self,
        urls_for: Callable[[str, str], tuple[str | None, ...]],
        cap_for: Callable[[str | None], int | None],
        *,
        default_label: Callable[[str], str],
        clock: Callable[[], float],
    ) -> None:
        self._urls_for = urls_for
        self._cap_for = cap_for
        self._default_label = default_label
        self._clock = clock
        self._by_url: dict[tuple[str, str | None], Endpoint] = {}
        self._by_bucket: dict[tuple[str, str], list[Endpoint]] = {}

    def of(self, provider: str, model: str) -> list[Endpoint]:
        endpoints = self._by_bucket.get((provider, model))
        if endpoints is None:
            endpoints = [self._endpoint(provider, url) for url in self._urls_for(provider, model)]
            self._by_bucket[(provider, model)] = endpoints
            for endpoint in endpoints:
                endpoint.shared = endpoint.shared or len(endpoints) > 1
        return endpoints

    def _endpoint(self, provider: str, url: str | None) -> Endpoint:
        endpoint = self._by_url.get((provider, url))
        if endpoint is None:
            cap = self._cap_for(url)
            limiter = AdaptiveLimit(
                initial=min(ADAPTIVE_START, cap or ADAPTIVE_START),
                maximum=cap or 100_000,
                clock=self._clock,
            )
            label = display_url(url or self._default_label(provider))  # no key in a URL
            endpoint = Endpoint(provider, url, cap, limiter, label)
            self._by_url[(provider, url)] = endpoint
        return endpoint

    def choose(self, provider: str, model: str, adaptive: bool, now: float) -> Endpoint | None:
        """The endpoint with the fewest outstanding requests among those with room."""
        best: Endpoint | None = None
        for endpoint in self.of(provider, model):
            if endpoint.room(adaptive, now) > 0 and (
                best is None or endpoint.in_flight < best.in_flight
            ):
                best = endpoint
        return best

    def ready_at(self, provider: str, model: str) -> float:
        """When a rested endpoint of this bucket may take a request again (inf: only an
        outcome frees room)."""
        now = self._clock()
        ends = [e.rest_until for e in self.of(provider, model) if not e.probing]
        return min((t for t in ends if t > now), default=math.inf)

    def allowance(self, provider: str, model: str, adaptive: bool) -> float:
        """Requests this bucket's endpoints may hold at once (inf: no bound)."""
        total = 0.0
        now = self._clock()
        for endpoint in self.of(provider, model):
            room = endpoint.room(adaptive, now)
            total += room + endpoint.in_flight if room > 0 else endpoint.in_flight
        return total

    def sent(self, endpoint: Endpoint, now: float) -> None:
        endpoint.in_flight += 1
        if now >= endpoint.rest_until and endpoint.rest_until > -math.inf:
            endpoint.probing = True  # the first request after a rest is its probe
        endpoint.limiter.sent(endpoint.in_flight)

    def settle(self, endpoint: Endpoint, outcome: Outcome, sent_at: float, now: float) -> None:
        endpoint.in_flight = max(0, endpoint.in_flight - 1)
        overloaded = is_overload(outcome)
        if outcome.ok or overloaded:
            endpoint.limiter.observe(sent_at, outcome.latency_s, overloaded=overloaded)
        if not overloaded:
            endpoint.failures = 0
            if endpoint.probing:
                endpoint.probing = False
                endpoint.rest_until = -math.inf
                endpoint.rest_s = REST_S
            return
        endpoint.failures += 1
        if endpoint.probing or (endpoint.failures >= REST_AFTER and endpoint.shared):
            self._rest(endpoint, now)

    def _rest(self, endpoint: Endpoint, now: float) -> None:
        if endpoint.probing:
            endpoint.rest_s = min(MAX_REST_S, endpoint.rest_s * 2)
        endpoint.probing = False
        endpoint.rest_until = now + endpoint.rest_s
        endpoint.failures = 0

    def release(self, endpoint: Endpoint) -> None:
        """A request lost with a dead worker process: not the endpoint's doing."""
        endpoint.in_flight = max(0, endpoint.in_flight - 1)
        endpoint.probing = False
