"""The run's API keys must never be stored or shown: scrubbing them, and showing URLs.

A provider may echo a key back: a 401 says "Incorrect API key provided: sk-abc***wxyz",
a 400 may echo the request's headers, a proxy may quote the URL it was called with. What
comes back is stored (journal, results file) and printed (messages, ``run.log``), so
``Scrubber`` replaces, in every body, message and header value that crosses from a worker:

* the whole key, wherever it appears;
* any piece of it of ``MIN_FRAGMENT`` (8) characters or more that holds a digit or an
  upper-case letter: random keys are made of such pieces, and a piece that is a plain
  lower-case word ("simulated") is not worth mangling a message for;
* masked forms: a run of mask characters (``***``, ``...``, ``•••``, ``…``) next to a
  prefix of the key (3 characters or more: "sk-abc***") or its suffix (4 or more:
  "***wxyz", OpenAI's ``sk-proj-****...****UbcA``).

Each is replaced by ``REDACTED``, which keeps a JSON body valid JSON. Keys shorter than
``MIN_FRAGMENT`` are not scrubbed (they would match ordinary words); no provider issues
one.

A key can also sit in a base URL (``https://user:KEY@host/v1``, ``?api_key=KEY``):
``display_url`` shows such a URL without it, and ``url_secrets`` gives those values to
the Scrubber.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote

REDACTED = "***"
MIN_FRAGMENT = 8  # characters: a shorter piece of a key is not scrubbed on its own
MIN_MASKED_PREFIX = 3  # "sk-***"
MIN_MASKED_SUFFIX = 4  # "***wxyz": the last four, as OpenAI shows them

_REDACTED_BYTES = REDACTED.encode()
_CHUNK = MIN_FRAGMENT // 2  # any piece of MIN_FRAGMENT holds one aligned chunk this long
# Mask runs: 2+ stars, 3+ dots, bullets or ellipses (raw UTF-8 or JSON-escaped).
_MASK = re.compile(rb"(?:\*{2,}|\.{3,}|(?:\xe2\x80[\xa2\xa6]|\\u202[26])+)+")
_MASK_HINTS = (b"**", b"...", b"\xe2\x80\xa2", b"\xe2\x80\xa6", b"\\u2022", b"\\u2026")
_TOKEN_CHARS = rb"[A-Za-z0-9_\-]"
_TOKEN = re.compile(_TOKEN_CHARS + rb"{1,256}")
_TAIL = re.compile(_TOKEN_CHARS + rb"{1,256}={0,2}")  # "={0,2}": a base64 key's end
_UPPER_OR_DIGIT = re.compile(rb"[A-Z0-9]")
# Query parameters whose value is a credential (matched inside the lower-cased name).
_SECRET_PARAMS = ("key", "token", "secret", "password", "passwd", "auth", "sig", "credential")


class Scrubber:
    """Replaces the given secrets (and their partial forms) in text and bytes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._keys: list[bytes] = []
        self._chunks: set[bytes] = set()
        self._pieces: set[bytes] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Scrub ``secret`` too (ignored when shorter than MIN_FRAGMENT, or known)."""
        key = secret.encode("utf-8", "surrogatepass")
        if len(key) < MIN_FRAGMENT or key in self._keys:
            return
        self._keys.append(key)
        self._keys.sort(key=len, reverse=True)  # a longer key first: it may hold a shorter
        pieces = {key[i : i + MIN_FRAGMENT] for i in range(len(key) - MIN_FRAGMENT + 1)}
        pieces = {p for p in pieces if _UPPER_OR_DIGIT.search(p)}
        self._pieces |= pieces
        self._chunks |= {
            key[i : i + _CHUNK]
            for i in range(0, len(key) - _CHUNK + 1, _CHUNK)
            if any(key[i : i + _CHUNK] in p for p in pieces)
        }

    def __bool__(self) -> bool:
        return bool(self._keys)

    def text(self, text: str) -> str:
        if not self._keys:
            return text
        data = text.encode("utf-8", "surrogatepass")
        scrubbed = self.bytes(data)
        return text if scrubbed is data else scrubbed.decode("utf-8", "surrogatepass")

    def bytes(self, data: bytes, *, partial: bool = True) -> bytes:
        """``data`` with every secret replaced; the very same object when none is in it.
        ``partial`` False looks for whole keys only: one substring search per key, where
        the partial forms cost one per 4 characters of key (~0.8 ms for a 30 KB body)."""
        if not self._keys:
            return data
        for key in self._keys:
            if key in data:
                data = data.replace(key, _REDACTED_BYTES)
        if not partial:
            return data
        if any(hint in data for hint in _MASK_HINTS):
            data = self._masked(data)
        if any(chunk in data for chunk in self._chunks):
            data = self._fragments(data)
        return data

    def _masked(self, data: bytes) -> bytes:
        spans = []
        for match in _MASK.finditer(data):
            start, end = match.span()
            # the token before the run, found by matching the reversed bytes before it
            before = _TOKEN.match(data[max(0, start - 256) : start][::-1])
            head = before.group()[::-1] if before is not None else b""
            after = _TAIL.match(data, end)
            tail = after.group() if after is not None else b""
            hidden_start, hidden_end = start, end
            if len(head) >= MIN_MASKED_PREFIX and any(k.startswith(head) for k in self._keys):
                hidden_start = start - len(head)
            if len(tail) >= MIN_MASKED_SUFFIX and any(k.endswith(tail) for k in self._keys):
                hidden_end = end + len(tail)
            if (hidden_start, hidden_end) != (start, end):
                spans.append((hidden_start, hidden_end))
        return _replace_spans(data, spans)

    def _fragments(self, data: bytes) -> bytes:
        spans = []
        for piece in self._pieces:
            at = data.find(piece)
            while at >= 0:
                spans.append((at, at + len(piece)))
                at = data.find(piece, at + 1)
        return _replace_spans(data, spans)


def _replace_spans(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``data`` with each union of overlapping or touching spans replaced by REDACTED."""
    if not spans:
        return data
    spans.sort()
    parts = []
    position = 0
    start, end = spans[0]
    for next_start, next_end in spans[1:]:
        if next_start <= end:
            end = max(end, next_end)
            continue
        parts += [data[position:start], _REDACTED_BYTES]
        position = end
        start, end = next_start, next_end
    parts += [data[position:start], _REDACTED_BYTES, data[end:]]
    return b"".join(parts)


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries: user name and password (and the Basic credentials
    HTTP clients make of them: ``base64(user:password)``, which a server may echo), and
    the values of query parameters named like a key or token (``api_key``, ``sig``...)."""
    authority, query = _split(url.strip())
    found = []
    if "@" in authority:
        user, _, password = authority.rpartition("@")[0].partition(":")
        found += [value for value in (user, password, unquote(user), unquote(password)) if value]
        pair = f"{unquote(user)}:{unquote(password)}"
        found.append(base64.b64encode(pair.encode("utf-8")).decode("ascii"))
    found += [value for name, value in parse_qsl(query) if _is_secret_param(name)]
    return found


def display_url(url: str) -> str:
    """``url`` as it may be shown: user information and credential-like query values
    replaced by REDACTED (``https://***@host/v1?api_key=***``), by plain string work, so
    that a malformed URL (a bad port) is hidden as well. Anything that is not a URL
    comes back as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    path, question, query = tail.partition("?")
    if question:
        query, hash_sign, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            name, equals, _ = field.partition("=")
            fields.append(f"{name}={REDACTED}" if equals and _is_secret_param(name) else field)
        tail = f"{path}?{'&'.join(fields)}{hash_sign}{fragment}"
    return f"{scheme}://{authority}{tail}"


def _split(url: str) -> tuple[str, str]:
    """(authority, query) of a URL, by plain string work (never raises)."""
    rest = url.partition("://")[2]
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    query = rest[end:].partition("?")[2].partition("#")[0]
    return rest[:end], query


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAMS)
