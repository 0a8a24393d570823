"""Frozen, typed records that cross process boundaries.

Only builtins inside: no SDK objects, exceptions, clients or keys. A pickled SDK
exception fails to unpickle (openai 3.54 / groq 1.7), which would kill whatever
reads the queue; and anything in here may end up in the journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Outcome.error_kind values. None means success.
RATE_LIMITED = "rate_limited"  # HTTP 429
SERVER_ERROR = "server_error"  # HTTP 5xx
TIMEOUT = "timeout"  # no answer within the timeout
CONNECTION = "connection"  # refused, reset, dropped
CLIENT_ERROR = "client_error"  # other 4xx (408/409 are retried by status code)
AUTH = "auth"  # 401/403: the provider refuses our key
INVALID_RESPONSE = "invalid_response"  # 2xx whose body is not JSON
FN_ERROR = "fn_error"  # a Python step raised
CAPACITY = "capacity"  # flex tier out of capacity: OpenAI 429 "resource unavailable", Groq 498

RETRYABLE_KINDS = frozenset(
    {RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION, INVALID_RESPONSE, CAPACITY}
)
RETRYABLE_STATUS = frozenset({408, 409, 429})

FN_PROVIDER = "fn"  # Call.provider of a Python step


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt at one node, fully rendered: a worker needs nothing else."""

    custom_id: str
    attempt: int  # 1-based
    provider: str  # "openai" | "groq" | FN_PROVIDER
    method: str
    url: str
    body: bytes  # HTTP: the rendered JSON body; fn: JSON of {dep_id: {"text", "value"}}
    fn: str | None = None  # "package.module:function" for a Python step
    timeout_s: float = 120.0  # the whole attempt, from sending to the last byte
    base_url: str | None = None  # the endpoint to send to; None: the provider's configured one
    # --backend ray: what a Python step asks Ray for ((name, amount) pairs: num_cpus,
    # num_gpus, memory); () runs it on the worker processes' threads, like the local backend.
    resources: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced. ``error_kind`` None means success."""

    custom_id: str
    attempt: int
    status_code: int | None  # None: no HTTP answer (timeout, connection, fn step)
    error_kind: str | None
    error_message: str | None
    retry_after_s: float | None  # from retry-after-ms / retry-after
    rate_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, lower-case
    request_id: str | None = None
    body: bytes | None = None  # provider JSON as received, or JSON of a step's return value
    text: str | None = None  # output text used for {{ID}} templating
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    latency_s: float = 0.0
    pid: int = 0

    @property
    def ok(self) -> bool:
        return self.error_kind is None
