"""The providers' Files and Batches APIs through their SDKs (``openai.OpenAI``,
``groq.Groq``), as plain dicts.

SDK-internal retries are off (``max_retries=0``): a retried ``batches.create`` after a
read timeout could create a second batch and pay twice. Calls that create nothing
(retrieve, list, download, cancel) are retried here on 408/409/429/5xx and connection
errors; ``create_batch`` is never retried blindly: the driver looks its intent marker up
in the provider's list of batches first (``find_by_marker``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from turborun.keys import Scrubber

T = TypeVar("T")

MARKER_KEY = "turborun_intent"  # batch metadata key holding the intent marker
RETRIES = 5
_RETRY_STATUS = frozenset({408, 409, 429})
LIST_LIMIT = 100  # batches per page (OpenAI's maximum)
LIST_SCAN_MAX = 10_000  # batches looked at when searching for a marker


class BatchAPIError(Exception):
    """A Files/Batches call failed; ``ambiguous``: the request may have taken effect."""

    def __init__(self, message: str, status: int | None, ambiguous: bool) -> None:
        super().__init__(message)
        self.status = status
        self.ambiguous = ambiguous


class BatchClient:
    """One provider's Files and Batches APIs. Groq's paths are ``/openai/v1/...`` (the
    SDK adds them); OpenAI's are under its base URL's ``/v1``."""

    def __init__(
        self,
        provider: str,
        api_key: str,
        base_url: str | None,
        timeout_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.provider = provider
        self._sleep = sleep
        self._rng = random.Random()
        self._scrubber = Scrubber([api_key])  # what a provider echoes of it is never stored
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": timeout_s}
        if base_url:
            kwargs["base_url"] = base_url
        if provider == "openai":
            import openai

            self._sdk: Any = openai.OpenAI(**kwargs)
        else:
            import groq

            self._sdk = groq.Groq(**kwargs)

    def close(self) -> None:
        self._sdk.close()

    # ---- calls ---------------------------------------------------------------------

    def upload(self, name: str, data: bytes) -> str:
        """Upload a batch input file; its id. Retried: an orphan file costs nothing."""
        created = self._retried(lambda: self._sdk.files.create(file=(name, data), purpose="batch"))
        return str(created.id)

    def create_batch(self, file_id: str, endpoint: str, window: str, marker: str) -> dict[str, Any]:
        """Create a batch once (no retry: see the module docstring)."""
        try:
            batch = self._sdk.batches.create(
                input_file_id=file_id,
                endpoint=endpoint,
                completion_window=window,
                metadata={MARKER_KEY: marker},
            )
        except Exception as exc:
            raise _mapped(exc) from exc
        return _as_dict(batch)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return _as_dict(self._retried(lambda: self._sdk.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return _as_dict(self._retried(lambda: self._sdk.batches.cancel(batch_id)))

    def content(self, file_id: str, *, errors: bool = False) -> bytes:
        """A file's bytes without the API key: whole keys in an output file (one search
        per key), partial forms too in an error file, where providers echo a refused key
        ("sk-abc***wxyz"), as for live answers (turborun/keys.py)."""
        data = bytes(self._retried(lambda: self._sdk.files.content(file_id)).read())
        return self._scrubber.bytes(data, partial=errors)

    def find_by_marker(self, marker: str) -> dict[str, Any] | None:
        """The batch whose metadata carries ``marker``, among the newest LIST_SCAN_MAX."""
        for batch in self._list():
            if (batch.get("metadata") or {}).get(MARKER_KEY) == marker:
                return batch
        return None

    def _list(self) -> Iterator[dict[str, Any]]:
        if self.provider == "groq":  # groq 1.7: one page, no cursor
            page = self._retried(lambda: self._sdk.batches.list())
            for batch in (page.data or [])[:LIST_SCAN_MAX]:
                yield _as_dict(batch)
            return
        seen = 0
        after: str | None = None
        while seen < LIST_SCAN_MAX:
            kwargs: dict[str, Any] = {"limit": LIST_LIMIT}
            if after is not None:
                kwargs["after"] = after
            page = self._retried(lambda kwargs=kwargs: self._sdk.batches.list(**kwargs))
            items = list(page.data)
            for batch in items:
                yield _as_dict(batch)
            seen += len(items)
            if not items or not getattr(page, "has_more", False):
                return
            after = items[-1].id

    def _retried(self, call: Callable[[], T]) -> T:
        for attempt in range(RETRIES + 1):
            try:
                return call()
            except Exception as exc:
                error = _mapped(exc)
                if attempt == RETRIES or not _transient(error):
                    raise error from exc
                self._sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + self._rng.random() / 2))
        raise AssertionError("unreachable")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


def _mapped(exc: Exception) -> BatchAPIError:
    """The SDK's error as a BatchAPIError (both SDKs share the class names)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return BatchAPIError(f"HTTP {status}: {exc}", status, ambiguous=status >= 500)
    connection = "APIConnectionError" in names or isinstance(exc, OSError)
    return BatchAPIError(f"{type(exc).__name__}: {exc}", None, ambiguous=connection)


def _transient(error: BatchAPIError) -> bool:
    if error.status is None:
        return error.ambiguous
    return error.status in _RETRY_STATUS or error.status >= 500
