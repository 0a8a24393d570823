"""The run's API keys are stored nowhere and shown nowhere (keys.py): not in the journal,
the results file, run.log, stdout or stderr, even when a server echoes them back whole,
masked or in pieces, and not when a key sits in a base URL."""

from __future__ import annotations

import base64
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from turborun.keys import MIN_FRAGMENT, REDACTED, Scrubber, display_url, url_secrets
from turborun.providers import Providers
from turborun.records import Call
from turborun.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
_ALPHABET = string.ascii_letters + string.digits


def random_key(prefix: str, length: int = 48) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def secret_pieces(key: str) -> set[bytes]:
    """What must never be found: the key and each piece of it that Scrubber hides (every
    MIN_FRAGMENT-character window holding a digit or an upper-case letter)."""
    windows = {key[i : i + MIN_FRAGMENT] for i in range(len(key) - MIN_FRAGMENT + 1)}
    hidden = {w for w in windows if any(c.isdigit() or c.isupper() for c in w)}
    return {piece.encode() for piece in hidden | {key}}


def assert_no_key(data: bytes, key: str, where: str) -> None:
    found = sorted(piece for piece in secret_pieces(key) if piece in data)
    assert not found, f"{where} holds pieces of the key: {found[:3]}"
    masked = key[:6].encode() + b"**"
    assert masked not in data, f"{where} holds the masked key {masked!r}..."


# ---- Scrubber -------------------------------------------------------------------------


def test_whole_key_is_replaced_everywhere():
    key = random_key("sk-proj-")
    text = f"Bearer {key}, again {key}"
    assert Scrubber([key]).text(text) == f"Bearer {REDACTED}, again {REDACTED}"


@pytest.mark.parametrize(
    "echo",
    [
        "{p6}********************{s4}",  # OpenAI's 401: prefix, stars, last four
        "{p8}" + "*" * 100 + "{s4}",
        "{p6}...{s4}",
        "{p6}\u2026{s4}",
        "\u2022\u2022\u2022\u2022{s4}",
        "****{s4}",
        "{p6}***",
    ],
)
def test_masked_forms_are_replaced(echo):
    key = random_key("sk-proj-")
    shown = echo.format(p6=key[:6], p8=key[:8], s4=key[-4:])
    scrubbed = Scrubber([key]).text(f"Incorrect API key provided: {shown}. See docs")
    assert scrubbed == f"Incorrect API key provided: {REDACTED}. See docs"


def test_pieces_of_eight_characters_or_more_are_replaced():
    key = "gsk_8fJq2LmZ0pXa7TbN4cRv1WsK9dYe3HuG6oQi5nMl"
    scrubber = Scrubber([key])
    for start, length in ((0, 16), (10, 8), (20, 24), (len(key) - 12, 12)):
        piece = key[start : start + length]
        assert scrubber.text(f"key hint: {piece} (cut)") == f"key hint: {REDACTED} (cut)"
    assert scrubber.text(f"short: {key[10:17]}") == f"short: {key[10:17]}"  # 7 characters


def test_scrubbed_json_body_stays_json_and_keeps_everything_else():
    key = random_key("sk-")
    body = orjson.dumps(
        {"error": {"message": f"bad key {key[:6]}****{key[-4:]}", "headers": {"auth": key}}}
    )
    scrubbed = orjson.loads(Scrubber([key]).bytes(body))
    assert scrubbed == {"error": {"message": f"bad key {REDACTED}", "headers": {"auth": REDACTED}}}


def test_ordinary_text_is_left_alone():
    scrubber = Scrubber(["sk-simulated-no-cost", random_key("sk-proj-")])
    for text in ("A simulated answer", "Loading... done", "rated ****", "sk-", "passwords"):
        assert scrubber.text(text) is text
    data = b'{"choices": [{"text": "nothing secret here"}]}'
    assert scrubber.bytes(data) is data


def test_keys_shorter_than_a_fragment_are_not_scrubbed():
    assert Scrubber(["user"]).text("role: user") == "role: user"


def test_whole_key_only_mode_leaves_pieces():
    key = random_key("sk-")
    data = f"{key} and {key[:20]}".encode()
    assert Scrubber([key]).bytes(data, partial=False) == f"{REDACTED} and {key[:20]}".encode()


def test_display_url_hides_credentials_and_key_parameters():
    key = random_key("sk-")
    url = f"https://user:{key}@api.example.com:8443/v1?api_key={key}&api-version=2024-06-01"
    shown = display_url(url)
    assert key not in shown
    assert shown == (
        f"https://{REDACTED}@api.example.com:8443/v1?api_key={REDACTED}&api-version=2024-06-01"
    )
    malformed = f"http://user:{key}@127.0.0.1:99999999/v1#top"  # no parser accepts its port
    assert display_url(malformed) == f"http://{REDACTED}@127.0.0.1:99999999/v1#top"
    assert display_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert display_url("openai") == "openai"


def test_url_secrets_include_basic_credentials_as_clients_send_them():
    key = random_key("sk-")
    found = url_secrets(f"http://user:{key}@host/v1?token={key[:30]}")
    basic = base64.b64encode(f"user:{key}".encode()).decode()
    assert {key, basic, key[:30]} <= set(found)
    assert url_secrets("http://host/v1?model=x") == []


# ---- through the SDKs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_simulator():
    with Simulator(latency_s=0.0, echo_auth=True) as sim:
        yield sim


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_error_outcome_from_an_echoing_server_holds_no_key(echo_simulator, provider):
    key = random_key("sk-proj-" if provider == "openai" else "gsk_")
    urls = {"openai": echo_simulator.openai_base_url, "groq": echo_simulator.base_url}
    providers = Providers({provider: key}, urls, timeout_s=10.0)
    try:
        for status in (400, 401, 429, 500):
            body = orjson.dumps(_body(f"[sim:status={status}]"))
            call = Call("n", 1, provider, "POST", "/v1/chat/completions", body)
            outcome = providers.call(call)
            assert outcome.status_code == status
            stored = orjson.loads(outcome.body)["error"]
            assert stored["request_headers"] == {"authorization": f"Bearer {REDACTED}"}
            assert stored["message"].endswith(f"Incorrect API key provided: {REDACTED}.")
            everything = orjson.dumps([outcome.body.decode(), outcome.error_message,
                                       outcome.rate_headers, outcome.request_id])  # fmt: skip
            assert_no_key(everything, key, f"outcome of HTTP {status}")
    finally:
        providers.close()


# ---- through the command line -----------------------------------------------------------


def _body(text: str) -> dict[str, object]:
    return {"model": "sim-keys", "messages": [{"role": "user", "content": text}]}


def _task(cid: str, text: str, **extra: object) -> bytes:
    return orjson.dumps({"custom_id": cid, "body": _body(text), **extra})


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
    }
    env.update(
        TURBORUN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        PYTHONPATH=str(ROOT),
        **variables,
    )
    return env


def _every_file(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_key_echoed_by_the_server_is_nowhere_after_a_run(tmp_path, echo_simulator):
    openai_key = random_key("sk-proj-")
    groq_key = random_key("gsk_")
    url_key = random_key("sk-url-")  # a key pasted into GROQ_BASE_URL as a password
    groq_url = echo_simulator.base_url.replace("http://", f"http://user:{url_key}@")
    tasks = tmp_path / "tasks.jsonl"
    lines = [
        _task("ok", "hello", priority="high"),
        _task("bad-request", "[sim:status=400]", priority="high"),
        _task("server-error", "[sim:status=500]", priority="high"),
        _task("rate-limited", "[sim:status=429]", priority="high"),
        _task("groq-bad", "[sim:status=400]", provider="groq", priority="high"),
        _task("refused", "[sim:status=401]", priority="low"),
    ]
    tasks.write_bytes(b"\n".join(lines) + b"\n")
    env = _env(
        tmp_path,
        OPENAI_API_KEY=openai_key,
        GROQ_API_KEY=groq_key,
        OPENAI_BASE_URL=echo_simulator.openai_base_url,
        GROQ_BASE_URL=groq_url,
    )
    done = subprocess.run(
        [sys.executable, "-m", "turborun", "batch", str(tasks), "--workers", "8",
         "--max-retries", "0", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr.decode()
    results = tmp_path / "tasks.results.jsonl"
    by_id = {r["custom_id"]: r for r in map(orjson.loads, results.read_bytes().splitlines())}
    codes = {cid: (r["response"] or {}).get("status_code") for cid, r in by_id.items()}
    assert codes == {"ok": 200, "bad-request": 400, "server-error": 500, "rate-limited": 429,
                     "groq-bad": 400, "refused": 401}  # fmt: skip
    # The server did echo: each stored error body quotes a scrubbed key.
    for cid in ("bad-request", "server-error", "rate-limited", "refused", "groq-bad"):
        error = by_id[cid]["response"]["body"]["error"]
        assert f"Incorrect API key provided: {REDACTED}" in error["message"], error
        assert REDACTED in error["request_headers"]["authorization"], error
    assert by_id["groq-bad"]["turborun"]["endpoint"].startswith(f"http://{REDACTED}@")
    places = {"stdout": done.stdout, "stderr": done.stderr, str(results): results.read_bytes()}
    checkpoint = _every_file(tmp_path / "checkpoints")
    assert any(path.name == "run.log" for path in checkpoint)
    assert any("journal" in path.parts for path in checkpoint)
    places.update({str(path): data for path, data in checkpoint.items()})
    basic = base64.b64encode(f"user:{url_key}".encode()).decode()
    for where, data in places.items():
        for key in (openai_key, groq_key, url_key, basic):
            assert_no_key(data, key, where)


def test_key_pasted_into_the_base_url_variable_is_not_printed(tmp_path):
    key = random_key("sk-proj-")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(_task("a", "hi") + b"\n")
    for value in (key, f"https://api.example.com/v1?api_key={key}, {key}"):
        env = _env(tmp_path, OPENAI_API_KEY=key, OPENAI_BASE_URL=value)
        done = subprocess.run(
            [sys.executable, "-m", "turborun", "batch", str(tasks), "--no-progress"],
            cwd=tmp_path, env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr.decode()
        assert b"OPENAI_BASE_URL" in done.stderr and b"Traceback" not in done.stderr
        assert_no_key(done.stdout + done.stderr, key, "the message")
