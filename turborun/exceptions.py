"""Every exception turborun raises.

TurborunError
  InputError          bad task file; .problems: list[Problem(path, line, message)]
  ConfigError         .variable, .value
  CheckpointError
    CheckpointLocked    .pid
    CheckpointExists
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
