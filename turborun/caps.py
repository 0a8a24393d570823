"""The spend caps of one run, from its configuration and its checkpoint.

* Checked before anything is sent (ConfigError, exit 2): a cost cap needs a price for
  every model it bounds (configs/pricing.toml gives one), and every task that
  generates text must name its maximum output (``max_tokens`` and its kin), or its
  worst case, hence the cap, would have no bound.
* A resume continues the same budget: what the journal says earlier attempts of this
  run cost counts from the start, and a cap recorded in run.json holds unless the
  command line (or environment) gives another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from turborun.config import Config
from turborun.estimate import GENERATING, number
from turborun.exceptions import ConfigError
from turborun.pricing import Pricing
from turborun.records import FN_PROVIDER
from turborun.spend import SpendCaps
from turborun.tasks import Task

log = logging.getLogger("turborun")


def spend_caps(
    config: Config,
    pricing: Pricing,
    tasks: Iterable[Task],
    *,
    recorded: Mapping[str, Any],
    journal_entries: Iterable[tuple[str, Mapping[str, Any]]],
    warn: bool = True,
) -> SpendCaps | None:
    """The run's caps (None: no cap set). ``recorded``: run.json of the checkpoint
    being resumed ({} for a new run); ``journal_entries``: its journal."""
    max_cost = config.max_cost
    if max_cost is None and number(recorded.get("max_cost_usd")):
        max_cost = float(recorded["max_cost_usd"])
    max_tokens = config.max_tokens_total
    if max_tokens is None and number(recorded.get("max_tokens_total")):
        max_tokens = int(recorded["max_tokens_total"])
    caps = SpendCaps(
        pricing,
        max_cost_usd=max_cost,
        model_caps_usd=dict(config.model_caps_usd),
        max_tokens_total=max_tokens,
    )
    if not caps.active:
        return None
    _check(caps, list(tasks), warn)
    for _, entry in journal_entries:
        cost = entry.get("cost_usd")
        tokens = (entry.get("input_tokens") or 0) + (entry.get("output_tokens") or 0)
        model = (str(entry.get("provider") or ""), str(entry.get("model") or ""))
        if number(cost) or tokens:
            caps.add_spent(model, float(cost) if number(cost) else 0.0, int(tokens))
    return caps


def _check(caps: SpendCaps, tasks: list[Task], warn: bool) -> None:
    unpriced: dict[str, int] = {}
    unbounded: list[Task] = []
    guesses: dict[str, str] = {}
    for task in tasks:
        if task.provider == FN_PROVIDER:
            continue
        if not caps.priced(task.provider, task.model):
            name = f"{task.provider}/{task.model}"
            unpriced[name] = unpriced.get(name, 0) + 1
        elif caps.max_cost_usd is not None or (task.provider, task.model) in caps.model_caps_usd:
            price = caps.pricing.price(task.provider, task.model)
            if price is not None and price.guess:
                guesses[f"{task.provider}/{task.model}"] = price.checked or "no source given"
        if task.max_output_tokens <= 0 and task.url.endswith(GENERATING):
            unbounded.append(task)
    if unpriced:
        names = ", ".join(f"{n} ({c} tasks)" for n, c in sorted(unpriced.items()))
        raise ConfigError(
            "--max-cost",
            None,
            f"--max-cost cannot bound models without a known price: {names}; give their "
            "prices in configs/pricing.toml (USD per million tokens: input, output), or "
            "bound a self-hosted model with --max-tokens-total",
        )
    for name, checked in sorted(guesses.items()) if warn else ():
        log.warning("the cost cap counts %s at a price that is a guess (%s): check it, or give "
                    "it in configs/pricing.toml", name, checked)  # fmt: skip
    if unbounded:
        first = unbounded[0]
        raise ConfigError(
            "--max-cost",
            None,
            f"a spend cap needs every task's maximum output: {len(unbounded)} tasks set no "
            f"max_tokens (or max_completion_tokens / max_output_tokens), the first "
            f"{first.custom_id!r} (line {first.line}); without it a request's cost has no bound",
        )


def recorded_caps(caps: SpendCaps | None) -> dict[str, Any]:
    """What run.json keeps so that a resume continues the same budget."""
    if caps is None:
        return {}
    kept: dict[str, Any] = {}
    if caps.max_cost_usd is not None:
        kept["max_cost_usd"] = caps.max_cost_usd
    if caps.max_tokens_total is not None:
        kept["max_tokens_total"] = caps.max_tokens_total
    kept["spent_usd"] = round(caps.spent_usd, 6)
    return kept
