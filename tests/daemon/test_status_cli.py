"""``pipework status`` without a task id: the daemon at a glance, run as a user runs it.

A daemon with one worker held by a ``gate`` task, one idle worker, a failed
task (its message looks like HTML) and a quarantined crash; the command must
show all of it, as text and as JSON, once or with ``--watch`` until Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipework.service.cli.overview import render
from tests.support.daemons import Daemon, DaemonFactory
from tests.support.processes import REPO, clean_env, run_pipework
from tests.support.waiting import wait_until

MESSAGE = "<b>not bold</b>\nsecond line"


def _cli(endpoint: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_pipework(*args, env={"PIPEWORK_ENDPOINT": endpoint}, timeout=timeout)


@dataclass
class Held:
    daemon: Daemon
    gate_id: str
    failed_id: str
    crashed_id: str


@pytest.fixture(scope="module")
def held(module_daemons: DaemonFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    tmp = tmp_path_factory.mktemp("status-cli")
    d = module_daemons()
    failed = d.run("fail", MESSAGE)["task_id"]
    crashed = d.run("crash", retries=0)["task_id"]
    wait_until(lambda: len(d.workers()) == 2, 20, "both workers up after the crash")
    mark, gate = tmp / "started", tmp / "open"
    gate_id = d.submit("gate", str(gate), 60, str(mark))["task_id"]
    wait_until(mark.exists, 20, "the gate task started")
    yield Held(d, gate_id, failed, crashed)
    gate.touch()


def test_status_shows_the_daemon_at_a_glance(held: Held) -> None:
    ran = _cli(held.daemon.endpoint, "status")
    assert ran.returncode == 0, ran
    out = ran.stdout
    assert out.startswith("pipework 0.1.0 · up ")
    assert "journal on" in out
    assert "1 of 2 busy" in out
    gate_line = next(line for line in out.splitlines() if held.gate_id in line)
    assert "gate" in gate_line
    assert "local" in gate_line
    assert "idle" in out
    assert "failed 1" in out
    assert "quarantined 1" in out
    assert "TaskFailure: <b>not bold</b> second line" in out  # one line, text as it is
    assert "WorkerLost: worker pid" in out
    assert out.index("WorkerLost") < out.index("TaskFailure")  # newest first


def test_status_json_is_the_gathered_data(held: Held) -> None:
    ran = _cli(held.daemon.endpoint, "status", "--json")
    assert ran.returncode == 0, ran
    data = json.loads(ran.stdout)
    assert set(data) == {"stats", "workers", "failures"}
    assert data["stats"]["running"] == 1
    assert [w["task_id"] for w in data["workers"] if w["task_id"]] == [held.gate_id]
    assert [f["task_id"] for f in data["failures"]] == [held.crashed_id, held.failed_id]
    assert data["failures"][1]["error"]["message"] == MESSAGE
    assert "Traceback" in data["failures"][1]["error"]["traceback"]


def test_status_watch_redraws_until_ctrl_c(held: Held) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipework",
            "status",
            "--watch",
            "0.2",
            "--json",
        ],
        cwd=REPO,
        env=clean_env({"PIPEWORK_ENDPOINT": held.daemon.endpoint}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        frames = [proc.stdout.readline() for _ in range(3)]
        assert all(json.loads(f)["workers"] for f in frames), frames
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.communicate()


def test_status_with_a_task_id_still_shows_that_task(held: Held) -> None:
    ran = _cli(held.daemon.endpoint, "status", held.failed_id)
    assert ran.returncode == 1, ran  # it ended other than done, as `result` says too
    assert ran.stdout.startswith(f"{held.failed_id}  fail  failed")
    usage = _cli(held.daemon.endpoint, "status", held.failed_id, "--watch", "1")
    assert usage.returncode == 2, usage
    assert "--watch" in usage.stderr
    zero = _cli(held.daemon.endpoint, "status", "--watch", "0")
    assert zero.returncode == 2, zero


def test_status_without_a_daemon_exits_3(daemon: DaemonFactory) -> None:
    ran = _cli(daemon.endpoint("nobody"), "status", "--timeout", "1")
    assert ran.returncode == 3, ran
    assert ran.stderr.strip()


def test_render_fits_a_narrow_terminal() -> None:
    long = "x" * 500
    data = {
        "stats": {
            "version": "0",
            "uptime": 4000.0,
            "draining": True,
            "journal": False,
            "workers": 1,
            "queued": 1234,
            "running": 1,
            "states": {"quarantined": 0, "done": 5, "failed": 1},
            "accepted": 1240,
            "finished": 6,
        },
        "workers": [
            {
                "pid": 7,
                "task_id": "a" * 32,
                "task": "resize",
                "since": time.time() - 90,
                "remote": {"host": "h1", "pid": 9, "session": "s"},
            }
        ],
        "failures": [
            {
                "task_id": "b" * 32,
                "task": "resize",
                "state": "failed",
                "finished_at": 0.0,
                "error": {"type": "OSError", "message": long, "traceback": ""},
            }
        ],
    }
    text = render(data, width=60)
    assert "up 1 h 06 min" in text
    assert "DRAINING" in text
    assert "1,234 queued" in text
    assert "journal   done 5 · failed 1 · quarantined 0" in text  # life order
    assert "h1:9" in text
    assert "1 min 30 s" in text
    failure = text.splitlines()[-1]
    assert len(failure) <= 60
    assert failure.endswith("…")


def test_help_lists_status_overview() -> None:
    ran = _cli("ipc:///nonexistent/pw.sock", "status", "--help")
    assert ran.returncode == 0
    assert "--watch" in ran.stdout
    assert Path(REPO / "service" / "cli" / "overview.py").exists()
