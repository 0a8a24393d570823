"""The simulator over real HTTP: shapes, limits and their headers, faults, directives, log,
latency jitter and the self-hosted (capacity) mode."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import sim_post

from turborun.simulator import Simulator, _config_from_args, _parser
from turborun.simulator.limits import ModelLimit, format_duration

PREFIXES = ["/v1", "/openai/v1"]
CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "Hello simulator"}]}


def _body(endpoint: str, text: str = "Hello simulator", **extra: object) -> dict:
    bodies = {
        "/chat/completions": {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": text}]},
        "/completions": {"prompt": text},
        "/embeddings": {"input": [text, "second"]},
        "/responses": {"input": text},
    }  # fmt: skip
    return {"model": "sim-model", **bodies[endpoint], **extra}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_completion_has_openai_shape(simulator, post, prefix):
    response = post(
        simulator, prefix + "/chat/completions", _body("/chat/completions", max_tokens=5)
    )
    data = response.json()
    assert response.status == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    assert data["model"] == "sim-model"
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: Hello simulator",
    }
    usage = data["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_completion_has_text_choice(simulator, post, prefix):
    data = post(simulator, prefix + "/completions", _body("/completions")).json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "echo: Hello simulator"
    assert data["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("prefix", PREFIXES)
def test_embeddings_return_one_vector_per_input(simulator, post, prefix):
    data = post(simulator, prefix + "/embeddings", _body("/embeddings")).json()
    assert data["object"] == "list"
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert all(isinstance(x, float) for x in data["data"][0]["embedding"])
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("prefix", PREFIXES)
def test_responses_have_output_text_and_usage(simulator, post, prefix):
    data = post(simulator, prefix + "/responses", _body("/responses", max_output_tokens=7)).json()
    assert data["object"] == "response" and data["status"] == "completed"
    assert data["output"][0]["content"][0]["text"] == "echo: Hello simulator"
    assert data["output_text"] == "echo: Hello simulator"
    assert data["usage"]["output_tokens"] == 7
    assert data["usage"]["total_tokens"] == data["usage"]["input_tokens"] + 7


def test_echo_is_cut_at_sixty_characters(simulator, post):
    data = post(simulator, "/v1/chat/completions", _body("/chat/completions", "x" * 200)).json()
    assert data["choices"][0]["message"]["content"] == "echo: " + "x" * 60


def test_unknown_path_is_404_in_openai_error_shape(simulator, post):
    response = post(simulator, "/v1/models/nothing", CHAT)
    assert response.status == 404
    assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_body_that_is_not_json_is_400(simulator, post):
    response = post(simulator, "/v1/chat/completions", b"{not json")
    assert response.status == 400
    assert "message" in response.json()["error"]


def test_keep_alive_serves_many_requests_on_one_connection(simulator):
    connection = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=5)
    for _ in range(20):
        connection.request("POST", "/v1/chat/completions", json.dumps(CHAT))
        response = connection.getresponse()
        assert response.status == 200
        response.read()
    connection.close()


def test_models_without_limits_get_no_rate_headers(simulator, post):
    headers = post(simulator, "/v1/chat/completions", CHAT).headers
    assert not [name for name in headers if name.startswith("x-ratelimit-")]


def test_one_second_window_allows_a_sixtieth_of_rpm(post):
    with Simulator(latency_s=0, limits={"m": (120, None)}) as sim:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        first, second, third = (post(sim, "/v1/chat/completions", body) for _ in range(3))
        assert (first.status, second.status, third.status) == (200, 200, 429)
        assert first.headers["x-ratelimit-limit-requests"] == "120"
        assert first.headers["x-ratelimit-remaining-requests"] == "119"
        assert second.headers["x-ratelimit-remaining-requests"] == "118"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in first.headers
        error = third.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        wait_ms = int(third.headers["retry-after-ms"])
        assert 0 < wait_ms <= 1000 and third.headers["retry-after"] == "1"
        time.sleep(wait_ms / 1000 + 0.02)
        assert post(sim, "/v1/chat/completions", body).status == 200
        statuses = [entry["status"] for entry in sim.requests()]
        assert statuses == [200, 200, 429, 200]


def test_token_limit_refuses_with_type_tokens_and_does_not_charge(post):
    with Simulator(latency_s=0, limits={"m": (None, 6000)}) as sim:  # 100 tokens per second
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 60}
        first, second = (
            post(sim, "/v1/chat/completions", body),
            post(sim, "/v1/chat/completions", body),
        )
        assert (first.status, second.status) == (200, 429)
        assert second.json()["error"]["type"] == "tokens"
        cost = sim.requests()[0]["prompt_tokens"] + 60
        assert first.headers["x-ratelimit-remaining-tokens"] == str(6000 - cost)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(6000 - cost)  # not charged


def test_sixty_second_window_caps_the_minute(post):
    with Simulator(latency_s=0, limits={"m": (2, None)}) as sim:  # 1 per second, 2 per minute
        body = {"model": "m", "messages": []}
        assert post(sim, "/v1/chat/completions", body).status == 200
        time.sleep(1.05)
        assert post(sim, "/v1/chat/completions", body).status == 200
        time.sleep(1.05)
        refused = post(sim, "/v1/chat/completions", body)
        assert refused.status == 429
        assert 55_000 < int(refused.headers["retry-after-ms"]) <= 60_000
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_groq_headers_count_requests_per_day(post):
    with Simulator(latency_s=0, limits={"g": (600, 60000)}, daily_requests={"g": 2}) as sim:
        body = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
        first = post(sim, "/openai/v1/chat/completions", body)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].startswith("23h59m")
        assert first.headers["x-ratelimit-limit-tokens"] == "60000"
        time.sleep(0.15)
        post(sim, "/openai/v1/chat/completions", body)
        time.sleep(0.15)
        refused = post(sim, "/openai/v1/chat/completions", body)
        assert refused.status == 429
        assert int(refused.headers["retry-after"]) > 86_000
        error = refused.json()["error"]
        assert error["type"] == "requests" and "Please try again in 23h59m" in error["message"]


def test_groq_429_message_gives_the_wait_in_seconds(post):
    with Simulator(latency_s=0, limits={"g": (None, 600)}) as sim:  # 10 tokens per second
        body = {"model": "g", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
        post(sim, "/openai/v1/chat/completions", body)
        error = post(sim, "/openai/v1/chat/completions", body).json()["error"]
        assert error["type"] == "tokens"
        assert "Please try again in " in error["message"] and error["message"].endswith("ms.")


def test_rate_headers_can_be_switched_off(post):
    with Simulator(latency_s=0, limits={"m": (600, None)}, rate_headers=False) as sim:
        headers = post(sim, "/v1/chat/completions", {"model": "m", "messages": []}).headers
        assert not [name for name in headers if name.startswith("x-ratelimit-")]


def test_status_directive_applies_the_given_number_of_times(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:status=500:times=2] a"}]}
    statuses = [post(simulator, "/v1/chat/completions", body).status for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_status_directive_without_times_always_applies(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:status=400] b"}]}
    responses = [post(simulator, "/v1/chat/completions", body) for _ in range(2)]
    assert [r.status for r in responses] == [400, 400]
    assert "message" in responses[0].json()["error"]


def test_429_directive_sends_retry_after_ms(simulator, post):
    text = "[sim:status=429:retry_after_ms=400:times=1] c"
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    refused = post(simulator, "/v1/chat/completions", body)
    assert refused.status == 429
    assert refused.headers["retry-after-ms"] == "400" and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(simulator, "/v1/chat/completions", body).status == 200


def test_hang_directive_never_answers(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:hang:times=1] d"}]}
    with pytest.raises(TimeoutError):
        post(simulator, "/v1/chat/completions", body, timeout_s=0.3)
    assert post(simulator, "/v1/chat/completions", body).status == 200


def test_drop_directive_closes_without_answering(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:drop:times=1] e"}]}
    with pytest.raises(http.client.RemoteDisconnected):
        post(simulator, "/v1/chat/completions", body)
    assert post(simulator, "/v1/chat/completions", body).status == 200


def test_invalid_json_directive_answers_200_with_broken_body(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:invalid_json:times=1] f"}]}
    broken = post(simulator, "/v1/chat/completions", body)
    assert broken.status == 200
    with pytest.raises(json.JSONDecodeError):
        broken.json()


def test_latency_directive_delays_the_answer(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:latency=0.3] g"}]}
    start = time.perf_counter()
    assert post(simulator, "/v1/chat/completions", body).status == 200
    assert time.perf_counter() - start >= 0.3


def test_malformed_directive_is_400(simulator, post):
    body = {"model": "m", "messages": [{"role": "user", "content": "[sim:explode] h"}]}
    response = post(simulator, "/v1/chat/completions", body)
    assert response.status == 400 and "explode" in response.json()["error"]["message"]


def test_latency_grows_with_requested_tokens(post):
    with Simulator(latency_s=0.0, latency_per_token_s=0.01) as sim:
        start = time.perf_counter()
        post(sim, "/v1/chat/completions", {"model": "m", "messages": [], "max_tokens": 30})
        assert time.perf_counter() - start >= 0.3


def test_random_faults_follow_the_rates(post):
    with Simulator(latency_s=0, error_rate=1.0) as sim:
        assert post(sim, "/v1/chat/completions", CHAT).status == 500
    with Simulator(latency_s=0, drop_rate=1.0) as sim:
        with pytest.raises(http.client.RemoteDisconnected):
            post(sim, "/v1/chat/completions", CHAT)
        assert sim.requests()[0]["fault"] == "drop"


def test_request_log_records_each_request_in_arrival_order(post):
    with Simulator(latency_s=0) as sim:
        post(sim, "/v1/chat/completions", {**CHAT, "max_tokens": 12})
        post(sim, "/openai/v1/embeddings", {"model": "e", "input": "hello"})
        post(sim, "/v1/missing", CHAT)
        first, second, third = sim.requests()
        assert first["path"] == "/v1/chat/completions" and first["model"] == "sim-chat"
        assert first["status"] == 200 and first["max_tokens"] == 12
        assert first["body"] == {**CHAT, "max_tokens": 12}
        assert first["prompt_tokens"] > 0 and first["t"] <= second["t"] <= third["t"]
        assert (second["path"], second["model"]) == ("/openai/v1/embeddings", "e")
        assert third["status"] == 404
        sim.clear_log()
        assert sim.requests() == []
        post(sim, "/v1/chat/completions", CHAT)
        assert len(sim.requests()) == 1


def test_module_runs_as_a_command_and_serves_until_terminated(tmp_path):
    command = [sys.executable, "-m", "turborun.simulator", "--port", "0", "--latency", "0",
               "--limit", "m=60:1000", "--log", str(tmp_path / "log.jsonl")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request(
            "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": []})
        )
        assert connection.getresponse().getheader("x-ratelimit-limit-tokens") == "1000"
    finally:
        process.terminate()
    assert process.wait(5) == 0
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (5.289, "5.289s"), (360, "6m0s"),
     (3723.5, "1h2m3.5s")],
)  # fmt: skip
def test_durations_are_formatted_like_the_providers(seconds, text):
    assert format_duration(seconds) == text


def test_limit_never_admits_more_than_its_windows_allow():
    limit = ModelLimit(rpm=600, tpm=None, daily=None, start=0.0)  # 10/s, 600/min
    admitted = [t / 100 for t in range(12_000) if limit.admit(t / 100, 1) is None]  # 100/s
    for i, t in enumerate(admitted):
        later = admitted[i:]
        assert sum(1 for u in later if u < t + 1.0) <= 10
        assert sum(1 for u in later[:700] if u < t + 60.0) <= 600
    assert len(admitted) == 1200  # both windows spent fully over 120 s


def test_refusal_says_when_the_request_would_fit():
    limit = ModelLimit(rpm=None, tpm=6000, daily=None, start=0.0)  # 100 tokens/s
    assert limit.admit(0.0, 80) is None
    refusal = limit.admit(0.5, 30)
    assert refusal is not None and refusal.kind == "tokens"
    assert refusal.retry_after_s == pytest.approx(0.5)
    assert limit.admit(0.5 + refusal.retry_after_s, 30) is None


def _timed_posts(sim: Simulator, bodies: list[dict]) -> list[tuple[float, object]]:
    """POST every body at once (one connection each): (seconds until its answer, response or
    the exception raised), in the order of ``bodies``."""

    def one(body: dict) -> tuple[float, object]:
        start = time.perf_counter()
        try:
            outcome: object = sim_post(sim, "/v1/chat/completions", body)
        except (http.client.HTTPException, OSError) as exc:
            outcome = exc
        return time.perf_counter() - start, outcome

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(one, bodies))


def _chats(count: int, model: str = "m") -> list[dict]:
    return [{"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
            for i in range(count)]  # fmt: skip


def _rate_headers(response: object) -> list[str]:
    return [name for name in response.headers if name.startswith("x-ratelimit-")]


def test_latency_jitter_stays_within_bounds_and_varies():
    with Simulator(latency_s=0.2, latency_jitter=0.5, seed=3) as sim:
        timings = [elapsed for elapsed, _ in _timed_posts(sim, _chats(10))]
    assert all(0.1 <= elapsed < 0.3 + 0.15 for elapsed in timings)
    assert max(timings) - min(timings) > 0.05


@pytest.mark.parametrize(
    "options",
    [{"latency_jitter": 1.0}, {"latency_jitter": -0.1}, {"capacity": 0},
     {"queue_limit": 2}, {"capacity": 2, "queue_limit": -1}, {"capacity": 2, "overflow": "429"}],
)  # fmt: skip
def test_invalid_jitter_and_capacity_options_are_refused(options):
    with pytest.raises(ValueError):
        Simulator(**options)


def test_command_line_sets_jitter_and_capacity():
    args = ["--latency-jitter", "0.3", "--capacity", "4", "--queue-limit", "8", "--overflow",
            "drop"]  # fmt: skip
    config = _config_from_args(_parser().parse_args(args))
    assert (config.latency_jitter, config.capacity, config.queue_limit, config.overflow) == (
        0.3, 4, 8, "drop"
    )  # fmt: skip
    with pytest.raises(SystemExit):
        _parser().parse_args(["--overflow", "429"])


def test_capacity_serves_k_at_a_time_in_waves():
    with Simulator(latency_s=0.2, capacity=4) as sim:
        start = time.perf_counter()
        results = _timed_posts(sim, _chats(12))
        total = time.perf_counter() - start
        log = sim.requests()
    timings = sorted(elapsed for elapsed, _ in results)
    assert all(response.status == 200 for _, response in results)
    assert 0.58 <= total < 0.9  # three waves of 0.2 s: throughput K / latency
    assert all(0.19 <= t < 0.35 for t in timings[:4])
    assert all(0.39 <= t < 0.55 for t in timings[4:8])
    assert all(0.59 <= t < 0.8 for t in timings[8:])
    assert max(entry["in_service"] for entry in log) == 4
    assert max(entry["waiting"] for entry in log) == 8
    assert log[-1]["peak_in_service"] == 4 and log[-1]["peak_waiting"] == 8


@pytest.mark.parametrize("overflow", ["503", "drop"])
def test_full_queue_refuses_at_once_without_rate_headers(overflow):
    limits = {"m": (1_000_000, 1_000_000_000)}  # would send x-ratelimit-* without capacity
    with Simulator(latency_s=0.5, limits=limits, capacity=2, queue_limit=2,
                   overflow=overflow) as sim:  # fmt: skip
        results = _timed_posts(sim, _chats(8))
        log = sim.requests()
    answered = [r for _, r in results if not isinstance(r, Exception) and r.status == 200]
    refused = [(t, r) for t, r in results if isinstance(r, Exception) or r.status != 200]
    assert len(answered) == 4 and len(refused) == 4
    assert all(not _rate_headers(response) for response in answered)
    assert all(elapsed < 0.3 for elapsed, _ in refused)  # refused at once, not after a wait
    if overflow == "503":
        for _, response in refused:
            assert response.status == 503
            assert "retry-after" not in response.headers and not _rate_headers(response)
            error = response.json()["error"]
            assert error["message"] == "server overloaded: queue full"
        assert sorted(entry["status"] for entry in log) == [200] * 4 + [503] * 4
    else:
        assert all(isinstance(exc, http.client.HTTPException | OSError) for _, exc in refused)
        assert sum(entry.get("fault") == "drop" for entry in log) == 4
    assert max(entry["in_service"] for entry in log) == 2
    assert max(entry["waiting"] for entry in log) == 2


def test_capacity_mode_sends_no_rate_headers_even_when_asked():
    with Simulator(latency_s=0, limits={"m": (600, 60_000)}, rate_headers=True, capacity=2) as sim:
        response = sim_post(sim, "/v1/chat/completions", _chats(1)[0])
        groq = sim_post(sim, "/openai/v1/chat/completions", _chats(1)[0])
    assert response.status == groq.status == 200
    assert not _rate_headers(response) and not _rate_headers(groq)


def test_directive_faults_do_not_take_capacity():
    with Simulator(latency_s=0.4, capacity=1, queue_limit=0) as sim:
        with ThreadPoolExecutor(max_workers=1) as pool:
            served = pool.submit(sim_post, sim, "/v1/chat/completions", _chats(1)[0])
            time.sleep(0.1)  # the one slot is busy, the queue holds none
            text = "[sim:status=418:latency=0] scripted"
            scripted = {"model": "m", "messages": [{"role": "user", "content": text}]}
            assert sim_post(sim, "/v1/chat/completions", scripted).status == 418
            assert sim_post(sim, "/v1/chat/completions", _chats(2)[1]).status == 503
            assert served.result().status == 200


def _send_raw(sim: Simulator, body: dict) -> socket.socket:
    """Open a connection and send one request without reading the answer."""
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
    sock.sendall(head + data)
    return sock


@pytest.mark.parametrize("serving_first", [True, False])
def test_client_that_disconnects_frees_its_place(serving_first):
    with Simulator(latency_s=0.4, capacity=1) as sim:
        serving = _send_raw(sim, _chats(1)[0])
        time.sleep(0.05)
        waiting = _send_raw(sim, _chats(2)[1])
        time.sleep(0.05)
        assert [(e["in_service"], e["waiting"]) for e in sim.requests()] == [(1, 0), (1, 1)]
        # serving first: its slot goes to the waiting one, whose close then frees it;
        # waiting first: it leaves the queue, then the served one frees the slot
        for sock in (serving, waiting) if serving_first else (waiting, serving):
            sock.close()
            time.sleep(0.05)
        start = time.perf_counter()
        response = sim_post(sim, "/v1/chat/completions", _chats(3)[2])
        elapsed = time.perf_counter() - start
        last = sim.requests()[-1]
    assert response.status == 200
    assert 0.39 <= elapsed < 0.6  # its own service time only: nothing leaked ahead of it
    assert (last["in_service"], last["waiting"]) == (1, 0)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"latency_s": -0.5}, "latency_s (--latency) must be at least 0"),
        ({"latency_per_token_s": float("inf")}, "--latency-per-token"),
        ({"latency_s": float("nan")}, "latency_s (--latency) must be at least 0"),
        ({"error_rate": 1.5}, "error_rate (--error-rate) must be a probability in [0, 1]"),
        ({"hang_rate": -0.1}, "hang_rate (--hang-rate) must be a probability in [0, 1]"),
        ({"error_rate": 0.6, "drop_rate": 0.6}, "must be at most 1, got 1.2"),
        ({"limits": {"m": (0, None)}}, "--limit m: RPM must be a positive number"),
        ({"limits": {"m": (None, -5)}}, "--limit m: TPM must be a positive number"),
        ({"daily_requests": {"m": -1}}, "--daily m: the quota must be an integer >= 0"),
        ({"port": 70_000}, "port (--port) must be in 0..65535"),
    ],
)
def test_invalid_options_are_refused_with_the_flag_named(options, words):
    with pytest.raises(ValueError) as error:
        Simulator(**options)
    assert words in str(error.value)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--latency", "-1"], "latency_s (--latency) must be at least 0, got -1.0"),
        (["--error-rate", "2"], "error_rate (--error-rate) must be a probability in [0, 1]"),
        (["--drop-rate", "0.7", "--hang-rate", "0.7"], "must be at most 1, got 1.4"),
        (["--limit", "m=0:100"], "--limit m: RPM must be a positive number, got 0.0"),
        (["--latency-jitter", "1"], "latency_jitter (--latency-jitter) must be in [0, 1)"),
    ],
)
def test_command_line_refuses_invalid_options_with_exit_2(args, words):
    done = subprocess.run(
        [sys.executable, "-m", "turborun", "simulate", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def _post_with_key(sim: Simulator, text: str, key: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        body = json.dumps({**CHAT, "messages": [{"role": "user", "content": text}]})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        connection.request("POST", "/v1/chat/completions", body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_echo_auth_quotes_the_key_in_error_bodies_only():
    key = "sk-proj-Ab3dEfGh1jKlMn0pQrStUvWx"
    with Simulator(latency_s=0.0, echo_auth=True) as sim:
        status, data = _post_with_key(sim, "[sim:status=401]", key)
        assert status == 401
        error = data["error"]
        assert error["message"] == (
            "Simulated error 401. Incorrect API key provided: sk-pro" + "*" * 22 + "UvWx."
        )
        assert error["key_hint"] == key[:16] + "..."
        assert error["request_headers"] == {"authorization": f"Bearer {key}"}
        status, data = _post_with_key(sim, "hello", key)
        assert status == 200 and key not in json.dumps(data)
    with Simulator(latency_s=0.0) as sim:  # off by default
        status, data = _post_with_key(sim, "[sim:status=400]", key)
        assert status == 400 and key not in json.dumps(data)
