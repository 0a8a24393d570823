"""Answers that mean the account cannot pay, not that the request was wrong or too fast.

Retrying them cannot succeed until someone adds credit or raises a limit, and
failing the tasks would throw away work the user wants done once the account is
fixed. So the supervisor stops sending to that provider, leaves its unsent tasks
pending and ends the run with a message; ``--resume`` continues.

Documented forms (providers' docs, checked 2026-11):

* OpenAI (developers.openai.com/api/docs/guides/error-codes, spend-limits guide;
  help.openai.com "Troubleshooting API usage and spend limits"): HTTP 429 with
  ``error.type`` ``insufficient_quota`` and ``error.code`` one of
  ``insufficient_quota``, ``credit_balance_exhausted``,
  ``organization_usage_limit_exceeded``, ``organization_spend_limit_exceeded``,
  ``project_spend_limit_exceeded``; older answers say "You exceeded your current
  quota, please check your plan and billing details".
* Groq (console.groq.com/docs/spend-limits): a reached spend limit answers HTTP 400
  with code ``blocked_api_access``.
* Any provider: HTTP 402 Payment Required; messages such as "credit balance is too
  low" or "billing hard limit" (OpenAI-compatible gateways word it their own way).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

ACCOUNT_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_usage_limit_exceeded",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "billing_hard_limit_reached",
        "blocked_api_access",
        "insufficient_balance",
        "insufficient_credits",
        "payment_required",
    }
)
_MESSAGES = re.compile(
    r"exceeded your current quota|credit balance is too low|insufficient (?:credit|balance|funds)"
    r"|billing hard limit|spend(?:ing)? limit (?:reached|exceeded)|add (?:more )?credits",
    re.IGNORECASE,
)
_STATUSES = frozenset({400, 402, 403, 429})


def account_problem(status_code: int | None, body: bytes | None) -> str | None:
    """Why this answer says the account cannot pay (the provider's code or message),
    or None for any other answer."""
    if status_code is None or status_code not in _STATUSES:
        return None
    error = _error_object(body)
    code = str(error.get("code") or "")
    kind = str(error.get("type") or "")
    message = str(error.get("message") or "")
    for value in (code, kind):
        if value in ACCOUNT_CODES:
            return f"{value}: {message}" if message else value
    if _MESSAGES.search(message):
        return message
    if status_code == 402:
        return message or "402 Payment Required"
    return None


def _error_object(body: bytes | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")[:500]
        return {"message": text}
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
    return {}
