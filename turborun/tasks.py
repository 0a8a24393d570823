"""Read and validate task files (SPEC §2). SKELETON: the loader is being written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PRIORITY_NAMES = {"critical": 1000, "high": 100, "normal": 10, "low": 1}
PROVIDERS = ("openai", "groq")


@dataclass(slots=True)
class Task:
    """One validated node. The body stays on disk (offset/length) until dispatch,
    so memory grows with the number of tasks, not with their text."""

    custom_id: str
    index: int  # position in the input (file order), 0-based
    line: int  # 1-based line of the task file; 0 for tasks given from Python
    provider: str  # "openai" | "groq" | "fn" (records.FN_PROVIDER) for Python steps
    method: str
    url: str
    model: str  # "" for fn steps
    depends_on: tuple[str, ...]
    priority: int
    fn: str | None
    prompt_tokens: int  # estimated
    max_output_tokens: int  # requested output (max_tokens / max_completion_tokens / ...)
    fingerprint: str  # of the definition: provider, method, url, body, fn, depends_on
    templated: bool  # the body holds {{ID}} references to dependencies
    body: dict[str, Any] | None = None  # in memory: tasks given from Python
    offset: int = -1  # else: the line's byte offset in the task file
    length: int = 0
