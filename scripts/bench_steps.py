"""Python steps used by the benchmarks (imported inside worker processes)."""

from __future__ import annotations

from typing import Any


def noop(deps: dict[str, Any]) -> None:
    return None
