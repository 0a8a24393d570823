"""Every exception turborun raises.

TurborunError
  InputError          bad task file; .problems: list[Problem(path, line, message)]
  ConfigError         .variable, .value
  CheckpointError
    CheckpointLocked    .pid
    CheckpointExists
    CheckpointNotFound  --resume named no checkpoint; .folder, .runs (names found there)
    CheckpointDamaged   the journal is missing, empty, unreadable or not writable
  ResultsPathError    the results file cannot be written where asked
  JournalWriteError   a journal commit failed mid-run (disk full, ...); .folder, .disk_full
  WorkerStartError
  TaskFailed          a Runner future's task failed or was skipped; .result

This module imports nothing from turborun, so any module may import it.
Provider failures are never exceptions: they are Outcome values.
``cli.py`` alone maps these to exit codes (2 for the whole tree).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a task file; ``line`` is 1-based (0: the file as a whole)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class TurborunError(Exception):
    """Base of every turborun error."""


class InputError(TurborunError):
    """The task input is invalid; nothing was sent and nothing journaled."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(TurborunError):
    """A configuration value is invalid or missing. Never carries a secret value."""

    def __init__(self, variable: str, value: str | None, message: str) -> None:
        self.variable = variable
        self.value = value
        super().__init__(message)


class CheckpointError(TurborunError):
    """The checkpoint cannot be used as asked."""


class CheckpointLocked(CheckpointError):
    """Another live run holds the checkpoint's lock."""

    def __init__(self, folder: str, pid: int | None) -> None:
        self.folder = folder
        self.pid = pid
        super().__init__(
            f"checkpoint {folder} is in use by another run (pid {pid}); "
            "wait for it to finish or stop it first"
        )


class CheckpointExists(CheckpointError):
    """The checkpoint already holds results and neither resume nor fresh was asked."""

    def __init__(self, folder: str, count: int) -> None:
        self.folder = folder
        self.count = count
        super().__init__(
            f"checkpoint {folder} already holds {count} results; "
            "use --resume to continue it or --fresh to discard it"
        )


class CheckpointNotFound(CheckpointError):
    """``--resume`` found no checkpoint under that name: resuming would silently start
    over and pay for every task again."""

    def __init__(self, folder: str, runs: list[str]) -> None:
        self.folder = folder
        self.runs = list(runs)
        shown = ", ".join(self.runs[:20]) + (", ..." if len(self.runs) > 20 else "")
        found = f"runs there: {shown}" if self.runs else "no runs there"
        super().__init__(
            f"--resume: no checkpoint at {folder} ({found}); check --run-name and "
            "TURBORUN_CHECKPOINT_DIR (relative to the working folder), "
            "or run without --resume to start it"
        )


class CheckpointDamaged(CheckpointError):
    """The checkpoint's journal cannot be used: missing or empty while run.json says work
    was done, not a database, truncated, or on a read-only folder. Nothing was sent."""


class ResultsPathError(TurborunError):
    """The results file cannot be written where asked; found before anything is sent."""


class JournalWriteError(TurborunError):
    """A journal commit failed during a run. The run stops dispatching; what was journaled
    before stays, and ``--resume`` (after the cause is fixed) sends only the rest."""

    def __init__(self, folder: str, detail: str, *, disk_full: bool) -> None:
        self.folder = folder
        self.disk_full = disk_full
        what = "disk full" if disk_full else "cannot write"
        super().__init__(f"{what}: the journal in {folder} cannot be written ({detail})")


class WorkerStartError(TurborunError):
    """The worker processes could not start; nothing was sent."""


class TaskFailed(TurborunError):
    """Set on a ``Runner`` future whose task failed or was skipped."""

    def __init__(self, result: object) -> None:
        self.result = result
        error = getattr(result, "error", None) or {}
        super().__init__(
            f"{getattr(result, 'custom_id', '?')} {getattr(result, 'status', 'failed')}: "
            f"{error.get('code', '')}: {error.get('message', '')}"
        )
