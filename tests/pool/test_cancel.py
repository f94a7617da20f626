"""``future.cancel()``: a running task's worker is killed and replaced; a queued task never runs."""

from __future__ import annotations

import concurrent.futures as cf
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipework.service import TaskFuture, WorkerService
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import wait_gone
from tests.support.waiting import poll_until

RESULT_TIMEOUT = 30.0
PROMPT = 5.0
"""A generous bound on "at once": waiters must not wait for the next dispatcher pass."""


def start_stuck(
    pool: WorkerService,
    tmp_path: Path,
    fn: Callable[..., Any] = tasks.sleep_forever,
    args: tuple[Any, ...] = (),
) -> tuple[TaskFuture[Any], int]:
    """A task that runs until killed; returns once it runs, with its worker's pid."""
    pid_file = tmp_path / "stuck-pid"
    future = pool.submit(faults.record_pid_then, str(pid_file), fn, *args)
    [pid] = faults.wait_for_pids(pid_file)
    assert future.running()
    return future, pid


def test_cancel_running_task_cancels_its_future(pool: WorkerService, tmp_path: Path) -> None:
    future, _ = start_stuck(pool, tmp_path)

    assert future.cancel() is True
    assert future.cancelled()
    assert future.done()
    assert not future.running()
    with pytest.raises(cf.CancelledError):
        future.result(timeout=0)
    assert future.cancel() is True  # again: still cancelled, as concurrent.futures says


@pytest.mark.parametrize("waiter", ["wait", "as_completed"])
def test_cancel_running_task_wakes_waiters(
    pool: WorkerService, tmp_path: Path, waiter: str
) -> None:
    pid_file = tmp_path / "stuck-pid"
    future = pool.submit(faults.record_pid_then, str(pid_file), tasks.sleep_forever)

    def cancel_once_running() -> None:
        faults.wait_for_pids(pid_file)
        # Let the waiter below block first: cf.wait and as_completed register a waiter.
        poll_until(lambda: bool(future._waiters), RESULT_TIMEOUT)
        future.cancel()

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    try:
        start = time.monotonic()
        if waiter == "wait":
            done, _ = cf.wait([future], timeout=RESULT_TIMEOUT)
            assert done == {future}
        else:
            assert next(cf.as_completed([future], timeout=RESULT_TIMEOUT)) is future
        assert time.monotonic() - start < PROMPT + 1.0
        assert future.cancelled()
    finally:
        canceller.join(RESULT_TIMEOUT)


@pytest.mark.parametrize(
    ("fn", "args"), [pytest.param(fn, args, id=name) for name, fn, args in faults.STUCK]
)
def test_cancel_running_task_kills_and_replaces_its_worker(
    pool: WorkerService, tmp_path: Path, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    future, pid = start_stuck(pool, tmp_path, fn, args)
    neighbour = pool.submit(tasks.sleep_then, 0.3, "neighbour")  # on the other worker
    queued = [pool.submit(tasks.square, i) for i in range(20)]

    assert future.cancel()
    assert not wait_gone([pid], PROMPT), f"worker {pid} survived the cancel of its task"
    assert faults.replaced(pool, pid), (pid, pool.worker_pids())
    assert neighbour.result(timeout=RESULT_TIMEOUT) == "neighbour"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == [i * i for i in range(20)]
    ran_on = {pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT) for _ in range(10)}
    assert pid not in ran_on


def test_cancel_queued_task_never_runs(
    make_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    pool = make_pool(1)
    go, ran = tmp_path / "go", tmp_path / "ran"
    blocker_pid_file = tmp_path / "blocker-pid"
    blocker = pool.submit(
        faults.record_pid_then, str(blocker_pid_file), faults.wait_for_file, str(go)
    )
    [pid] = faults.wait_for_pids(blocker_pid_file)
    queued = pool.submit(faults.touch, str(ran))
    assert not queued.running()

    assert queued.cancel() is True
    assert queued.cancelled()
    go.touch()
    assert blocker.result(timeout=RESULT_TIMEOUT) == pid
    # The worker was not killed: it runs the next task, and the cancelled one never ran.
    assert pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT) == pid
    assert not ran.exists()
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)


@pytest.mark.parametrize("outcome", ["returned", "raised"])
def test_cancel_finished_future_returns_false(pool: WorkerService, outcome: str) -> None:
    future: TaskFuture[Any]
    if outcome == "returned":
        future = pool.submit(tasks.square, 5)
        assert future.result(timeout=RESULT_TIMEOUT) == 25
    else:
        future = pool.submit(tasks.raise_value_error, "kept")
        assert isinstance(future.exception(timeout=RESULT_TIMEOUT), ValueError)

    assert future.cancel() is False
    assert not future.cancelled()
    if outcome == "returned":
        assert future.result(timeout=0) == 25
    else:
        with pytest.raises(ValueError, match="kept"):
            future.result(timeout=0)


@pytest.mark.parametrize("added", ["before-cancel", "after-cancel"])
def test_callback_of_cancelled_running_task_runs(
    pool: WorkerService, tmp_path: Path, added: str
) -> None:
    future, _ = start_stuck(pool, tmp_path)
    called = threading.Event()
    seen: list[tuple[cf.Future[Any], bool]] = []

    def callback(f: cf.Future[Any]) -> None:
        seen.append((f, f.cancelled()))
        called.set()

    if added == "before-cancel":
        future.add_done_callback(callback)
        assert future.cancel()
    else:
        assert future.cancel()
        future.add_done_callback(callback)

    assert called.wait(PROMPT)
    assert seen == [(future, True)]


def test_cancel_at_random_moments_never_hits_another_task(pool: WorkerService) -> None:
    # Cancels land while a task is queued, running, or just finishing: each
    # future ends cancelled (cancel() said True) or with its own value (False),
    # and a kill for a cancel never reaches the task dispatched after it.
    assert pool.submit(tasks.square, 1).result(timeout=RESULT_TIMEOUT) == 1
    rng = random.Random(7)
    targets: list[tuple[int, TaskFuture[Any], bool]] = []
    spared: list[tuple[int, TaskFuture[Any]]] = []
    for i in range(30):
        spared.append((-i, pool.submit(tasks.sleep_then, 0.005, -i)))
        future = pool.submit(tasks.sleep_then, rng.uniform(0.0, 0.03), i)
        time.sleep(rng.uniform(0.0, 0.04))
        targets.append((i, future, future.cancel()))

    _, not_done = cf.wait([f for _, f, _ in targets] + [f for _, f in spared], timeout=60)
    assert not not_done, f"{len(not_done)} tasks never finished"
    for i, future, said in targets:
        assert future.cancelled() is said
        if not said:
            assert future.result(timeout=0) == i
    for i, future in spared:
        assert future.result(timeout=0) == i


def test_cancel_every_running_task_at_once(pool: WorkerService, tmp_path: Path) -> None:
    pid_files = [tmp_path / "a", tmp_path / "b"]
    running = [
        pool.submit(faults.record_pid_then, str(path), tasks.sleep_forever) for path in pid_files
    ]
    queued = [pool.submit(tasks.square, i) for i in range(20)]
    pids = [faults.wait_for_pids(path)[0] for path in pid_files]

    assert all(future.cancel() for future in running)
    assert not wait_gone(pids, PROMPT), "a worker survived the cancel of its task"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == [i * i for i in range(20)]
    assert poll_until(
        lambda: len(pool.worker_pids()) == 2 and not set(pids) & set(pool.worker_pids()), 10.0
    )
