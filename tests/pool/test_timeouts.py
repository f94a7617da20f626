"""Per-task timeouts: the future fails with ``TaskTimeout`` at the deadline and the worker dies.

Stuck tasks come in every kind a timeout must stop (``tasks_faults.STUCK``):
one that sleeps (SIGTERM ends it), one that ignores SIGTERM and one whose
process is SIGSTOPped (both need the SIGKILL escalation), and one that spins
in C holding the GIL. The timing bounds are generous: they catch a hang, not
a slow machine.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipework.service import TaskFuture, TaskTimeout, WorkerLost, WorkerService
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import wait_gone

RESULT_TIMEOUT = 30.0
TIMEOUT = 0.5
SLACK = 2.0
"""How much later than its timeout a stuck task's future may resolve: generous."""

STUCK = [pytest.param(fn, args, id=name) for name, fn, args in faults.STUCK]


def warm(pool: WorkerService) -> None:
    """Run one task, so that a worker is ready and timing starts at dispatch."""
    assert pool.submit(tasks.square, 3).result(timeout=RESULT_TIMEOUT) == 9


def timed_out(future: TaskFuture[Any]) -> TaskTimeout:
    with pytest.raises(TaskTimeout) as info:
        future.result(timeout=RESULT_TIMEOUT)
    return info.value


@pytest.mark.parametrize(("fn", "args"), STUCK)
def test_stuck_task_fails_with_task_timeout(
    pool: WorkerService, fn: Callable[..., Any], args: tuple[Any, ...], tmp_path: Path
) -> None:
    warm(pool)
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    future = pool.options(timeout=TIMEOUT).submit(faults.record_pid_then, str(pid_file), fn, *args)
    err = timed_out(future)
    elapsed = time.monotonic() - start

    assert TIMEOUT <= elapsed < TIMEOUT + SLACK
    [pid] = faults.read_pids(pid_file)
    assert (err.task_id, err.timeout, err.pid) == (future.task_id, TIMEOUT, pid)


@pytest.mark.parametrize(("fn", "args"), STUCK)
def test_timed_out_worker_is_killed_and_replaced(
    pool: WorkerService, fn: Callable[..., Any], args: tuple[Any, ...], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    future = pool.options(timeout=TIMEOUT).submit(faults.record_pid_then, str(pid_file), fn, *args)
    timed_out(future)
    [pid] = faults.read_pids(pid_file)

    assert not wait_gone([pid], 5.0), f"worker {pid} still alive after its task timed out"
    assert faults.replaced(pool, pid), (pid, pool.worker_pids())
    ran_on = {pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT) for _ in range(10)}
    assert pid not in ran_on


def test_constructor_task_timeout_applies_to_every_task(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(2, task_timeout=TIMEOUT)
    stuck = [pool.submit(tasks.sleep_forever) for _ in range(3)]
    stuck.append(pool.options(retries=1).submit(tasks.sleep_forever))  # other options keep it
    quick = [pool.submit(tasks.square, i) for i in range(10)]

    for future in stuck:
        err = timed_out(future)
        assert (err.task_id, err.timeout) == (future.task_id, TIMEOUT)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in quick] == [i * i for i in range(10)]


def test_per_task_timeout_overrides_constructor(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(1, task_timeout=0.2)
    future = pool.options(timeout=10.0).submit(tasks.sleep_then, 0.5, "slow but allowed")
    assert future.result(timeout=RESULT_TIMEOUT) == "slow but allowed"


def test_tasks_without_timeout_are_unaffected(pool: WorkerService) -> None:
    warm(pool)
    slow = pool.submit(faults.sleep_then_pid, 1.0)
    stuck = pool.options(timeout=0.3).submit(tasks.sleep_forever)
    later = [pool.submit(tasks.sleep_then, 0.05, i) for i in range(10)]

    err = timed_out(stuck)
    assert slow.result(timeout=RESULT_TIMEOUT) != err.pid
    assert [f.result(timeout=RESULT_TIMEOUT) for f in later] == list(range(10))


def test_task_finishing_before_its_timeout_is_not_killed(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(1)
    pid = pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT)

    # Done well within its limit...
    quick = pool.options(timeout=1.5).submit(faults.sleep_then_pid, 0.05)
    assert quick.result(timeout=RESULT_TIMEOUT) == pid
    # ...so the next task, with no limit, runs past where that deadline was.
    assert pool.submit(faults.sleep_then_pid, 1.6).result(timeout=RESULT_TIMEOUT) == pid
    assert pool.worker_pids() == [pid]


def test_timeout_kill_never_hits_the_next_task(make_pool: Callable[..., WorkerService]) -> None:
    # Tasks whose limit is barely above their run time time out or not by a
    # hair; either way, the kill must land on that task's worker while it still
    # runs that task, never on a task dispatched after it.
    pool = make_pool(2)
    warm(pool)
    rng = random.Random(1234)
    limited: list[tuple[int, TaskFuture[Any]]] = []
    plain: list[tuple[int, TaskFuture[Any]]] = []
    for i in range(60):
        if rng.random() < 0.5:
            limited.append((i, pool.options(timeout=0.055).submit(tasks.sleep_then, 0.05, i)))
        else:
            plain.append((i, pool.submit(tasks.sleep_then, 0.01, i)))

    _, not_done = cf.wait([f for _, f in limited + plain], timeout=60)
    assert not not_done, f"{len(not_done)} tasks never finished"
    for i, future in plain:
        assert future.result(timeout=0) == i
    for i, future in limited:
        exc = future.exception(timeout=0)
        assert not isinstance(exc, WorkerLost), exc
        if exc is None:
            assert future.result(timeout=0) == i
        else:
            assert isinstance(exc, TaskTimeout), exc
            assert exc.task_id == future.task_id


def test_timeout_counts_from_start_not_from_submit(pool: WorkerService) -> None:
    # The limit is for one run: time spent queued behind busy workers is not counted.
    busy = [pool.submit(tasks.sleep_then, 0.8, i) for i in range(2)]
    queued = pool.options(timeout=0.5).submit(tasks.sleep_then, 0.05, "ran in time")
    assert queued.result(timeout=RESULT_TIMEOUT) == "ran in time"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in busy] == [0, 1]


def test_timed_out_task_is_not_retried(pool: WorkerService, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    future = pool.options(timeout=0.3, retries=2).submit(
        faults.record_pid_then, str(pid_file), tasks.sleep_forever
    )
    err = timed_out(future)
    # A retry would go to the front of the queue, ahead of these.
    after = [pool.submit(tasks.square, i) for i in range(4)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in after] == [0, 1, 4, 9]
    assert faults.read_pids(pid_file) == [err.pid]  # it ran once
