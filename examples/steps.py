"""A Python step for examples/essay.jsonl: counts the words of the merged essay."""

from __future__ import annotations

from typing import Any


def word_count(deps: dict[str, Any]) -> dict[str, Any]:
    essay = deps["merge"]["text"] or ""
    return {"title": deps["title"]["text"], "words": len(essay.split())}
