"""Pricing: configs/pricing.toml, overrides, cost of usage, None when unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from turborun.exceptions import ConfigError
from turborun.pricing import Pricing

REPO_PRICING = Path(__file__).resolve().parent.parent / "turborun" / "data" / "pricing.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_file_prices_the_common_models() -> None:
    pricing = Pricing.load([REPO_PRICING])
    for provider, model in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-nano"),
        ("openai", "o4-mini"),
        ("openai", "gpt-5-nano"),
        ("openai", "text-embedding-3-large"),
        ("groq", "llama-3.1-8b-instant"),
        ("groq", "openai/gpt-oss-120b"),
    ]:
        assert pricing.cost_usd(provider, model, 1000, 1000) is not None, model


def test_cost_of_input_cached_and_output_tokens(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        '[openai."m"]\ninput = 1.0\ncached_input = 0.5\noutput = 4.0\n'
        '[groq."g"]\ninput = 2.0\noutput = 3.0\n',
    )
    pricing = Pricing.load([path])
    assert pricing.cost_usd("openai", "m", 1_000_000, 0) == pytest.approx(1.0)
    assert pricing.cost_usd("openai", "m", 1000, 500, 400) == pytest.approx(
        (600 * 1.0 + 400 * 0.5 + 500 * 4.0) / 1e6
    )
    # no cached price: cached tokens cost input
    assert pricing.cost_usd("groq", "g", 1000, 0, 1000) == pytest.approx(2000 / 1e6)


def test_gpt_4o_mini_example_from_the_spec() -> None:
    cost = Pricing.load([REPO_PRICING]).cost_usd("openai", "gpt-4o-mini", 9, 50)
    assert cost == pytest.approx(0.0000315, rel=0.01)


def test_unknown_model_or_usage_costs_none_not_zero() -> None:
    pricing = Pricing.load([REPO_PRICING])
    assert pricing.cost_usd("openai", "no-such-model", 10, 10) is None
    assert pricing.cost_usd("groq", "gpt-4o-mini", 10, 10) is None  # prices are per provider
    assert pricing.cost_usd("openai", "gpt-4o-mini", None, None) is None


def test_embeddings_without_output_tokens_cost_their_input() -> None:
    pricing = Pricing.load([REPO_PRICING])
    assert pricing.cost_usd("openai", "text-embedding-3-small", 1_000_000, None) == pytest.approx(
        0.02
    )


@pytest.mark.parametrize("model", ["gpt-4o-mini-2024-07-18", "gpt-4o-mini-20240718"])
def test_dated_snapshot_uses_its_base_model_price(model: str) -> None:
    pricing = Pricing.load([REPO_PRICING])
    assert pricing.cost_usd("openai", model, 100, 100) == pricing.cost_usd(
        "openai", "gpt-4o-mini", 100, 100
    )


def test_later_files_override_earlier_and_missing_files_are_skipped(tmp_path: Path) -> None:
    mine = write(
        tmp_path / "configs" / "pricing.toml", '[openai."gpt-4o"]\ninput = 0\noutput = 0\n'
    )
    pricing = Pricing.load([REPO_PRICING, tmp_path / "missing.toml", mine])
    assert pricing.cost_usd("openai", "gpt-4o", 1000, 1000) == 0.0
    assert pricing.cost_usd("openai", "gpt-4o-mini", 1000, 1000)  # still from the first


def test_default_paths_are_the_shipped_file_then_the_working_directory(tmp_path: Path) -> None:
    paths = Pricing.default_paths(tmp_path)
    assert paths == [REPO_PRICING, tmp_path / "configs" / "pricing.toml"]


@pytest.mark.parametrize(
    "text",
    [
        "[openai.\n",  # not TOML
        '[openai."m"]\ninput = "cheap"\noutput = 1\n',
        '[openai."m"]\ninput = -1\noutput = 1\n',
        '[openai."m"]\noutput = 1\n',
        '[openai."m"]\ninput = 1\noutput = 1\nprice = 3\n',
        "openai = 3\n",
    ],
)
def test_malformed_file_is_a_config_error_naming_it(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        Pricing.load([path])
    assert caught.value.variable == str(path)
    assert caught.value.value is None
    assert str(path) in str(caught.value)
