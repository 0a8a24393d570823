"""The simulator's server process: raw asyncio, minimal HTTP/1.1 with keep-alive.

One ``asyncio.Protocol`` per connection parses requests by hand (request line, headers,
Content-Length body); each request is decided at once (route, directives, faults, limits),
logged with one ``os.write``, and answered immediately or after its latency through
``loop.call_later``: no task per request, nothing that blocks the loop. That keeps a single
core well above the few thousand requests/s a benchmark sends.

With ``capacity`` set (self-hosted mode), a request that would be answered 200 is placed in
a ``turborun.simulator.capacity.Capacity`` instead: it is answered when its service time
(its latency) has run in one of the ``capacity`` slots, after waiting its turn in the FIFO
queue; a full queue refuses it (503 or a dropped connection, per ``overflow``). Answers
decided earlier (404, 400, 429, directive faults, random 500s/hangs/drops) skip the queue.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from turborun.simulator.answers import (
    DEFAULT_OUTPUT_TOKENS,
    ENDPOINTS,
    Directive,
    DirectiveError,
    Usage,
    answer_body,
    error_body,
    http_response,
    load_token_counter,
    parse_directives,
    prompt_text,
    requested_output_tokens,
)
from turborun.simulator.batches import BatchOptions, SimBatches, flex_capacity_error
from turborun.simulator.capacity import Capacity, Job
from turborun.simulator.limits import ModelLimit, rejection_message

OVERFLOWS = ("503", "drop")
OVERLOADED_MESSAGE = "server overloaded: queue full"
MAX_HEAD_BYTES = 65_536
PARENT_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the server process needs; travels as JSON on its command line."""

    latency_s: float = 0.05
    latency_per_token_s: float = 0.0
    latency_jitter: float = 0.0
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    daily_requests: dict[str, int] = field(default_factory=dict)
    rate_headers: bool = True
    error_rate: float = 0.0
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    capacity: int | None = None
    queue_limit: int | None = None
    overflow: str = "503"
    seed: int = 0
    log_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    exit_with_parent: bool = False
    echo_auth: bool = False  # error bodies quote the request's Authorization header
    # Files and Batches APIs (turborun/simulator/batches.py): BatchOptions as a dict
    batches: dict[str, Any] = field(default_factory=dict)
    flex_capacity_rate: float = 0.0  # flex requests answered with a capacity error
    # After this many model requests every one answers 429 insufficient_quota (the
    # account ran out of credit); None: never.
    quota_after: int | None = None

    def __post_init__(self) -> None:
        """Refuse what the server could only misbehave with: a negative or infinite
        latency, a probability outside [0, 1], a limit of 0 requests per minute."""
        for name in ("latency_s", "latency_per_token_s"):
            _check(name, getattr(self, name), _finite(getattr(self, name)) >= 0, "at least 0")
        if not 0.0 <= _finite(self.latency_jitter) < 1.0:
            raise _invalid("latency_jitter", self.latency_jitter, "in [0, 1)")
        for name in ("error_rate", "hang_rate", "drop_rate"):
            value = getattr(self, name)
            _check(name, value, 0.0 <= _finite(value) <= 1.0, "a probability in [0, 1]")
        if self.error_rate + self.hang_rate + self.drop_rate > 1.0:
            raise ValueError(
                "error_rate + hang_rate + drop_rate (--error-rate, --hang-rate, --drop-rate) "
                f"must be at most 1, got {self.error_rate + self.hang_rate + self.drop_rate:g}"
            )
        for model, (rpm, tpm) in self.limits.items():
            for what, value in (("RPM", rpm), ("TPM", tpm)):
                if value is not None and not _finite(value) > 0:
                    message = f"--limit {model}: {what} must be a positive number, got {value}"
                    raise ValueError(message)
        for model, count in self.daily_requests.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                message = f"--daily {model}: the quota must be an integer >= 0, got {count!r}"
                raise ValueError(message)
        if self.capacity is not None and self.capacity < 1:
            raise _invalid("capacity", self.capacity, "at least 1")
        if self.queue_limit is not None and (self.capacity is None or self.queue_limit < 0):
            raise ValueError("queue_limit (--queue-limit) needs a capacity and must be at least 0")
        if self.overflow not in OVERFLOWS:
            raise _invalid("overflow", self.overflow, f"one of {', '.join(OVERFLOWS)}")
        _check("port", self.port, 0 <= self.port <= 65535, "in 0..65535 (0: a free port)")
        if self.quota_after is not None:
            _check("quota_after", self.quota_after, self.quota_after >= 0, "at least 0")

    def to_json(self) -> str:
        return orjson.dumps(_fields(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        data = orjson.loads(text)
        data["limits"] = {m: (v[0], v[1]) for m, v in data.get("limits", {}).items()}
        return cls(**data)


# SimConfig fields as the simulator's command line spells them, for error messages.
_FLAGS = {
    "latency_s": "--latency",
    "latency_per_token_s": "--latency-per-token",
    "latency_jitter": "--latency-jitter",
    "error_rate": "--error-rate",
    "hang_rate": "--hang-rate",
    "drop_rate": "--drop-rate",
    "capacity": "--capacity",
    "overflow": "--overflow",
    "port": "--port",
}


def _finite(value: float) -> float:
    """``value``, or NaN for inf/NaN (which then fails every comparison)."""
    return value if math.isfinite(value) else math.nan


def _invalid(name: str, value: Any, what: str) -> ValueError:
    return ValueError(f"{name} ({_FLAGS[name]}) must be {what}, got {value!r}")


def _check(name: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise _invalid(name, value, what)


def _fields(config: SimConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in SimConfig.__slots__}


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: bytes
    close: bool
    authorization: str | None = None


class _Answer:
    """A decided answer: bytes to send after ``delay_s``, or a fault ("hang", "drop"); with
    a ``job``, sent when the job's service ends instead (capacity mode)."""

    __slots__ = ("data", "delay_s", "fault", "close", "job")

    def __init__(self, data: bytes = b"", delay_s: float = 0.0, fault: str | None = None):
        self.data = data
        self.delay_s = delay_s
        self.fault = fault
        self.close = False
        self.job: Job | None = None


class SimServer:
    """Decides every request; owns the limits, the directive counters and the log."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.random = random.Random(config.seed)
        self.ids = random.Random(config.seed + 1)
        self.jitter = random.Random(config.seed + 2)
        self.count_tokens = load_token_counter()
        self.receipts: dict[int, int] = {}
        start = clock()
        models = set(config.limits) | set(config.daily_requests)
        self.limits = {
            model: ModelLimit(*config.limits.get(model, (None, None)),
                              config.daily_requests.get(model), start)
            for model in models
        }  # fmt: skip
        self.log_fd = (
            os.open(config.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if config.log_path
            else None
        )
        self.faulty = config.error_rate + config.hang_rate + config.drop_rate > 0
        self.capacity = (
            Capacity(config.capacity, config.queue_limit) if config.capacity is not None else None
        )
        self._authorization: str | None = None  # of the request being decided (echo_auth)
        self.batches = SimBatches(
            BatchOptions.from_dict(config.batches), self.count_tokens, config.seed, clock
        )
        self.flex = random.Random(config.seed + 3)
        self.served = 0  # model requests decided (quota_after)

    def decide(self, request: _Request) -> _Answer:
        entry: dict[str, Any] = {"t": time.time(), "path": request.path, "model": None,
                                 "status": None, "body": None, "max_tokens": None,
                                 "prompt_tokens": None}  # fmt: skip
        self._authorization = request.authorization if self.config.echo_auth else None
        answer = self._decide(request, entry)
        if answer.fault is not None:
            entry["fault"] = answer.fault
        if self.capacity is not None:
            entry.update(self.capacity.counts())
        if self.log_fd is not None:
            os.write(self.log_fd, orjson.dumps(entry) + b"\n")
        answer.close = request.close
        return answer

    def _decide(self, request: _Request, entry: dict[str, Any]) -> _Answer:
        if SimBatches.handles(request.path):  # Files and Batches APIs
            status, data, kind = self.batches.answer(request.method, request.path, request.body)
            entry["status"] = status
            head = http_response(status, data, [self._request_id()])
            return _Answer(head.replace(b"application/json", kind.encode(), 1))
        path = request.path.split("?", 1)[0]
        groq = path.startswith("/openai/v1/")
        endpoint = ENDPOINTS.get(path[len("/openai/v1") if groq else len("/v1") :])
        if endpoint is None or not (groq or path.startswith("/v1/")):
            return self._error(entry, 404, f"Unknown request URL: POST {path}.", code="unknown_url")
        if request.method != "POST":
            return self._error(entry, 405, f"Method {request.method} not allowed on {path}.")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._error(entry, 400, "We could not parse the JSON body of your request.")
        model = body.get("model") if isinstance(body.get("model"), str) else None
        requested = requested_output_tokens(body)
        prompt_tokens = self.count_tokens(prompt_text(endpoint, body))
        entry.update(body=body, model=model, max_tokens=requested, prompt_tokens=prompt_tokens)
        output = 0 if endpoint == "embeddings" else (requested if requested is not None
                                                     else DEFAULT_OUTPUT_TOKENS)  # fmt: skip
        latency = self._latency(output)
        self.served += 1
        if self.config.quota_after is not None and self.served > self.config.quota_after:
            entry["status"] = 429
            message = "You exceeded your current quota, please check your plan and billing details."
            error = self._error_body(429, message, "insufficient_quota", "insufficient_quota")
            return _Answer(http_response(429, error, [self._request_id()]))
        scripted = self._scripted(request.body, entry, latency)
        if isinstance(scripted, _Answer):
            return scripted
        latency = scripted
        rate = self.config.flex_capacity_rate
        if rate and body.get("service_tier") == "flex" and self.flex.random() < rate:
            status, error = flex_capacity_error(groq)
            entry["status"] = status
            return _Answer(http_response(status, error, [self._request_id()]))
        if self.faulty:
            fault = self._random_fault(entry, latency)
            if fault is not None:
                return fault
        return self._admit(endpoint, body, model, groq, Usage(prompt_tokens, output), entry,
                           latency)  # fmt: skip

    def _latency(self, output_tokens: int) -> float:
        """The configured latency, times a uniform factor in [1 - jitter, 1 + jitter]."""
        config = self.config
        latency = config.latency_s + config.latency_per_token_s * output_tokens
        jitter = config.latency_jitter
        return latency * self.jitter.uniform(1 - jitter, 1 + jitter) if jitter else latency

    def _scripted(self, raw: bytes, entry: dict[str, Any], latency: float) -> _Answer | float:
        """The active ``[sim:...]`` fault as an answer, or the (possibly scripted) latency."""
        if b"[sim:" not in raw:
            return latency
        try:
            directives = parse_directives(raw)
        except DirectiveError as exc:
            return self._error(entry, 400, str(exc))
        key = hash(raw)
        receipt = self.receipts.get(key, 0) + 1
        self.receipts[key] = receipt
        active = [d for d in directives if d.times is None or receipt <= d.times]
        for directive in active:
            if directive.latency_s is not None:
                latency = directive.latency_s
        fault = next((d for d in active if d.fault is not None), None)
        return latency if fault is None else self._fault(fault, entry, latency)

    def _fault(self, directive: Directive, entry: dict[str, Any], latency: float) -> _Answer:
        if directive.fault in ("hang", "drop"):
            return _Answer(fault=directive.fault, delay_s=latency)
        if directive.fault == "invalid_json":
            entry["status"] = 200
            body = b'{"id": "chatcmpl-broken", "choices": [ <html>upstream error'
            return _Answer(http_response(200, body, [self._request_id()]), latency)
        status = directive.status or 500
        headers = [self._request_id()]
        if directive.retry_after_ms is not None:
            headers.append(("retry-after-ms", str(directive.retry_after_ms)))
            headers.append(("retry-after", str(math.ceil(directive.retry_after_ms / 1000))))
        if directive.retry_after_s is not None:
            headers.append(("retry-after", f"{directive.retry_after_s:g}"))
        message = directive.message or f"Simulated error {status}."
        kind = "requests" if status == 429 else None
        code = "rate_limit_exceeded" if status == 429 else None
        entry["status"] = status
        return _Answer(
            http_response(status, self._error_body(status, message, kind, code), headers),
            latency,
        )

    def _random_fault(self, entry: dict[str, Any], latency: float) -> _Answer | None:
        draw = self.random.random()
        config = self.config
        if draw < config.error_rate:
            entry["status"] = 500
            body = self._error_body(500, "The server had an error while processing your request.")
            return _Answer(http_response(500, body, [self._request_id()]), latency)
        if draw < config.error_rate + config.hang_rate:
            return _Answer(fault="hang")
        if draw < config.error_rate + config.hang_rate + config.drop_rate:
            return _Answer(fault="drop", delay_s=latency)
        return None

    def _admit(self, endpoint: str, body: dict[str, Any], model: str | None, groq: bool,
               usage: Usage, entry: dict[str, Any], latency: float) -> _Answer:  # fmt: skip
        headers = [self._request_id()]
        limit = self.limits.get(model) if model is not None else None
        if limit is not None:
            now = self.clock()
            rejection = limit.admit(now, usage.prompt_tokens + usage.output_tokens)
            if self.config.rate_headers and self.capacity is None:
                headers += limit.groq_headers(now) if groq else limit.openai_headers(now)
            if rejection is not None:
                wait_ms = math.ceil(rejection.retry_after_s * 1000)
                headers.append(("retry-after", str(math.ceil(wait_ms / 1000))))
                headers.append(("retry-after-ms", str(wait_ms)))
                message = rejection_message(rejection, model or "", groq)
                error = self._error_body(429, message, rejection.kind, "rate_limit_exceeded")
                entry["status"] = 429
                return _Answer(http_response(429, error, headers))
        output = min(usage.output_tokens, DEFAULT_OUTPUT_TOKENS)
        hex_id = headers[0][1][4:]
        answer = answer_body(endpoint, body, hex_id, Usage(usage.prompt_tokens, output))
        if isinstance(body.get("service_tier"), str):  # the tier that served it, as providers do
            answer["service_tier"] = body["service_tier"]
        entry["status"] = 200
        return self._place(
            _Answer(http_response(200, orjson.dumps(answer), headers), latency), entry
        )

    def _place(self, answer: _Answer, entry: dict[str, Any]) -> _Answer:
        """Capacity mode: queue the answer for service, or refuse it when the queue is full."""
        capacity = self.capacity
        if capacity is None:
            return answer
        if not capacity.full():
            answer.job = capacity.place(answer.delay_s)
            return answer
        if self.config.overflow == "drop":
            entry["status"] = None
            return _Answer(fault="drop")
        entry["status"] = 503
        body = self._error_body(503, OVERLOADED_MESSAGE)
        return _Answer(http_response(503, body, [self._request_id()]))

    def _error(self, entry: dict[str, Any], status: int, message: str, code: Any = None) -> _Answer:
        entry["status"] = status
        return _Answer(
            http_response(
                status, self._error_body(status, message, code=code), [self._request_id()]
            )
        )

    def _error_body(
        self, status: int, message: str, kind: str | None = None, code: Any = None
    ) -> bytes:
        return error_body(status, message, kind, code, self._authorization)

    def _request_id(self) -> tuple[str, str]:
        return ("x-request-id", f"req_{self.ids.getrandbits(96):024x}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered strictly in order."""

    def __init__(self, server: SimServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.job: Job | None = None  # capacity mode: the request waiting or in service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            request = self._parse()
            if request is None:
                return
            answer = self.server.decide(request)
            if answer.job is not None:
                self.busy = True
                self.job = answer.job
                self.job.on_done = functools.partial(self._finish, answer)
            elif answer.fault == "hang":
                self.busy = True  # held open until the client gives up
            elif answer.delay_s > 0:
                self.busy = True
                self.loop.call_later(answer.delay_s, self._finish, answer)
            else:
                self._send(answer)

    def _finish(self, answer: _Answer) -> None:
        self.busy = False
        self.job = None
        self._send(answer)
        self._serve()

    def _send(self, answer: _Answer) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if answer.fault == "drop":
            transport.close()
            return
        transport.write(answer.data)
        if answer.close:
            transport.close()

    def _parse(self) -> _Request | None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self._reject(400, "Request header too large.")
            return None
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._reject(400, "Malformed request line.")
            return None
        length, close = 0, parts[2] == "HTTP/1.0"
        authorization = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip() or 0)
            elif name == "connection":
                close = value.strip().lower() == "close"
            elif name == "authorization":
                authorization = value.strip()
            elif name == "transfer-encoding":
                self._reject(411, "Chunked bodies are not supported; send Content-Length.")
                return None
        total = end + 4 + length
        if len(buffer) < total:
            return None
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        return _Request(parts[0], parts[1], body, close, authorization)

    def _reject(self, status: int, message: str) -> None:
        if self.transport is not None:
            self.transport.write(http_response(status, error_body(status, message), []))
            self.transport.close()
        self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        job, self.job = self.job, None
        if job is not None and self.server.capacity is not None:
            self.server.capacity.cancel(job)  # frees its slot or its place in the queue


async def serve(config: SimConfig, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM (or, with exit_with_parent, until the parent is gone)."""
    loop = asyncio.get_running_loop()
    sim = SimServer(config)
    server = await loop.create_server(
        lambda: _Connection(sim, loop), config.host, config.port, backlog=1024, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    if config.exit_with_parent:
        _watch_parent(loop, os.getppid(), stop)
    announce(f"listening on http://{config.host}:{port}")
    try:
        await stop
    finally:
        server.close()
        if sim.log_fd is not None:
            os.close(sim.log_fd)


def _watch_parent(loop: asyncio.AbstractEventLoop, parent: int, stop: asyncio.Future) -> None:
    """Exit when the process that started us is gone, so no simulator outlives its tests."""

    def check() -> None:
        if os.getppid() != parent:
            if not stop.done():
                stop.set_result(None)
            return
        loop.call_later(PARENT_CHECK_S, check)

    loop.call_later(PARENT_CHECK_S, check)
