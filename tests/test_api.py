"""The Python API as a script author uses it: what a call leaves behind, and its surface."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from pathlib import Path

import pytest

from turborun import Config, ConfigError, Runner, Status, execute_batch
from turborun.config import load_config
from turborun.journal import encode_entry

pytestmark = pytest.mark.timeout(120)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _chat(cid: str) -> dict:
    return {
        "custom_id": cid,
        "body": {
            "model": "gpt-4o-mini",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": f"hello {cid}"}],
        },
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for the caller (no .env, no configs/)."""
    folder = tmp_path / "caller"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _simulating(folder: Path) -> Config:
    flags = {"simulate": True, "progress": False, "processes": 1, "workers": 4}
    return load_config(flags, environ={}, cwd=folder)


def test_config_cannot_be_changed_in_place(workdir: Path) -> None:
    config = _simulating(workdir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.via = "batch"  # type: ignore[misc]
    assert dataclasses.replace(config, via="batch").via == "batch"
    assert config.via == "live"


def test_execute_batch_leaves_the_callers_config_as_it_was(workdir: Path) -> None:
    config = _simulating(workdir)
    before = copy.deepcopy(config)
    result = execute_batch([_chat("a"), _chat("b")], config=config)
    assert result.success_rate == 1.0
    assert result.results["a"].text  # answered by the run's simulator
    assert config == before
    assert config.base_urls == {} and config.api_keys == {}
    # The same config runs again: nothing points at the first run's simulator, now gone.
    assert execute_batch([_chat("c")], config=config).success_rate == 1.0


def test_a_run_without_a_checkpoint_name_leaves_the_working_directory_untouched(
    workdir: Path,
) -> None:
    before = _listing(workdir)
    assert before == []
    result = execute_batch([_chat("a"), _chat("b")], config=_simulating(workdir))
    assert result.success_rate == 1.0
    with Runner(config=_simulating(workdir)) as run:
        assert run.submit(_chat("c")).result(timeout=60).status == "succeeded"
    assert _listing(workdir) == before
    assert not os.path.exists(workdir / "checkpoints")


def test_every_setting_load_config_takes_is_a_typed_keyword_of_execute_batch(
    workdir: Path,
) -> None:
    from turborun.config import FLAG_NAMES, Settings

    names = set(Settings.__optional_keys__)
    assert names | {"progress"} == set(FLAG_NAMES) | {"simulate", "progress", "cancel_on_interrupt"}
    load_config(dict.fromkeys(names), environ={}, cwd=workdir)  # none refused
    for function in (execute_batch, Runner.__init__):
        signature = inspect.signature(function)
        kinds = {p.name: p.kind for p in signature.parameters.values()}
        assert kinds.pop("settings") is inspect.Parameter.VAR_KEYWORD
        assert signature.parameters["settings"].annotation == "Unpack[Settings]"
        assert not names & set(kinds)  # no setting shadowed by a parameter
        named = [n for n, kind in kinds.items() if n not in ("tasks", "self")]
        assert all(kinds[n] is inspect.Parameter.KEYWORD_ONLY for n in named)


def test_a_misspelt_setting_is_refused_before_anything_runs(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="wrokers"):
        execute_batch([_chat("a")], simulate=True, wrokers=4)  # type: ignore[call-arg]
    assert _listing(workdir) == []


def test_status_members_are_the_journals_words(workdir: Path) -> None:
    result = execute_batch([_chat("a")], config=_simulating(workdir))
    status = result.results["a"].status
    assert status is Status.SUCCEEDED and status == "succeeded"
    # What reaches the journal, run.json and the results file is the plain text.
    assert encode_entry({"status": status}) == b'{"status":"succeeded"}'
    assert [s.value for s in Status] == ["succeeded", "failed", "skipped", "pending"]
