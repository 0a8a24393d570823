"""turborun: run large batches of LLM API requests as fast as rate limits allow,
in dependency order, and survive being killed.

The public names load on first use (PEP 562): a worker process that imports
``turborun.worker`` then pays for the worker's modules only, not the whole API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BatchResult",
    "CheckpointDamaged",
    "CheckpointError",
    "CheckpointExists",
    "CheckpointLocked",
    "CheckpointNotFound",
    "Config",
    "ConfigError",
    "InputError",
    "JournalWriteError",
    "Limit",
    "Metrics",
    "ModelStats",
    "Problem",
    "Progress",
    "Result",
    "ResultsPathError",
    "Runner",
    "Settings",
    "Status",
    "TaskFailed",
    "TurborunError",
    "WorkerStartError",
    "execute_batch",
]

_HOME = {
    "BatchResult": "turborun.api",
    "Result": "turborun.api",
    "Runner": "turborun.api",
    "execute_batch": "turborun.api",
    "Config": "turborun.config",
    "Limit": "turborun.config",
    "Settings": "turborun.config",
    "Status": "turborun.status",
    "Progress": "turborun.supervisor",
    "Metrics": "turborun.metrics",
    "ModelStats": "turborun.metrics",
    **{
        name: "turborun.exceptions"
        for name in (
            "CheckpointDamaged",
            "CheckpointError",
            "CheckpointExists",
            "CheckpointLocked",
            "CheckpointNotFound",
            "ConfigError",
            "InputError",
            "JournalWriteError",
            "Problem",
            "ResultsPathError",
            "TaskFailed",
            "TurborunError",
            "WorkerStartError",
        )
    },
}

if TYPE_CHECKING:
    from turborun.api import BatchResult, Result, Runner, execute_batch
    from turborun.config import Config, Limit, Settings
    from turborun.exceptions import (
        CheckpointDamaged,
        CheckpointError,
        CheckpointExists,
        CheckpointLocked,
        CheckpointNotFound,
        ConfigError,
        InputError,
        JournalWriteError,
        Problem,
        ResultsPathError,
        TaskFailed,
        TurborunError,
        WorkerStartError,
    )
    from turborun.metrics import Metrics, ModelStats
    from turborun.status import Status
    from turborun.supervisor import Progress


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'turborun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
