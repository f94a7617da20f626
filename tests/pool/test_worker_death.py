"""A worker that dies fails (or retries) only the task it ran; the pool carries on.

One table of faults, each a real process dying a real death: SIGKILL from
inside and from outside, SIGTERM from outside, a segfault, an abort, and
``os._exit`` with a failing and with a zero status.
Every fault task first records its worker's pid (``record_pid_then``), so the
test knows exactly which process died and what ``WorkerLost`` must say.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipework.service import TaskFuture, WorkerLost, WorkerService
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import wait_gone
from tests.support.waiting import poll_until

RESULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Death:
    """A way for a worker to die while it runs a task, and what ``WorkerLost`` then says."""

    id: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    exitcode: int
    signal_name: str | None
    kill_from_outside: signal.Signals | None = None


DEATHS = [
    Death("sigkill-self", tasks.kill_self, (), -9, "SIGKILL"),
    Death("sigkill-from-outside", tasks.sleep_forever, (), -9, "SIGKILL", signal.SIGKILL),
    Death("sigterm-from-outside", tasks.sleep_forever, (), -15, "SIGTERM", signal.SIGTERM),
    Death("segfault", tasks.segfault, (), -11, "SIGSEGV"),
    Death("os-exit-7", tasks.exit_now, (7,), 7, None),
    # Exit status 0 mid-task is still a death, not a clean retirement.
    Death("os-exit-0", tasks.exit_now, (0,), 0, None),
    Death("abort", os.abort, (), -6, "SIGABRT"),
]


@pytest.fixture(params=DEATHS, ids=lambda d: d.id)
def death(request: pytest.FixtureRequest) -> Death:
    death: Death = request.param
    return death


def inflict(pool: WorkerService, death: Death, pid_file: Path) -> tuple[TaskFuture[Any], int]:
    """Submit the fault task; kill its worker if the fault comes from outside. Returns its pid."""
    future = pool.submit(faults.record_pid_then, str(pid_file), death.fn, *death.args)
    [pid] = faults.wait_for_pids(pid_file)
    if death.kill_from_outside is not None:
        assert pid in pool.worker_pids()  # only ever signal our own worker
        os.kill(pid, death.kill_from_outside)
    return future, pid


def lost(future: TaskFuture[Any]) -> WorkerLost:
    with pytest.raises(WorkerLost) as info:
        future.result(timeout=RESULT_TIMEOUT)
    return info.value


def test_death_fails_only_its_task(
    make_pool: Callable[..., WorkerService], death: Death, tmp_path: Path
) -> None:
    pool = make_pool(2)
    before = [pool.submit(tasks.sleep_then, 0.01, i) for i in range(20)]
    victim, pid = inflict(pool, death, tmp_path / "pid")
    after = [pool.submit(tasks.sleep_then, 0.01, i) for i in range(20, 40)]

    err = lost(victim)
    assert err.task_id == victim.task_id
    assert err.pid == pid
    assert err.exitcode == death.exitcode
    assert err.signal == death.signal_name
    assert err.attempt == 1
    assert [f.result(timeout=RESULT_TIMEOUT) for f in before + after] == list(range(40))


def test_dead_worker_is_replaced_and_pool_keeps_working(
    make_pool: Callable[..., WorkerService], death: Death, tmp_path: Path
) -> None:
    pool = make_pool(2)
    victim, pid = inflict(pool, death, tmp_path / "pid")
    lost(victim)

    assert faults.replaced(pool, pid), (pid, pool.worker_pids())
    assert not wait_gone([pid], 5.0)
    futures = [pool.submit(tasks.pid_of_worker) for _ in range(20)]
    ran_on = {f.result(timeout=RESULT_TIMEOUT) for f in futures}
    assert pid not in ran_on
    assert ran_on <= set(pool.worker_pids())
    assert pool.submit(tasks.square, 12).result(timeout=RESULT_TIMEOUT) == 144


@pytest.fixture(params=["constructor", "options"])
def retrying_submit(
    request: pytest.FixtureRequest, make_pool: Callable[..., WorkerService]
) -> Callable[..., TaskFuture[Any]]:
    """``submit`` with one retry, set either on the pool or per task."""
    if request.param == "constructor":
        return make_pool(2, retries=1).submit
    return make_pool(2).options(retries=1).submit


def test_retry_reruns_task_that_died_on_another_worker(
    retrying_submit: Callable[..., TaskFuture[Any]], tmp_path: Path
) -> None:
    marker = tmp_path / "first-attempt"
    future = retrying_submit(faults.die_on_first_attempt, str(marker))

    second_pid = future.result(timeout=RESULT_TIMEOUT)
    [first_pid] = faults.read_pids(marker)
    assert second_pid != first_pid


def test_retry_budget_spent_fails_with_last_attempt(
    retrying_submit: Callable[..., TaskFuture[Any]], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    future = retrying_submit(faults.record_pid_then, str(pid_file), tasks.kill_self)

    err = lost(future)
    pids = faults.read_pids(pid_file)
    assert len(pids) == 2, pids  # ran exactly twice: the first run and one retry
    assert pids[0] != pids[1]
    assert (err.task_id, err.pid, err.attempt) == (future.task_id, pids[1], 2)
    assert (err.exitcode, err.signal) == (-9, "SIGKILL")


def test_no_retry_by_default(make_pool: Callable[..., WorkerService], tmp_path: Path) -> None:
    pool = make_pool(2)
    pid_file = tmp_path / "pids"
    err = lost(pool.submit(faults.record_pid_then, str(pid_file), tasks.kill_self))
    assert err.attempt == 1
    assert faults.read_pids(pid_file) == [err.pid]


def test_many_deaths_in_a_row(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(2)
    futures: list[tuple[int | None, TaskFuture[Any]]] = []
    for i in range(60):
        if i % 6 == 5:
            futures.append((None, pool.submit(tasks.kill_self)))
        else:
            futures.append((i * i, pool.submit(tasks.square, i)))

    _, not_done = cf.wait([f for _, f in futures], timeout=60)
    assert not not_done, f"{len(not_done)} tasks never finished"
    values, dead_pids = 0, set()
    for expected, future in futures:
        if expected is None:
            err = lost(future)
            assert (err.task_id, err.exitcode, err.attempt) == (future.task_id, -9, 1)
            assert err.pid is not None
            dead_pids.add(err.pid)
        else:
            assert future.result(timeout=0) == expected
            values += 1
    assert (values, len(dead_pids)) == (50, 10)  # ten deaths, ten different workers
    assert poll_until(
        lambda: len(pool.worker_pids()) == 2 and not dead_pids & set(pool.worker_pids()), 10.0
    )
    assert pool.submit(tasks.square, 7).result(timeout=RESULT_TIMEOUT) == 49


def test_many_retried_deaths_all_succeed(
    make_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    pool = make_pool(2, retries=1)
    dying = [pool.submit(faults.die_on_first_attempt, str(tmp_path / f"m{i}")) for i in range(8)]
    normal = [pool.submit(tasks.square, i) for i in range(30)]

    for i, future in enumerate(dying):
        second_pid = future.result(timeout=RESULT_TIMEOUT)
        [first_pid] = faults.read_pids(tmp_path / f"m{i}")
        assert second_pid != first_pid
    assert [f.result(timeout=RESULT_TIMEOUT) for f in normal] == [i * i for i in range(30)]


def test_idle_worker_killed_from_outside_is_replaced(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(2)
    # Two tasks at once: both workers have started and are idle afterwards.
    both = [pool.submit(faults.sleep_then_pid, 0.3) for _ in range(2)]
    pids = {f.result(timeout=RESULT_TIMEOUT) for f in both}
    assert len(pids) == 2
    victim = min(pids)
    assert victim in pool.worker_pids()
    os.kill(victim, signal.SIGKILL)

    assert faults.replaced(pool, victim), (victim, pool.worker_pids())
    futures = [pool.submit(tasks.sleep_then, 0.01, i) for i in range(20)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == list(range(20))


def test_every_worker_dies_at_once(make_pool: Callable[..., WorkerService], tmp_path: Path) -> None:
    pool = make_pool(2)
    pid_files = [tmp_path / "a", tmp_path / "b"]
    victims = [
        pool.submit(faults.record_pid_then, str(path), tasks.sleep_forever) for path in pid_files
    ]
    queued = [pool.submit(tasks.square, i) for i in range(20)]
    pids = [faults.wait_for_pids(path)[0] for path in pid_files]
    assert set(pids) == set(pool.worker_pids())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    for victim, pid in zip(victims, pids, strict=True):
        err = lost(victim)
        assert (err.task_id, err.pid, err.signal) == (victim.task_id, pid, "SIGKILL")
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == [i * i for i in range(20)]
    assert poll_until(
        lambda: len(pool.worker_pids()) == 2 and not set(pids) & set(pool.worker_pids()), 10.0
    )


def test_workers_killed_from_outside_while_starting_are_replaced(
    make_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    # Workers wait in their initializer until "go" exists, so each one is
    # killed while it is still starting. A SIGKILL from outside (an operator,
    # the OOM killer) is not a crash loop of the initializer or of the task
    # module: the pool must replace the workers, not declare itself broken.
    go = tmp_path / "go"
    pool = make_pool(1, initializer=faults.wait_for_file, initargs=(str(go),))
    killed: list[int] = []
    for _ in range(3):
        assert poll_until(lambda: bool(set(pool.worker_pids()) - set(killed)), 10.0)
        [pid] = set(pool.worker_pids()) - set(killed)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    go.touch()

    assert pool.submit(tasks.square, 3).result(timeout=RESULT_TIMEOUT) == 9
    assert not set(killed) & set(pool.worker_pids())


def test_threads_submitting_one_at_a_time_while_workers_are_killed(
    make_pool: Callable[..., WorkerService],
) -> None:
    # One-at-a-time submits are what an idle pool hands over from the submitting
    # thread itself (Dispatcher.hand_direct, pipe transport); several threads
    # race each other and the dispatcher for it while workers die under them.
    # Every future must resolve, to its own value or to WorkerLost.
    pool = make_pool(2)
    stop = threading.Event()
    ok: list[int] = []
    lost: list[WorkerLost] = []
    wrong: list[BaseException] = []

    def submitter(k: int) -> None:
        i = 0
        while not stop.is_set():
            future = pool.submit(tasks.sleep_then, 0.002, (k, i))
            try:
                if future.result(timeout=RESULT_TIMEOUT) == (k, i):
                    ok.append(1)
                else:
                    wrong.append(AssertionError(f"{future.result()!r} != {(k, i)!r}"))
            except WorkerLost as exc:
                lost.append(exc)
            except BaseException as exc:
                wrong.append(exc)
            i += 1

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    killed: set[int] = set()
    rng = random.Random(7)
    try:
        for _ in range(25):
            time.sleep(rng.uniform(0.01, 0.06))
            pids = [p for p in pool.worker_pids() if p not in killed]
            if pids:
                victim = rng.choice(pids)
                killed.add(victim)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
    finally:
        stop.set()
        for thread in threads:
            thread.join(RESULT_TIMEOUT + 10)
    assert not any(t.is_alive() for t in threads), "a submitter hung"
    assert not wrong, wrong[:3]
    assert ok
    assert len(lost) <= len(killed)
    assert {e.pid for e in lost} <= killed
    assert pool.submit(tasks.square, 4).result(timeout=RESULT_TIMEOUT) == 16
