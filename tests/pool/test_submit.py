"""submit/result basics, the Future contract, and asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Any

import pytest

from pipework.service import TaskFuture, TaskTimeout, WorkerService
from pipework.service.dispatcher import Dispatcher
from tests import tasks
from tests.support.waiting import wait_until


def test_submit_returns_result(pool: WorkerService) -> None:
    future = pool.submit(tasks.add, 2, b=3)
    assert isinstance(future, cf.Future)
    assert isinstance(future, TaskFuture)
    assert future.result(timeout=30) == 5


def test_many_submits_all_resolve_in_as_completed(pool: WorkerService) -> None:
    futures = [pool.submit(tasks.square, i) for i in range(500)]
    results = sorted(f.result() for f in cf.as_completed(futures, timeout=60))
    assert results == sorted(i * i for i in range(500))


def test_wait_all_completed(pool: WorkerService) -> None:
    futures = [pool.submit(tasks.sleep_then, 0.01, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=30)
    assert not not_done
    assert {f.result() for f in done} == set(range(20))


def test_run_in_executor(pool: WorkerService) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        a = loop.run_in_executor(pool, tasks.square, 7)
        b = pool.run(tasks.add, 1, 2)
        return list(await asyncio.gather(a, b))

    assert asyncio.run(main()) == [49, 3]


def test_not_callable_is_type_error(pool: WorkerService) -> None:
    with pytest.raises(TypeError, match="not callable"):
        pool.submit(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_every_start_method_runs_tasks(make_pool, start_method: str) -> None:
    pool = make_pool(2, start_method=start_method)
    assert sorted(pool.map(tasks.square, range(10))) == [i * i for i in range(10)]
    pids = {pool.submit(tasks.pid_of_worker).result(timeout=30) for _ in range(10)}
    assert pids <= set(pool.worker_pids())


@pytest.mark.parametrize("transport", ["pipe"])  # the transport with direct sends
def test_an_idle_pipe_pool_starts_a_task_within_submit(
    make_pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A submit that finds the dispatcher asleep and a worker idle hands the task
    # over itself (Dispatcher.hand_direct): the future is running when submit
    # returns, with no wait for the dispatcher thread. Where the dispatcher
    # happened to be awake, the task takes the queue instead; one in 20 tries
    # catching it asleep is plenty.
    pool: WorkerService = make_pool(2)
    assert pool.submit(tasks.square, 2).result(timeout=30) == 4
    dispatcher = pool._dispatcher
    handed: list[bool] = []

    def counting(task: Any) -> bool:
        took = Dispatcher.hand_direct(dispatcher, task)
        handed.append(took)
        return took

    monkeypatch.setattr(dispatcher, "hand_direct", counting)
    for i in range(20):
        # The dispatcher goes back to sleep: its lock is free only while it waits in select.
        wait_until(lambda: not dispatcher._lock.locked(), 10, "the dispatcher asleep")
        future = pool.submit(tasks.sleep_then, 0.01, i)
        if handed[-1]:
            assert future.running()
        assert future.result(timeout=30) == i
        assert future.worker_pid in pool.worker_pids()
    assert len(handed) == 20
    assert any(handed), handed


@pytest.mark.parametrize("transport", ["pipe"])
def test_a_timeout_on_a_task_handed_within_submit_still_fires(make_pool) -> None:
    pool: WorkerService = make_pool(1)
    assert pool.submit(tasks.square, 2).result(timeout=30) == 4
    wait_until(lambda: not pool._dispatcher._lock.locked(), 10, "the dispatcher asleep")
    future = pool.options(timeout=0.3).submit(tasks.sleep_then, 30, "late")
    with pytest.raises(TaskTimeout):
        future.result(timeout=20)
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9
