"""The simulator's Files and Batches APIs (OpenAI's ``/v1`` and Groq's ``/openai/v1`` paths),
with accelerated time, and its flex tier's capacity errors.

Routes::

    POST   /files                      multipart upload (file, purpose) -> file object
    GET    /files/{id}                 file object
    GET    /files/{id}/content         the file's bytes
    DELETE /files/{id}
    POST   /batches                    {input_file_id, endpoint, completion_window, metadata}
    GET    /batches?limit=N&after=ID   newest first, cursor pagination (OpenAI's shape)
    GET    /batches/{id}
    POST   /batches/{id}/cancel

Time. A batch runs ``latency_s`` real seconds: its lines finish one after the other, evenly
over that time, in file order. The batch's timestamps (``created_at``, ``expires_at``, ...)
are simulated: ``time_scale`` simulated seconds pass per real second, so with the default
8,640 the 24 h window passes in 10 s. Status moves validating -> in_progress -> finalizing
-> completed (finalizing for the last tenth of ``latency_s``); ``request_counts`` follow.

Faults (``BatchOptions``):

* ``expire_fraction`` F with ``expire_count`` N: the first N batches created expire once a
  fraction F of their lines is done (the first F in file order); those lines are in the
  output file, every other line is in the error file with code ``batch_expired``, as
  OpenAI does when a completion window passes.
* ``error_rate``: that fraction of lines (seeded draw) fail with HTTP ``error_status``
  (default 500) in the error file.
* ``[sim:status=N:times=K]`` in a line's body fails that line, counting receipts of that
  exact body across batches (as for live requests).
* A cancelled batch keeps the lines done when it was cancelled; the others are in the error
  file with code ``batch_cancelled``.

Output files list their lines in an order of their own (reversed), never the input's: a
client must match lines by ``custom_id``, as with the real APIs.

Flex: ``flex_capacity_rate`` p answers a live request whose body says ``"service_tier":
"flex"`` with a capacity error with probability p (seeded): on ``/v1`` OpenAI's 429
"Resource unavailable" (type ``resource_unavailable``), on ``/openai/v1`` Groq's 498
``capacity_exceeded``. Neither carries rate-limit headers; neither is charged to limits.

This module imports nothing of turborun but the simulator's answer helpers.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from turborun.simulator.answers import (
    DEFAULT_OUTPUT_TOKENS,
    ENDPOINTS,
    DirectiveError,
    Usage,
    answer_body,
    error_body,
    parse_directives,
    prompt_text,
    requested_output_tokens,
)

DEFAULT_TIME_SCALE = 8640.0  # 24 h in 10 s
TERMINAL = ("completed", "expired", "cancelled", "failed")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
FLEX_OPENAI_MESSAGE = (
    "Resource unavailable: flex processing capacity is temporarily unavailable. "
    "Please retry later or use the default service tier."
)
FLEX_GROQ_MESSAGE = "Flex tier capacity exceeded. Please try again later."
_WINDOWS_S = {"24h": 86_400.0, "48h": 172_800.0, "72h": 259_200.0, "7d": 604_800.0}


@dataclass(frozen=True, slots=True)
class BatchOptions:
    latency_s: float = 1.0  # real seconds from creation to the last line done
    time_scale: float = DEFAULT_TIME_SCALE  # simulated seconds per real second
    expire_fraction: float | None = None  # expire after this fraction of lines is done
    expire_count: int | None = None  # ... for the first N batches (None: every batch)
    error_rate: float = 0.0
    error_status: int = 500

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BatchOptions:
        return cls(**(data or {}))


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed"}  # fmt: skip


@dataclass(slots=True)
class _Batch:
    id: str
    seq: int
    endpoint: str
    input_file_id: str
    window: str
    metadata: dict[str, Any] | None
    lines: list[dict[str, Any]]
    started: float  # real monotonic time of creation
    created_at: int  # simulated unix time
    expire_at_line: int | None  # expires once this many lines are done
    cancelled_done: int | None = None  # lines done when cancelled
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    lines_done: int | None = None  # set when the batch ends


class SimBatches:
    """Owns the simulator's files and batches; answers (status, JSON or raw body)."""

    def __init__(
        self,
        options: BatchOptions,
        count_tokens: Any,
        seed: int,
        clock: Any = time.monotonic,
    ) -> None:
        self.options = options
        self.count_tokens = count_tokens
        self.clock = clock
        self.random = random.Random(seed + 7)
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.receipts: dict[int, int] = {}
        self._epoch_wall = time.time()
        self._epoch = clock()
        # Ids differ between simulator processes (a batch id of an earlier simulator must
        # not name another batch in this one: a resume would collect the wrong lines).
        self._ids = random.Random(secrets.randbits(64))

    # ---- routing -----------------------------------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        bare = _bare(path.split("?", 1)[0])
        return bare is not None and bare.startswith(("/files", "/batches"))

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) of one request to a Files or Batches path."""
        route, _, query = path.partition("?")
        parts = [p for p in (_bare(route) or "").split("/") if p]
        try:
            return self._route(method, parts, parse_qs(query), body)
        except _HttpError as exc:
            return exc.status, error_body(exc.status, exc.message), "application/json"

    def _route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[int, bytes, str]:
        head = parts[0]
        if head == "files":
            if len(parts) == 1 and method == "POST":
                return _json(self._upload(body))
            if len(parts) == 2 and method == "GET":
                return _json(self._file(parts[1]).obj())
            if len(parts) == 2 and method == "DELETE":
                self.files.pop(self._file(parts[1]).id)
                return _json({"id": parts[1], "object": "file", "deleted": True})
            if len(parts) == 3 and parts[2] == "content" and method == "GET":
                return 200, self._file(parts[1]).data, "application/octet-stream"
        elif head == "batches":
            if len(parts) == 1 and method == "POST":
                return _json(self._create(body))
            if len(parts) == 1 and method == "GET":
                return _json(self._list(query))
            if len(parts) == 2 and method == "GET":
                return _json(self._obj(self._batch(parts[1])))
            if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                return _json(self._cancel(self._batch(parts[1])))
        raise _HttpError(404, f"Unknown request URL: {method} /{'/'.join(parts)}.")

    # ---- files -------------------------------------------------------------------

    def _upload(self, body: bytes) -> dict[str, Any]:
        fields = _multipart(body)
        if "file" not in fields:
            raise _HttpError(400, "Missing required parameter: 'file'.")
        filename, data = fields["file"]
        purpose = fields.get("purpose", ("", b"batch"))[1].decode()
        file = _File(self._id("file"), filename or "upload.jsonl", purpose, data, self._now())
        self.files[file.id] = file
        return file.obj()

    def _file(self, file_id: str) -> _File:
        file = self.files.get(file_id)
        if file is None:
            raise _HttpError(404, f"No such File object: {file_id}")
        return file

    def _store(self, name: str, lines: list[bytes]) -> str:
        file = _File(self._id("file"), name, "batch_output", b"".join(lines), self._now())
        self.files[file.id] = file
        return file.id

    # ---- batches -----------------------------------------------------------------

    def _create(self, body: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _HttpError(400, "We could not parse the JSON body of your request.") from None
        file = self._file(str(request.get("input_file_id")))
        endpoint = request.get("endpoint")
        window = request.get("completion_window", "24h")
        if window not in _WINDOWS_S:
            raise _HttpError(400, f"Invalid completion_window: {window!r}.")
        lines = []
        models = set()
        for number, raw in enumerate(file.data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _HttpError(400, f"Line {number} of the input file is not JSON.") from None
            if line.get("url") != endpoint:
                raise _HttpError(400, f"Line {number}: url {line.get('url')!r} is not {endpoint}.")
            models.add((line.get("body") or {}).get("model"))
            line["_raw_body"] = orjson.dumps(line.get("body"))
            lines.append(line)
        if not lines:
            raise _HttpError(400, "The input file holds no requests.")
        if len(models) > 1:
            raise _HttpError(400, "A batch input file may only hold requests to one model.")
        options = self.options
        seq = len(self.batches)
        expires = options.expire_fraction is not None and (
            options.expire_count is None or seq < options.expire_count
        )
        batch = _Batch(
            id=self._id("batch"), seq=seq, endpoint=str(endpoint), input_file_id=file.id,
            window=window, metadata=request.get("metadata"), lines=lines,
            started=self.clock(), created_at=self._now(),
            expire_at_line=int(len(lines) * options.expire_fraction) if expires else None,
        )  # fmt: skip
        self.batches[batch.id] = batch
        return self._obj(batch)

    def _batch(self, batch_id: str) -> _Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise _HttpError(404, f"No such Batch object: {batch_id}")
        return batch

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get("after") or [None])[0]
        ordered = sorted(self.batches.values(), key=lambda b: -b.seq)
        if after is not None and after in self.batches:
            cut = self.batches[after].seq
            ordered = [b for b in ordered if b.seq < cut]
        page = ordered[:limit]
        return {"object": "list", "data": [self._obj(b) for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(ordered) > limit}  # fmt: skip

    def _cancel(self, batch: _Batch) -> dict[str, Any]:
        self._advance(batch)
        if batch.status not in TERMINAL:
            batch.cancelled_done = self._done(batch)
            batch.stamps["cancelling_at"] = self._now()
            self._finish(batch, "cancelled")
        return self._obj(batch)

    def _done(self, batch: _Batch) -> int:
        """Lines done by now, in file order."""
        n = len(batch.lines)
        elapsed = self.clock() - batch.started
        latency = max(self.options.latency_s, 1e-9)
        done = min(n, int(n * elapsed / latency))
        if batch.expire_at_line is not None:
            done = min(done, batch.expire_at_line)
        return done

    def _advance(self, batch: _Batch) -> None:
        if batch.status in TERMINAL:
            return
        done = self._done(batch)
        n = len(batch.lines)
        elapsed = self.clock() - batch.started
        if batch.expire_at_line is not None and done >= batch.expire_at_line:
            if elapsed >= self.options.latency_s * batch.expire_at_line / n:
                self._finish(batch, "expired")
                return
        if done >= n:
            batch.stamps.setdefault("finalizing_at", self._now())
            if elapsed >= self.options.latency_s * 1.1:
                self._finish(batch, "completed")
            else:
                batch.status = "finalizing"
            return
        if elapsed > 0:
            batch.status = "in_progress"
            batch.stamps.setdefault("in_progress_at", self._now())

    def _finish(self, batch: _Batch, status: str) -> None:
        """Answer every line: done ones into the output (or error) file, the rest into
        the error file as expired or cancelled."""
        if status == "expired":
            done = batch.expire_at_line or 0
        elif status == "cancelled":
            done = batch.cancelled_done or 0
        else:
            done = len(batch.lines)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for index, line in enumerate(batch.lines):
            if index < done:
                record, ok = self._answer_line(batch, line)
                (outputs if ok else errors).append(record)
                batch.failed += 0 if ok else 1
            else:
                code, message = (
                    ("batch_expired", EXPIRED_MESSAGE)
                    if status == "expired"
                    else ("batch_cancelled", CANCELLED_MESSAGE)
                )
                errors.append(self._line(line, None, {"code": code, "message": message}))
        outputs.reverse()  # not the input's order: clients must match by custom_id
        errors.reverse()
        if outputs:
            batch.output_file_id = self._store(f"{batch.id}_output.jsonl", outputs)
        if errors:
            batch.error_file_id = self._store(f"{batch.id}_error.jsonl", errors)
        batch.status = status
        batch.stamps[f"{status}_at"] = self._now()
        batch.lines_done = done

    def _answer_line(self, batch: _Batch, line: dict[str, Any]) -> tuple[bytes, bool]:
        raw: bytes = line["_raw_body"]
        status, message = self._line_fault(raw)
        request_id = f"req_{self._ids.getrandbits(96):024x}"
        if status is not None:
            body = orjson.loads(error_body(status, message or f"Simulated error {status}."))
            response = {"status_code": status, "request_id": request_id, "body": body}
            return self._line(line, response, None), False
        body = line.get("body") or {}
        endpoint = ENDPOINTS.get(batch.endpoint.removeprefix("/v1"), "chat")
        requested = requested_output_tokens(body)
        output = 0 if endpoint == "embeddings" else (
            requested if requested is not None else DEFAULT_OUTPUT_TOKENS)  # fmt: skip
        usage = Usage(self.count_tokens(prompt_text(endpoint, body)),
                      min(output, DEFAULT_OUTPUT_TOKENS))  # fmt: skip
        answer = answer_body(endpoint, body, request_id[4:], usage)
        response = {"status_code": 200, "request_id": request_id, "body": answer}
        return self._line(line, response, None), True

    def _line_fault(self, raw: bytes) -> tuple[int | None, str | None]:
        """(status, message) of a line that fails; (None, None) for one answered 200."""
        if b"[sim:" in raw:
            try:
                directives = parse_directives(raw)
            except DirectiveError as exc:
                return 400, str(exc)
            key = hash(raw)
            receipt = self.receipts.get(key, 0) + 1
            self.receipts[key] = receipt
            for directive in directives:
                if directive.times is not None and receipt > directive.times:
                    continue
                if directive.fault == "status" and directive.status:
                    return directive.status, directive.message
        if self.options.error_rate and self.random.random() < self.options.error_rate:
            return self.options.error_status, None
        return None, None

    def _line(self, line: dict[str, Any], response: Any, error: Any) -> bytes:
        record = {"id": self._id("batch_req"), "custom_id": line.get("custom_id"),
                  "response": response, "error": error}  # fmt: skip
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    def _obj(self, batch: _Batch) -> dict[str, Any]:
        self._advance(batch)
        n = len(batch.lines)
        if batch.status in TERMINAL:
            done = n if batch.lines_done is None else batch.lines_done
        else:
            done = self._done(batch)
        window_s = _WINDOWS_S[batch.window]
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": batch.stamps.get("in_progress_at"),
            "expires_at": batch.created_at + int(window_s),
            "finalizing_at": batch.stamps.get("finalizing_at"),
            "completed_at": batch.stamps.get("completed_at"),
            "failed_at": None,
            "expired_at": batch.stamps.get("expired_at"),
            "cancelling_at": batch.stamps.get("cancelling_at"),
            "cancelled_at": batch.stamps.get("cancelled_at"),
            "request_counts": {
                "total": n,
                "completed": done - batch.failed,
                "failed": batch.failed,
            },  # fmt: skip
            "metadata": batch.metadata,
        }

    # ---- time and ids ------------------------------------------------------------

    def _now(self) -> int:
        """Simulated unix time: the real start plus elapsed real time × time_scale."""
        return int(self._epoch_wall + (self.clock() - self._epoch) * self.options.time_scale)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{self._ids.getrandbits(96):024x}"


def flex_capacity_error(groq: bool) -> tuple[int, bytes]:
    """A flex capacity answer: OpenAI's 429 "Resource unavailable", Groq's 498."""
    if groq:
        return 498, error_body(498, FLEX_GROQ_MESSAGE, "capacity_exceeded", "capacity_exceeded")
    return 429, error_body(429, FLEX_OPENAI_MESSAGE, "resource_unavailable", None)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bare(path: str) -> str | None:
    """The path without OpenAI's /v1 or Groq's /openai/v1 prefix; None for other paths."""
    for prefix in ("/openai/v1", "/v1"):
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return None


def _json(data: dict[str, Any]) -> tuple[int, bytes, str]:
    return 200, orjson.dumps(data), "application/json"


def _multipart(body: bytes) -> dict[str, tuple[str, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes). The boundary is
    the body's first line (what every client sends first)."""
    first, _, _ = body.partition(b"\r\n")
    if not first.startswith(b"--"):
        raise _HttpError(400, "Expected a multipart/form-data body.")
    fields: dict[str, tuple[str, bytes]] = {}
    for part in body.split(first)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        name = filename = ""
        for header in head.decode("utf-8", "replace").split("\r\n"):
            if header.lower().startswith("content-disposition"):
                for item in header.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name:
            fields[name] = (filename, data)
    return fields
