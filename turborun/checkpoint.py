"""A run's checkpoint: the diskcache journal, the run lock, the run's meta and log file.

Folder ``<checkpoint_dir>/<run_name>/``::

    journal/   diskcache (SQLite, WAL): custom_id -> orjson bytes of the node's entry
    run.json   meta of the run (state, pid, totals), rewritten atomically
    run.log    the run's log file (the session attaches it)
    lock       fcntl.flock held by the live run; holds its pid

A run name is a name, not a path (``validate_run_name``): the folder is always a
direct child of the checkpoint dir, and ``--fresh`` removes only the files
turborun makes there (the journal's own files and run.json), never anything else.

A checkpoint that cannot be trusted is refused before anything is sent: a
journal missing or empty while run.json records a run (resuming would send every
task again; ``accept_lost_journal`` runs it knowingly), a journal that is not a
database or is truncated, a folder that cannot be written (CheckpointDamaged or
CheckpointError, exit 2). A commit that fails mid-run (a full disk) raises
JournalWriteError: the supervisor stops dispatching and the run ends with the
resume command.

The journal is written by the supervisor only, in group commits: every outcome
of one wake-up goes in one SQLite transaction (~20 µs per entry instead of ~70
µs for a commit each). With WAL and ``synchronous=NORMAL`` a committed
transaction survives the death of the process (kill -9), not a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import diskcache
import orjson
from diskcache.core import MODE_RAW

from turborun.exceptions import (
    CheckpointDamaged,
    CheckpointError,
    CheckpointExists,
    CheckpointLocked,
    CheckpointNotFound,
    JournalWriteError,
)

log = logging.getLogger("turborun")

JOURNAL_DIR = "journal"
META_FILE = "run.json"
LOG_FILE = "run.log"
LOCK_FILE = "lock"
JOURNAL_DB = "cache.db"
# What --fresh may remove inside journal/: SQLite's files and diskcache's value files
# (<2 hex>/<2 hex>/<hex>.val); anything else found there is left alone.
_JOURNAL_FILES = ("cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal")
# What --fresh removes beside the journal: files a run writes there and rewrites whole.
_RUN_FILES = (META_FILE, "timeline.jsonl", "report.html", "report.json")
_VALUE_DIR = re.compile(r"[0-9a-f]{2}")
_VALUE_FILE = re.compile(r"[0-9a-f]+\.val")
RUN_NAME_CHARS = "letters, digits, '.', '_' and '-', starting with a letter or digit; at most 128"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DONE_KEYS = ("succeeded", "failed", "skipped")

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
    def open(
        cls,
        checkpoint_dir: Path,
        run_name: str,
        *,
        resume: bool,
        fresh: bool,
        accept_lost_journal: bool = False,
    ) -> Checkpoint:
        """Take the run's lock, then its journal. ``fresh`` discards what the checkpoint
        holds (turborun's own files only); without ``resume`` a checkpoint that holds
        results is refused (CheckpointExists); ``resume`` with no checkpoint there is
        refused (CheckpointNotFound, naming the runs that are there). A journal missing
        or empty while run.json records work done is refused (CheckpointDamaged) unless
        ``accept_lost_journal``. A live holder of the lock: CheckpointLocked naming its
        pid. The kernel frees the lock when its holder dies, even by kill -9."""
        validate_run_name(run_name)
        root = Path(checkpoint_dir)
        check_checkpoint_dir(root)
        folder = root / run_name
        if resume and not fresh and not _is_checkpoint(folder):
            raise CheckpointNotFound(str(folder.absolute()), list_runs(root))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create the checkpoint folder {folder}: {_reason(exc)}"
            ) from None
        lock_fd = _take_lock(folder / LOCK_FILE)
        try:
            remove_stale_temp(folder, META_FILE)
            if fresh:
                _discard(folder)
            elif not accept_lost_journal:
                _check_journal_present(folder)
            journal = Journal(folder / JOURNAL_DIR)
        except BaseException:
            _release_lock(lock_fd)
            raise
        try:
            count = len(journal)
            if not fresh and not accept_lost_journal and count == 0:
                _check_nothing_was_done(folder)
            if not resume and not fresh and count:
                raise CheckpointExists(str(folder), count)
        except BaseException:
            journal.close()
            _release_lock(lock_fd)
            raise
        return cls(folder, lock_fd, journal)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace run.json atomically (temp file + fsync + os.replace). On a full disk,
        where no temp file fits, overwrite it in place instead: the blocks of the old
        state take the new one, so run.json does not keep saying "running" (a torn file
        reads as unreadable, never as a wrong state). Other OSErrors reach the caller."""
        path = self.folder / META_FILE
        data = orjson.dumps(meta, option=orjson.OPT_INDENT_2)
        try:
            _write_atomic(path, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.is_file():
                raise
            _overwrite(path, data)

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
    such checkpoint. A journal that cannot be opened: CheckpointDamaged."""
    validate_run_name(run_name)
    check_checkpoint_dir(Path(checkpoint_dir))
    folder = Path(checkpoint_dir) / run_name
    if not (folder / JOURNAL_DIR).is_dir():
        return None
    return read_meta(folder), Journal(folder / JOURNAL_DIR)


def list_runs(checkpoint_dir: Path) -> list[str]:
    """Names of the runs under ``checkpoint_dir`` (folders holding a journal), sorted."""
    root = Path(checkpoint_dir)
    try:
        return sorted(p.name for p in root.iterdir() if (p / JOURNAL_DIR).is_dir())
    except OSError:  # no such folder, not a folder, not readable
        return []


def read_meta(folder: Path) -> dict[str, Any]:
    """run.json of a checkpoint folder; {} when there is none yet or it is unreadable
    (``meta_problem`` says why)."""
    try:
        meta = orjson.loads((Path(folder) / META_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def meta_problem(folder: Path) -> str | None:
    """Why run.json cannot be read (None: it can, or there is none)."""
    try:
        meta = orjson.loads((Path(folder) / META_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _reason(exc)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    return None if isinstance(meta, dict) else "not a JSON object"


def validate_run_name(name: str) -> str:
    """A run name names a folder directly under the checkpoint dir: no path, no ``..``,
    no separator, nothing hidden. CheckpointError otherwise, saying what is allowed."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise CheckpointError(
            f"run name {name!r} is not allowed: a run name is a name, not a path "
            f"({RUN_NAME_CHARS} characters)"
        )
    return name


def default_run_name(tasks_path: Path) -> str:
    """The task file's name without ``.jsonl``, with characters a run name does not
    allow replaced by ``_`` (``my tasks.jsonl`` -> ``my_tasks``)."""
    name = Path(tasks_path).name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:128].lstrip("._-")
    return safe or "run"


def check_checkpoint_dir(root: Path) -> None:
    """The checkpoint dir must be a folder (or not exist yet)."""
    if root.exists() and not root.is_dir():
        raise CheckpointError(
            f"the checkpoint dir {root} (TURBORUN_CHECKPOINT_DIR) is not a folder"
        )


def _is_checkpoint(folder: Path) -> bool:
    return (folder / JOURNAL_DIR).is_dir() or (folder / META_FILE).exists()


def _check_journal_present(folder: Path) -> None:
    """A journal file of zero bytes is never one SQLite wrote; a missing journal beside a
    run.json means it was deleted after the run started. Either way resuming would send
    every task again."""
    db = folder / JOURNAL_DIR / JOURNAL_DB
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        if (folder / META_FILE).exists():
            raise CheckpointDamaged(_lost(folder, f"the journal {db} is missing")) from None
        return
    if size == 0:
        raise CheckpointDamaged(_lost(folder, f"the journal {db} is empty (0 bytes)"))


def _check_nothing_was_done(folder: Path) -> None:
    meta = read_meta(folder)
    done = sum(v for k in _DONE_KEYS if isinstance(v := meta.get(k), int))
    if done > 0:
        raise CheckpointDamaged(
            _lost(folder, f"the journal in {folder / JOURNAL_DIR} is empty")
            + f" (run.json records {done} tasks done)"
        )


def _lost(folder: Path, what: str) -> str:
    return (
        f"{what} but {folder / META_FILE} records a run: its results are lost, and running "
        "it would send every task again. Nothing was sent. Use --accept-lost-journal to "
        "run it anyway, or --fresh to discard the checkpoint"
    )


def _discard(folder: Path) -> None:
    """--fresh: remove the run's own files and the journal's; anything else stays
    (run.log and the lock too: the log keeps the history of the folder)."""
    for name in _RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    journal = folder / JOURNAL_DIR
    if not journal.is_dir() or journal.is_symlink():
        return
    for name in _JOURNAL_FILES:
        with contextlib.suppress(FileNotFoundError):
            (journal / name).unlink()
    for outer in journal.iterdir():
        if not (_VALUE_DIR.fullmatch(outer.name) and outer.is_dir()) or outer.is_symlink():
            continue
        for inner in outer.iterdir():
            if not (_VALUE_DIR.fullmatch(inner.name) and inner.is_dir()) or inner.is_symlink():
                continue
            for value in inner.iterdir():
                if _VALUE_FILE.fullmatch(value.name) and value.is_file():
                    value.unlink()
            with contextlib.suppress(OSError):
                inner.rmdir()
        with contextlib.suppress(OSError):
            outer.rmdir()
    with contextlib.suppress(OSError):
        journal.rmdir()


def remove_stale_temp(folder: Path, name: str) -> None:
    """Remove ``.NAME.PID.tmp`` files in ``folder`` whose process no longer exists (a
    kill -9 during an atomic replace leaves one behind)."""
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.tmp")
    try:
        candidates = list(Path(folder).iterdir())
    except OSError:
        return
    for path in candidates:
        found = pattern.fullmatch(path.name)
        if found is None or _alive(int(found.group(1))) or not path.is_file():
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc).lower()


def _reason(exc: OSError) -> str:
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
            f"the journal in {directory} cannot be used: {_reason(exc)}"
        ) from None


def _take_lock(path: Path) -> int:
    try:  # not inherited by child processes
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CheckpointError(
            f"cannot open the lock file {path}: {_reason(exc)}; the checkpoint folder "
            "must be writable"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointLocked(str(path.parent), _holder_pid(path)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        _release_lock(fd)
        raise CheckpointError(f"cannot write the lock file {path}: {_reason(exc)}") from None
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


def _overwrite(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
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
