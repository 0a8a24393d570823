"""Expected durations for critical-path ranks, refined from measured latencies.

A request's expected duration grows with its requested output: per (provider,
model) a least-squares line ``latency = base + per_token * output_tokens`` is
fitted to measured latencies and kept between runs in ``_latency.json`` beside
the checkpoints. Before any measurement the defaults below hold; only the
relative order of durations matters to the scheduler, and the defaults already
rank a long generation above a short one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("turborun")

DEFAULT_BASE_S = 0.3
DEFAULT_PER_TOKEN_S = 0.01  # ~100 output tokens per second
DEFAULT_STEP_S = 0.001  # a Python step nobody has measured yet
_MIN_SAMPLES = 8
_DECAY = 0.999  # older runs weigh a little less


@dataclass(slots=True)
class _Fit:
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n = self.n * _DECAY + 1
        self.sx = self.sx * _DECAY + x
        self.sy = self.sy * _DECAY + y
        self.sxx = self.sxx * _DECAY + x * x
        self.sxy = self.sxy * _DECAY + x * y

    def predict(self, x: float, default: float) -> float:
        if self.n < _MIN_SAMPLES:
            return default
        var = self.n * self.sxx - self.sx * self.sx
        if var <= 1e-9:
            return self.sy / self.n
        slope = max(0.0, (self.n * self.sxy - self.sx * self.sy) / var)
        base = max(0.0, (self.sy - slope * self.sx) / self.n)
        return base + slope * x


class LatencyModel:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._fits: dict[str, _Fit] = {}
        if path is not None and path.exists():
            self._fits = _load(path)

    def expected_s(self, provider: str, model: str, output_tokens: int) -> float:
        key = f"{provider}/{model}"
        if provider == "fn":
            return self._fits.get(key, _Fit()).predict(0, DEFAULT_STEP_S)
        default = DEFAULT_BASE_S + DEFAULT_PER_TOKEN_S * output_tokens
        return self._fits.get(key, _Fit()).predict(output_tokens, default)

    def observe(self, provider: str, model: str, output_tokens: int, latency_s: float) -> None:
        self._fits.setdefault(f"{provider}/{model}", _Fit()).add(output_tokens, latency_s)

    def save(self) -> None:
        """Replace the file with what this run knows (a file ignored at load is
        rewritten whole, so it heals)."""
        if self._path is None:
            return
        data = {k: {f: getattr(v, f) for f in v.__slots__} for k, v in self._fits.items()}
        tmp = self._path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._path)


def _load(path: Path) -> dict[str, _Fit]:
    """The fits kept in ``path``. A file that is not what ``save`` writes (edited by
    hand, another version, garbage) is ignored with a warning: the defaults only cost
    scheduling order, never correctness, and a bad value must not break every run."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return {str(key): _fit(values) for key, values in data.items()}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring %s (%s): latency estimates start from defaults", path, exc)
        return {}


def _fit(values: Any) -> _Fit:
    if not isinstance(values, dict) or set(values) != set(_Fit.__slots__):
        raise ValueError(f"an entry is not {{{', '.join(_Fit.__slots__)}}}")
    for value in values.values():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"an entry holds {value!r}, not a finite number")
    return _Fit(**{k: float(v) for k, v in values.items()})
