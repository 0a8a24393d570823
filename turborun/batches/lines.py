"""Batch API lines: the input line of a task, and what an output or error line means.

A line of the output or error file is matched to its task by ``custom_id``, never by
position (providers write them in an order of their own). Its meaning, as for a live
request:

* ``response.status_code`` 200: success;
* another status: that HTTP failure, retried (408, 409, 429, 5xx) or final (other 4xx);
* no response, error code ``batch_expired`` / ``batch_cancelled``: never run: sent again
  without counting an attempt;
* no response, another error: the line was refused (``client_error``), final.
"""

from __future__ import annotations

from typing import Any

import orjson

from turborun.budget import is_retryable
from turborun.providers import _output_text, _usage
from turborun.records import AUTH, CLIENT_ERROR, RATE_LIMITED, SERVER_ERROR, Outcome

UNRUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
SUCCESS, RETRY, FINAL, UNRUN = "success", "retry", "final", "unrun"


def input_line(custom_id: str, method: str, url: str, body: bytes) -> bytes:
    """One line of a batch input file; ``body``: the rendered JSON body."""
    head = orjson.dumps({"custom_id": custom_id, "method": method, "url": url})
    return head[:-1] + b',"body":' + body + b"}\n"


def parse_lines(data: bytes) -> dict[str, dict[str, Any]]:
    """custom_id -> line, for every JSON line of an output or error file."""
    found: dict[str, dict[str, Any]] = {}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            found[line["custom_id"]] = line
    return found


def line_outcome(line: dict[str, Any], attempt: int, latency_s: float) -> tuple[str, Outcome]:
    """(what to do, the Outcome) of one output or error line."""
    custom_id = line["custom_id"]
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = response["status_code"]
        body = response.get("body")
        raw = orjson.dumps(body) if body is not None else None
        request_id = response.get("request_id")
        if status == 200:
            inputs, outputs, cached = _usage(body)
            outcome = Outcome(custom_id, attempt, 200, None, None, None, request_id=request_id,
                              body=raw, text=_output_text(body), input_tokens=inputs,
                              output_tokens=outputs, cached_tokens=cached,
                              latency_s=latency_s)  # fmt: skip
            return SUCCESS, outcome
        kind = _kind(status)
        outcome = Outcome(custom_id, attempt, status, kind, _message(body) or f"HTTP {status}",
                          None, request_id=request_id, body=raw,
                          latency_s=latency_s)  # fmt: skip
        return (RETRY if is_retryable(outcome) else FINAL), outcome
    error = line.get("error") if isinstance(line.get("error"), dict) else {}
    code = str(error.get("code") or "error")
    message = str(error.get("message") or code)
    outcome = Outcome(custom_id, attempt, None, CLIENT_ERROR, f"{code}: {message}", None,
                      latency_s=latency_s)  # fmt: skip
    return (UNRUN if code in UNRUN_CODES else FINAL), outcome


def _kind(status: int) -> str:
    if status == 429:
        return RATE_LIMITED
    if status in (401, 403):
        return AUTH
    if status >= 500:
        return SERVER_ERROR
    return CLIENT_ERROR


def _message(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return None
