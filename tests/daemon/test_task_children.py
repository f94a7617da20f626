"""The daemon kills what a task started when it times the task out or cancels it.

The daemon runs tasks on a WorkerService, so this is the pool's process-group
kill (see tests/test_task_children.py) seen from a client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import Daemon, DaemonFactory
from tests.support.processes import wait_gone

TASKS = "tests.daemon.tasks_children"
GRACE = 5.0


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids the task started; survivors are SIGKILLed by pid at the end."""
    pids: list[int] = []
    yield pids
    for pid in wait_gone(pids, 0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children(pid_file: Path, started: list[int]) -> list[int]:
    end = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < end, "the task never started its children"
        time.sleep(0.02)
    _worker, *others = (int(p) for p in pid_file.read_text().split())
    started.extend(others)
    return others


@pytest.mark.timeout(90)
@pytest.mark.parametrize("detach", [False, True], ids=["same-group", "setsid-grandchild"])
def test_timeout_kills_what_the_task_started(
    daemon: DaemonFactory, tmp_path: Path, started: list[int], detach: bool
) -> None:
    d: Daemon = daemon(tasks=TASKS)
    pid_file = tmp_path / "pids"
    task_id = d.submit("start_children", str(pid_file), detach, timeout=3.0)["task_id"]
    others = _children(pid_file, started)
    assert d.result(task_id, wait=30)["state"] == "timed_out"
    assert wait_gone(others, GRACE) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("detach", [False, True], ids=["same-group", "setsid-grandchild"])
def test_cancel_kills_what_the_task_started(
    daemon: DaemonFactory, tmp_path: Path, started: list[int], detach: bool
) -> None:
    d: Daemon = daemon(tasks=TASKS)
    pid_file = tmp_path / "pids"
    task_id = d.submit("start_children", str(pid_file), detach)["task_id"]
    others = _children(pid_file, started)
    d.wait_state(task_id, {"running"})
    assert d.ok({"op": "cancel", "task_id": task_id})["cancelled"] is True
    assert wait_gone(others, GRACE) == []
