"""Token estimates for budgets: prompt tokens of a body plus its requested output.

STUB (replaced by the real estimator): characters / 4.
"""

from __future__ import annotations

from typing import Any


class TokenEstimator:
    def estimate(self, provider: str, url: str, body: dict[str, Any]) -> tuple[int, int]:
        """(estimated prompt tokens, requested output tokens) of one request body."""
        text = str(body.get("messages") or body.get("prompt") or body.get("input") or "")
        out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return len(text) // 4 + 1, int(out) if isinstance(out, int) else 0
