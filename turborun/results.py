"""The results file (SPEC §3): one line per task, in task-file order, in the OpenAI
Batch API output format plus a ``turborun`` object.

The file is rewritten whole and atomically (temp file in the same folder, fsync,
os.replace), so a reader never sees half a file and an interrupted run still
leaves a file that matches the journal: nodes that never finished get a
``pending`` line. Only a regular file (or no file yet) is replaced: a device, a
FIFO or ``/dev/stdout`` is written in place, as a shell's ``>`` would; a symlink
to a regular file has its target replaced. ``check_results_path`` refuses, before
anything is sent, a path that could not be written at the end (the task file
itself, a folder, a missing or read-only folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

import orjson

from turborun.checkpoint import remove_stale_temp
from turborun.exceptions import ResultsPathError
from turborun.status import PENDING

NOT_RUN = {"code": "not_run", "message": "not run yet: run again with --resume"}
_WRITE_BUFFER = 1 << 20


def result_line(
    custom_id: str, entry: dict[str, Any] | None, *, run_name: str, resumed: bool
) -> bytes:
    """One line (with its newline) for ``custom_id``; ``entry`` None: never finished."""
    if entry is None:
        line: dict[str, Any] = {
            "id": batch_request_id(run_name, custom_id),
            "custom_id": custom_id,
            "response": None,
            "error": NOT_RUN,
            "turborun": _turborun_part({"status": PENDING, "attempts": 0}, resumed=False),
        }
    else:
        line = {
            "id": batch_request_id(run_name, custom_id),
            "custom_id": custom_id,
            "response": _response(entry),
            "error": None if entry.get("status") == "succeeded" else entry.get("error"),
            "turborun": _turborun_part(entry, resumed=resumed),
        }
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def batch_request_id(run_name: str, custom_id: str) -> str:
    """Stable per (run, custom_id): a rewritten results file keeps its ids."""
    digest = hashlib.sha256((run_name + custom_id).encode("utf-8", "surrogatepass"))
    return "batch_req_" + digest.hexdigest()[:24]


def _response(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The Batch API ``response``: for a success, and for a failure that got an HTTP
    answer (its status and body); null for skips, timeouts, connection errors."""
    status_code = entry.get("status_code")
    if entry.get("status") != "succeeded" and status_code is None:
        return None
    return {
        "status_code": status_code,
        "request_id": entry.get("request_id"),
        "body": entry.get("body"),
    }


def _turborun_part(entry: dict[str, Any], *, resumed: bool) -> dict[str, Any]:
    return {
        "status": entry.get("status"),
        "attempts": entry.get("attempts", 0),
        "latency_s": entry.get("latency_s"),
        "queued_s": entry.get("queued_s"),
        "input_tokens": entry.get("input_tokens"),
        "output_tokens": entry.get("output_tokens"),
        "cost_usd": entry.get("cost_usd"),
        "endpoint": entry.get("endpoint"),
        "resumed": resumed,
    }


def write_results(
    path: Path,
    entries: Iterable[tuple[str, dict[str, Any] | None]],
    *,
    run_name: str,
    resumed: Container[str],
) -> dict[str, int]:
    """Write one line per (custom_id, journal entry or None), in the given order,
    atomically replacing ``path`` (written in place when it is a device or FIFO).
    Returns the number of lines by status (``pending``: never finished). OSError (a
    full disk, ``/dev/full``) reaches the caller; the journal is untouched by it."""
    path = Path(path)
    counts: dict[str, int] = {}

    def write(out: Any) -> None:
        for custom_id, entry in entries:
            status = PENDING if entry is None else str(entry.get("status"))
            counts[status] = counts.get(status, 0) + 1
            out.write(
                result_line(custom_id, entry, run_name=run_name, resumed=custom_id in resumed)
            )
        out.flush()

    if _in_place(path):
        own = _own_descriptor(path)  # /dev/stdout: share the descriptor's offset
        fd = os.dup(own) if own is not None else os.open(path, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as out:
            write(out)
        return counts
    target = Path(os.path.realpath(path))  # a symlink keeps pointing at the new file
    remove_stale_temp(target.parent, target.name)
    tmp = _temp_path(target)
    # os.open with 0o666 lets the umask decide the mode, as for any file the user makes
    # (mkstemp would leave the results readable by their owner only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as out:
            write(out)
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(target.parent)
    return counts


def check_results_path(path: Path, tasks_path: Path | None = None) -> None:
    """Refuse (ResultsPathError) a results path that would destroy the task file or
    could not be written at the end of the run: checked before anything is sent."""
    path = Path(path)
    if tasks_path is not None and _same_file(path, Path(tasks_path)):
        raise ResultsPathError(
            f"the results file {path} is the task file {tasks_path}: writing results "
            "there would destroy the tasks; choose another -o"
        )
    if path.is_dir():
        raise ResultsPathError(f"the results path {path} is a folder; -o takes a file name")
    if _in_place(path):
        if not os.access(path, os.W_OK):
            raise ResultsPathError(f"cannot write the results file {path}: permission denied")
        return
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ResultsPathError(f"the folder {folder} of the results file {path} {what}")
    probe = folder / f".{target.name}.{uuid.uuid4().hex}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ResultsPathError(
            f"cannot write the results file {path}: its folder {folder} is not writable "
            f"({exc.strerror or exc})"
        ) from None


def _in_place(path: Path) -> bool:
    """Write in place rather than replace: anything but a regular file (a device, a
    FIFO, a socket), and a regular file reached through /dev or /proc (``/dev/stdout``
    redirected to a file: the shell's file, not a new one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) or _through_dev(path)


def _own_descriptor(path: Path) -> int | None:
    """N when the path names this process's descriptor N (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/self/fd/N``): written through a duplicate of it, the results
    land where the shell's ``>`` points and what is printed after them follows them
    (reopening would start again at offset 0 and truncate)."""
    current = os.path.abspath(path)
    own = re.compile(rf"/(?:dev|proc/(?:self|{os.getpid()}))/fd/(\d+)")
    for _ in range(40):
        found = own.fullmatch(current)
        if found is not None:
            return int(found.group(1))
        if not os.path.islink(current):
            return None
        current = os.path.abspath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def _through_dev(path: Path) -> bool:
    """The path, or a symlink on the way to its file, is under /dev or /proc: realpath
    would resolve /dev/stdout to the file the shell opened, and replacing that file
    would leave the shell's descriptor on a deleted one."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on symlink hops
        if current.startswith(("/dev/", "/proc/")):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.abspath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def default_results_path(tasks_path: Path) -> Path:
    """tasks.jsonl → tasks.results.jsonl beside it; any other name: name + .results.jsonl."""
    tasks_path = Path(tasks_path)
    name = tasks_path.name
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return tasks_path.with_name(stem + ".results.jsonl")
