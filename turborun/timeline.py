"""A run's timeline: what the report needs over time that the journal does not hold.

The journal keeps one entry per finished node (its last attempt's timings), so it can
say when requests went and came back, but not what the run was doing meanwhile: how
many requests were in flight against the target, what each model's limits were as they
were learned or slowed, how many 429s and retries each second saw. The supervisor
samples that about once a second and this module appends it, one JSON line per sample,
to ``timeline.jsonl`` in the checkpoint folder.

Bounded for million-task runs: the first ``SAMPLES_PER_LEVEL`` samples of a run are one
``FIRST_INTERVAL_S`` apart, the next as many two apart, then four, ... so a run of
duration D writes about SAMPLES_PER_LEVEL × log2(D / SAMPLES_PER_LEVEL) lines (a week:
~26,000 lines, ~6 MB) and the report reads them in well under a second. Counters are
deltas over the sample's interval; gauges are the values at its end.

Lines (``t``: wall time, s since the epoch, as the journal's ``finished_at``)::

    {"kind": "start", "t", "total", "resumed", "changed", "rerun_descendants", "pid"}
    {"kind": "sample", "t", "dt", "in_flight", "target", "ready", "retrying", "done",
     "models": {"provider/model": [sent, sent_tokens, answered, tokens, rate_limited,
                                   retries, rpm, tpm, in_flight]}}
    {"kind": "end", "t", "state", "pending"}

``sent``/``sent_tokens``: requests sent and the tokens they reserved (prompt estimate +
requested output: what a provider's TPM limit charges); ``answered``/``tokens``: attempts
answered and their usage (input + output); ``rpm``/``tpm``: the limits in force at the
end of the interval (null: none known). A resume appends to the same file, so the
report covers every attempt; ``--fresh`` starts it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

TIMELINE_FILE = "timeline.jsonl"
FIRST_INTERVAL_S = 1.0
SAMPLES_PER_LEVEL = 3600  # samples at one interval before it doubles
MAX_LINE_BYTES = 1 << 20  # a line longer than this is not one we wrote: skipped


@dataclass(frozen=True, slots=True)
class ModelSample:
    """Cumulative counters and current limits of one (provider, model), as the
    supervisor holds them; the timeline turns counters into deltas."""

    provider: str
    model: str
    answered: int
    tokens: int
    rate_limited: int
    retries: int
    rpm: float | None = None
    tpm: float | None = None
    in_flight: int = 0


class Timeline:
    """Appends a run attempt's samples to ``<folder>/timeline.jsonl``. Owned by the
    supervisor's thread; ``clock`` is wall time (the journal's ``finished_at`` is too)."""

    def __init__(
        self, folder: Path, *, fresh: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(folder) / TIMELINE_FILE
        mode = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
        self._fd: int | None = os.open(self.path, mode, 0o644)
        self._clock = clock
        self._interval_s = FIRST_INTERVAL_S
        self._at_level = 0
        self._last_t = clock()
        self._sent: dict[Hashable, list[int]] = {}  # bucket key -> [requests, tokens]
        self._seen_sent: dict[Hashable, tuple[int, int]] = {}
        self._seen: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._last_done = 0

    # ---- what the supervisor calls -----------------------------------------------

    def start(self, *, total: int, resumed: int, changed: int, rerun_descendants: int) -> None:
        self._last_t = self._clock()
        self._write(
            {
                "kind": "start",
                "t": round(self._last_t, 3),
                "total": total,
                "resumed": resumed,
                "changed": changed,
                "rerun_descendants": rerun_descendants,
                "pid": os.getpid(),
            }
        )

    def sent(self, bucket: Hashable, tokens: int) -> None:
        """A request of ``bucket`` (a (provider, model) pair) reserving ``tokens`` went."""
        counts = self._sent.get(bucket)
        if counts is None:
            counts = self._sent[bucket] = [0, 0]
        counts[0] += 1
        counts[1] += tokens

    def due(self) -> bool:
        return self._clock() - self._last_t >= self._interval_s

    def sample(
        self,
        *,
        in_flight: int,
        target: int,
        ready: int,
        retrying: int,
        done: int,
        models: Iterable[ModelSample],
    ) -> None:
        now = self._clock()
        models_part: dict[str, list[Any]] = {}
        for m in models:
            key = (m.provider, m.model)
            sent, sent_tokens = self._sent.get(key, (0, 0))
            seen_sent = self._seen_sent.get(key, (0, 0))
            seen = self._seen.get(key, (0, 0, 0, 0))
            now_counts = (m.answered, m.tokens, m.rate_limited, m.retries)
            deltas = [sent - seen_sent[0], sent_tokens - seen_sent[1]]
            deltas += [a - b for a, b in zip(now_counts, seen, strict=True)]
            self._seen_sent[key] = (sent, sent_tokens)
            self._seen[key] = now_counts
            if any(deltas) or m.in_flight:
                models_part[f"{m.provider}/{m.model}"] = deltas + [
                    _limit(m.rpm),
                    _limit(m.tpm),
                    m.in_flight,
                ]
        self._write(
            {
                "kind": "sample",
                "t": round(now, 3),
                "dt": round(now - self._last_t, 3),
                "in_flight": in_flight,
                "target": target,
                "ready": ready,
                "retrying": retrying,
                "done": done - self._last_done,
                "models": models_part,
            }
        )
        self._last_t = now
        self._last_done = done
        self._at_level += 1
        if self._at_level >= SAMPLES_PER_LEVEL:
            self._at_level = 0
            self._interval_s *= 2

    def end(self, *, state: str, pending: int) -> None:
        now = round(self._clock(), 3)
        self._write({"kind": "end", "t": now, "state": state, "pending": pending})

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _write(self, record: dict[str, Any]) -> None:
        # One write per line on an O_APPEND file: a reader never sees half a line except
        # at the very end, which read_timeline skips.
        if self._fd is not None:
            try:
                os.write(self._fd, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            except OSError as exc:  # a full disk must not end the run: no more samples
                logging.getLogger("turborun").warning(
                    "timeline stopped: cannot write %s (%s)", self.path, exc.strerror or exc
                )
                self.close()


def _limit(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else round(value, 1)


def read_timeline(folder: Path) -> Iterator[dict[str, Any]]:
    """The records of ``<folder>/timeline.jsonl`` in order; a torn or foreign line
    (a run killed mid-write) is skipped. Nothing when there is no file."""
    path = Path(folder) / TIMELINE_FILE
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below; a generator holds it
    except FileNotFoundError:
        return
    with file:
        for line in file:
            if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and "kind" in record and "t" in record:
                yield record
