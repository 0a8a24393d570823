"""turborun: run large batches of LLM API requests as fast as rate limits allow,
in dependency order, and survive being killed."""

from turborun.api import BatchResult, Result, Runner, execute_batch
from turborun.exceptions import (
    CheckpointError,
    CheckpointExists,
    CheckpointLocked,
    ConfigError,
    InputError,
    Problem,
    TaskFailed,
    TurborunError,
)
from turborun.metrics import Metrics, ModelStats

__all__ = [
    "BatchResult",
    "CheckpointError",
    "CheckpointExists",
    "CheckpointLocked",
    "ConfigError",
    "InputError",
    "Metrics",
    "ModelStats",
    "Problem",
    "Result",
    "Runner",
    "TaskFailed",
    "TurborunError",
    "execute_batch",
]
