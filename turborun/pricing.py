"""Prices per (provider, model), and the cost of one answer.

Prices are USD per million tokens: ``input``, ``cached_input`` (prompt tokens served
from the provider's cache; absent: billed as input) and ``output``; optionally the same
at the Batch API's rates (``batch_input``, ``batch_output``) and at the flex tier's
(``flex_input``, ``flex_output``). A tier's cached prompt tokens cost ``cached_input``
scaled by that tier's input discount; a model without a tier's prices costs None there.
Files load in
order and a later file replaces an earlier one's entry for the same model: the prices
shipped inside the package (``turborun/data/pricing.toml``, read through
importlib.resources, so an installed wheel has them) come first, and a working
directory's ``configs/pricing.toml`` overrides them.
An unknown model or unknown usage costs None, never 0: a summary must not pass off
"we do not know" as "free".
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from turborun.exceptions import ConfigError

PRICING_FILE = Path("configs") / "pricing.toml"
SHIPPED_PRICING: Traversable = files("turborun") / "data" / "pricing.toml"
PER_TOKENS = 1_000_000
# Dated snapshots: gpt-4o-mini-2024-07-18, gpt-4-0613, o3-mini-20250131 -> base model.
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_FIELDS = ("input", "cached_input", "output")
_TIER_FIELDS = ("batch_input", "batch_output", "flex_input", "flex_output")
_NOTES = ("source", "checked")  # strings: where and when a price was read
TIERS = ("standard", "batch", "flex")  # cost_usd(tier=...)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached prompt tokens cost ``input``
    batch: tuple[float, float] | None = None  # (input, output) at Batch API rates
    flex: tuple[float, float] | None = None  # (input, output) at the flex tier's rates
    source: str | None = None  # where the price was read (a URL)
    checked: str | None = None  # when, and how; "unverified": a guess

    @property
    def guess(self) -> bool:
        """No source, or marked unverified: a cap on it says so when the run starts."""
        return self.source is None or (self.checked or "").startswith("unverified")


class Pricing:
    def __init__(self, prices: Mapping[tuple[str, str], Price] | None = None) -> None:
        self._prices: dict[tuple[str, str], Price] = dict(prices or {})

    @classmethod
    def load(cls, paths: Iterable[Path | Traversable]) -> Pricing:
        """Merge pricing files in order (later wins per model); missing files are skipped.
        A malformed file is a ConfigError naming it."""
        prices: dict[tuple[str, str], Price] = {}
        for path in paths:
            if isinstance(path, str):
                path = Path(path)
            if not path.is_file():
                continue
            prices.update(_read(path))
        return cls(prices)

    @classmethod
    def default_paths(cls, cwd: Path) -> list[Path | Traversable]:
        """The prices shipped in the package, then the working directory's pricing.toml."""
        return [SHIPPED_PRICING, Path(cwd) / PRICING_FILE]

    def price(self, provider: str, model: str) -> Price | None:
        found = self._prices.get((provider, model))
        if found is None:
            base = _DATE_SUFFIX.sub("", model)
            if base != model:
                found = self._prices.get((provider, base))
        return found

    def cost_usd(
        self,
        provider: str,
        model: str,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_tokens: int | None = 0,
        tier: str = "standard",
    ) -> float | None:
        """USD of one answer's usage; None for an unknown model or when the answer
        reported no usage. ``input_tokens`` includes ``cached_tokens`` (as OpenAI and
        Groq report them); an answer without output tokens (embeddings) costs its input."""
        price = self.price(provider, model)
        if price is not None and tier != "standard":
            price = _at_tier(price, tier)
        if price is None or input_tokens is None:
            return None
        cached = min(max(cached_tokens or 0, 0), input_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        usd = (
            (input_tokens - cached) * price.input
            + cached * cached_price
            + (output_tokens or 0) * price.output
        )
        return usd / PER_TOKENS


def _at_tier(price: Price, tier: str) -> Price | None:
    """``price`` at the Batch API's or the flex tier's rates; None when not priced there."""
    rates = price.batch if tier == "batch" else price.flex if tier == "flex" else None
    if rates is None:
        return None
    cached = None
    if price.cached_input is not None and price.input > 0:
        cached = price.cached_input * rates[0] / price.input
    return Price(rates[0], rates[1], cached)


def _read(path: Path | Traversable) -> dict[tuple[str, str], Price]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _error(path, f"cannot be read: {exc}") from None
    prices: dict[tuple[str, str], Price] = {}
    for provider, models in data.items():
        if not isinstance(models, dict):
            raise _error(path, f"{provider} is not a table of models")
        for model, entry in models.items():
            prices[(provider, model)] = _price(path, f'{provider}."{model}"', entry)
    return prices


def _price(path: Path | Traversable, label: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise _error(path, f"{label} is not a table (input, cached_input, output)")
    unknown = sorted(set(entry) - set(_FIELDS) - set(_TIER_FIELDS) - set(_NOTES))
    if unknown:
        raise _error(path, f"{label}: unknown key {unknown[0]} (expected {', '.join(_FIELDS)})")
    values: dict[str, float] = {}
    for key in _FIELDS + _TIER_FIELDS:
        if key not in entry:
            continue
        value = entry[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _error(path, f"{label}.{key} = {value!r} is not a price (USD per 1M tokens)")
        values[key] = float(value)
    for key in ("input", "output"):
        if key not in values:
            raise _error(path, f"{label} has no {key} price")
    tiers = {}
    for tier in ("batch", "flex"):
        pair = (values.get(f"{tier}_input"), values.get(f"{tier}_output"))
        if (pair[0] is None) != (pair[1] is None):
            raise _error(path, f"{label} has {tier}_input or {tier}_output but not both")
        tiers[tier] = pair if pair[0] is not None else None
    notes: dict[str, str] = {}
    for key in _NOTES:
        if key in entry:
            if not isinstance(entry[key], str):
                raise _error(path, f"{label}.{key} must be a string")
            notes[key] = entry[key]
    return Price(values["input"], values["output"], values.get("cached_input"), **tiers, **notes)


def _error(path: Path | Traversable, problem: str) -> ConfigError:
    return ConfigError(str(path), None, f"{path}: {problem}")
