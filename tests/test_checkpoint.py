"""The checkpoint: a journal that survives kill -9 and never evicts, the run lock,
refusal without --resume, --resume with nothing to resume, --fresh (turborun's files
only), run names, damaged or lost journals, meta, and reading a run from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import diskcache
import orjson
import pytest

from turborun.checkpoint import (
    Checkpoint,
    Journal,
    default_run_name,
    list_runs,
    meta_problem,
    open_journal_readonly,
    read_meta,
    remove_stale_temp,
)
from turborun.exceptions import (
    CheckpointDamaged,
    CheckpointError,
    CheckpointExists,
    CheckpointLocked,
    CheckpointNotFound,
)

REPO = Path(__file__).resolve().parents[1]


def entry(i: int, status: str = "succeeded", body: bytes | None = None) -> dict[str, Any]:
    if body is None and status == "succeeded":
        body = orjson.dumps(
            {"id": f"chatcmpl-{i}", "choices": [{"message": {"content": f"answer {i}"}}]}
        )
    return {
        "status": status,
        "fingerprint": f"fp{i}",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "attempts": 1,
        "status_code": 200 if status == "succeeded" else None,
        "request_id": f"req_{i}",
        "body": body,
        "text": f"answer {i}",
        "error": None if status == "succeeded" else {"code": "timeout", "message": "late"},
        "input_tokens": 9,
        "output_tokens": 3,
        "cached_tokens": 0,
        "cost_usd": 0.0001,
        "latency_s": 0.5,
        "queued_s": 0.01,
        "finished_at": 1.0,
    }


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """A real Python process running ``code``, reporting on its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.stdout is not None
    child.stdout.close()


# --- journal -------------------------------------------------------------------------

WRITER = """
    import sys, orjson
    from pathlib import Path
    from turborun.checkpoint import Journal
    journal = Journal(Path(sys.argv[1]))
    i = 0
    while True:
        group = []
        for _ in range(50):
            body = orjson.dumps({"n": i, "pad": "x" * 400})
            group.append((f"q{i}", {"status": "succeeded", "body": body, "n": i}))
            i += 1
        journal.record_many(group)
        print(group[-1][0], flush=True)  # acknowledged: every id up to this one
"""


def test_journal_keeps_every_acknowledged_entry_when_its_writer_is_killed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "journal"
    for _trial in range(5):
        child = spawn(WRITER, str(directory))
        assert child.stdout is not None
        acknowledged = -1
        for line in child.stdout:
            acknowledged = int(line.strip()[1:])
            if acknowledged >= 3000:
                break
        kill(child)  # in the middle of the next group commits
        journal = Journal(directory)
        try:
            for i in range(acknowledged + 1):
                got = journal.get(f"q{i}")
                assert got is not None, f"acknowledged q{i} lost"
                assert got["body"] == {"n": i, "pad": "x" * 400}
            assert sum(1 for _ in journal.entries()) == len(journal)
        finally:
            journal.close()


def test_journal_is_opened_without_eviction_and_keeps_values_in_sqlite(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.settings["eviction_policy"] == "none"
    assert journal.settings["disk_min_file_size"] == 2**30
    assert journal.settings["sqlite_synchronous"] == 1
    journal.record_many([("big", entry(0, body=orjson.dumps({"x": "y" * 200_000})))])
    journal.close()
    # The settings persist in the cache itself: a plain open sees them too.
    plain = diskcache.Cache(str(tmp_path / "journal"))
    try:
        assert plain.eviction_policy == "none"
    finally:
        plain.close()
    assert [p.name for p in (tmp_path / "journal").iterdir() if p.is_dir()] == []


def test_journal_returns_bodies_parsed_and_non_json_bodies_as_text(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    failed_html = entry(2, status="failed", body=b"<html>502 Bad Gateway</html>")
    failed_json = entry(3, status="failed", body=b'{"error": {"message": "bad"}}')
    journal.record_many(
        [
            ("ok", entry(1)),
            ("html", failed_html),
            ("json", failed_json),
            ("none", entry(4, status="skipped")),
        ]
    )
    assert journal.get("ok")["body"] == {
        "id": "chatcmpl-1",
        "choices": [{"message": {"content": "answer 1"}}],
    }
    assert journal.get("html")["body"] == "<html>502 Bad Gateway</html>"
    assert journal.get("json")["body"] == {"error": {"message": "bad"}}
    assert journal.get("none")["body"] is None
    assert journal.get("missing") is None
    journal.close()


def test_journal_lists_counts_and_clears(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record_many([(f"s{i}", entry(i)) for i in range(5)])
    journal.record_many([(f"f{i}", entry(i, status="failed")) for i in range(2)])
    journal.record_many([("s0", entry(99, status="failed"))])  # a rerun replaces its entry
    assert len(journal) == 7
    assert journal.counts() == {"succeeded": 4, "failed": 3}
    got = dict(journal.entries())
    assert set(got) == {"s0", "s1", "s2", "s3", "s4", "f0", "f1"}
    assert got["s0"]["fingerprint"] == "fp99"
    assert got["s1"]["body"]["id"] == "chatcmpl-1"
    journal.clear()
    assert len(journal) == 0
    assert list(journal.entries()) == []
    journal.close()


def test_journal_entries_reads_more_than_one_chunk(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record_many([(f"q{i}", {"status": "succeeded", "i": i}) for i in range(4500)])
    seen = {cid: e["i"] for cid, e in journal.entries()}
    assert seen == {f"q{i}": i for i in range(4500)}
    journal.close()


def test_journal_get_many_answers_in_the_asked_order_with_none_for_missing(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record_many([(f"q{i}", {"status": "succeeded", "i": i}) for i in range(0, 1200, 2)])
    asked = [f"q{i}" for i in reversed(range(1200))] + ["q0"]  # several queries, a repeat
    got = list(journal.get_many(asked))
    assert [cid for cid, _ in got] == asked
    for cid, entry in got:
        i = int(cid[1:])
        assert entry == ({"status": "succeeded", "i": i} if i % 2 == 0 else None)
    assert list(journal.get_many([])) == []
    journal.close()


# --- checkpoint folder ---------------------------------------------------------------

HOLDER = """
    import sys, time
    from pathlib import Path
    from turborun.checkpoint import Checkpoint
    checkpoint = Checkpoint.open(Path(sys.argv[1]), "run", resume=False, fresh=False)
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_opener_is_refused_naming_the_holders_pid_until_the_holder_is_killed(
    tmp_path: Path,
) -> None:
    holder = spawn(HOLDER, str(tmp_path))
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointLocked) as refused:
            Checkpoint.open(tmp_path, "run", resume=True, fresh=False)
        assert refused.value.pid == holder.pid
        assert str(holder.pid) in str(refused.value)
    finally:
        kill(holder)
    with Checkpoint.open(tmp_path, "run", resume=True, fresh=False) as checkpoint:
        assert (checkpoint.folder / "lock").read_text().strip() == str(os.getpid())


def test_lock_is_free_after_close(tmp_path: Path) -> None:
    first = Checkpoint.open(tmp_path, "run", resume=False, fresh=False)
    with pytest.raises(CheckpointLocked):
        Checkpoint.open(tmp_path, "run", resume=True, fresh=False)
    first.close()
    first.close()  # idempotent
    Checkpoint.open(tmp_path, "run", resume=True, fresh=False).close()


def test_checkpoint_with_results_is_refused_without_resume(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1)), ("b", entry(2))])
    with pytest.raises(CheckpointExists) as refused:
        Checkpoint.open(tmp_path, "run", resume=False, fresh=False)
    assert refused.value.count == 2
    assert "--resume" in str(refused.value) and "--fresh" in str(refused.value)
    # The refusal released the lock: resuming works at once and keeps the entries.
    with Checkpoint.open(tmp_path, "run", resume=True, fresh=False) as checkpoint:
        assert len(checkpoint.journal) == 2


def test_empty_checkpoint_is_not_refused(tmp_path: Path) -> None:
    Checkpoint.open(tmp_path, "run", resume=False, fresh=False).close()
    Checkpoint.open(tmp_path, "run", resume=False, fresh=False).close()


def test_new_checkpoint_starts_empty(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path / "nowhere", "run", resume=False, fresh=False) as checkpoint:
        assert checkpoint.folder == tmp_path / "nowhere" / "run"
        assert len(checkpoint.journal) == 0
        assert checkpoint.read_meta() == {}
        assert checkpoint.log_path == checkpoint.folder / "run.log"


def test_resume_without_a_checkpoint_is_refused_naming_where_it_looked_and_the_runs_there(
    tmp_path: Path,
) -> None:
    with pytest.raises(CheckpointNotFound) as refused:
        Checkpoint.open(tmp_path / "nowhere", "run", resume=True, fresh=False)
    assert str(tmp_path / "nowhere" / "run") in str(refused.value)
    assert "no runs there" in str(refused.value)
    assert not (tmp_path / "nowhere").exists(), "a refused resume creates nothing"
    for name in ("nightly", "weekly"):
        Checkpoint.open(tmp_path, name, resume=False, fresh=False).close()
    with pytest.raises(CheckpointNotFound) as refused:
        Checkpoint.open(tmp_path, "nightyl", resume=True, fresh=False)
    assert refused.value.runs == ["nightly", "weekly"]
    assert "runs there: nightly, weekly" in str(refused.value)
    assert not (tmp_path / "nightyl").exists()
    Checkpoint.open(tmp_path, "nightly", resume=True, fresh=False).close()


def test_fresh_discards_journal_and_meta(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1))])
        checkpoint.write_meta({"state": "finished"})
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=True) as checkpoint:
        assert len(checkpoint.journal) == 0
        assert checkpoint.journal.get("a") is None
        assert checkpoint.read_meta() == {}
        assert checkpoint.journal.settings["eviction_policy"] == "none"


def test_meta_is_replaced_whole(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.write_meta({"state": "running", "pid": os.getpid(), "total": 3})
        checkpoint.write_meta({"state": "finished", "total": 3})
        assert checkpoint.read_meta() == {"state": "finished", "total": 3}
        assert sorted(p.name for p in checkpoint.folder.iterdir()) == [
            "journal",
            "lock",
            "run.json",
        ]


def test_status_reads_a_running_checkpoint_without_its_lock(tmp_path: Path) -> None:
    assert open_journal_readonly(tmp_path, "run") is None
    assert list_runs(tmp_path) == []
    assert list_runs(tmp_path / "absent") == []
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.write_meta({"state": "running", "total": 3})
        checkpoint.journal.record_many([("a", entry(1)), ("b", entry(2, status="failed"))])
        opened = open_journal_readonly(tmp_path, "run")
        assert opened is not None
        meta, journal = opened
        try:
            assert meta == {"state": "running", "total": 3}
            assert journal.counts() == {"succeeded": 1, "failed": 1}
        finally:
            journal.close()
        checkpoint.journal.record_many([("c", entry(3))])  # the run goes on writing
    Checkpoint.open(tmp_path, "other", resume=False, fresh=False).close()
    (tmp_path / "stray-file").write_text("")
    assert list_runs(tmp_path) == ["other", "run"]


# --- names, what --fresh removes, damaged journals -----------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "/tmp/x", "a/b", "..", ".", ".hidden", "", "-x", "a b", "x" * 129, "é"]
)
def test_run_name_is_a_name_not_a_path(tmp_path: Path, name: str) -> None:
    root = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError) as refused:
        Checkpoint.open(root, name, resume=False, fresh=True)
    assert "letters, digits" in str(refused.value), "the message says what is allowed"
    assert list(tmp_path.iterdir()) == [], "nothing created, inside or outside"
    with pytest.raises(CheckpointError):
        open_journal_readonly(root, name)


def test_allowed_run_names_open(tmp_path: Path) -> None:
    for name in ("a", "nightly-2026.11.30_v2", "X" * 128):
        Checkpoint.open(tmp_path, name, resume=False, fresh=False).close()


@pytest.mark.parametrize(
    ("tasks", "name"),
    [
        ("essay.jsonl", "essay"),
        ("my tasks (1).jsonl", "my_tasks__1_"),
        (".hidden.jsonl", "hidden"),
        ("....jsonl", "run"),
        ("plain", "plain"),
    ],
)
def test_default_run_name_is_the_task_file_name_made_safe(tasks: str, name: str) -> None:
    assert default_run_name(Path("/somewhere") / tasks) == name


def test_fresh_removes_only_what_turborun_made(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1))])
        checkpoint.write_meta({"state": "finished", "succeeded": 1})
    folder = tmp_path / "run"
    mine = {
        folder / "notes.txt": "keep",
        folder / "journal" / "notes.txt": "keep too",
        folder / "journal" / "ab" / "readme": "and this",
    }
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=True) as checkpoint:
        assert len(checkpoint.journal) == 0 and checkpoint.read_meta() == {}
    for path, text in mine.items():
        assert path.read_text() == text


def test_zero_byte_journal_is_refused_unless_accepted(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1))])
        checkpoint.write_meta({"state": "running", "total": 5})
    (tmp_path / "run" / "journal" / "cache.db").write_bytes(b"")
    for resume in (True, False):
        with pytest.raises(CheckpointDamaged) as refused:
            Checkpoint.open(tmp_path, "run", resume=resume, fresh=False)
        assert "empty (0 bytes)" in str(refused.value)
        assert "--accept-lost-journal" in str(refused.value) and "--fresh" in str(refused.value)
    with Checkpoint.open(
        tmp_path, "run", resume=True, fresh=False, accept_lost_journal=True
    ) as checkpoint:
        assert len(checkpoint.journal) == 0


def test_missing_journal_beside_run_json_is_refused(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1))])
        checkpoint.write_meta({"state": "running", "total": 5})
    for victim in ("journal/cache.db", "journal"):
        path = tmp_path / "run" / victim
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
        with pytest.raises(CheckpointDamaged) as refused:
            Checkpoint.open(tmp_path, "run", resume=True, fresh=False)
        assert "is missing" in str(refused.value) and "run.json" in str(refused.value)


def test_empty_journal_is_refused_when_run_json_records_work_done(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.write_meta({"state": "finished", "total": 5, "succeeded": 4, "failed": 1})
    with pytest.raises(CheckpointDamaged) as refused:
        Checkpoint.open(tmp_path, "run", resume=True, fresh=False)
    assert "records 5 tasks done" in str(refused.value)
    # A run killed before its first commit is a checkpoint with nothing done: accepted.
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=True) as checkpoint:
        checkpoint.write_meta({"state": "running", "total": 5})
    Checkpoint.open(tmp_path, "run", resume=True, fresh=False).close()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_journal_is_refused_with_a_message(tmp_path: Path, damage: str) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many(
            [(f"k{i}", entry(i, body=b'{"x": "' + b"y" * 500 + b'"}')) for i in range(2000)]
        )
    db = tmp_path / "run" / "journal" / "cache.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    else:
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 2)
    with pytest.raises(CheckpointDamaged) as refused:
        checkpoint = Checkpoint.open(tmp_path, "run", resume=True, fresh=False)
        try:  # a truncated file may open and fail on the first read of its entries
            list(checkpoint.journal.entries())
        finally:
            checkpoint.close()
    assert "is damaged" in str(refused.value) and "--fresh" in str(refused.value)
    # the refusal let go of the lock
    Checkpoint.open(tmp_path, "run", resume=False, fresh=True).close()


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("")
    with pytest.raises(CheckpointError, match="is not a folder"):
        Checkpoint.open(root, "run", resume=False, fresh=False)
    with pytest.raises(CheckpointError, match="is not a folder"):
        open_journal_readonly(root, "run")


def test_corrupt_run_json_reads_as_empty_and_says_why(tmp_path: Path) -> None:
    with Checkpoint.open(tmp_path, "run", resume=False, fresh=False) as checkpoint:
        checkpoint.journal.record_many([("a", entry(1))])
    (tmp_path / "run" / "run.json").write_bytes(b'{"state": "runn')
    assert read_meta(tmp_path / "run") == {}
    assert "not JSON" in (meta_problem(tmp_path / "run") or "")
    with Checkpoint.open(tmp_path, "run", resume=True, fresh=False) as checkpoint:
        checkpoint.write_meta({"state": "finished"})  # a run heals it
    assert meta_problem(tmp_path / "run") is None


def test_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".run.json.{dead.stdout.strip()}.tmp"
    live = tmp_path / f".run.json.{os.getppid()}.tmp"
    other = tmp_path / ".other.123.tmp"
    for path in (stale, live, other):
        path.write_text("x")
    remove_stale_temp(tmp_path, "run.json")
    assert not stale.exists() and live.exists() and other.exists()
