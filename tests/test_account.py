"""Which answers mean the account cannot pay (and which do not)."""

from __future__ import annotations

import json

import pytest

from turborun.account import account_problem


def body(code: str | None = None, kind: str | None = None, message: str = "") -> bytes:
    return json.dumps({"error": {"code": code, "type": kind, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (
            429,
            body("insufficient_quota", "insufficient_quota", "You exceeded your current quota"),
            "insufficient_quota",
        ),
        (429, body("credit_balance_exhausted", "insufficient_quota"), "credit_balance_exhausted"),
        (
            429,
            body("organization_spend_limit_exceeded", "insufficient_quota"),
            "organization_spend_limit_exceeded",
        ),
        (429, body("project_spend_limit_exceeded"), "project_spend_limit_exceeded"),
        (429, body(None, "insufficient_quota"), "insufficient_quota"),
        (
            400,
            body("blocked_api_access", "invalid_request_error", "spend limit"),
            "blocked_api_access",
        ),
        (
            400,
            body(None, None, "Your credit balance is too low to access the API"),
            "credit balance is too low",
        ),
        (402, b"", "402 Payment Required"),
        (402, b"pay up", "pay up"),
    ],
)
def test_account_answers(status: int, raw: bytes, expected: str) -> None:
    found = account_problem(status, raw)
    assert found is not None and expected in found


@pytest.mark.parametrize(
    ("status", "raw"),
    [
        (429, body("rate_limit_exceeded", "requests", "Rate limit reached for requests")),
        (429, b""),
        (400, body("invalid_value", "invalid_request_error", "max_tokens is too large")),
        (401, body("invalid_api_key", "invalid_request_error", "Incorrect API key provided")),
        (500, body("insufficient_quota")),  # a server error is not an account answer
        (None, None),
        (200, body("insufficient_quota")),
    ],
)
def test_other_answers_are_not_account_problems(status: int | None, raw: bytes | None) -> None:
    assert account_problem(status, raw) is None
