"""Task files and Python task dicts: validation with FILE:LINE problems, defaults,
templates, fingerprints and re-reading bodies from disk."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from turborun.exceptions import InputError
from turborun.records import FN_PROVIDER
from turborun.tasks import (
    MAX_LINE_BYTES,
    MAX_SHOWN_PROBLEMS,
    PRIORITY_NAMES,
    TaskSet,
    fingerprint,
    load_tasks,
    parse_priority,
    problem_lines,
    tasks_from_dicts,
)
from turborun.templates import render_body, template_refs
from turborun.tokens import UNESTIMATED, TokenEstimator

BATCH_LINE = (
    '{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", '
    '"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], '
    '"max_tokens": 50}}'
)


class FixedEstimator(TokenEstimator):
    """Answers 7 prompt tokens and the body's max_tokens, and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def estimate(self, provider: str, url: str, body: dict[str, Any]) -> tuple[int, int]:
        self.seen.append((provider, url, body))
        return 7, int(body.get("max_tokens", 0))


def api(custom_id: str, content: str = "Hi", **extra: Any) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "body": body, **extra}


def write(tmp_path: Path, *lines: str | dict[str, Any], name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> TaskSet:
    return load_tasks(path, FixedEstimator())


def problems(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(InputError) as caught:
        load(path).close()
    assert all(p.path == str(path) for p in caught.value.problems)
    return [(p.line, p.message) for p in caught.value.problems]


# ---- accepted input -------------------------------------------------------------


def test_batch_api_line_is_a_valid_task_as_it_is(tmp_path: Path) -> None:
    with load(write(tmp_path, BATCH_LINE)) as taskset:
        (task,) = taskset.tasks
        assert (task.custom_id, task.index, task.line) == ("q1", 0, 1)
        assert (task.provider, task.method, task.url, task.model) == (
            "openai",
            "POST",
            "/v1/chat/completions",
            "gpt-4o-mini",
        )
        assert (task.prompt_tokens, task.max_output_tokens) == (7, 50)
        assert task.body is None  # stays on disk
        assert taskset.body(task) == json.loads(BATCH_LINE)["body"]
        assert taskset.by_id == {"q1": task}
        assert taskset.path == tmp_path / "tasks.jsonl"


def test_without_an_estimator_prompts_are_left_uncounted_but_output_is_read(
    tmp_path: Path,
) -> None:
    embed = {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
    with load_tasks(write(tmp_path, BATCH_LINE, embed), None) as taskset:
        chat, embedding = taskset.tasks
        assert (chat.prompt_tokens, chat.max_output_tokens) == (UNESTIMATED, 50)
        assert (embedding.prompt_tokens, embedding.max_output_tokens) == (UNESTIMATED, 0)


def test_defaults_for_omitted_and_null_keys(tmp_path: Path) -> None:
    nulls = dict.fromkeys(("method", "url", "provider", "depends_on", "priority", "fn"))
    with load(write(tmp_path, api("a"), api("b", **nulls))) as taskset:
        for task in taskset.tasks:
            assert task.method == "POST"
            assert task.url == "/v1/chat/completions"
            assert task.provider == "openai"
            assert task.depends_on == ()
            assert task.priority == PRIORITY_NAMES["normal"] == 10
            assert task.fn is None
            assert task.templated is False


def test_priority_names_and_integers(tmp_path: Path) -> None:
    lines = [api(f"t{i}", priority=p) for i, p in enumerate(["critical", "high", "low", 5, -3])]
    with load(write(tmp_path, *lines)) as taskset:
        assert [t.priority for t in taskset.tasks] == [1000, 100, 1, 5, -3]


def test_parse_priority() -> None:
    assert parse_priority("normal") == 10
    assert parse_priority(" High ") == 100
    assert parse_priority(0) == 0
    for bad in (True, False, 1.5, "urgent", None, [1]):
        assert parse_priority(bad) is None


def test_blank_lines_are_skipped_and_keep_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "", api("a"), "   \t", "", api("b"))
    with load(path) as taskset:
        assert [(t.custom_id, t.line, t.index) for t in taskset.tasks] == [
            ("a", 2, 0),
            ("b", 5, 1),
        ]


def test_unknown_top_level_keys_are_ignored(tmp_path: Path) -> None:
    with load(write(tmp_path, api("a", note="from a Batch API export", extra={"x": 1}))) as ts:
        assert ts.tasks[0].custom_id == "a"


def test_duplicate_keys_last_one_wins(tmp_path: Path) -> None:
    line = '{"custom_id": "a", "priority": "low", "priority": "high", "body": {"model": "m"}}'
    with load(write(tmp_path, line)) as taskset:
        assert taskset.tasks[0].priority == 100


def test_groq_provider_and_other_endpoints(tmp_path: Path) -> None:
    line = api("e", provider="groq", url="/v1/embeddings")
    with load(write(tmp_path, line, api("o"))) as taskset:
        assert (taskset.tasks[0].provider, taskset.tasks[0].url) == ("groq", "/v1/embeddings")
        assert taskset.providers() == {"groq", "openai"}


def test_fn_step_needs_no_body_and_calls_no_provider(tmp_path: Path) -> None:
    step = {"custom_id": "s", "fn": "tests.steps:echo", "depends_on": ["a"]}
    estimator = FixedEstimator()
    with load_tasks(write(tmp_path, api("a"), step), estimator) as taskset:
        task = taskset.by_id["s"]
        assert (task.provider, task.model, task.fn) == (FN_PROVIDER, "", "tests.steps:echo")
        assert (task.prompt_tokens, task.max_output_tokens) == (0, 0)
        assert taskset.body(task) == {}
        assert taskset.providers() == {"openai"}
        assert len(estimator.seen) == 1  # only the API task was estimated


def test_estimator_gets_provider_url_and_body(tmp_path: Path) -> None:
    estimator = FixedEstimator()
    line = api("a", provider="groq", url="/v1/completions")
    with load_tasks(write(tmp_path, line), estimator):
        assert estimator.seen == [("groq", "/v1/completions", line["body"])]


def test_utf8_bom_at_file_start_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(api("a")).encode() + b"\n")
    with load(path) as taskset:
        assert taskset.body(taskset.tasks[0])["model"] == "m"


# ---- problems -----------------------------------------------------------------------


def test_every_problem_is_reported_at_once_sorted_by_line(tmp_path: Path) -> None:
    path = write(tmp_path, api("c", provider="azure"), "{not json", api("a", priority="urgent"))
    found = problems(path)
    assert [line for line, _ in found] == [1, 2, 3]
    assert found[0][1] == "unknown provider 'azure': use one of openai, groq"
    assert found[1][1].startswith("malformed JSON: ")
    assert found[2][1] == (
        "bad priority 'urgent': use an integer or one of critical/high/normal/low"
    )


def test_malformed_json_nan_and_non_objects(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("a"),
        '{"custom_id": "b", "body": {"model": "m", "temperature": NaN}}',
        '{"custom_id": "c"',
        "[1, 2]",
        '"text"',
    )
    found = problems(path)
    assert [line for line, _ in found] == [2, 3, 4, 5]
    assert found[0][1].startswith("malformed JSON: ") and "NaN and Infinity" in found[0][1]
    assert found[1][1].startswith("malformed JSON: ")
    assert found[2][1] == "a task must be a JSON object, got an array"
    assert found[3][1] == "a task must be a JSON object, got a string"


def test_invalid_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(api("a")).encode()
    path.write_bytes(good + b"\n" + b'{"custom_id": "b\xff", "body": {"model": "m"}}\n')
    assert problems(path) == [(2, "invalid UTF-8 (byte 17 of the line)")]


def test_line_over_the_limit_is_reported_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    size = MAX_LINE_BYTES + 10
    with open(path, "wb") as f:
        f.write(json.dumps(api("a")).encode() + b"\n")
        f.write(b"x" * size + b"\n")
        f.write(json.dumps(api("c")).encode() + b"\n")
    assert problems(path) == [(2, f"line is {size} bytes, over the 16 MiB limit")]


def test_line_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.jsonl"
    head = b'{"custom_id": "a", "body": {"model": "m", "pad": "'
    line = head + b"p" * (MAX_LINE_BYTES - len(head) - 3) + b'"}}'
    assert len(line) == MAX_LINE_BYTES
    path.write_bytes(line + b"\n")
    with load(path) as taskset:
        assert len(taskset.body(taskset.tasks[0])["pad"]) == MAX_LINE_BYTES - len(head) - 3


def test_custom_id_required_non_empty_and_unique(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"body": {"model": "m"}},
        api(""),
        api(5),  # type: ignore[arg-type]
        api("a"),
        api("b"),
        api("a"),
    )
    assert problems(path) == [
        (1, "custom_id is required"),
        (2, "custom_id must be a non-empty string, got ''"),
        (3, "custom_id must be a non-empty string, got 5"),
        (6, "duplicate custom_id 'a' (first on line 4)"),
    ]


def test_method_url_body_and_model_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("a", method="GET"),
        api("b", url="v1/chat/completions"),
        {"custom_id": "c"},
        {"custom_id": "d", "body": [1]},
        {"custom_id": "e", "body": {"messages": []}},
        {"custom_id": "f", "body": {"model": ""}},
    )
    assert problems(path) == [
        (1, "method 'GET' is not supported: only POST"),
        (2, "url must be a path starting with '/', got 'v1/chat/completions'"),
        (3, "body is required (a JSON object) for an API task"),
        (4, "body must be a JSON object, got an array"),
        (5, "body.model is required"),
        (6, "body.model must be a non-empty string, got ''"),
    ]


def test_fn_shape_is_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"custom_id": "a", "fn": "pkg.mod:func"},
        {"custom_id": "b", "fn": "steps"},
        {"custom_id": "c", "fn": "a:b:c"},
        {"custom_id": "d", "fn": "1mod:f"},
    )
    assert problems(path) == [
        (2, "fn must look like 'package.module:function', got 'steps'"),
        (3, "fn must look like 'package.module:function', got 'a:b:c'"),
        (4, "fn must look like 'package.module:function', got '1mod:f'"),
    ]


def test_dependencies_must_be_a_list_of_known_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("a"),
        api("b", depends_on="a"),
        api("c", depends_on=["a", 3]),
        api("d", depends_on=["a", "ghost", "nobody"]),
        api("e", depends_on=["d"]),  # d has a problem, but it exists
    )
    assert problems(path) == [
        (2, "depends_on must be a list of custom_id strings, got 'a'"),
        (3, "depends_on must be a list of custom_id strings, got ['a', 3]"),
        (4, "unknown dependency 'ghost': no task has this custom_id"),
        (4, "unknown dependency 'nobody': no task has this custom_id"),
    ]


def test_repeated_dependencies_count_once(tmp_path: Path) -> None:
    with load(write(tmp_path, api("a"), api("b", depends_on=["a", "a"]))) as taskset:
        assert taskset.by_id["b"].depends_on == ("a",)


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, api("a"), api("b", depends_on=["b"]))
    assert problems(path) == [(2, "dependency cycle: b -> b")]


def test_cycle_is_named_on_its_first_member_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("x"),
        api("c", depends_on=["a"]),
        api("a", depends_on=["b", "x"]),
        api("b", depends_on=["c"]),
    )
    assert problems(path) == [(2, "dependency cycle: c -> a -> b -> c")]


def test_every_separate_cycle_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("a", depends_on=["b"]),
        api("b", depends_on=["a"]),
        api("free", depends_on=["a"]),
        api("p", depends_on=["q"]),
        api("q", depends_on=["p"]),
    )
    assert problems(path) == [
        (1, "dependency cycle: a -> b -> a"),
        (4, "dependency cycle: p -> q -> p"),
    ]


def test_template_must_name_a_declared_dependency(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        api("q1"),
        api("q2", "use {{q1}} and {{ q3 }}", depends_on=["q1"]),
        api("q3", "braces {{no such task}} and {{}} stay as they are"),
    )
    assert problems(path) == [
        (2, "template {{q3}} refers to a task that is not in depends_on"),
    ]


def test_templated_flag_marks_declared_references(tmp_path: Path) -> None:
    lines = [api("q1"), api("q2", "after {{q1}}", depends_on=["q1"]), api("q3", depends_on=["q1"])]
    with load(write(tmp_path, *lines)) as taskset:
        assert [t.templated for t in taskset.tasks] == [False, True, False]


def test_template_written_with_unicode_escapes_is_found(tmp_path: Path) -> None:
    line = '{"custom_id": "b", "body": {"model": "m", "prompt": "\\u007b\\u007ba}}"}}'  # {{a}}
    path = write(tmp_path, api("a"), line)
    assert problems(path) == [(2, "template {{a}} refers to a task that is not in depends_on")]


def test_empty_file_and_file_of_blank_lines_have_no_tasks(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert problems(empty) == [(0, "no tasks in file")]
    assert problems(write(tmp_path, "", "  ", name="blank.jsonl")) == [(0, "no tasks in file")]


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.jsonl") == [(0, "no such file")]


def test_problem_prints_as_file_line_message(tmp_path: Path) -> None:
    path = write(tmp_path, api("a", provider="x"))
    with pytest.raises(InputError) as caught:
        load(path)
    assert str(caught.value) == f"{path}:1: unknown provider 'x': use one of openai, groq"


# ---- bodies on disk ----------------------------------------------------------------


def test_body_rereads_the_right_line_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    lines = [api(f"t{i}", f"content é {i}") for i in range(5)]
    path.write_bytes(b"\r\n".join(json.dumps(ln, ensure_ascii=False).encode() for ln in lines))
    with load(path) as taskset:
        for task in reversed(taskset.tasks):
            assert taskset.body(task) == lines[task.index]["body"]


def test_body_of_a_file_rewritten_in_place_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, api("a"), api("b"))
    with load(path) as taskset:
        path.write_text(json.dumps(api("zzz")) + "\n", encoding="utf-8")  # same inode
        with pytest.raises(InputError, match="changed during the run"):
            taskset.body(taskset.by_id["b"])


# ---- templates and fingerprints -------------------------------------------------------


def test_template_refs_finds_ids_in_strings_only() -> None:
    body = {
        "model": "m",
        "{{key}}": "keys do not count",
        "messages": [{"content": "{{a}} then {{ b c }} and {{a}}"}, {"content": ["{{d}}"]}],
        "n": 3,
        "x": "{single} {{}} {{  }} {{{e}}}",
    }
    assert template_refs(body) == {"a", "b c", "d", "e"}


def test_render_body_replaces_known_ids_everywhere() -> None:
    body = {
        "model": "m",
        "{{a}}": "{{a}}",
        "messages": [{"content": "x={{a}}, y={{ b }}, z={{c}}, {not} {{"}],
        "n": 2,
    }
    rendered = render_body(body, {"a": "A\\1", "b": "{{a}}"})
    assert rendered == {
        "model": "m",
        "{{a}}": "A\\1",
        "messages": [{"content": "x=A\\1, y={{a}}, z={{c}}, {not} {{"}],
        "n": 2,
    }
    assert body["messages"][0]["content"].startswith("x={{a}}")  # input untouched


def test_fingerprint_follows_what_is_sent_not_priority(tmp_path: Path) -> None:
    first = write(tmp_path, api("a", priority="low"), name="one.jsonl")
    same = tmp_path / "two.jsonl"  # other key order and spacing, other priority
    same.write_text(
        '{"priority": 1000, "body": {"messages": [{"content": "Hi", "role": "user"}],'
        '   "model": "m"}, "custom_id": "a"}\n',
        encoding="utf-8",
    )
    changed = write(tmp_path, api("a", "Hello"), name="three.jsonl")
    with load(first) as a, load(same) as b, load(changed) as c:
        assert a.tasks[0].fingerprint == b.tasks[0].fingerprint
        assert a.tasks[0].fingerprint != c.tasks[0].fingerprint
        expected = fingerprint("openai", "POST", "/v1/chat/completions", api("a")["body"], None, ())
        assert a.tasks[0].fingerprint == expected


def test_fingerprint_covers_provider_url_fn_and_dependencies() -> None:
    base = ("openai", "POST", "/v1/chat/completions", {"model": "m"}, None, ())
    variants = [
        ("groq", *base[1:]),
        (*base[:2], "/v1/completions", *base[3:]),
        (*base[:4], "pkg:f", ()),
        (*base[:5], ("x",)),
    ]
    prints = {fingerprint(*v) for v in [base, *variants]}  # type: ignore[arg-type]
    assert len(prints) == 5
    assert len(fingerprint(*base)) == 64  # type: ignore[arg-type]


# ---- tasks from Python -------------------------------------------------------------------


def test_tasks_from_dicts_generates_ids_and_keeps_bodies() -> None:
    items = [api("x"), {"body": {"model": "m", "max_tokens": 9}}, {"fn": "tests.steps:answer"}]
    taskset = tasks_from_dicts(items, FixedEstimator())
    assert taskset.path is None
    assert [(t.custom_id, t.line, t.index) for t in taskset.tasks] == [
        ("x", 1, 0),
        ("task-2", 2, 1),
        ("task-3", 3, 2),
    ]
    second = taskset.tasks[1]
    assert taskset.body(second) == {"model": "m", "max_tokens": 9}
    assert second.max_output_tokens == 9
    items[1]["body"]["model"] = "changed later"
    assert taskset.body(second)["model"] == "m"  # a copy was kept
    assert taskset.body(taskset.tasks[2]) == {}
    taskset.close()


def test_tasks_from_dicts_reports_problems_by_position() -> None:
    items: list[Any] = [
        api("a"),
        api("a"),
        ["not", "a", "dict"],
        api("d", depends_on=["zz"]),
        {"body": {"model": "m", "when": {1, 2}}},
    ]
    with pytest.raises(InputError) as caught:
        tasks_from_dicts(items, FixedEstimator(), source="<mine>")
    found = [(p.path, p.line, p.message) for p in caught.value.problems]
    assert found[:4] == [
        ("<mine>", 2, "duplicate custom_id 'a' (first on item 1)"),
        ("<mine>", 3, "a task must be a dict, got list"),
        ("<mine>", 4, "unknown dependency 'zz': no task has this custom_id"),
        ("<mine>", 5, found[3][2]),
    ]
    assert found[3][2].startswith("body is not JSON-serializable")
    assert len(found) == 4


def test_tasks_from_dicts_checks_templates_and_cycles_like_files() -> None:
    items = [
        api("a", depends_on=["b"]),
        api("b", "{{a}} {{c}}", depends_on=["a"]),
        api("c"),
    ]
    with pytest.raises(InputError) as caught:
        tasks_from_dicts(items, FixedEstimator())
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (1, "dependency cycle: a -> b -> a"),
        (2, "template {{c}} refers to a task that is not in depends_on"),
    ]


def test_no_tasks_given() -> None:
    with pytest.raises(InputError) as caught:
        tasks_from_dicts([], FixedEstimator())
    assert [(p.line, p.message) for p in caught.value.problems] == [(0, "no tasks given")]


# ---- limits of numbers, streams and long reports ------------------------------------


@pytest.mark.parametrize("estimator", [None, TokenEstimator()], ids=["resume", "first-run"])
def test_requested_output_beyond_2_53_tokens_is_a_problem_of_its_line(
    tmp_path: Path, estimator: TokenEstimator | None
) -> None:
    def asking(custom_id: str, **output: Any) -> dict[str, Any]:
        task = api(custom_id)
        task["body"].update(output)
        return task

    lines = [
        asking("fine", max_tokens=2**20, n=2**33),  # exactly 2**53
        asking("product", max_tokens=1e308, n=10),  # 1e309: a float would overflow
        asking("huge", max_completion_tokens=2**60),
        asking("both", max_tokens=1e300, n=1e300),
    ]
    with pytest.raises(InputError) as caught:
        load_tasks(write(tmp_path, *lines), estimator).close()
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (2, f"max_tokens × n = 1e+308 × 10 output tokens is over the limit of {2**53} (2**53) "
            "per request"),
        (3, f"max_completion_tokens = {2**60} output tokens is over the limit of {2**53} (2**53) "
            "per request"),
        (4, f"max_tokens × n = 1e+300 × 1e+300 output tokens is over the limit of {2**53} "
            "(2**53) per request"),
    ]  # fmt: skip


def test_priority_beyond_64_bits_is_reported_as_written_not_as_a_float(tmp_path: Path) -> None:
    body = '"body": {"model": "m", "messages": []}'
    path = write(
        tmp_path,
        f'{{"custom_id": "big", "priority": {10**30}, {body}}}',
        f'{{"custom_id": "low", "priority": {-(2**63) - 1}, {body}}}',
        f'{{"custom_id": "edge", "priority": {2**63 - 1}, {body}}}',
        f'{{"custom_id": "float", "priority": 1e30, {body}}}',
    )
    assert problems(path) == [
        (1, f"priority {10**30} is out of range: {-(2**63)} to {2**63 - 1}"),
        (2, f"priority {-(2**63) - 1} is out of range: {-(2**63)} to {2**63 - 1}"),
        (4, "bad priority 1e+30: use an integer or one of critical/high/normal/low"),
    ]
    assert parse_priority(2**63 - 1) == 2**63 - 1 and parse_priority(2**63) is None
    with pytest.raises(InputError) as caught:
        tasks_from_dicts([api("a", priority=10**5000)], FixedEstimator())
    assert "out of range" in caught.value.problems[0].message


def test_task_file_that_is_a_fifo_is_read_once_and_serves_bodies(tmp_path: Path) -> None:
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)
    lines = [api(f"t{i}", f"text {i}") for i in range(200)]

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as out:
            for item in lines:
                out.write(json.dumps(item) + "\n")

    writer = threading.Thread(target=feed, daemon=True)  # never blocks pytest from exiting
    writer.start()
    try:
        taskset = load(fifo)
    finally:
        writer.join(timeout=10)
    with taskset:
        assert taskset.path == fifo
        assert [t.custom_id for t in taskset.tasks] == [f"t{i}" for i in range(200)]
        for task in reversed(taskset.tasks):  # by offset, in any order, as at dispatch
            assert taskset.body(task) == lines[task.index]["body"]


def test_problem_lines_show_the_first_twenty_and_count_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, *["{bad"] * 25)
    with pytest.raises(InputError) as caught:
        load(path).close()
    shown = problem_lines(caught.value.problems)
    assert len(caught.value.problems) == 25
    assert len(shown) == MAX_SHOWN_PROBLEMS + 1 == 21
    assert shown[0].startswith(f"{path}:1: malformed JSON")
    assert shown[19].startswith(f"{path}:20: ")
    assert shown[-1] == "... and 5 more problem(s) not shown"
    assert problem_lines(caught.value.problems[:3]) == [str(p) for p in caught.value.problems[:3]]
