"""Progress display: one tqdm bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from turborun.supervisor import Progress

_PLAIN_PERIOD_S = 10.0


def _postfix(p: Progress) -> str:
    tpm = f"{p.tokens_per_min / 1000:.1f}k"
    if p.tpm_limit:
        tpm += f"/{p.tpm_limit / 1000:.0f}k"
    if p.cost_cap_usd is not None and p.spent_usd is not None:
        cost = f"${p.spent_usd:.4f}/${p.cost_cap_usd:g} cap"
    else:
        cost = "-" if p.cost_usd is None else f"${p.cost_usd:.4f}"
    if p.projected_usd is not None:
        cost += f" (~${p.projected_usd:.4f} at the end)"
    text = (
        f"in flight={p.in_flight}/{p.target} failed={p.failed} retrying={p.retrying} "
        f"429s={p.rate_limited} tok/min={tpm} cost={cost} ETA {_eta(p.eta_s)}"
    )
    if p.paused:
        more = f" (+{len(p.paused) - 1} more)" if len(p.paused) > 1 else ""
        text += f" PAUSED {p.paused[0]}{more}"
    return text


def _eta(seconds: float | None) -> str:
    """The supervisor's estimate from the binding constraint (limit, in-flight target or
    critical path), not a moving average of the last seconds."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._bar: tqdm | None = None
        self._next_line = 0.0
        self._started = time.monotonic()

    def __call__(self, p: Progress) -> None:
        if not self._enabled:
            return
        if self._tty:
            if self._bar is None:
                self._bar = tqdm(
                    total=p.total,
                    file=self._stream,
                    unit="task",
                    dynamic_ncols=True,
                    smoothing=0.1,
                    # no moving-average remaining time: the ETA in the postfix is ours
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
                )
            self._bar.total = p.total
            self._bar.update(p.done - self._bar.n)
            self._bar.set_postfix_str(_postfix(p), refresh=True)
            return
        now = time.monotonic()
        if now >= self._next_line or p.done == p.total:
            self._next_line = now + _PLAIN_PERIOD_S
            elapsed = now - self._started
            rate = p.done / elapsed if elapsed > 0 else 0.0
            print(
                f"[turborun] {p.done}/{p.total} done, {rate:.1f}/s, {_postfix(p)}",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
