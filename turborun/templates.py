"""``{{ID}}`` templating: a task's body may quote the output text of a dependency,
written as ``{{ID}}`` in any string of the body (not in dict keys). The text is put in
at dispatch, once the dependency's result is journaled."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TEMPLATE = re.compile(r"\{\{([^{}]*)\}\}")


def template_refs(body: Any) -> set[str]:
    """Every ID written as ``{{ID}}`` in the strings of ``body`` (dict keys excluded)."""
    refs: set[str] = set()
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "{{" in value:
                for match in _TEMPLATE.finditer(value):
                    ref = match.group(1).strip()
                    if ref:
                        refs.add(ref)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return refs


def render_body(body: dict[str, Any], outputs: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``body`` with ``{{ID}}`` replaced by ``outputs[ID]`` wherever ID is
    in ``outputs``. Inserted text is not scanned again, so an output holding
    braces cannot pull in another task's output."""

    def replace(match: re.Match[str]) -> str:
        ref = match.group(1).strip()
        return outputs[ref] if ref in outputs else match.group(0)

    def render(value: Any) -> Any:
        if isinstance(value, str):
            return _TEMPLATE.sub(replace, value) if "{{" in value else value
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        return value

    return render(body)
