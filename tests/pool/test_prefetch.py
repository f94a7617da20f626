"""Tasks queued behind a running one (the pipe transport's prefetch) keep every contract.

A worker whose recent tasks were short holds a few more behind the one it
runs, so tiny tasks travel many to a write. These tests warm a worker up with
tiny tasks first (so it prefetches), then check that a queued task that is
cancelled never runs, that a death fails only the running task and runs the
queued ones elsewhere, and that a recycling limit is never overshot.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import select
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipework.service import WorkerService
from pipework.service.dispatcher import Dispatcher
from pipework.service.waker import Waker
from tests import tasks
from tests.support.waiting import poll_until

pytestmark = pytest.mark.timeout(60)

RESULT_TIMEOUT = 30.0


@pytest.fixture
def transport() -> str:
    return "pipe"  # the only transport whose sends are durable, so the only one that prefetches


def warm(pool: WorkerService, n: int = 200) -> None:
    """Tiny tasks, so the workers' recent task times are short and they prefetch."""
    assert [
        f.result(timeout=RESULT_TIMEOUT) for f in [pool.submit(tasks.square, i) for i in range(n)]
    ] == [i * i for i in range(n)]


def test_cancelled_queued_task_never_runs(
    make_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    pool = make_pool(1)
    warm(pool)
    marker = tmp_path / "ran"
    head = pool.submit(tasks.sleep_then, 0.5, "head")
    queued = pool.submit(tasks.touch_then, str(marker), "square", 3)
    after = [pool.submit(tasks.square, i) for i in range(5)]
    assert poll_until(queued.running, 10.0), "the task was not queued in the worker"

    assert queued.cancel()
    assert queued.cancelled()
    assert head.result(timeout=RESULT_TIMEOUT) == "head"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in after] == [i * i for i in range(5)]
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    assert not marker.exists(), "a cancelled task ran"
    # The worker skipped it (a CANCEL frame, checked before each start), so it
    # did not have to die for it; under heavy load it may have been killed
    # instead (no SKIPPED within the grace), which is also correct.
    assert pool.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16


def test_death_fails_the_running_task_only(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(2)
    warm(pool)
    futures = [pool.submit(tasks.square, i) for i in range(300)]
    victim = pool.submit(tasks.kill_self)
    futures += [pool.submit(tasks.square, i) for i in range(300, 600)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(600)]
    with pytest.raises(Exception, match="SIGKILL") as info:
        victim.result(timeout=RESULT_TIMEOUT)
    assert getattr(info.value, "attempt", None) == 1


def test_recycling_limit_is_never_overshot(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(2, max_tasks_per_worker=7)
    pids = [
        f.result(timeout=RESULT_TIMEOUT)
        for f in [pool.submit(tasks.pid_of_worker) for _ in range(300)]
    ]
    counts: dict[int, int] = {}
    for pid in pids:
        counts[pid] = counts.get(pid, 0) + 1
    assert max(counts.values()) <= 7
    assert sum(counts.values()) == 300


def test_waker_never_swallows_a_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wake() racing the dispatcher's drain must not leave later wake-ups silent.

    The race is forced: a wake() lands inside drain(), just before its read.
    Whatever the order inside drain(), a wake() after it must make the
    descriptor readable (a lost one stalled `pipework serve` for 1 s a task).
    """
    waker = Waker()
    try:
        waker.wake()
        real_read = os.read

        def read_after_a_racing_wake(fd: int, n: int) -> bytes:
            waker.wake()
            return real_read(fd, n)

        monkeypatch.setattr(os, "read", read_after_a_racing_wake)
        waker.drain()
        monkeypatch.setattr(os, "read", real_read)
        waker.wake()
        assert select.select([waker.fileno()], [], [], 0)[0], "a wake-up was lost"
    finally:
        waker.close()


@pytest.mark.parametrize(
    ("service_time", "max_tasks", "sent", "depth"),
    [
        (None, None, 0, 1),  # no result yet: one task at a time
        (0.0001, None, 0, 51),  # tiny tasks: about 5 ms of work queued
        (0.00001, None, 0, 64),  # capped
        (0.001, None, 0, 6),
        (0.005, None, 0, 2),  # 5 ms: one queued, not waiting for the dispatcher
        (0.019, None, 0, 2),
        (0.05, None, 0, 1),  # long tasks: never queued behind each other
        (0.001, 10, 7, 3),  # a recycling limit caps what it is sent
    ],
)
def test_prefetch_depth_policy(
    service_time: float | None, max_tasks: int | None, sent: int, depth: int
) -> None:
    owner = SimpleNamespace(
        _sup=SimpleNamespace(transport=SimpleNamespace(durable_sends=True), max_tasks=max_tasks)
    )
    handle = SimpleNamespace(service_time=service_time, sent=sent)
    assert Dispatcher._depth(owner, handle) == depth  # type: ignore[arg-type]
    owner._sup.transport.durable_sends = False
    assert Dispatcher._depth(owner, handle) == 1  # type: ignore[arg-type]
