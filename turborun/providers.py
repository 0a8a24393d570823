"""The only place that talks to the SDKs: one Call in, one Outcome out, inside a worker.

Each request goes out through the official SDK's generic ``post`` with the task's raw
JSON bytes, so any endpoint the provider serves works and the raw answer (headers
included) comes back. Every SDK error is mapped to an Outcome at this one seam
(``_outcome_from_error``): SDK exceptions do not survive pickling, and provider trouble
is data for the supervisor, not an exception. Clients use ``max_retries=0`` so that every
attempt passes the supervisor's budget.

Python steps (provider ``fn``) run here too: the function is imported once per process
and called with the decoded dependency results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from turborun.flex import is_capacity_answer
from turborun.keys import Scrubber, url_secrets
from turborun.records import (
    AUTH,
    CAPACITY,
    CLIENT_ERROR,
    CONNECTION,
    FN_ERROR,
    FN_PROVIDER,
    INVALID_RESPONSE,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    Call,
    Outcome,
)

_JSON_HEADERS = {"Content-Type": "application/json"}
# One async client per this many requests in flight: httpx scans its connection pool
# under one lock per request, so a single client holding 1,500 requests spends ~4x the
# CPU per request of 8 clients (see docs/DESIGN.md, "Requests in flight").
REQUESTS_PER_CLIENT = 32
_MAX_MESSAGE_CHARS = 500


@dataclass(slots=True)
class _Client:
    sdk: Any
    active: int = 0


class Providers:
    """Built inside each worker process after it starts. HTTP calls go through the
    SDKs' async clients (``openai.AsyncOpenAI``, ``groq.AsyncGroq``; max_retries=0) on
    the worker's event loop, one client per REQUESTS_PER_CLIENT requests in flight to
    each (provider, base URL); Python steps run in the caller's thread (``call``)."""

    def __init__(
        self, api_keys: dict[str, str], base_urls: dict[str, str], timeout_s: float
    ) -> None:
        self._api_keys = dict(api_keys)
        self._base_urls = dict(base_urls)
        self._timeout_s = timeout_s
        self._clients: dict[tuple[str, str | None], list[_Client]] = {}
        self._functions: dict[str, Callable[[Any], Any]] = {}
        self._ssl: dict[str, Any] = {}  # per provider
        self._scrubber = Scrubber(key for key in api_keys.values() if key)
        for url in base_urls.values():
            self._add_url_secrets(url)
        self._runner: asyncio.Runner | None = None

    def call(self, call: Call) -> Outcome:
        """One attempt from a plain thread; never raises for provider trouble. A Python
        step runs here; an HTTP call runs on this object's own event loop (for scripts
        and tests: a worker process sends HTTP calls through ``acall`` on its loop)."""
        if call.provider == FN_PROVIDER:
            return self._scrub_outcome(self._call_fn(call))
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(self.acall(call))

    async def acall(self, call: Call) -> Outcome:
        """One HTTP attempt, bounded as a whole by ``call.timeout_s`` (a server that
        trickles its answer cannot hold it longer); never raises for provider trouble."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(call.timeout_s):
                response = await self._post(call)
        except TimeoutError:
            message = f"no complete answer within {call.timeout_s:g} s"
            return _failure(call, None, TIMEOUT, message, time.perf_counter() - start)
        except Exception as error:  # every SDK/transport error becomes an Outcome here
            outcome = self._outcome_from_error(call, error, time.perf_counter() - start)
        else:
            outcome = _outcome_from_response(call, response, time.perf_counter() - start)
        return self._scrub_outcome(outcome)

    async def warm_up(self) -> None:
        """Build a client for every provider with a key now, at process start, so the
        first requests of a run do not wait for SDK imports and client set-up."""
        for provider in ("openai", "groq"):
            if self._api_keys.get(provider):
                self._client_for(provider, None)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    async def _post(self, call: Call) -> Any:
        method = call.method.upper()
        if method not in ("POST", "GET"):
            raise _UnsupportedMethod(f"method {method} is not supported; use POST or GET")
        client = self._client_for(call.provider, call.base_url)
        client.active += 1
        try:
            path = _provider_path(call.provider, call.url)
            options = {"headers": _JSON_HEADERS, "timeout": call.timeout_s}
            cast_to = _response_class(call.provider)
            if method == "POST":
                return await client.sdk.post(
                    path, content=call.body, cast_to=cast_to, options=options
                )
            return await client.sdk.get(path, cast_to=cast_to, options=options)
        finally:
            client.active -= 1

    def _client_for(self, provider: str, base_url: str | None) -> _Client:
        """The least busy client of (provider, base URL); a new one when every client
        already holds REQUESTS_PER_CLIENT requests."""
        if provider not in ("openai", "groq"):
            raise ValueError(f"unknown provider {provider!r}")
        clients = self._clients.setdefault((provider, base_url), [])
        best = min(clients, key=lambda c: c.active, default=None)
        if best is None or best.active >= REQUESTS_PER_CLIENT:
            if base_url is not None and not clients:
                self._add_url_secrets(base_url)
            best = _Client(self._build_client(provider, base_url))
            clients.append(best)
        return best

    def clients(self, provider: str, base_url: str | None = None) -> int:
        """How many clients serve (provider, base URL) in this process."""
        return len(self._clients.get((provider, base_url), []))

    def _ssl_context(self, provider: str, create: Callable[[], Any]) -> Any:
        context = self._ssl.get(provider)
        if context is None:
            context = self._ssl[provider] = create()
        return context

    def _build_client(self, provider: str, base_url: str | None) -> Any:
        kwargs: dict[str, Any] = {
            "api_key": self._api_keys.get(provider) or "missing-key",
            "max_retries": 0,
            "timeout": self._timeout_s,
        }
        url = base_url or self._base_urls.get(provider)
        if url:
            kwargs["base_url"] = url
        # Each client would load the CA bundle again (~45 ms); a process's clients
        # share the context their library would build (same certificates, same
        # SSL_CERT_FILE/SSL_CERT_DIR handling). No cap on connections: the supervisor
        # bounds what is in flight; idle ones expire after 5 s.
        if provider == "openai":
            import httpx2
            import openai

            verify = self._ssl_context("openai", httpx2.create_ssl_context)
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
            http_client = openai.DefaultAsyncHttpxClient(verify=verify, limits=limits)
            return openai.AsyncOpenAI(http_client=http_client, **kwargs)
        import groq
        import httpx

        verify = self._ssl_context("groq", httpx.create_ssl_context)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        http_client = groq.DefaultAsyncHttpxClient(limits=limits, verify=verify)
        return groq.AsyncGroq(http_client=http_client, **kwargs)

    def _outcome_from_error(self, call: Call, error: Exception, latency_s: float) -> Outcome:
        response = getattr(error, "response", None)
        status = getattr(error, "status_code", None)
        if isinstance(status, int) and response is not None:
            return _outcome_from_status_error(call, status, response, latency_s)
        name = type(error).__name__
        message = f"{name}: {_error_text(error)}"
        return _failure(call, None, _error_kind(error), message, latency_s)

    def _add_url_secrets(self, url: str) -> None:
        for secret in url_secrets(url):
            self._scrubber.add(secret)

    def _scrub_outcome(self, outcome: Outcome) -> Outcome:
        """The outcome without the run's keys (keys.py): everything in it may reach the
        journal, the results file, messages and logs. A success's body and headers are
        searched for whole keys (cheap); a failure's, and every message, for partial
        forms too ("sk-abc***wxyz"), which is how providers echo a refused key."""
        scrubber = self._scrubber
        if not scrubber:
            return outcome
        partial = not outcome.ok
        changes: dict[str, Any] = {}
        if outcome.body is not None:
            body = scrubber.bytes(outcome.body, partial=partial)
            if body is not outcome.body:
                changes["body"] = body
        if outcome.error_message:
            message = scrubber.text(outcome.error_message)
            if message is not outcome.error_message:
                changes["error_message"] = message
        if outcome.request_id:
            request_id = _scrub_text(scrubber, outcome.request_id, partial)
            if request_id is not outcome.request_id:
                changes["request_id"] = request_id
        headers = {
            name: _scrub_text(scrubber, value, partial)
            for name, value in outcome.rate_headers.items()
        }
        if any(headers[name] is not value for name, value in outcome.rate_headers.items()):
            changes["rate_headers"] = headers
        if outcome.text is not None:
            text = _scrub_text(scrubber, outcome.text, partial)
            if text is not outcome.text:
                changes["text"] = text
        return dataclasses.replace(outcome, **changes) if changes else outcome

    def _call_fn(self, call: Call) -> Outcome:
        start = time.perf_counter()
        try:
            function = self._function(call.fn or "")
            value = function(orjson.loads(call.body))
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            return _failure(call, None, FN_ERROR, message, time.perf_counter() - start)
        try:
            body = orjson.dumps(value)
        except TypeError as error:
            message = f"return value of {call.fn} is not JSON-serializable: {error}"
            return _failure(call, None, FN_ERROR, message, time.perf_counter() - start)
        text = value if isinstance(value, str) else body.decode()
        return Outcome(call.custom_id, call.attempt, None, None, None, None, body=body,
                       text=text, latency_s=time.perf_counter() - start,
                       pid=os.getpid())  # fmt: skip

    def _function(self, spec: str) -> Callable[[Any], Any]:
        function = self._functions.get(spec)
        if function is None:
            module_name, _, name = spec.partition(":")
            if not module_name or not name:
                raise ValueError(f"fn must look like 'package.module:function', got {spec!r}")
            function = getattr(importlib.import_module(module_name), name)
            self._functions[spec] = function
        return function


def _provider_path(provider: str, url: str) -> str:
    """The path to give the provider's client, whose base_url already holds a prefix."""
    if provider == "openai":
        return url[len("/v1") :] if url.startswith("/v1/") else url
    if url.startswith("/openai/"):
        return url
    return "/openai" + url if url.startswith("/v1/") else url


def _response_class(provider: str) -> type:
    # openai 3.x is built on httpx2, groq 1.x on httpx: cast_to must be that SDK's class.
    if provider == "openai":
        import httpx2

        return httpx2.Response
    import httpx

    return httpx.Response


class _UnsupportedMethod(ValueError):
    """A task method the runner does not send (the Batch API format only knows POST)."""


def _error_kind(error: Exception) -> str:
    """Kind of an error without an HTTP status, by the SDK class names both SDKs share."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if "APITimeoutError" in names:
        return TIMEOUT
    if "APIConnectionError" in names or isinstance(error, OSError):
        return CONNECTION
    if "APIError" in names:  # e.g. an answer the SDK could not validate: worth a retry
        return INVALID_RESPONSE
    return CLIENT_ERROR  # our own mistake (bad provider, method, base URL): retrying won't help


def _outcome_from_response(call: Call, response: Any, latency_s: float) -> Outcome:
    headers = response.headers
    body = response.content
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = f"HTTP {response.status_code} answer is not JSON: {body[:200]!r}"
        return _failure(call, response.status_code, INVALID_RESPONSE, message, latency_s,
                        headers, body)  # fmt: skip
    input_tokens, output_tokens, cached_tokens = _usage(data)
    return Outcome(
        custom_id=call.custom_id,
        attempt=call.attempt,
        status_code=response.status_code,
        error_kind=None,
        error_message=None,
        retry_after_s=None,
        rate_headers=_rate_headers(headers),
        request_id=headers.get("x-request-id"),
        body=body,
        text=_output_text(data),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        latency_s=latency_s,
        pid=os.getpid(),
    )


def _outcome_from_status_error(call: Call, status: int, response: Any, latency_s: float) -> Outcome:
    if status == 429:
        kind = RATE_LIMITED
    elif status in (401, 403):
        kind = AUTH
    elif status >= 500:
        kind = SERVER_ERROR
    else:
        kind = CLIENT_ERROR
    body = _read_body(response)
    if is_capacity_answer(status, body):  # flex without capacity: not a rate limit
        kind = CAPACITY
    message = _provider_message(body) or f"HTTP {status}"
    return _failure(call, status, kind, message, latency_s, response.headers, body)


def _read_body(response: Any) -> bytes:
    try:
        return bytes(response.content)
    except Exception:  # a stream that broke while reading: the status still tells enough
        return b""


def _failure(
    call: Call,
    status: int | None,
    kind: str,
    message: str,
    latency_s: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Outcome:
    return Outcome(
        custom_id=call.custom_id,
        attempt=call.attempt,
        status_code=status,
        error_kind=kind,
        error_message=message,
        retry_after_s=_retry_after_s(headers) if headers is not None else None,
        rate_headers=_rate_headers(headers) if headers is not None else {},
        request_id=headers.get("x-request-id") if headers is not None else None,
        body=body,
        latency_s=latency_s,
        pid=os.getpid(),
    )


def _scrub_text(scrubber: Scrubber, text: str, partial: bool) -> str:
    if partial:
        return scrubber.text(text)
    data = text.encode("utf-8", "surrogatepass")
    scrubbed = scrubber.bytes(data, partial=False)
    return text if scrubbed is data else scrubbed.decode("utf-8", "surrogatepass")


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower().startswith("x-ratelimit-")
    }


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """retry-after-ms (milliseconds), else retry-after (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _provider_message(body: bytes) -> str | None:
    """The message of a provider's JSON error body ({"error": {"message": ...}} and kin)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:_MAX_MESSAGE_CHARS] or None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return None


def _error_text(error: Exception) -> str:
    text = str(error) or repr(error)
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text[:_MAX_MESSAGE_CHARS]


def _output_text(data: Any) -> str | None:
    """chat: message content; completions: text; responses: output_text; else None."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            return content if isinstance(content, str) else None
        return first.get("text") if isinstance(first.get("text"), str) else None
    if isinstance(data.get("output_text"), str):
        return data["output_text"]
    if isinstance(data.get("output"), list):
        return _responses_text(data["output"])
    return None


def _responses_text(output: list[Any]) -> str | None:
    parts = [
        part["text"]
        for item in output
        if isinstance(item, dict) and isinstance(item.get("content"), list)
        for part in item["content"]
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    return "".join(parts) if parts else None


def _usage(data: Any) -> tuple[int | None, int | None, int | None]:
    """(input, output, cached) tokens from chat/completions, responses or embeddings usage."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None, None
    if "input_tokens" in usage:  # responses
        details = usage.get("input_tokens_details") or {}
        return usage.get("input_tokens"), usage.get("output_tokens"), details.get("cached_tokens")
    details = usage.get("prompt_tokens_details") or {}
    output = usage.get("completion_tokens", 0 if "prompt_tokens" in usage else None)
    return usage.get("prompt_tokens"), output, details.get("cached_tokens")
