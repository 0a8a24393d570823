"""What providers say about their limits, parsed: reset durations of the
x-ratelimit-* headers, header numbers, and the text of a 429 ("... on requests per min
(RPM): Limit 30, Used 30, Requested 1. Please try again in 2s.")."""

from __future__ import annotations

import math
import re


class LimitMessage:
    """What a 429's message says: "... on requests per min (RPM): Limit 30, Used 30,
    Requested 1. Please try again in 2s." (OpenAI and Groq word them alike)."""

    __slots__ = ("kind", "daily", "per_second", "limit_per_min", "wait_s")

    _WINDOW = re.compile(r"\b([RT])P([SMDH])\b")
    _WORDS = re.compile(r"\b(requests|tokens) per (second|sec|min|minute|hour|day)\b", re.I)
    _LIMIT = re.compile(r"\bLimit:?\s*([0-9][0-9,]*(?:\.[0-9]+)?)")
    _WAIT = re.compile(r"try again in\s*([0-9][0-9.hmsµun]*)", re.I)
    _DAILY = re.compile(r"per day|\bdaily\b|\b[RT]PD\b", re.I)
    _PER_MIN = {"S": 60.0, "M": 1.0, "H": 1 / 60, "D": None}

    def __init__(self) -> None:
        self.kind: str | None = None  # "requests" | "tokens"
        self.daily = False
        self.per_second = False  # the limit named is a per-second window (RPS, TPS)
        self.limit_per_min: float | None = None
        self.wait_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> LimitMessage:
        message = cls()
        window = cls._WINDOW.search(text)
        period: str | None = None
        if window is not None:
            message.kind = "requests" if window.group(1) == "R" else "tokens"
            period = window.group(2)
        else:
            words = cls._WORDS.search(text)
            if words is not None:
                message.kind = words.group(1).lower()
                period = words.group(2)[0].upper()
        message.daily = bool(cls._DAILY.search(text))
        message.per_second = period == "S"
        limit = cls._LIMIT.search(text)
        scale = cls._PER_MIN.get(period) if period is not None else None
        if limit is not None and scale is not None:
            message.limit_per_min = float(limit.group(1).replace(",", "")) * scale
        wait = cls._WAIT.search(text)
        if wait is not None:
            message.wait_s = parse_reset(wait.group(1).rstrip("."))
        return message


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_reset(value: str) -> float | None:
    """Seconds of a reset header: Go durations ("1s", "6m0s", "250ms", "1h2m3.5s") or a
    plain number of seconds ("0.2"); None when it is neither."""
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def reset_s(value: str | None) -> float | None:
    return None if value is None else parse_reset(value)


def number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None
