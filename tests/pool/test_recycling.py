"""Workers are recycled by task count and by RSS without losing or stalling work."""

from __future__ import annotations

import collections

from pipework.service import WorkerService
from tests import tasks
from tests.support.waiting import wait_until


def test_recycle_by_task_count_with_backlog(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_worker=5)
    futures = [pool.submit(tasks.pid_of_worker, i) for i in range(60)]
    pids = [f.result(timeout=60) for f in futures]
    per_pid = collections.Counter(pids)
    assert max(per_pid.values()) <= 5
    assert len(per_pid) >= 60 // 5
    assert pool.submit(tasks.square, 9).result(timeout=30) == 81


def test_recycle_keeps_map_order(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_worker=3)
    assert list(pool.map(tasks.square, range(60), chunksize=2)) == [i * i for i in range(60)]


def test_recycle_by_rss(make_pool) -> None:
    # Each task keeps 20 MiB alive in the worker; a 60 MiB limit must retire
    # a worker after a few of them, before it grows without bound.
    pool: WorkerService = make_pool(1, max_memory_per_worker=60 * 1024 * 1024)
    pids = [pool.submit(tasks.allocate_and_hold, 20).result(timeout=60) for _ in range(12)]
    per_pid = collections.Counter(pids)
    assert len(per_pid) >= 3, per_pid
    assert max(per_pid.values()) <= 4, per_pid


def test_recycled_worker_loses_no_state_of_others(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_worker=1)
    results = [pool.submit(tasks.add, i, b=i) for i in range(20)]
    assert [f.result(timeout=60) for f in results] == [2 * i for i in range(20)]


def test_restart_workers_replaces_every_worker_without_losing_tasks(make_pool) -> None:
    pool: WorkerService = make_pool(2)
    first = pool.submit(tasks.sleep_then, 0.5, "slow")
    wait_until(lambda: len(pool.running_tasks()) == 1)
    old = set(pool.worker_pids())
    assert pool.running_tasks() == {next(iter(pool.running_tasks())): first.task_id}
    pool.restart_workers()
    stream = [pool.submit(tasks.pid_of_worker, i) for i in range(40)]
    assert first.result(timeout=30) == "slow"  # the busy worker finished its task first
    pids = {f.result(timeout=30) for f in stream}
    wait_until(lambda: len(pool.worker_pids()) == 2 and not old & set(pool.worker_pids()))
    # The restart is ordered before the stream: no old worker takes a new task.
    assert not pids & old, pids & old
