"""Files the user did not ask to touch, and files that fail under a run (issue: faults
that ended in a traceback): the task file named as ``-o``, run names that are paths,
``--resume`` of a run that is not there, lost or damaged journals, results paths that
cannot be written, devices and FIFOs as ``-o``, a full disk while journaling, read-only
checkpoints, a checkpoint dir that is a file, a corrupt run.json or _latency.json.

Every refusal is proven to send nothing with the simulator's request log. Disk-full and
read-only cases mount a small tmpfs themselves (root only; skipped with the reason
otherwise): a read-only folder does not stop root, a read-only mount does.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import journaled
from test_cli import cli_env, results, run_cli, sent, task, turborun_cmd, write_tasks

from turborun import Runner
from turborun.config import Config
from turborun.exceptions import JournalWriteError
from turborun.simulator import Simulator

RUN = ["--workers", "4", "--no-progress"]


def tasks_file(tmp_path: Path, tag: str, count: int = 3, name: str = "t.jsonl", **kw: Any) -> Path:
    return write_tasks(tmp_path / name, [task(tag, f"q{i}", **kw) for i in range(count)])


def mount_tmpfs(where: Path, size: str) -> Path:
    """A tmpfs of ``size`` at ``where``; skips the test where mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mount refused: {done.stderr.strip()}")
    return where


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    where = mount_tmpfs(tmp_path / "small", "4m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# ---- refused before anything is sent (exit 2) ---------------------------------------


def test_output_naming_the_task_file_is_refused_and_nothing_is_sent(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    before = path.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hard.jsonl")
    env = cli_env(tmp_path, simulator)
    for spelling in (str(path), "t.jsonl", "sub/../t.jsonl", "link.jsonl", "hard.jsonl"):
        done = run_cli(["batch", "t.jsonl", "-o", spelling, *RUN], tmp_path, env)
        assert done.returncode == 2, (spelling, done.stderr)
        assert "is the task file" in done.stderr, done.stderr
    assert path.read_bytes() == before
    assert sent(simulator, tag) == []
    assert not (tmp_path / "checkpoints").exists()


def test_run_name_that_is_a_path_is_refused_and_fresh_touches_nothing_outside(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    victim = tmp_path / "x"  # what ../x names from the checkpoint dir
    (victim / "journal").mkdir(parents=True)
    (victim / "journal" / "cache.db").write_text("the user's")
    (victim / "run.json").write_text("the user's")
    env = cli_env(tmp_path, simulator)
    for name in ("../x", str(victim), "a/b", ".."):
        done = run_cli(["batch", str(path), "--fresh", "--run-name", name, *RUN], tmp_path, env)
        assert done.returncode == 2, (name, done.stderr)
        assert "is not allowed" in done.stderr and "letters, digits" in done.stderr
    assert (victim / "journal" / "cache.db").read_text() == "the user's"
    assert (victim / "run.json").read_text() == "the user's"
    assert sent(simulator, tag) == []
    status = run_cli(["status", "../x"], tmp_path, env)
    assert status.returncode == 2 and "is not allowed" in status.stderr


def test_resume_of_an_unknown_run_exits_2_naming_where_it_looked_and_the_runs_found(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag, name="nightly.jsonl")
    env = cli_env(tmp_path, simulator)
    assert run_cli(["batch", str(path), *RUN], tmp_path, env).returncode == 0
    assert len(sent(simulator, tag)) == 3
    typo = run_cli(["batch", str(path), "--resume", "--run-name", "nigthly", *RUN], tmp_path, env)
    assert typo.returncode == 2, typo.stderr
    assert str(tmp_path / "checkpoints" / "nigthly") in typo.stderr
    assert "runs there: nightly" in typo.stderr
    # from another working folder, ./checkpoints is another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env_cwd = {k: v for k, v in env.items() if k != "TURBORUN_CHECKPOINT_DIR"}
    moved = run_cli(["batch", str(path), "--resume", *RUN], elsewhere, env_cwd)
    assert moved.returncode == 2, moved.stderr
    assert str(elsewhere / "checkpoints" / "nightly") in moved.stderr
    assert "no runs there" in moved.stderr
    assert len(sent(simulator, tag)) == 3, "nothing sent again"
    assert not (tmp_path / "checkpoints" / "nigthly").exists()


def test_empty_journal_is_refused_then_run_knowingly_with_accept_lost_journal(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    assert run_cli(["batch", str(path), *RUN], tmp_path, env).returncode == 0
    db = tmp_path / "checkpoints" / "t" / "journal" / "cache.db"
    db.write_bytes(b"")  # a zero-length journal
    for flags in (["--resume"], []):
        done = run_cli(["batch", str(path), *flags, *RUN], tmp_path, env)
        assert done.returncode == 2, done.stderr
        assert "is empty (0 bytes)" in done.stderr and "--accept-lost-journal" in done.stderr
    assert len(sent(simulator, tag)) == 3, "nothing sent"
    db.unlink()  # deleted outright: the same refusal
    done = run_cli(["batch", str(path), "--resume", *RUN], tmp_path, env)
    assert done.returncode == 2 and "is missing" in done.stderr, done.stderr
    assert len(sent(simulator, tag)) == 3
    knowingly = run_cli(
        ["batch", str(path), "--resume", "--accept-lost-journal", *RUN], tmp_path, env
    )
    assert knowingly.returncode == 0, knowingly.stderr
    assert sorted(sent(simulator, tag)) == sorted(["q0", "q1", "q2"] * 2)


def test_garbage_journal_exits_2_with_a_message_and_sends_nothing(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    assert run_cli(["batch", str(path), *RUN], tmp_path, env).returncode == 0
    db = tmp_path / "checkpoints" / "t" / "journal" / "cache.db"
    db.write_bytes(os.urandom(50_000))
    done = run_cli(["batch", str(path), "--resume", *RUN], tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert "is damaged" in done.stderr and "Traceback" not in done.stderr, done.stderr
    status = run_cli(["status", "t"], tmp_path, env)
    assert status.returncode == 2 and "is damaged" in status.stderr, status.stderr
    assert len(sent(simulator, tag)) == 3


def test_results_path_that_cannot_be_written_is_refused_before_sending(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    cases = {
        "missing/out.jsonl": "does not exist",
        "a-folder": "is a folder",
        "a-file/out.jsonl": "is not a folder",
    }
    for output, why in cases.items():
        done = run_cli(["batch", str(path), "-o", output, *RUN], tmp_path, env)
        assert done.returncode == 2, (output, done.stderr)
        assert why in done.stderr, done.stderr
    assert sent(simulator, tag) == []


def test_results_in_a_read_only_folder_are_refused_before_sending(
    tmp_path: Path, simulator: Simulator, small_fs: Path
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    remount(small_fs, "ro")
    done = run_cli(
        ["batch", str(path), "-o", str(small_fs / "out.jsonl"), *RUN],
        tmp_path,
        cli_env(tmp_path, simulator),
    )
    assert done.returncode == 2, done.stderr
    assert "is not writable" in done.stderr and "Read-only file system" in done.stderr
    assert sent(simulator, tag) == []


def test_read_only_checkpoint_exits_2_with_a_message_also_from_status(
    tmp_path: Path, simulator: Simulator, small_fs: Path
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator, TURBORUN_CHECKPOINT_DIR=str(small_fs))
    assert run_cli(["batch", str(path), *RUN], tmp_path, env).returncode == 0
    remount(small_fs, "ro")
    for args in (["batch", str(path), "--resume", *RUN], ["batch", str(path), "--fresh", *RUN]):
        done = run_cli(args, tmp_path, env)
        assert done.returncode == 2, done.stderr
        assert "read-only file system" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    status = run_cli(["status", "t"], tmp_path, env)
    assert status.returncode == 2 and "read-only" in status.stderr, status.stderr
    assert "Traceback" not in status.stderr
    fresh_name = run_cli(["batch", str(path), "--run-name", "other", *RUN], tmp_path, env)
    assert fresh_name.returncode == 2 and "read-only file system" in fresh_name.stderr
    assert len(sent(simulator, tag)) == 3, "nothing sent after the first run"


def test_checkpoint_dir_that_is_a_file_exits_2_from_batch_and_status(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    afile = tmp_path / "not-a-folder"
    afile.write_text("")
    env = cli_env(tmp_path, simulator, TURBORUN_CHECKPOINT_DIR=str(afile))
    for args in (["batch", str(path), *RUN], ["status"], ["status", "t"]):
        done = run_cli(args, tmp_path, env)
        assert done.returncode == 2, (args, done.stderr)
        assert f"{afile} (TURBORUN_CHECKPOINT_DIR) is not a folder" in done.stderr
    assert sent(simulator, tag) == []


# ---- results written where asked --------------------------------------------------------


def test_dev_full_as_output_keeps_the_device_exits_4_and_resume_writes_elsewhere(
    tmp_path: Path, simulator: Simulator
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    done = run_cli(["batch", str(path), "-o", "/dev/full", *RUN], tmp_path, env)
    assert done.returncode == 4, done.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode), "the device node is still a device"
    assert "cannot write the results file /dev/full" in done.stderr
    hint = next(line for line in done.stderr.splitlines() if "--resume -o OTHER" in line)
    assert "nothing is sent again" in hint
    meta = orjson.loads((tmp_path / "checkpoints" / "t" / "run.json").read_bytes())
    assert meta["state"] == "finished" and "No space left" in meta["results_error"]
    assert sorted(sent(simulator, tag)) == ["q0", "q1", "q2"]
    out = tmp_path / "other.jsonl"
    again = run_cli(["batch", str(path), "--resume", "-o", str(out), *RUN], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert [x["turborun"]["resumed"] for x in results(out)] == [True] * 3
    assert sorted(sent(simulator, tag)) == ["q0", "q1", "q2"], "nothing sent again"


def test_fifo_output_is_written_in_place(tmp_path: Path, simulator: Simulator) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    done = run_cli(
        ["batch", str(path), "-o", str(fifo), *RUN], tmp_path, cli_env(tmp_path, simulator)
    )
    reader.join(10)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "still a FIFO"
    lines = [orjson.loads(x) for x in got[0].splitlines()]
    assert [x["custom_id"] for x in lines] == ["q0", "q1", "q2"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dev_stdout_is_written_in_place_also_when_redirected_to_a_file(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    piped = run_cli(["batch", str(path), "-o", "/dev/stdout", *RUN], tmp_path, env)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert [orjson.loads(x)["custom_id"] for x in lines[:3]] == ["q0", "q1", "q2"]
    # the shell's `> out.txt`: the results go into out.txt, followed by the summary
    out = tmp_path / "out.txt"
    command = " ".join(turborun_cmd("batch", str(path), "-o", "/dev/stdout", "--fresh", *RUN))
    shell = subprocess.run(
        f"{command} > {out}", shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert shell.returncode == 0, shell.stderr
    lines = out.read_text().splitlines()
    assert [orjson.loads(x)["custom_id"] for x in lines[:3]] == ["q0", "q1", "q2"]
    assert any("tasks 3: 3 succeeded" in x for x in lines[3:]), "the summary follows"


def test_symlinked_output_keeps_the_link_and_replaces_its_target(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "latest.jsonl"
    target.write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    done = run_cli(
        ["batch", str(path), "-o", str(link), *RUN], tmp_path, cli_env(tmp_path, simulator)
    )
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == target
    assert [x["custom_id"] for x in results(target)] == ["q0", "q1", "q2"]


# ---- a full disk while journaling ----------------------------------------------------


def test_full_disk_stops_with_one_line_exit_4_and_resume_resends_only_what_was_in_flight(
    tmp_path: Path, simulator: Simulator, small_fs: Path
) -> None:
    tag = uuid.uuid4().hex
    count = 60
    path = write_tasks(
        tmp_path / "t.jsonl", [task(tag, f"q{i:02d}", "[sim:latency=0.1]") for i in range(count)]
    )
    out = tmp_path / "out.jsonl"  # beside the full disk: the pending lines can be written
    env = cli_env(tmp_path, simulator, TURBORUN_CHECKPOINT_DIR=str(small_fs))
    args = ["batch", str(path), "-o", str(out), *RUN]
    proc = subprocess.Popen(
        turborun_cmd(*args),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(sent(simulator, tag)) < 12:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        filler = fill(small_fs)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 4, stderr
    full = [line for line in stderr.splitlines() if "disk full" in line]
    assert len(full) == 1, stderr
    assert str(small_fs / "t" / "journal") in full[0]
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    resume = next(line for line in stderr.splitlines() if "resume with:" in line)
    assert resume.rstrip().endswith("--resume"), resume
    first = set(sent(simulator, tag))
    assert len(first) < count, "the run stopped sending"
    statuses = [x["turborun"]["status"] for x in results(out)]
    assert "pending" in statuses
    meta = orjson.loads((small_fs / "t" / "run.json").read_bytes())
    assert meta["state"] == "stopped" and "disk full" in meta["journal_error"]

    filler.unlink()
    done_before = set(journaled(small_fs / "t"))
    in_flight = first - done_before  # sent, answered or not, never journaled
    assert len(in_flight) <= 4, "no more than the requests in flight at the failure"
    before = Counter(sent(simulator, tag))
    again = run_cli([*args, "--resume"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    second = Counter(sent(simulator, tag)) - before
    assert set(second.values()) == {1}
    assert set(second) == {f"q{i:02d}" for i in range(count)} - done_before
    assert first & set(second) == in_flight, "re-sent: exactly what was in flight"
    assert [x["turborun"]["status"] for x in results(out)] == ["succeeded"] * count


def test_runner_futures_fail_with_the_journal_error_when_the_disk_fills(
    tmp_path: Path, simulator: Simulator, small_fs: Path
) -> None:
    tag = uuid.uuid4().hex
    config = Config(
        checkpoint_dir=small_fs,
        base_urls={"openai": simulator.openai_base_url, "groq": simulator.base_url},
        api_keys={"openai": "sk-test", "groq": "gsk-test"},
        workers=2,
        processes=1,
        progress=False,
    )
    with Runner(config=config, checkpoint="runner") as run:
        assert run.submit(task(tag, "before")).result(timeout=60).ok
        filler = fill(small_fs)
        later = [run.submit(task(tag, f"after{i}")) for i in range(4)]
        for future in later:
            with pytest.raises(JournalWriteError) as failed:
                future.result(timeout=60)
            assert failed.value.disk_full and str(small_fs / "runner") in str(failed.value)
    filler.unlink()
    assert set(journaled(small_fs / "runner")) == {"before"}


# ---- files beside the checkpoints ------------------------------------------------------


def test_corrupt_run_json_does_not_break_status_and_the_next_run_heals_it(
    tmp_path: Path, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag)
    env = cli_env(tmp_path, simulator)
    assert run_cli(["batch", str(path), *RUN], tmp_path, env).returncode == 0
    meta = tmp_path / "checkpoints" / "t" / "run.json"
    for garbage in (b'{"state": "fini', b"[1, 2]", b"\xff\xfe"):
        meta.write_bytes(garbage)
        status = run_cli(["status", "t"], tmp_path, env)
        assert status.returncode == 0, status.stderr
        assert "run t: state unknown (run.json unreadable" in status.stdout, status.stdout
        assert "journaled 3 of ?: 3 succeeded" in status.stdout
    again = run_cli(["batch", str(path), "--resume", *RUN], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert orjson.loads(meta.read_bytes())["state"] == "finished"
    assert len(sent(simulator, tag)) == 3


@pytest.mark.parametrize(
    "content",
    [
        b'{"openai/sim-cli": {"n": "many", "sx": 0, "sy": 0, "sxx": 0, "sxy": 0}}',
        b'{"openai/sim-cli": [1, 2, 3]}',
        b"[1, 2, 3]",
        b"\x00\x01 not json",
    ],
)
def test_wrongly_typed_latency_file_is_ignored_with_a_warning_and_rewritten(
    tmp_path: Path, simulator: Simulator, content: bytes
) -> None:
    tag = uuid.uuid4().hex
    path = tasks_file(tmp_path, tag, count=10)
    env = cli_env(tmp_path, simulator)
    latency = tmp_path / "checkpoints" / "_latency.json"
    latency.parent.mkdir()
    latency.write_bytes(content)
    done = run_cli(["batch", str(path), *RUN], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert f"ignoring {latency}" in done.stderr and "Traceback" not in done.stderr
    fits = orjson.loads(latency.read_bytes())
    assert fits["openai/sim-cli"]["n"] > 9, "rewritten whole from this run (10 samples)"
    again = run_cli(["batch", str(path), "--fresh", *RUN], tmp_path, env)
    assert again.returncode == 0 and "ignoring" not in again.stderr, again.stderr
