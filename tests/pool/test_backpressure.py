"""max_pending bounds what is outstanding; submit blocks, then raises QueueFull."""

from __future__ import annotations

import threading
import time

import pytest

from pipework.service import QueueFull, WorkerService
from tests import tasks
from tests.support.waiting import wait_until


def test_submit_past_the_bound_raises_queue_full_after_submit_timeout(make_pool) -> None:
    pool: WorkerService = make_pool(1, max_pending=3, submit_timeout=0.3)
    blockers = [pool.submit(tasks.sleep_then, 0.5, i) for i in range(3)]
    start = time.monotonic()
    with pytest.raises(QueueFull) as info:
        pool.submit(tasks.square, 1)
    waited = time.monotonic() - start
    assert info.value.max_pending == 3
    assert info.value.waited >= 0.3
    assert waited >= 0.3
    # The rejected submit changed nothing: the accepted ones still complete.
    assert [f.result(timeout=30) for f in blockers] == [0, 1, 2]


def test_blocked_submit_proceeds_when_a_task_finishes(make_pool) -> None:
    pool: WorkerService = make_pool(1, max_pending=2)
    first = [pool.submit(tasks.sleep_then, 0.3, i) for i in range(2)]
    admitted = threading.Event()
    result: list[int] = []

    def submitter() -> None:
        future = pool.submit(tasks.square, 5)
        admitted.set()
        result.append(future.result(timeout=30))

    thread = threading.Thread(target=submitter)
    thread.start()
    assert not admitted.wait(0.1), "submit did not block at max_pending"
    assert admitted.wait(30)
    thread.join(30)
    assert result == [25]
    assert [f.result(timeout=30) for f in first] == [0, 1]


def test_cancelled_pending_task_frees_its_slot(make_pool) -> None:
    pool: WorkerService = make_pool(1, max_pending=2, submit_timeout=0.5)
    running = pool.submit(tasks.sleep_then, 1.0, "a")
    queued = pool.submit(tasks.square, 3)
    assert queued.cancel()
    # Room again without waiting for the sleeping task.
    third = pool.submit(tasks.square, 4)
    assert third.result(timeout=30) == 16
    assert running.result(timeout=30) == "a"


def test_many_submits_through_a_small_bound(make_pool) -> None:
    pool: WorkerService = make_pool(2, max_pending=16)
    done = []
    lock = threading.Lock()

    def on_done(future) -> None:
        with lock:
            done.append(future.result())

    for i in range(3000):
        pool.submit(tasks.square, i).add_done_callback(on_done)
    pool.shutdown(wait=True)
    assert sorted(done) == sorted(i * i for i in range(3000))
    assert pool._ledger.unfinished == 0


def test_shutdown_wakes_a_blocked_submit(make_pool) -> None:
    pool: WorkerService = make_pool(1, max_pending=1)
    blocker = pool.submit(tasks.sleep_then, 1.0, "x")
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            pool.submit(tasks.square, 2)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_until(lambda: pool._ledger._waiting == 1, 10, "the submit to block on a full pool")
    pool.shutdown(wait=False)
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert blocker.result(timeout=30) == "x"
