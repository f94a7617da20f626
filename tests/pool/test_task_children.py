"""Processes a task starts die with its worker: on timeout, on cancel, at shutdown.

Each worker runs in its own process group, which the pool signals along with
the worker; descendants that left the group (setsid) but are still below the
worker are found by walking its process tree when it is killed. A process
that left both (a daemon whose parent already exited) is out of reach, as the
README says.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipework.service import TaskTimeout, WorkerService
from tests import tasks_hostile
from tests.support.processes import wait_gone

GRACE = 5.0  # generous: the kill is immediate, this only bounds "does not hang"


def _read_pids(pid_file: Path, timeout: float = 30.0) -> list[int]:
    end = time.monotonic() + timeout
    while not pid_file.exists():
        assert time.monotonic() < end, "the task never started its children"
        time.sleep(0.02)
    return [int(p) for p in pid_file.read_text().split()]


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids the test's tasks started; whatever survives the test is SIGKILLed by pid."""
    pids: list[int] = []
    yield pids
    for pid in wait_gone(pids, 0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants_of_task(pid_file: Path, started: list[int]) -> list[int]:
    _worker, *others = _read_pids(pid_file)
    started.extend(others)
    return others


@pytest.mark.timeout(60)
@pytest.mark.parametrize("detach", [False, True], ids=["same-group", "setsid-grandchild"])
def test_a_timed_out_tasks_processes_are_killed(
    make_pool: Callable[..., WorkerService], tmp_path: Path, started: list[int], detach: bool
) -> None:
    pool = make_pool(1)
    pid_file = tmp_path / "pids"
    future = pool.options(timeout=3.0).submit(tasks_hostile.start_children, str(pid_file), detach)
    others = _descendants_of_task(pid_file, started)
    with pytest.raises(TaskTimeout):
        future.result(timeout=30)
    assert wait_gone(others, GRACE) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("detach", [False, True], ids=["same-group", "setsid-grandchild"])
def test_a_cancelled_tasks_processes_are_killed(
    make_pool: Callable[..., WorkerService], tmp_path: Path, started: list[int], detach: bool
) -> None:
    pool = make_pool(1)
    pid_file = tmp_path / "pids"
    future = pool.submit(tasks_hostile.start_children, str(pid_file), detach)
    others = _descendants_of_task(pid_file, started)
    assert future.cancel()
    assert wait_gone(others, GRACE) == []


@pytest.mark.timeout(60)
def test_a_running_tasks_processes_are_killed_at_shutdown(
    make_pool: Callable[..., WorkerService], tmp_path: Path, started: list[int]
) -> None:
    pool = make_pool(1, shutdown_timeout=0.5)
    pid_file = tmp_path / "pids"
    future = pool.submit(tasks_hostile.start_children, str(pid_file), True)
    others = _descendants_of_task(pid_file, started)
    pool.shutdown(wait=True)
    assert future.done()
    assert wait_gone(others, GRACE) == []


@pytest.mark.timeout(60)
def test_processes_a_task_left_behind_die_with_its_worker_at_shutdown(
    make_pool: Callable[..., WorkerService], tmp_path: Path, started: list[int]
) -> None:
    # The task returned; what it left running in the worker's group goes when
    # the worker does. (The setsid grandchild's parent is in the group, but once
    # the task is done nothing walks the tree: only the group is reached.)
    pool = make_pool(1)
    pid_file = tmp_path / "pids"
    pool.submit(tasks_hostile.start_children, str(pid_file), False, False).result(timeout=30)
    others = _descendants_of_task(pid_file, started)
    pool.shutdown(wait=True)
    assert wait_gone(others, GRACE) == []


PROGRAM = """
import sys, time
from pipework.service import WorkerService
from tests import tasks_hostile

if __name__ == "__main__":
    pool = WorkerService(1, transport=sys.argv[2])
    pool.submit(tasks_hostile.start_children, sys.argv[1], False)
    time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_a_tasks_processes_die_with_a_sigkilled_program(
    transport: str, tmp_path: Path, started: list[int]
) -> None:
    # The kernel kills the worker's whole group when the program's lifeline
    # hangs up, so no code in the pool has to run for it.
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    pid_file = tmp_path / "pids"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pid_file), transport],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        worker, *others = _read_pids(pid_file)
        started.extend([worker, *others])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_gone([worker, *others], GRACE) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
