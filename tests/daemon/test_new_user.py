"""What a new user tripped on (issue 16, part 3), each as the command they ran.

Task modules next to the command, ``async def`` tasks, unknown task names,
``pipework tasks``, a client with no daemon, ``--json`` shapes, Ctrl-C, and
the exit codes of ``status`` and ``result``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipework import AsyncClient, Client
from pipework.protocol.errors import Unavailable
from pipework.service.daemon.registry import TaskRegistryError, load_tasks, task
from pipework.service.daemon.task_output import run_task
from tests.daemon.web import fetch
from tests.support.daemons import Daemon, DaemonFactory
from tests.support.net import free_port
from tests.support.processes import clean_env

RUN_TIMEOUT = 45.0
CONSOLE_SCRIPT = Path(sys.executable).with_name("pipework")

APP_TASKS = '''
import os
import signal
import sys

from pipework import task


@task
def shout(word: str, times: int = 2) -> str:
    """Repeat a word in capitals."""
    return " ".join([word.upper()] * times)


@task
def chatty(word: str) -> int:
    print("said", word)
    print("twice", word, flush=True)
    sys.stderr.write("complained " + word + "\\n")
    print("no newline at the end", end="")
    return 3


@task
def boom(message: str) -> None:
    raise ValueError(message)


@task
def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
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


@pytest.mark.timeout(120)
def test_daemon_logs_name_the_task_and_wrap_its_output(daemon: DaemonFactory, app: Path) -> None:
    d = start_in(daemon, app, "--tasks", "mytasks", "--log-format", "json")
    said = d.run("chatty", "hello")
    assert said["state"] == "done", said
    failed = d.run("boom", "no such file: a.png")
    assert failed["state"] == "failed", failed
    lost = d.run("die", retries=1)
    assert lost["state"] == "quarantined", lost
    message = lost["error"]["message"]
    assert "died on each of its 2 attempts; last: worker pid" in message
    assert "attempt 1" not in message, message
    assert "running task" not in message, message  # the pool's own task number
    d.stop()

    lines = d.stderr_path.read_text().splitlines()
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a raw line in the JSON log stream: {line!r}")
    output = [e for e in events if e["event"] == "task output"]
    assert {(e["stream"], e["line"]) for e in output} == {
        ("stdout", "said hello"),
        ("stdout", "twice hello"),
        ("stderr", "complained hello"),
        ("stdout", "no newline at the end"),
    }
    assert {e["task_id"] for e in output} == {said["task_id"]}
    finished = [e for e in events if e["event"] == "task finished"]
    boom_line = next(e for e in finished if e["task_id"] == failed["task_id"])
    assert boom_line["error_type"] == "ValueError"
    assert boom_line["error"] == "no such file: a.png"
    deaths = [e for e in events if e["event"] == "worker died running a task"]
    assert len(deaths) == 2, deaths
    assert {e["task_id"] for e in deaths} == {lost["task_id"]}


@pytest.mark.timeout(60)
def test_spawned_workers_find_a_module_from_the_current_directory(app: Path) -> None:
    # -P: no script directory or cwd on sys.path, as under the console script.
    script = (
        "import sys\n"
        "from pipework.service.daemon.registry import import_from_cwd, load_tasks\n"
        "from pipework import WorkerService\n"
        "import_from_cwd()\n"
        "shout = load_tasks('mytasks')['shout']\n"
        "with WorkerService(1, start_method='spawn') as pool:\n"
        "    print(pool.submit(shout, 'spawn', 1).result(timeout=30))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-P", "-c", script],
        cwd=app,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "SPAWN"


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


# -- the client commands against one daemon ----------------------------------------


@pytest.fixture(scope="module")
def served(module_daemons: DaemonFactory) -> Daemon:
    """One daemon with the test tasks, shared by the command tests below."""
    return module_daemons()


def pw(d: Daemon | str, *args: str) -> subprocess.CompletedProcess[str]:
    endpoint = d if isinstance(d, str) else d.endpoint
    return cli(*args, "--endpoint", endpoint)


def json_of(ran: subprocess.CompletedProcess[str]) -> Any:
    assert ran.stdout.count("\n") == 1, f"not one JSON line: {ran.stdout!r} {ran.stderr!r}"
    return json.loads(ran.stdout)


def test_submit_of_an_unknown_name_shows_the_registered_ones(served: Daemon) -> None:
    ran = pw(served, "submit", "nosuch", "1")
    assert ran.returncode == 4, ran
    assert "unknown_task" in ran.stderr
    names = ran.stderr.split("the daemon runs:", 1)[1]
    assert "add" in names
    assert "echo" in names
    assert "pipework tasks" in names


def test_tasks_lists_the_registered_names_with_signatures(served: Daemon) -> None:
    ran = pw(served, "tasks")
    assert ran.returncode == 0, ran
    assert "add(a: float, b: float) -> float" in ran.stdout
    listed = json_of(pw(served, "tasks", "--json"))
    by_name = {t["name"]: t for t in listed}
    assert by_name["add"]["signature"] == "(a: float, b: float) -> float"
    assert set(by_name) >= {"add", "echo", "fail", "gate", "sleep"}
    assert [t["name"] for t in listed] == sorted(by_name)


def test_json_is_one_task_shape_for_submit_status_result_cancel(served: Daemon) -> None:
    queued = json_of(pw(served, "submit", "add", "2", "3", "--json"))
    waited = json_of(pw(served, "submit", "add", "2", "4", "--wait", "20", "--json"))
    status = json_of(pw(served, "status", waited["task_id"], "--json"))
    result = json_of(pw(served, "result", waited["task_id"], "--json"))
    assert queued["duplicate"] is False
    assert waited["duplicate"] is False
    assert waited["result"] == 6
    assert set(queued) == set(waited)
    assert set(status) == set(result) == set(waited) - {"duplicate"}
    cancelled = json_of(pw(served, "cancel", waited["task_id"], "--json"))
    assert cancelled["cancelled"] is False  # it had finished
    assert set(cancelled) - {"cancelled"} == set(status)
    assert "ok" not in waited


def test_json_errors_go_to_stdout_too(served: Daemon, tmp_path: Path) -> None:
    missing = pw(served, "result", "0" * 32, "--wait", "1", "--json")
    assert missing.returncode == 4, missing
    assert json_of(missing)["ok"] is False
    assert json_of(missing)["error"]["code"] == "not_found"

    held = json_of(pw(served, "submit", "sleep", "30", "--json"))
    ran_out = pw(served, "result", held["task_id"], "--wait", "0.2", "--json")
    assert ran_out.returncode == 5, ran_out
    error = json_of(ran_out)["error"]
    assert error["code"] == "timeout"
    assert error["detail"]["task"]["task_id"] == held["task_id"]
    assert pw(served, "cancel", held["task_id"]).returncode == 0

    unknown = json_of(pw(served, "submit", "nosuch", "--json"))
    assert unknown["error"]["code"] == "unknown_task"
    assert "add" in unknown["error"]["detail"]["registered"]

    bad = pw(served, "submit", "add", "--kwargs", "not json", "--json")
    assert bad.returncode == 2, bad
    assert json_of(bad)["error"]["code"] == "usage"
    flag = pw(served, "stats", "--no-such-flag", "--json")
    assert flag.returncode == 2, flag
    assert json_of(flag)["error"]["code"] == "usage"

    nobody = pw(f"ipc://{tmp_path}/nobody.sock", "stats", "--json")
    assert nobody.returncode == 3, nobody
    assert json_of(nobody)["error"]["code"] == "unavailable"


def test_status_and_result_agree_on_a_failed_task(served: Daemon) -> None:
    failed = pw(served, "submit", "fail", "boom", "--wait", "20", "--json")
    assert failed.returncode == 1, failed
    task_id = json_of(failed)["task_id"]
    assert pw(served, "result", task_id).returncode == 1
    assert pw(served, "status", task_id).returncode == 1
    done = json_of(pw(served, "submit", "add", "1", "1", "--wait", "20", "--json"))
    assert pw(served, "status", done["task_id"]).returncode == 0
    assert pw(served, "result", done["task_id"]).returncode == 0


def test_stats_prints_uptime_with_a_unit(served: Daemon) -> None:
    ran = pw(served, "stats")
    assert ran.returncode == 0, ran
    uptime = next(line for line in ran.stdout.splitlines() if "uptime" in line)
    assert uptime.split(":", 1)[1].strip().split()[-1] in {"s", "min"}, uptime


# -- no daemon ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_client_without_a_daemon_fails_at_once_naming_the_missing_socket(
    tmp_path: Path,
) -> None:
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    # A 10 s timeout with 2 resends waited 30 s before; the pytest bound is 30 s.
    with Client(endpoint, timeout=10.0) as client, pytest.raises(Unavailable) as caught:
        client.stats()
    assert "does not exist" in caught.value.message
    assert caught.value.waited == 0.0

    async def ask() -> None:
        async with AsyncClient(endpoint, timeout=10.0) as aclient:
            await aclient.stats()

    with pytest.raises(Unavailable, match="does not exist"):
        asyncio.run(ask())

    ran = cli("stats", "--endpoint", endpoint, "--timeout", "20")
    assert ran.returncode == 3, ran
    assert "does not exist" in ran.stderr


# -- Ctrl-C ----------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_ctrl_c_on_result_wait_exits_without_a_traceback(tmp_path: Path) -> None:
    # A ROUTER that never answers stands in for a daemon holding the wait.
    endpoint = f"ipc://{tmp_path}/silent.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    try:
        proc = subprocess.Popen(
            [str(CONSOLE_SCRIPT), "result", "0" * 32, "--wait", "30", "--endpoint", endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            assert router.poll(20_000), "the command never sent its request"
            router.recv_multipart()  # it is waiting for the reply now
            os.kill(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    finally:
        router.close(linger=0)
        ctx.term()
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in err


# -- the status page and `pipework status`: one source ----------------------------------


@pytest.mark.timeout(120)
def test_status_page_and_cli_list_the_same_failures_across_a_restart(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.sqlite"
    first = daemon(journal=journal)
    failed = first.run("fail", "before the restart")
    assert failed["state"] == "failed", failed
    first.stop()

    port = free_port()
    again = daemon("--status-port", str(port), journal=journal)
    page = json.loads(fetch(port, "/status.json").body)
    on_page = [f["task_id"] for f in page["failures"]]
    assert failed["task_id"] in on_page
    shown = json_of(pw(again, "status", "--json"))
    assert [f["task_id"] for f in shown["failures"]] == on_page[: len(shown["failures"])]
    listed = next(f for f in page["failures"] if f["task_id"] == failed["task_id"])
    assert listed["error"]["message"] == "before the restart"


# -- a task's prints, in process ------------------------------------------------------


def _noisy(word: str) -> int:
    print("one", word)
    print("two", file=sys.stderr)
    sys.stdout.fileno()  # libraries ask for it: it must not raise
    return 7


def test_run_task_turns_prints_into_events_and_restores_the_streams(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = sys.stdout, sys.stderr
    assert run_task("t" * 32, "noisy", True, _noisy, ["x"], {}) == 7
    assert (sys.stdout, sys.stderr) == before
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(e["stream"], e["line"], e["task_id"]) for e in events] == [
        ("stdout", "one x", "t" * 32),
        ("stderr", "two", "t" * 32),
    ]
    with pytest.raises(ZeroDivisionError):
        run_task("u" * 32, "boom", False, divmod, [1, 0], {})
    assert (sys.stdout, sys.stderr) == before
