"""The results file: Batch API output lines in task-file order, pending lines for an
interrupted run, written atomically."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from turborun.checkpoint import Journal
from turborun.results import default_results_path, result_line, write_results

BODY = {"id": "chatcmpl-1", "choices": [{"message": {"content": "Hello"}}]}


def entry(status: str = "succeeded", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "status": status,
        "fingerprint": "fp",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "attempts": 1,
        "status_code": 200,
        "request_id": "req_1",
        "body": BODY,
        "text": "Hello",
        "error": None,
        "input_tokens": 9,
        "output_tokens": 50,
        "cached_tokens": 0,
        "cost_usd": 0.0000315,
        "latency_s": 0.81,
        "queued_s": 0.02,
        "finished_at": 1.0,
    }
    return {**base, **changes}


def line(custom_id: str, e: dict[str, Any] | None, resumed: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        result_line(custom_id, e, run_name="nightly", resumed=resumed)
    )
    return data


def test_succeeded_line_has_the_batch_api_shape() -> None:
    raw = result_line("q1", entry(), run_name="nightly", resumed=True)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    got = orjson.loads(raw)
    assert list(got) == ["id", "custom_id", "response", "error", "turborun"]
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", got["id"])
    assert got["custom_id"] == "q1"
    assert got["response"] == {"status_code": 200, "request_id": "req_1", "body": BODY}
    assert got["error"] is None
    assert got["turborun"] == {
        "status": "succeeded",
        "attempts": 1,
        "latency_s": 0.81,
        "queued_s": 0.02,
        "input_tokens": 9,
        "output_tokens": 50,
        "cost_usd": 0.0000315,
        "endpoint": None,
        "resumed": True,
    }


def test_ids_are_stable_per_run_and_task() -> None:
    assert line("q1", entry())["id"] == line("q1", None)["id"]
    assert line("q1", entry())["id"] != line("q2", entry())["id"]
    other = orjson.loads(result_line("q1", entry(), run_name="other", resumed=False))
    assert other["id"] != line("q1", entry())["id"]


def test_http_failure_keeps_its_status_and_body() -> None:
    error = {"code": "client_error", "message": "bad request"}
    got = line(
        "q1",
        entry("failed", status_code=400, body={"error": {"message": "bad"}}, error=error),
    )
    assert got["response"] == {
        "status_code": 400,
        "request_id": "req_1",
        "body": {"error": {"message": "bad"}},
    }
    assert got["error"] == error
    assert got["turborun"]["status"] == "failed"


def test_failure_without_an_answer_and_skip_have_no_response() -> None:
    timeout = {"code": "timeout", "message": "no answer in 120 s"}
    got = line("q1", entry("failed", status_code=None, body=None, error=timeout, attempts=6))
    assert got["response"] is None
    assert got["error"] == timeout
    assert got["turborun"]["attempts"] == 6
    skipped = {"code": "dependency_failed", "message": "q0 failed"}
    got = line("q2", entry("skipped", status_code=None, body=None, error=skipped, attempts=0))
    assert got["response"] is None
    assert got["error"]["code"] == "dependency_failed"
    assert got["turborun"]["status"] == "skipped"


def test_unfinished_task_gets_a_pending_line() -> None:
    got = line("q9", None)
    assert got["response"] is None
    assert got["error"] == {"code": "not_run", "message": "not run yet: run again with --resume"}
    assert got["turborun"]["status"] == "pending"
    assert got["turborun"]["attempts"] == 0
    assert got["turborun"]["resumed"] is False


def test_results_file_follows_the_given_order_from_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    raw = orjson.dumps(BODY)
    journal.record_many(
        [
            ("c", entry(body=raw)),
            ("a", entry("failed", status_code=500, body=b"<html>oops</html>")),
        ]
    )
    out = tmp_path / "tasks.results.jsonl"
    counts = write_results(out, journal.get_many(["a", "b", "c"]), run_name="tasks", resumed={"c"})
    journal.close()
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", "c"]
    assert [x["turborun"]["status"] for x in lines] == ["failed", "pending", "succeeded"]
    assert lines[0]["response"]["body"] == "<html>oops</html>"
    assert lines[2]["response"]["body"] == BODY
    assert [x["turborun"]["resumed"] for x in lines] == [False, False, True]
    assert counts == {"failed": 1, "pending": 1, "succeeded": 1}


def test_results_file_is_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "tasks.results.jsonl"
    out.write_bytes(b"old\n")
    journaled = {"a": entry()}

    def broken_entries() -> Iterator[tuple[str, dict[str, Any] | None]]:
        yield "a", journaled["a"]
        raise RuntimeError("journal unreadable")

    with pytest.raises(RuntimeError):
        write_results(out, broken_entries(), run_name="t", resumed=())
    assert out.read_bytes() == b"old\n"  # a failed rewrite leaves the previous file
    assert os.listdir(tmp_path) == ["tasks.results.jsonl"]  # and no temp file
    write_results(out, journaled.items(), run_name="t", resumed=())
    assert [orjson.loads(x)["custom_id"] for x in out.read_bytes().splitlines()] == ["a"]
    assert os.listdir(tmp_path) == ["tasks.results.jsonl"]


def test_results_file_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "r.jsonl"
        write_results(out, [("a", None)], run_name="t", resumed=())
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("tasks", "results"),
    [
        ("data/tasks.jsonl", "data/tasks.results.jsonl"),
        ("nightly.jsonl", "nightly.results.jsonl"),
        ("data/tasks.json", "data/tasks.json.results.jsonl"),
        ("data/tasks", "data/tasks.results.jsonl"),
    ],
)
def test_default_results_path_is_beside_the_task_file(tasks: str, results: str) -> None:
    assert default_results_path(Path(tasks)) == Path(results)


def test_temporary_files_left_by_a_killed_writer_are_removed_on_the_next_write(
    tmp_path: Path,
) -> None:
    """kill -9 during the final write leaves ``.NAME.PID.tmp``: the next write of that
    results file removes those whose process is gone, never a live writer's."""
    out = tmp_path / "r.jsonl"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".r.jsonl.{gone}.tmp"
    live = tmp_path / f".r.jsonl.{os.getppid()}.tmp"
    unrelated = tmp_path / f".other.jsonl.{gone}.tmp"
    for path in (stale, live, unrelated):
        path.write_bytes(b"half a file")
    write_results(out, [("a", entry())], run_name="t", resumed=())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["r.jsonl", live.name, unrelated.name]
    )


def test_a_killed_writer_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    """SIGKILL in the middle of writing: the results file is the old one, complete."""
    out = tmp_path / "r.jsonl"
    write_results(out, [("a", entry())], run_name="t", resumed=())
    before = out.read_bytes()
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from turborun.results import write_results\n"
        "def entries():\n"
        "    for i in range(100_000):\n"
        "        if i == 50_000:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        yield f'q{i}', None\n"
        "write_results(Path(sys.argv[1]), entries(), run_name='t', resumed=())\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert out.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "r.jsonl"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".r.jsonl.")
    write_results(out, [("b", entry())], run_name="t", resumed=())
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"], "the next write cleans up"
