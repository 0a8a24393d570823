"""The words a task's outcome is told in: its status, and the error codes turborun
itself gives (a provider's own codes pass through as it sends them).

Both are ``StrEnum``: a member is its text (``Status.SUCCEEDED == "succeeded"``) and
orjson and json write it as that text, so the journal, run.json and the results file
hold exactly the words they always held.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A task's status in the journal, the results file and ``Result.status``."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its last attempt failed (``error`` says why)
    SKIPPED = "skipped"  # a dependency failed or was skipped (``error.code``: dependency_failed)
    PENDING = "pending"  # not finished: never journaled (an interrupted or capped run)


# The same members as names: the loops that finish nodes compare with these (an enum
# attribute lookup costs ~0.2 µs on Python 3.11, a module global ~0.02 µs).
SUCCEEDED, FAILED, SKIPPED = Status.SUCCEEDED, Status.FAILED, Status.SKIPPED
PENDING = Status.PENDING
DONE_STATUSES = (SUCCEEDED, FAILED, SKIPPED)  # what the journal holds


class ErrorCode(StrEnum):
    """``error.code`` of a task that ended without an answer of its own."""

    DEPENDENCY_FAILED = "dependency_failed"  # a skipped task: a dependency did not succeed
    WORKER_DIED = "worker_died"  # it took three worker processes down with it


DEPENDENCY_FAILED, WORKER_DIED = ErrorCode.DEPENDENCY_FAILED, ErrorCode.WORKER_DIED
