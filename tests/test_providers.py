"""Providers.call through the real openai and groq SDKs over real HTTP to the simulator."""

from __future__ import annotations

import asyncio
import pickle
import time

import orjson
import pytest
from conftest import LIMITED_MODEL

from turborun.providers import REQUESTS_PER_CLIENT, Providers
from turborun.records import (
    AUTH,
    CLIENT_ERROR,
    CONNECTION,
    FN_ERROR,
    FN_PROVIDER,
    INVALID_RESPONSE,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    Call,
    Outcome,
)
from turborun.simulator import Simulator

KEYS = {"openai": "sk-test-secret-openai", "groq": "gsk_test_secret_groq"}
PROVIDERS = ["openai", "groq"]


@pytest.fixture(scope="module")
def providers(simulator):
    urls = {"openai": simulator.openai_base_url, "groq": simulator.base_url}
    return Providers(KEYS, urls, timeout_s=10.0)


def _call(provider: str, url: str, body: dict, *, timeout_s: float = 10.0, **kw) -> Call:
    return Call("node", 1, provider, "POST", url, orjson.dumps(body), timeout_s=timeout_s, **kw)


def _chat(text: str, model: str = LIMITED_MODEL, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def _chat_outcome(providers: Providers, provider: str, text: str) -> Outcome:
    return providers.call(_call(provider, "/v1/chat/completions", _chat(text)))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_success_has_text_usage_request_id_and_rate_headers(providers, provider):
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat("hi", max_tokens=5)))
    assert outcome.ok and outcome.status_code == 200
    assert outcome.text == "echo: hi"
    assert (outcome.output_tokens, outcome.cached_tokens) == (5, 0)
    assert outcome.input_tokens > 0
    assert outcome.request_id.startswith("req_")
    assert outcome.rate_headers["x-ratelimit-limit-tokens"] == "1000000000"
    assert set(outcome.rate_headers) == {
        f"x-ratelimit-{what}-{unit}"
        for what in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    }
    assert orjson.loads(outcome.body)["choices"][0]["message"]["content"] == "echo: hi"
    assert outcome.latency_s > 0 and outcome.pid > 0


def test_groq_requests_go_to_the_openai_prefix(providers, simulator):
    providers.call(_call("groq", "/v1/chat/completions", _chat("groq-prefix-a")))
    providers.call(_call("groq", "/openai/v1/chat/completions", _chat("groq-prefix-b")))
    providers.call(_call("openai", "/v1/chat/completions", _chat("openai-prefix")))
    paths = {
        entry["body"]["messages"][0]["content"]: entry["path"]
        for entry in simulator.requests()
        if entry["body"] and entry["path"].endswith("/chat/completions")
    }
    assert paths["groq-prefix-a"] == paths["groq-prefix-b"] == "/openai/v1/chat/completions"
    assert paths["openai-prefix"] == "/v1/chat/completions"


def test_groq_rate_headers_keep_groqs_meaning(providers):
    outcome = providers.call(_call("groq", "/v1/chat/completions", _chat("hi")))
    assert outcome.rate_headers["x-ratelimit-limit-requests"] == "14400"  # per day


@pytest.mark.parametrize("provider", PROVIDERS)
def test_completion_text_and_usage(providers, provider):
    body = {"model": "plain", "prompt": "complete me", "max_tokens": 3}
    outcome = providers.call(_call(provider, "/v1/completions", body))
    assert outcome.ok and outcome.text == "echo: complete me"
    assert outcome.output_tokens == 3 and outcome.rate_headers == {}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_embeddings_have_no_text_and_no_output_tokens(providers, provider):
    outcome = providers.call(_call(provider, "/v1/embeddings", {"model": "e", "input": "vec"}))
    assert outcome.ok and outcome.text is None
    assert outcome.input_tokens > 0 and outcome.output_tokens == 0
    assert orjson.loads(outcome.body)["data"][0]["embedding"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_text_and_usage(providers, provider):
    body = {"model": "r", "input": "respond", "max_output_tokens": 4}
    outcome = providers.call(_call(provider, "/v1/responses", body))
    assert outcome.ok and outcome.text == "echo: respond"
    assert (outcome.output_tokens, outcome.cached_tokens) == (4, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_is_rate_limited_with_retry_after(providers, provider):
    text = f"[sim:status=429:retry_after_ms=400] {provider}"
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat(text)))
    assert (outcome.status_code, outcome.error_kind) == (429, RATE_LIMITED)
    assert outcome.retry_after_s == pytest.approx(0.4)
    assert outcome.error_message == "Simulated error 429."
    assert outcome.request_id.startswith("req_")


def test_retry_after_in_seconds_when_no_milliseconds(providers):
    outcome = _chat_outcome(providers, "openai", "[sim:status=503:retry_after=2]")
    assert (outcome.error_kind, outcome.retry_after_s) == (SERVER_ERROR, 2.0)


def test_real_rate_limit_429_keeps_rate_headers():
    with Simulator(latency_s=0, limits={"tight": (60, None)}) as sim:  # 1 request per second
        providers = Providers(KEYS, {"openai": sim.openai_base_url}, timeout_s=5)
        call = _call("openai", "/v1/chat/completions", _chat("x", model="tight"))
        assert providers.call(call).ok
        refused = providers.call(call)
        assert refused.error_kind == RATE_LIMITED and 0 < refused.retry_after_s <= 1
        assert refused.rate_headers["x-ratelimit-limit-requests"] == "60"
        assert "requests per second" in refused.error_message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_500_is_server_error(providers, provider):
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat("[sim:status=500]")))
    assert (outcome.status_code, outcome.error_kind) == (500, SERVER_ERROR)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_400_is_client_error_with_the_providers_body(providers, provider):
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat("[sim:status=400]")))
    assert (outcome.status_code, outcome.error_kind) == (400, CLIENT_ERROR)
    assert orjson.loads(outcome.body)["error"]["message"] == "Simulated error 400."
    assert outcome.retry_after_s is None


@pytest.mark.parametrize("status", [408, 409])
def test_408_and_409_keep_their_status_for_retry(providers, status):
    outcome = _chat_outcome(providers, "openai", f"[sim:status={status}]")
    assert (outcome.status_code, outcome.error_kind) == (status, CLIENT_ERROR)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_and_never_show_the_key(providers, provider, status):
    text = f"[sim:status={status}:message=Incorrect API key provided {KEYS[provider]}]"
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat(text)))
    assert (outcome.status_code, outcome.error_kind) == (status, AUTH)
    assert KEYS[provider] not in outcome.error_message
    assert outcome.error_message.startswith("Incorrect API key provided")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hang_is_timeout_within_the_calls_timeout(providers, provider):
    call = _call(provider, "/v1/chat/completions", _chat(f"[sim:hang] {provider}"), timeout_s=0.4)
    outcome = providers.call(call)
    assert (outcome.status_code, outcome.error_kind) == (None, TIMEOUT)
    assert 0.35 <= outcome.latency_s < 2.0
    message = outcome.error_message or ""
    assert message.startswith("APITimeoutError") or "within 0.4 s" in message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_drop_is_connection_error(providers, provider):
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat("[sim:drop]")))
    assert (outcome.status_code, outcome.error_kind) == (None, CONNECTION)


def test_refused_connection_is_connection_error():
    providers = Providers(KEYS, {"openai": "http://127.0.0.1:9/v1"}, timeout_s=2)
    outcome = providers.call(_call("openai", "/v1/chat/completions", _chat("x")))
    assert outcome.error_kind == CONNECTION and KEYS["openai"] not in outcome.error_message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_200_that_is_not_json_is_invalid_response(providers, provider):
    outcome = providers.call(_call(provider, "/v1/chat/completions", _chat("[sim:invalid_json]")))
    assert (outcome.status_code, outcome.error_kind) == (200, INVALID_RESPONSE)
    assert outcome.body.startswith(b'{"id": "chatcmpl-broken"')


def test_unsupported_method_is_client_error(providers):
    call = Call("node", 1, "openai", "PUT", "/v1/chat/completions", b"{}")
    assert providers.call(call).error_kind == CLIENT_ERROR


def join_dependencies(deps: dict) -> str:
    return " + ".join(f"{name}={dep['text']}" for name, dep in sorted(deps.items()))


def structured(deps: dict) -> dict:
    return {"count": len(deps), "values": [dep["value"] for dep in deps.values()]}


def explode(deps: dict) -> None:
    raise RuntimeError("step failed on purpose")


def not_serializable(deps: dict) -> object:
    return object()


def _fn_call(name: str, deps: dict) -> Call:
    body = orjson.dumps(deps)
    return Call("step", 1, FN_PROVIDER, "POST", "", body, fn=f"test_providers:{name}")


def test_fn_step_returning_text(providers):
    deps = {"a": {"text": "one", "value": {"x": 1}}, "b": {"text": "two", "value": None}}
    outcome = providers.call(_fn_call("join_dependencies", deps))
    assert outcome.ok and outcome.status_code is None
    assert outcome.text == "a=one + b=two"
    assert orjson.loads(outcome.body) == "a=one + b=two"


def test_fn_step_returning_json_value(providers):
    outcome = providers.call(_fn_call("structured", {"a": {"text": "t", "value": [1, 2]}}))
    assert outcome.ok and orjson.loads(outcome.body) == {"count": 1, "values": [[1, 2]]}
    assert orjson.loads(outcome.text) == {"count": 1, "values": [[1, 2]]}


def test_fn_step_exception_is_fn_error(providers):
    outcome = providers.call(_fn_call("explode", {}))
    assert outcome.error_kind == FN_ERROR
    assert outcome.error_message == "RuntimeError: step failed on purpose"


def test_fn_step_with_unserializable_return_is_fn_error(providers):
    outcome = providers.call(_fn_call("not_serializable", {}))
    assert outcome.error_kind == FN_ERROR and "not JSON-serializable" in outcome.error_message


def test_fn_step_that_cannot_be_imported_is_fn_error(providers):
    call = Call("step", 1, FN_PROVIDER, "POST", "", b"{}", fn="no_such_module_here:f")
    outcome = providers.call(call)
    assert outcome.error_kind == FN_ERROR and "ModuleNotFoundError" in outcome.error_message


def test_outcomes_pickle_and_unpickle(providers):
    success = providers.call(_call("openai", "/v1/chat/completions", _chat("pickle me")))
    failure = providers.call(_call("groq", "/v1/chat/completions", _chat("[sim:status=429]")))
    for outcome in (success, failure):
        restored = pickle.loads(pickle.dumps(outcome))
        assert isinstance(restored, Outcome) and restored == outcome


@pytest.mark.parametrize("provider", PROVIDERS)
def test_requests_in_flight_share_clients_a_few_dozen_to_each(simulator, provider):
    """One async client's connection pool is scanned under one lock per request: each
    client serves REQUESTS_PER_CLIENT requests in flight, and every request succeeds."""
    urls = {"openai": simulator.openai_base_url, "groq": simulator.base_url}
    providers = Providers(KEYS, urls, timeout_s=10.0)
    count = 3 * REQUESTS_PER_CLIENT

    async def many() -> list[Outcome]:
        calls = [
            _call(provider, "/v1/chat/completions", _chat(f"[sim:latency=0.3] in flight {i}"))
            for i in range(count)
        ]
        return await asyncio.gather(*(providers.acall(c) for c in calls))

    outcomes = asyncio.run(many())
    assert [o.text for o in outcomes] == [
        f"echo: [sim:latency=0.3] in flight {i}" for i in range(count)
    ]
    assert providers.clients(provider) == 3


def test_timeout_bounds_the_whole_request(simulator):
    """A server that answers late is cut at the call's timeout, as a whole request."""
    providers = Providers(KEYS, {"openai": simulator.openai_base_url}, timeout_s=10.0)
    call = _call("openai", "/v1/chat/completions", _chat("[sim:latency=5] slow"), timeout_s=0.5)
    started = time.monotonic()
    outcome = providers.call(call)
    assert outcome.error_kind == TIMEOUT and time.monotonic() - started < 3
