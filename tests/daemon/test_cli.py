"""The ``pipework`` command line, run as a real process the way a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipework.service.cli.parsing import main

# Below the per-test pytest-timeout, so a hang fails here with the output so far.
RUN_TIMEOUT = 45.0


def pipework_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m pipework``."""
    script = Path(sys.executable).with_name("pipework")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pipework"]


def run(args: list[str], command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or pipework_command()), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_demo_shows_every_scene_and_exits_0() -> None:
    result = run(["demo", "--pool"])
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert "submit + as_completed" in out
    assert "chunksize=10" in out
    assert "WorkerLost(" in out
    assert "signal=SIGKILL" in out
    assert "attempt=1" in out
    assert "retry success" in out
    assert "TaskTimeout(" in out
    assert "timeout=0.5" in out
    assert "demo done: every check held" in out
    assert "UNEXPECTED" not in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [None, [sys.executable, "-m", "pipework"]],
    ids=["console-script", "python-m"],
)
def test_help_lists_demo(command: list[str] | None) -> None:
    result = run(["--help"], command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pipework")
    assert "demo" in result.stdout


def test_unknown_subcommand_exits_2() -> None:
    result = run(["no-such-command"])
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_no_subcommand_exits_2() -> None:
    result = run([])
    assert result.returncode == 2
    assert "usage: pipework" in result.stderr


def test_main_returns_exit_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["demo", "--no-such-flag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
