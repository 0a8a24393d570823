"""A run's checkpoint: the diskcache journal, the run lock, the run's meta and log file.

Folder ``<checkpoint_dir>/<run_name>/``::

    journal/   diskcache (SQLite, WAL): custom_id -> orjson bytes of the node's entry
    run.json   meta of the run (state, pid, totals), rewritten atomically
    run.log    the run's log file (the session attaches it)
    lock       fcntl.flock held by the live run; holds its pid

The journal is written by the supervisor only, in group commits: every outcome
of one wake-up goes in one SQLite transaction (~20 µs per entry instead of ~70
µs for a commit each). With WAL and ``synchronous=NORMAL`` a committed
transaction survives the death of the process (kill -9), not a power loss.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import diskcache
import orjson
from diskcache.core import MODE_RAW

from turborun.exceptions import CheckpointExists, CheckpointLocked

JOURNAL_DIR = "journal"
META_FILE = "run.json"
LOG_FILE = "run.log"
LOCK_FILE = "lock"

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
_SUCCEEDED = "succeeded"


class Journal:
    """diskcache.Cache opened as a journal. Keys: custom_ids; values: orjson bytes of an
    entry dict whose raw ``body`` bytes are embedded as JSON (``orjson.Fragment``).
    ``get``/``entries`` return the body parsed (dict, list, ...), a string when the body
    was not JSON, or None."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
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
        with cache.transact(retry=True):
            for custom_id, value in encoded:
                cache.set(custom_id, value, retry=True)

    def get(self, custom_id: str) -> dict[str, Any] | None:
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
        trusted = entry.get("status") == _SUCCEEDED
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


class Checkpoint:
    """A run's folder ``<checkpoint_dir>/<run_name>/`` held by this process: the journal,
    the log file, run.json and the lock. Open with ``Checkpoint.open``."""

    def __init__(self, folder: Path, lock_fd: int, journal: Journal) -> None:
        self.folder = folder
        self.journal = journal
        self.log_path = folder / LOG_FILE
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, checkpoint_dir: Path, run_name: str, *, resume: bool, fresh: bool) -> Checkpoint:
        """Take the run's lock, then its journal. ``fresh`` discards what the checkpoint
        holds; without ``resume`` a checkpoint that holds results is refused
        (CheckpointExists); ``resume`` with no checkpoint yet starts one. A live holder
        of the lock: CheckpointLocked naming its pid. The kernel frees the lock when its
        holder dies, even by kill -9."""
        folder = Path(checkpoint_dir) / run_name
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(folder / LOCK_FILE)
        try:
            if fresh:
                shutil.rmtree(folder / JOURNAL_DIR, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    (folder / META_FILE).unlink()
            journal = Journal(folder / JOURNAL_DIR)
        except BaseException:
            _release_lock(lock_fd)
            raise
        if not resume and not fresh:
            count = len(journal)
            if count:
                journal.close()
                _release_lock(lock_fd)
                raise CheckpointExists(str(folder), count)
        return cls(folder, lock_fd, journal)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace run.json atomically (temp file + fsync + os.replace)."""
        _write_atomic(self.folder / META_FILE, orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    def read_meta(self) -> dict[str, Any]:
        return read_meta(self.folder)

    def close(self) -> None:
        """Close the journal, then release the lock (in that order: the next holder
        must find every commit on disk). Idempotent."""
        if self._lock_fd is None:
            return
        try:
            self.journal.close()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            _release_lock(fd)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_journal_readonly(
    checkpoint_dir: Path, run_name: str
) -> tuple[dict[str, Any], Journal] | None:
    """Meta and journal of a run, for `turborun status` while it may be running: no lock
    is taken and nothing is written but diskcache's own settings on open. None: no
    such checkpoint."""
    folder = Path(checkpoint_dir) / run_name
    if not (folder / JOURNAL_DIR).is_dir():
        return None
    return read_meta(folder), Journal(folder / JOURNAL_DIR)


def list_runs(checkpoint_dir: Path) -> list[str]:
    """Names of the runs under ``checkpoint_dir`` (folders holding a journal), sorted."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / JOURNAL_DIR).is_dir())


def read_meta(folder: Path) -> dict[str, Any]:
    """run.json of a checkpoint folder; {} when there is none yet."""
    try:
        meta = orjson.loads((Path(folder) / META_FILE).read_bytes())
    except FileNotFoundError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointLocked(str(path.parent), _holder_pid(path)) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder_pid(path: Path, attempts: int = 20, pause_s: float = 0.01) -> int | None:
    """The pid the lock's holder wrote. It writes it just after taking the lock, so a
    moment's wait covers the window where the file is still empty."""
    for _ in range(attempts):
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(pause_s)
    return None


def _release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
