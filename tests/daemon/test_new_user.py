"""What a new user tripped on (issue 16, part 3), each as the command they ran.

Task modules next to the command, ``async def`` tasks, unknown task names,
``pipework tasks``, a client with no daemon, ``--json`` shapes, Ctrl-C, and
the exit codes of ``status`` and ``result``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipework.service.daemon.registry import TaskRegistryError, load_tasks, task
from tests.daemon.conftest import Daemon, DaemonFactory, clean_env

RUN_TIMEOUT = 45.0
CONSOLE_SCRIPT = Path(sys.executable).with_name("pipework")

APP_TASKS = '''
from pipework import task


@task
def shout(word: str, times: int = 2) -> str:
    """Repeat a word in capitals."""
    return " ".join([word.upper()] * times)
'''


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user does (not ``python -m``)."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        cwd=cwd,
        env=clean_env(),
    )


def start_in(daemon: DaemonFactory, app: Path, *args: str) -> Daemon:
    """``pipework serve`` (the console script) started from ``app``, as a user would."""
    endpoint = daemon.endpoint(f"app{len(daemon.started)}")
    argv = [str(CONSOLE_SCRIPT), "serve", "--endpoint", endpoint, "--no-journal"]
    argv += ["--workers", "1", "--drain-timeout", "5", *args]
    out = daemon.base / f"app-{len(daemon.started)}.out"
    err = daemon.base / f"app-{len(daemon.started)}.err"
    with out.open("ab") as o, err.open("ab") as e:
        proc = subprocess.Popen(
            argv, cwd=app, env=clean_env(), stdin=subprocess.DEVNULL, stdout=o, stderr=e
        )
    d = Daemon(proc, argv, endpoint, None, out, err, 5.0)
    daemon.started.append(d)
    d.wait_ready()
    return d


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An application directory holding ``mytasks.py``, and nothing on PYTHONPATH."""
    d = tmp_path / "app"
    d.mkdir()
    (d / "mytasks.py").write_text(APP_TASKS)
    return d


pytestmark = pytest.mark.skipif(
    not CONSOLE_SCRIPT.exists(), reason="the console script is not installed in this venv"
)


# -- task modules from the current directory -------------------------------------


@pytest.mark.timeout(90)
def test_serve_imports_the_task_module_from_the_current_directory(
    daemon: DaemonFactory, app: Path
) -> None:
    d = start_in(daemon, app, "--tasks", "mytasks")
    # The worker (a forkserver child) unpickles mytasks.shout by name: it finds it too.
    done = d.run("shout", "hey")
    assert done["state"] == "done", done
    assert done["result"] == "HEY HEY"


def test_serve_help_says_the_current_directory_is_searched() -> None:
    result = cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "current directory" in " ".join(result.stdout.split())


# -- async def ---------------------------------------------------------------------


def test_task_refuses_an_async_def() -> None:
    async def fetch(url: str) -> str:
        return url

    with pytest.raises(TaskRegistryError, match="async def"):
        task(fetch)


def test_load_tasks_refuses_a_module_with_an_async_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "asynctasks_pw.py").write_text(
        "from pipework import task\n\n@task\nasync def fetch(url: str) -> str:\n    return url\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskRegistryError, match=r"'fetch'.*async def"):
        load_tasks("asynctasks_pw")
