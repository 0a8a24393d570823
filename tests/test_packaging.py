"""The built wheel: what it ships, and a run of the installed package from a folder
outside the repository prices its answers (the prices are package data)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=240,
    )
    (found,) = out.glob("turborun-*.whl")
    return found


def test_the_wheel_ships_the_prices_and_the_typing_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "turborun/data/pricing.toml" in names
    assert "turborun/py.typed" in names
    assert "turborun/cli.py" in names
    assert not any(name.startswith(("tests/", "scripts/", "examples/")) for name in names)


def test_an_installed_wheel_prices_a_run_outside_the_repository(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from this interpreter's site-packages, added as a plain path:
    # its .pth files (this checkout's editable install among them) are not processed,
    # so the only turborun the new environment sees is the wheel's.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        timeout=240,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import turborun; print(turborun.__file__)"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    tasks = work / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"t{i}",
                    "body": {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"question {i}"}],
                        "max_tokens": 20,
                    },
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    run = subprocess.run(
        [
            str(python),
            "-m",
            "turborun",
            "batch",
            str(tasks),
            "--simulate",
            "--no-progress",
            "-o",
            str(work / "out.jsonl"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in (work / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    costs = [line["turborun"]["cost_usd"] for line in lines]
    assert all(isinstance(cost, float) and cost > 0 for cost in costs), costs
    assert not (work / "configs").exists()
