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

The journal itself is ``turborun.journal`` (imported from here too).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from turborun.exceptions import (
    CheckpointDamaged,
    CheckpointError,
    CheckpointExists,
    CheckpointLocked,
    CheckpointNotFound,
)

# The journal's names are imported from here by much of the package.
from turborun.journal import (  # noqa: F401 - re-exported
    JOURNAL_SETTINGS,
    Journal,
    decode_entry,
    encode_entry,
    os_reason,
)
from turborun.status import DONE_STATUSES

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
                f"cannot create the checkpoint folder {folder}: {os_reason(exc)}"
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
        return os_reason(exc)
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
    done = sum(v for k in DONE_STATUSES if isinstance(v := meta.get(k), int))
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
        if found is None or pid_alive(int(found.group(1))) or not path.is_file():
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id runs on this machine (ours counts; a pid that is
    not a positive integer, as read from a damaged file, does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(path: Path) -> int:
    try:  # not inherited by child processes
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CheckpointError(
            f"cannot open the lock file {path}: {os_reason(exc)}; the checkpoint folder "
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
        raise CheckpointError(f"cannot write the lock file {path}: {os_reason(exc)}") from None
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
