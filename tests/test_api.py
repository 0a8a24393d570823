"""The Python API as a script author uses it: what a call leaves behind, and its surface."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest

from turborun import Config, Runner, execute_batch
from turborun.config import load_config

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
