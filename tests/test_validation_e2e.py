"""Bad input and bad configuration through the command line (SPEC §2, §8): every problem
is printed as FILE:LINE: message, the exit code is 2, and the simulator receives not a
single request. Each file starts with a valid task, so a validator that let the file
through would be caught by the request log."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from turborun.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
MODEL = "sim-validate"


def cli_env(tmp_path: Path, sim: Simulator, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TURBORUN_", "OPENAI_", "GROQ_"))
    }
    env.update(
        TURBORUN_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        OPENAI_BASE_URL=sim.openai_base_url,
        GROQ_BASE_URL=sim.base_url,
        OPENAI_API_KEY=f"sk-test-{uuid.uuid4().hex}",
        GROQ_API_KEY=f"gsk-test-{uuid.uuid4().hex}",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
    )
    env.update(extra)
    return env


def run_batch(
    path: Path, tmp_path: Path, env: dict[str, str], flags: tuple[str, ...] = ("--workers", "2")
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turborun", "batch", str(path), *flags, "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def line(tag: str, cid: str | None, **keys: object) -> bytes:
    obj: dict[str, object] = {} if cid is None else {"custom_id": cid}
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"{tag}:{cid} hi"}]}
    obj.update({"body": body, **keys})
    return orjson.dumps(obj)


def sim_log(sim: Simulator) -> list[dict[str, Any]]:
    """The simulator's request log, complete lines only: polled while the server
    appends, the last line may be half-written (Simulator.requests() would raise)."""
    data = Path(sim.log_path).read_bytes() if sim.log_path else b""
    return [orjson.loads(x) for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


def sent(sim: Simulator, tag: str) -> int:
    return sum(1 for entry in sim_log(sim) if tag in orjson.dumps(entry.get("body")).decode())


def assert_refused_and_nothing_sent(
    done: subprocess.CompletedProcess[str], sim: Simulator, tag: str, tmp_path: Path
) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert sent(sim, tag) == 0, "nothing may be sent"
    journals = list((tmp_path / "checkpoints").glob("*/journal"))
    assert not journals, f"nothing may be journaled: {journals}"
    assert "Traceback" not in done.stderr, done.stderr


def _cases(tag: str) -> dict[str, tuple[list[bytes], int, list[str]]]:
    """name -> (lines after the valid first one, problem line, message fragments)."""
    return {
        "malformed_json": ([b'{"custom_id": "x", "body": '], 2, ["malformed JSON"]),
        "nan_is_not_json": ([line(tag, "x", priority=None)[:-1] + b', "n": NaN}'], 2, ["NaN"]),
        "invalid_utf8": ([b'{"custom_id": "\xff\xfe", "body": {}}'], 2, ["invalid UTF-8"]),
        "not_an_object": ([b"[1, 2]"], 2, ["must be a JSON object"]),
        "missing_custom_id": ([line(tag, None)], 2, ["custom_id is required"]),
        "duplicate_custom_id": (
            [line(tag, "ok")],
            2,
            ["duplicate custom_id 'ok'", "first on line 1"],
        ),
        "unknown_dependency": (
            [line(tag, "x", depends_on=["nobody"])],
            2,
            ["unknown dependency 'nobody'"],
        ),
        "cycle": (
            [
                line(tag, "x"),
                line(tag, "cy1", depends_on=["cy3"]),
                line(tag, "cy2", depends_on=["cy1"]),
                line(tag, "cy3", depends_on=["cy2"]),
            ],
            3,
            ["dependency cycle", "cy1", "cy2", "cy3"],
        ),
        "bad_priority": ([line(tag, "x", priority="urgent")], 2, ["bad priority 'urgent'"]),
        "unknown_provider": (
            [line(tag, "x", provider="anthropic")],
            2,
            ["unknown provider 'anthropic'"],
        ),
        "undeclared_template": (
            [
                orjson.dumps(
                    {
                        "custom_id": "x",
                        "body": {
                            "model": MODEL,
                            "messages": [{"role": "user", "content": "{{ok}}"}],
                        },
                    }
                )
            ],
            2,
            ["template {{ok}}", "not in depends_on"],
        ),
    }


@pytest.mark.parametrize("case", sorted(_cases("").keys()))
def test_invalid_task_file_names_file_and_line_exits_2_and_sends_nothing(
    case: str, tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    rest, problem_line, fragments = _cases(tag)[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(b"\n".join([line(tag, "ok"), *rest]) + b"\n")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    problems = [x for x in done.stderr.splitlines() if x.startswith(f"{path}:{problem_line}: ")]
    assert problems, f"no {path.name}:{problem_line}: problem in:\n{done.stderr}"
    assert all(any(f in p for p in problems) for f in fragments), done.stderr


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "many.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                line(tag, "ok"),
                b"{oops",
                line(tag, "ok"),
                line(tag, "p", priority="urgent"),
                line(tag, "q", provider="nope"),
            ]
        )
        + b"\n"
    )
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    for number in (2, 3, 4, 5):
        assert f"{path}:{number}: " in done.stderr, done.stderr


def test_line_over_16_mib_is_reported_not_parsed(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "huge.jsonl"
    huge = b'{"custom_id": "huge", "body": {"model": "m", "pad": "' + b"x" * (17 << 20) + b'"}}'
    path.write_bytes(line(tag, "ok") + b"\n" + huge + b"\n" + line(tag, "after") + b"\n")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert f"{path}:2: " in done.stderr and "16 MiB" in done.stderr, done.stderr


def test_empty_file_is_refused(tmp_path: Path, simulator: Simulator) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n   \n")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, uuid.uuid4().hex, tmp_path)
    assert f"{path}:0: no tasks in file" in done.stderr, done.stderr


def test_missing_file_is_refused(tmp_path: Path, simulator: Simulator) -> None:
    path = tmp_path / "absent.jsonl"
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert done.returncode == 2, done.stderr
    assert f"{path}:0: no such file" in done.stderr, done.stderr


def test_missing_key_of_a_provider_in_use_exits_2_before_sending(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "nokey.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n" + line(tag, "g", provider="groq") + b"\n")
    env = cli_env(tmp_path, simulator)
    del env["OPENAI_API_KEY"]
    done = run_batch(path, tmp_path, env)
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert "OPENAI_API_KEY" in done.stderr, done.stderr


def test_key_of_an_unused_provider_is_not_required(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "groqonly.jsonl"
    path.write_bytes(line(tag, "g", provider="groq") + b"\n")
    env = cli_env(tmp_path, simulator)
    del env["OPENAI_API_KEY"]
    done = run_batch(path, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert sent(simulator, tag) == 1


def test_key_with_trailing_newline_exits_2_without_echoing_it(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "badkey.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n")
    secret = f"sk-test-{uuid.uuid4().hex}"
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator, OPENAI_API_KEY=secret + "\n"))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert "OPENAI_API_KEY" in done.stderr
    assert secret not in done.stderr + done.stdout


def test_invalid_environment_value_exits_2_naming_variable_and_value(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "env.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n")
    env = cli_env(tmp_path, simulator, TURBORUN_WORKERS="abc")
    done = run_batch(path, tmp_path, env, flags=())  # a --workers flag would take precedence
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert "TURBORUN_WORKERS" in done.stderr and "abc" in done.stderr, done.stderr


def test_100000_bad_lines_print_twenty_and_a_count(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "bad.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n" + b"{oops\n" * 100_000)
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    printed = done.stderr.splitlines()
    assert len(printed) == 22, printed[:3]
    assert printed[0].startswith(f"{path}:2: malformed JSON")
    assert printed[19].startswith(f"{path}:21: ")
    assert printed[20:] == [
        "... and 99980 more problem(s) not shown",
        "100000 problem(s); nothing was sent",
    ]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"n": 10, "max_tokens": 1e308}, "max_tokens × n = 1e+308 × 10 output tokens is over"),
        ({"max_tokens": 2**60}, f"max_tokens = {2**60} output tokens is over the limit"),
    ],
)
def test_requested_output_too_large_to_count_exits_2(
    tmp_path: Path, simulator: Simulator, extra: dict[str, Any], words: str
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "output.jsonl"
    big = orjson.loads(line(tag, "big"))
    big["body"].update(extra)
    path.write_bytes(line(tag, "ok") + b"\n" + orjson.dumps(big) + b"\n")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert f"{path}:2: {words}" in done.stderr, done.stderr


def test_huge_integer_priority_is_printed_as_written(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "priority.jsonl"
    huge = line(tag, "p")[:-1] + b', "priority": 1000000000000000000000000000000}'
    path.write_bytes(line(tag, "ok") + b"\n" + huge + b"\n")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert f"{path}:2: priority 1000000000000000000000000000000 is out of range" in done.stderr
    assert "e+30" not in done.stderr


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("dotenv-utf16-no-mark", "holds NUL bytes"),
        ("dotenv-binary", "is not UTF-8 text"),
        ("configs-directory", "configs/limits.toml is a directory, not a TOML file"),
    ],
)
def test_unreadable_configuration_files_exit_2_with_a_message(
    tmp_path: Path, simulator: Simulator, setup: str, words: str
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "conf.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n")
    if setup == "dotenv-utf16-no-mark":
        (tmp_path / ".env").write_bytes("TURBORUN_WORKERS=3\n".encode("utf-16-le"))
    elif setup == "dotenv-binary":
        (tmp_path / ".env").write_bytes(bytes(range(128, 256)))
    else:
        (tmp_path / "configs" / "limits.toml").mkdir(parents=True)
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator))
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert words in done.stderr, done.stderr


def test_processes_beyond_the_bound_exit_2_before_starting_any(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "procs.jsonl"
    path.write_bytes(line(tag, "ok") + b"\n")
    flags = ("--workers", "100000", "--processes", "100000")
    done = run_batch(path, tmp_path, cli_env(tmp_path, simulator), flags=flags)
    assert_refused_and_nothing_sent(done, simulator, tag, tmp_path)
    assert "--processes=100000 is more than" in done.stderr, done.stderr


def test_task_file_that_is_a_fifo_runs_every_task(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)
    lines = [line(tag, f"t{i}") for i in range(50)]
    lines.append(line(tag, "after")[:-1] + b', "depends_on": ["t0"]}')

    def feed() -> None:
        with open(fifo, "wb") as out:
            for item in lines:
                out.write(item + b"\n")

    writer = threading.Thread(target=feed, daemon=True)  # never blocks pytest from exiting
    writer.start()
    try:
        out = tmp_path / "fifo.results.jsonl"
        flags = ("--workers", "4", "-o", str(out))
        done = run_batch(fifo, tmp_path, cli_env(tmp_path, simulator), flags=flags)
    finally:
        writer.join(timeout=10)
    assert done.returncode == 0, done.stderr
    results = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in results] == [f"t{i}" for i in range(50)] + ["after"]
    assert all(r["turborun"]["status"] == "succeeded" for r in results)
    assert sent(simulator, tag) == 51
