"""The journal: a diskcache.Cache (SQLite, WAL) mapping custom_id to the orjson bytes
of the node's entry.

It is written by the supervisor only, in group commits: every outcome of one
wake-up goes in one SQLite transaction (~20 µs per entry instead of ~70 µs for a
commit each). With WAL and ``synchronous=NORMAL`` a committed transaction
survives the death of the process (kill -9), not a power loss.

Errors are turborun's: opening or reading a journal that is not a database, is
truncated or sits on a read-only folder raises CheckpointDamaged (before anything
is sent); a commit that fails (a full disk) raises JournalWriteError, logged once,
and the journal keeps the first one in ``write_error``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import diskcache
import orjson
from diskcache.core import MODE_RAW

from turborun.exceptions import CheckpointDamaged, JournalWriteError
from turborun.status import SUCCEEDED

log = logging.getLogger("turborun")

# A default diskcache.Cache evicts past 1 GiB (least-recently-stored): a journal
# must never drop a result. Values of 1 GiB and more would go to side files
# written without fsync; nothing we store comes close, so everything stays in
# SQLite. NORMAL sync under WAL: durable against process death, cheap commits.
# cull_limit 0: no expiry scan on every set (we never expire; -15% per entry).
JOURNAL_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "disk_min_file_size": 2**30,
    "sqlite_journal_mode": "wal",
    "sqlite_synchronous": 1,
    "cull_limit": 0,
}
_READ_CHUNK = 2000  # rows per SELECT in entries(): bounded memory, no long-lived cursor
_KEYS_PER_QUERY = 500  # ids per SELECT in get_many() (old SQLite allows 999 parameters)


class Journal:
    """diskcache.Cache opened as a journal. Keys: custom_ids; values: orjson bytes of an
    entry dict whose raw ``body`` bytes are embedded as JSON (``orjson.Fragment``).
    ``get``/``entries`` return the body parsed (dict, list, ...), a string when the body
    was not JSON, or None."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.write_error: JournalWriteError | None = None  # the first failed commit
        with _read_errors(self.directory):
            self._cache = diskcache.Cache(str(self.directory), **JOURNAL_SETTINGS)

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the cache runs with (read back from the cache itself)."""
        return {key: getattr(self._cache, key) for key in JOURNAL_SETTINGS}

    def record_many(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Write ``entries`` in one transaction (a group commit); durable against the
        death of this process once this returns."""
        if not entries:
            return
        encoded = [(custom_id, encode_entry(entry)) for custom_id, entry in entries]
        cache = self._cache
        try:
            with cache.transact(retry=True):
                for custom_id, value in encoded:
                    cache.set(custom_id, value, retry=True)
        except (sqlite3.Error, OSError) as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: BaseException) -> JournalWriteError:
        """The commit did not happen (SQLite rolled it back). Said once in the log: the
        supervisor stops dispatching, later commits may still succeed or fail alike."""
        error = JournalWriteError(str(self.directory), str(exc), disk_full=_is_disk_full(exc))
        if self.write_error is None:
            self.write_error = error
            log.error("%s; stopping: nothing more is sent, in-flight requests finish", error)
        return error

    def get(self, custom_id: str) -> dict[str, Any] | None:
        with _read_errors(self.directory):
            value = self._cache.get(custom_id, default=None, retry=True)
        return None if value is None else decode_entry(value)

    def get_many(self, custom_ids: Iterable[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(custom_id, entry or None) for each of ``custom_ids``, in their order: one
        query per _KEYS_PER_QUERY ids (a get() each costs a query: seconds for 100,000)."""
        chunk: list[str] = []
        for custom_id in custom_ids:
            chunk.append(custom_id)
            if len(chunk) == _KEYS_PER_QUERY:
                yield from self._decoded_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._decoded_chunk(chunk)

    def _decoded_chunk(self, chunk: list[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        with _read_errors(self.directory):
            found = self._raw_values(chunk)
        for custom_id in chunk:
            value = found.get(custom_id)
            yield custom_id, None if value is None else decode_entry(value)

    def _raw_values(self, custom_ids: list[str]) -> dict[str, bytes]:
        sql = self._cache._sql  # noqa: SLF001 - see _raw_rows
        marks = ",".join("?" * len(custom_ids))
        rows = sql(
            f"SELECT key, mode, value FROM Cache WHERE raw = 1 AND key IN ({marks})",
            custom_ids,
        ).fetchall()
        found: dict[str, bytes] = {}
        for key, mode, value in rows:
            entry = self._row_bytes(key, True, mode, value)
            if entry is not None:
                found[key] = entry
        return found

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entry, in write order. Reads SQLite directly in chunks: going through
        ``Cache.get`` per key costs a query each (seconds for 100,000 entries)."""
        for custom_id, value in self._raw_rows():
            yield custom_id, decode_entry(value)

    def counts(self) -> dict[str, int]:
        """Entries by status."""
        counts: dict[str, int] = {}
        for _, value in self._raw_rows():
            status = orjson.loads(value).get("status", "unknown")
            counts[status] = counts.get(status, 0) + 1
        return counts

    def __len__(self) -> int:
        with _read_errors(self.directory):
            return len(self._cache)

    def __contains__(self, custom_id: object) -> bool:
        return custom_id in self._cache

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()

    def _raw_rows(self) -> Iterator[tuple[str, bytes]]:
        # Relies on diskcache 5.x's table layout (pinned <6 in pyproject): a str key is
        # stored as TEXT with raw=1, a bytes value under the size limit as a BLOB with
        # mode MODE_RAW. Any other row goes through the public get().
        sql = self._cache._sql  # noqa: SLF001 - the only bulk read diskcache offers
        last = 0
        while True:
            with _read_errors(self.directory):
                rows = sql(
                    "SELECT rowid, key, raw, mode, value FROM Cache WHERE rowid > ? "
                    "ORDER BY rowid LIMIT ?",
                    (last, _READ_CHUNK),
                ).fetchall()
            if not rows:
                return
            for rowid, key, raw, mode, value in rows:
                last = rowid
                entry = self._row_bytes(key, raw, mode, value)
                if entry is not None:
                    yield key, entry

    def _row_bytes(self, key: Any, raw: Any, mode: int, value: Any) -> bytes | None:
        """The entry bytes of one Cache row; None for a row that is not one of ours."""
        if not isinstance(key, str):
            return None
        if raw and mode == MODE_RAW:
            return bytes(value)
        fallback = self._cache.get(key, default=None, retry=True)
        return fallback if isinstance(fallback, bytes) else None


def encode_entry(entry: dict[str, Any]) -> bytes:
    """orjson bytes of an entry; raw body bytes embedded without re-parsing them."""
    body = entry.get("body")
    if isinstance(body, bytes | bytearray | memoryview):
        trusted = entry.get("status") == SUCCEEDED
        entry = {**entry, "body": _embed_body(bytes(body), trusted=trusted)}
    return orjson.dumps(entry)


def decode_entry(value: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = orjson.loads(value)
    return entry


def _embed_body(body: bytes, *, trusted: bool) -> Any:
    """A body as JSON to embed. A succeeded node's body was parsed by the worker that
    produced it (or is orjson output of a step), so it goes in as a Fragment unchecked.
    Other bodies (an HTML 502 page, an invalid_response) are checked once: a Fragment
    that is not JSON would make the whole entry unreadable."""
    if not body:
        return None
    if not trusted:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return body.decode("utf-8", "replace")
    return orjson.Fragment(body)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc).lower()


def os_reason(exc: OSError) -> str:
    """A short reason for a filesystem error, as users read it."""
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return exc.strerror or str(exc)


def _read_only(directory: Path) -> bool:
    """The folder (or its filesystem) refuses writes: SQLite then says only "unable to
    open database file" (WAL needs its -shm file)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY) or not os.access(
            directory, os.W_OK
        )
    except OSError:
        return False


@contextlib.contextmanager
def _read_errors(directory: Path) -> Iterator[None]:
    """SQLite errors opening or reading a journal, as a CheckpointDamaged that says
    what is wrong and what to do (raised before anything is sent)."""
    try:
        yield
    except sqlite3.Error as exc:
        text = str(exc)
        lower = text.lower()
        if "readonly" in lower or "read-only" in lower or _read_only(directory):
            what = (
                f"the journal in {directory} is read-only ({text}); turborun needs to "
                "write its checkpoint folder"
            )
        elif "full" in lower:
            what = f"disk full: the journal in {directory} cannot be opened ({text})"
        elif "not a database" in lower or "malformed" in lower or "corrupt" in lower:
            what = (
                f"the journal in {directory} is damaged ({text}); nothing was sent. Move "
                "the checkpoint folder aside to keep it, or use --fresh to discard it"
            )
        else:
            what = f"the journal in {directory} cannot be used ({text})"
        raise CheckpointDamaged(what) from None
    except OSError as exc:
        raise CheckpointDamaged(
            f"the journal in {directory} cannot be used: {os_reason(exc)}"
        ) from None
