"""64 MiB arguments and results, and workers killed while they write one.

A worker SIGKILLed in the middle of writing a large result leaves half a
frame in its channel. That must cost exactly its own task (``WorkerLost``,
or success if the write finished first), never a hang, never a garbled
result for anyone else, and the next large payload must travel intact.

Every value is a ``pattern(seed, size)``: a wrong, shifted or swapped frame
shows up as a value mismatch.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipework.service import TaskFuture, WorkerLost, WorkerService
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import wait_gone
from tests.support.waiting import poll_until

MiB = 1024 * 1024
BIG = 64 * MiB
COMPANION = 4 * MiB
RESULT_TIMEOUT = 30.0
KILLS = [
    ("after-pid", 0.0),
    ("after-pid", 0.02),
    ("mid-write", 0.0),
    ("mid-write", 0.003),
    ("mid-write", 0.01),
]
"""When each round's kill lands: a delay after the victim records its pid (so
mostly while it pickles the result; the worker's own thread draws a random
one instead), or a delay after it is seen blocked writing its result frame."""


def test_64mib_result(pool: WorkerService) -> None:
    result = pool.submit(tasks.big_bytes, BIG).result(timeout=RESULT_TIMEOUT)
    assert len(result) == BIG
    assert result == b"x" * BIG


def test_64mib_argument(pool: WorkerService) -> None:
    data = faults.pattern(7, BIG)
    expected = faults.digest(data)
    assert pool.submit(faults.digest, data).result(timeout=RESULT_TIMEOUT) == expected


def test_64mib_round_trip(pool: WorkerService) -> None:
    data = faults.pattern(8, BIG)
    assert pool.submit(tasks.identity, data).result(timeout=RESULT_TIMEOUT) == data


def test_worker_killed_while_reading_big_argument(make_pool: Callable[..., WorkerService]) -> None:
    # The dispatcher is still pushing the argument into the pipe when the
    # worker dies: it must drop the rest of that write, not block or crash.
    pool = make_pool(1)
    pid = pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT)
    data = faults.pattern(9, BIG)
    expected = faults.digest(data)
    for _ in range(3):
        victim = pool.submit(faults.digest, data)
        os.kill(pid, signal.SIGKILL)
        exc = victim.exception(timeout=RESULT_TIMEOUT)
        if exc is None:  # the kill came before the task was handed over: it ran on the next worker
            assert victim.result(timeout=0) == expected
        else:
            assert isinstance(exc, WorkerLost), repr(exc)
            assert (exc.task_id, exc.pid, exc.exitcode) == (victim.task_id, pid, -9)
        assert faults.replaced(pool, pid), (pid, pool.worker_pids())
        pid = pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT)
    assert pool.submit(faults.digest, data).result(timeout=RESULT_TIMEOUT) == expected


@pytest.mark.parametrize(
    "size",
    [0, 1, 256 * 1024 - 17, 256 * 1024, 256 * 1024 + 1, MiB + 7, 16 * MiB + 3],
    ids=lambda n: f"{n}B",
)
def test_round_trip_keeps_every_byte(pool: WorkerService, size: int) -> None:
    data = faults.pattern(size % 1000, size)
    assert pool.submit(tasks.identity, data).result(timeout=RESULT_TIMEOUT) == data


def test_results_of_many_sizes_at_once(pool: WorkerService) -> None:
    sizes = [(i * 397_123) % (4 * MiB) for i in range(16)]
    futures = [pool.submit(faults.pattern, seed, size) for seed, size in enumerate(sizes)]
    for seed, (size, future) in enumerate(zip(sizes, futures, strict=True)):
        assert future.result(timeout=RESULT_TIMEOUT) == faults.pattern(seed, size), seed


def kill_when(pid: int, victim: TaskFuture[Any], when: str, delay: float) -> None:
    """SIGKILL our worker ``pid`` at the moment ``when``/``delay`` describe (see ``KILLS``)."""
    if when == "mid-write":
        # Or once the victim is done: the write won, which the test accepts.
        poll_until(
            lambda: victim.done() or faults.thread_waits_on(pid) in ("write", "poll"), 10.0, 0.0005
        )
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("killer", ["test", "own-thread"])
def test_worker_killed_while_writing_big_result(
    make_pool: Callable[..., WorkerService], tmp_path: Path, killer: str
) -> None:
    # Three workers: the victim, and two companions that write their own
    # results at the same moment. Nothing else is queued, so when the victim's
    # write wins the race, no other task can be handed to it before the kill.
    pool = make_pool(3)
    expected = faults.pattern(1, BIG)
    rng = random.Random(42)
    for round_, (when, delay) in enumerate(KILLS):
        pid_file = tmp_path / f"victim-{round_}"
        seed = 10 * round_ + 10
        companions = [
            pool.submit(faults.pattern_after_file, seed + c, COMPANION, str(pid_file))
            for c in (1, 2)
        ]
        if killer == "test":
            victim = pool.submit(faults.big_result_after_pid, str(pid_file), 1, BIG)
            [pid] = faults.wait_for_pids(pid_file)
            assert pid in pool.worker_pids()  # only ever signal our own worker
            kill_when(pid, victim, when, delay)
        else:
            thread_delay = rng.uniform(0.0, 0.05) if when == "after-pid" else delay
            victim = pool.submit(
                faults.big_result_with_killer_thread,
                str(pid_file),
                1,
                BIG,
                thread_delay,
                when == "mid-write",
            )
            [pid] = faults.wait_for_pids(pid_file)

        check_victim(victim, pid, expected)
        for c, future in zip((1, 2), companions, strict=True):
            assert future.result(timeout=RESULT_TIMEOUT) == faults.pattern(seed + c, COMPANION)
        assert not wait_gone([pid], 5.0), f"victim worker {pid} still alive"
        assert faults.replaced(pool, pid), (pid, pool.worker_pids())
        later = [pool.submit(faults.pattern, seed + k, k * 300_001) for k in range(3, 9)]
        for k, future in enumerate(later, start=3):
            assert future.result(timeout=RESULT_TIMEOUT) == faults.pattern(seed + k, k * 300_001)

    assert pool.submit(tasks.identity, expected).result(timeout=RESULT_TIMEOUT) == expected


def check_victim(victim: TaskFuture[Any], pid: int, expected: bytes) -> None:
    """The victim either lost its worker (and says so precisely) or got its whole result."""
    exc = victim.exception(timeout=RESULT_TIMEOUT)
    if exc is None:
        assert victim.result(timeout=0) == expected
        return
    assert isinstance(exc, WorkerLost), repr(exc)
    assert (exc.task_id, exc.pid, exc.exitcode, exc.signal, exc.attempt) == (
        victim.task_id,
        pid,
        -9,
        "SIGKILL",
        1,
    )
