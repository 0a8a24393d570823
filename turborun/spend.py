"""Spend caps: a run (and optionally each model) never passes what the user allowed.

Before a request is sent its worst case is reserved: its prompt tokens (the count,
plus PROMPT_MARGIN for what a count may miss) and its requested output, priced at
the model's rates (for a token cap, the same tokens uncounted by price). A request
whose reservation would pass a cap is not sent. When its answer comes back the
reservation is replaced by what the answer really cost; an answer that reports no
usage keeps its whole reservation as spent (we cannot know it cost less).

So at every moment spent + reserved ≤ cap, and since no answer can cost more than
its reservation (its output is bounded by the requested maximum; its prompt by the
count and the margin), what is spent never passes the cap either.

What earlier attempts of the same run spent (the journal's costs) counts from the
start: a resume continues the same budget unless the user raises the cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from turborun.pricing import Pricing

PROMPT_MARGIN = 0.10  # reserved beyond the counted prompt tokens (encodings differ a little)
PROMPT_SLACK_TOKENS = 16  # ... and a few tokens per request (chat framing)


@dataclass(slots=True)
class Reservation:
    """What one request in flight holds against the caps."""

    model: tuple[str, str]
    usd: float
    tokens: int


@dataclass(slots=True)
class _Account:
    cap: float | None
    spent: float = 0.0
    reserved: float = 0.0

    def fits(self, amount: float) -> bool:
        return self.cap is None or self.spent + self.reserved + amount <= self.cap + 1e-12


@dataclass
class SpendCaps:
    """The run's caps: ``max_cost_usd`` for the whole run, ``model_caps_usd`` per
    (provider, model), ``max_tokens_total`` in tokens (prompt + output, any model)."""

    pricing: Pricing
    max_cost_usd: float | None = None
    model_caps_usd: Mapping[tuple[str, str], float] = field(default_factory=dict)
    max_tokens_total: int | None = None
    _run: _Account = field(init=False)
    _tokens: _Account = field(init=False)
    _models: dict[tuple[str, str], _Account] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._run = _Account(self.max_cost_usd)
        self._tokens = _Account(
            None if self.max_tokens_total is None else float(self.max_tokens_total)
        )

    @property
    def active(self) -> bool:
        return (
            self.max_cost_usd is not None
            or bool(self.model_caps_usd)
            or self.max_tokens_total is not None
        )

    def priced(self, provider: str, model: str) -> bool:
        """Whether a cost cap can bound this model (a token cap needs no price)."""
        if self.max_cost_usd is None and (provider, model) not in self.model_caps_usd:
            return True
        return self.pricing.price(provider, model) is not None

    def _model(self, key: tuple[str, str]) -> _Account:
        account = self._models.get(key)
        if account is None:
            account = self._models[key] = _Account(self.model_caps_usd.get(key))
        return account

    def worst_case(
        self, provider: str, model: str, prompt_tokens: int, max_output_tokens: int
    ) -> Reservation:
        prompt = math.ceil(max(prompt_tokens, 0) * (1 + PROMPT_MARGIN)) + PROMPT_SLACK_TOKENS
        output = max(max_output_tokens, 0)
        usd = self.pricing.cost_usd(provider, model, prompt, output)
        return Reservation((provider, model), usd or 0.0, prompt + output)

    def why_not(self, r: Reservation) -> tuple[str, str] | None:
        """(scope, which cap) when this reservation would pass a cap: scope "run" for the
        run's cost or token cap, "model" for its model's cost cap; None: it fits."""
        if not self._run.fits(r.usd):
            return "run", f"the run's cost cap (${self.max_cost_usd:g})"
        if not self._tokens.fits(r.tokens):
            return "run", f"the run's token cap ({self.max_tokens_total:,} tokens)"
        model = self._model(r.model)
        if not model.fits(r.usd):
            return "model", f"the cost cap of {r.model[0]}/{r.model[1]} (${model.cap:g})"
        return None

    def reserve(self, r: Reservation) -> None:
        self._run.reserved += r.usd
        self._model(r.model).reserved += r.usd
        self._tokens.reserved += r.tokens

    def settle(self, r: Reservation, usd: float | None, tokens: int | None) -> None:
        """The answer to a reserved request: its real cost and tokens (None: unknown,
        the whole reservation counts as spent)."""
        self.release(r)
        self.add_spent(
            r.model, r.usd if usd is None else usd, r.tokens if tokens is None else tokens
        )

    def release(self, r: Reservation) -> None:
        """A reservation whose request was never answered by the provider (lost with a
        worker process, or refused before sending)."""
        self._run.reserved = max(0.0, self._run.reserved - r.usd)
        model = self._model(r.model)
        model.reserved = max(0.0, model.reserved - r.usd)
        self._tokens.reserved = max(0.0, self._tokens.reserved - r.tokens)

    def add_spent(self, model: tuple[str, str], usd: float, tokens: int) -> None:
        """What was spent (also what earlier attempts of the run spent, at a resume)."""
        self._run.spent += usd
        self._model(model).spent += usd
        self._tokens.spent += tokens

    @property
    def spent_usd(self) -> float:
        return self._run.spent

    @property
    def reserved_usd(self) -> float:
        return self._run.reserved

    @property
    def spent_tokens(self) -> int:
        return int(self._tokens.spent)

    def fraction(self) -> float | None:
        """Spent as a fraction of the tightest run-wide cap (None: no run-wide cap)."""
        parts = []
        if self.max_cost_usd:
            parts.append(self._run.spent / self.max_cost_usd)
        if self.max_tokens_total:
            parts.append(self._tokens.spent / self.max_tokens_total)
        return max(parts) if parts else None
