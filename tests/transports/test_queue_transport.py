"""What is specific to the ``queue`` transport (the behaviour suite runs on it too).

A worker's results reach the parent through its own ``multiprocessing.Queue``,
read by one thread per worker (see ``service/transports/queue.py``). These
tests pin down what that design promises: a worker SIGKILLed or SIGSTOPped
while its feeder thread writes a 64 MiB result costs only its own task and
never leaves a reader thread hung; reader and feeder threads are all gone
after shutdown; out-of-band buffers arrive intact whatever the start method;
workers still die with their parent; and the private parts of
``multiprocessing.Queue`` the transport relies on are still there.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipework.service import TaskFuture, WorkerLost, WorkerService
from pipework.service.transports import get_transport
from pipework.service.transports.queue import QueueTransport, _internals, _Queue
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import wait_gone
from tests.support.waiting import poll_until, wait_until

MiB = 1024 * 1024
BIG = 64 * MiB
RESULT_TIMEOUT = 30.0
READER = "pipework-queue-reader-"
FEEDER = "QueueFeederThread"
ROOT = Path(__file__).resolve().parents[2]

START_METHODS = ["forkserver", "spawn", "fork"]


def queue_threads() -> set[threading.Thread]:
    """This process's queue reader threads and Queue feeder threads."""
    return {t for t in threading.enumerate() if t.name.startswith((READER, FEEDER))}


def readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(READER)}


def feeder_writing(pid: int) -> bool:
    """True while some thread of ``pid`` (its Queue feeder) is blocked writing to a pipe."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                if "pipe_write" in f.read():
                    return True
        except OSError:
            continue
    return False


def big_result_mid_write(pool: WorkerService, pid_file: Path) -> tuple[TaskFuture[Any], int]:
    """Submit a task returning 64 MiB; return once its worker's feeder is seen writing it."""
    victim = pool.submit(faults.big_result_after_pid, str(pid_file), 1, BIG)
    [pid] = faults.wait_for_pids(pid_file)
    assert pid in pool.worker_pids()  # only ever signal our own worker
    poll_until(lambda: victim.done() or feeder_writing(pid), 10.0, 0.0005)
    return victim, pid


def check_victim(victim: TaskFuture[Any], pid: int) -> bool:
    """The victim lost its worker to SIGKILL (True), or the write won the race and it got
    its whole result (False)."""
    exc = victim.exception(timeout=RESULT_TIMEOUT)
    if exc is None:
        assert victim.result(timeout=0) == faults.pattern(1, BIG)
        return False
    assert isinstance(exc, WorkerLost), repr(exc)
    assert (exc.task_id, exc.pid, exc.exitcode, exc.signal) == (victim.task_id, pid, -9, "SIGKILL")
    return True


@pytest.fixture
def queue_pool(make_pool: Callable[..., WorkerService]) -> Callable[..., WorkerService]:
    """``make_pool`` on the queue transport, whatever the suite's transport parameter."""

    def make(max_workers: int = 2, **kwargs: Any) -> WorkerService:
        return make_pool(max_workers, transport="queue", **kwargs)

    return make


@pytest.fixture
def transport() -> str:
    """Overrides conftest's parametrized fixture: everything here is about ``queue``."""
    return "queue"


# -- the transport is registered ------------------------------------------------------


def test_queue_is_a_named_transport() -> None:
    transport = get_transport("queue")
    assert isinstance(transport, QueueTransport)
    assert transport.name == "queue"
    transport.close()


# -- workers killed or stopped while their feeder writes --------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_worker_killed_mid_feed_leaves_no_hung_reader(
    queue_pool: Callable[..., WorkerService], tmp_path: Path, start_method: str
) -> None:
    before = readers()
    pool = queue_pool(2, start_method=start_method)
    assert pool.submit(tasks.square, 3).result(timeout=RESULT_TIMEOUT) == 9
    lost = []
    for round_ in range(3):
        victim, pid = big_result_mid_write(pool, tmp_path / f"victim-{round_}")
        os.kill(pid, signal.SIGKILL)
        lost.append(check_victim(victim, pid))
        assert not wait_gone([pid], 5.0), f"victim worker {pid} still alive"
        assert faults.replaced(pool, pid), (pid, pool.worker_pids())
        # The dead worker's reader saw end of file and ended when its channel
        # closed: one reader per live worker, no more.
        wait_until(lambda: len(readers() - before) == pool.max_workers, 10.0)
        futures = [pool.submit(faults.pattern, round_ + k, k * 100_003) for k in range(8)]
        for k, future in enumerate(futures):
            assert future.result(timeout=RESULT_TIMEOUT) == faults.pattern(round_ + k, k * 100_003)
    expected = faults.pattern(5, BIG)
    assert pool.submit(tasks.identity, expected).result(timeout=RESULT_TIMEOUT) == expected
    assert any(lost), "every kill came after the write: nothing was cut mid-frame"


def test_stopped_worker_mid_write_does_not_stall_the_others(
    queue_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    before = readers()
    pool = queue_pool(2)
    stopped: int | None = None
    try:
        for attempt in range(5):
            victim, pid = big_result_mid_write(pool, tmp_path / f"victim-{attempt}")
            os.kill(pid, signal.SIGSTOP)
            stopped = pid
            time.sleep(0.2)
            if not victim.done():
                break  # stopped in the middle of its result
            os.kill(pid, signal.SIGCONT)  # the write won the race: try again
            stopped = None
        assert stopped is not None, "never caught the feeder writing"
        # Its reader thread is blocked in get() in the middle of a message;
        # the dispatcher and the other worker are not.
        results = [pool.submit(tasks.square, i) for i in range(40)]
        assert [f.result(timeout=RESULT_TIMEOUT) for f in results] == [i * i for i in range(40)]
        assert not victim.done()
    finally:
        if stopped is not None:  # once: a second kill could reach a reused pid
            os.kill(stopped, signal.SIGKILL)
    assert check_victim(victim, stopped)
    assert faults.replaced(pool, stopped), (stopped, pool.worker_pids())
    wait_until(lambda: len(readers() - before) == pool.max_workers, 10.0)
    assert pool.submit(tasks.square, 7).result(timeout=RESULT_TIMEOUT) == 49


# -- no thread left behind ------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_reader_and_feeder_threads_are_gone_after_shutdown(
    queue_pool: Callable[..., WorkerService], tmp_path: Path, start_method: str
) -> None:
    before = queue_threads()
    pool = queue_pool(3, start_method=start_method, max_tasks_per_worker=4)
    futures = [pool.submit(tasks.square, i) for i in range(30)]  # recycles workers too
    victim = pool.submit(faults.record_pid_then, str(tmp_path / "pid"), tasks.kill_self)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(30)]
    assert isinstance(victim.exception(timeout=RESULT_TIMEOUT), WorkerLost)
    wait_until(lambda: len(readers() - before) >= 3, 10.0)
    pool.shutdown(wait=True)
    # shutdown(wait=True) returns once the dispatcher thread has ended, and it
    # ends only after the transport has joined every reader and feeder.
    assert queue_threads() - before == set()


# -- payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_out_of_band_buffers_arrive_intact(
    queue_pool: Callable[..., WorkerService], start_method: str
) -> None:
    pool = queue_pool(2, start_method=start_method)
    data = bytearray(faults.pattern(3, 3 * MiB + 5))  # large enough to travel out of band
    echoed = pool.submit(tasks.identity, data).result(timeout=RESULT_TIMEOUT)
    assert type(echoed) is bytearray
    assert echoed == data
    array = np.arange(MiB, dtype=np.float64).reshape(1024, 1024)
    back = pool.submit(tasks.identity, array).result(timeout=RESULT_TIMEOUT)
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)
    ints = np.ones(100_000, dtype=np.int32)
    mixed = (b"x" * 10, bytearray(200_000), [ints, "tail"])
    again = pool.submit(tasks.identity, mixed).result(timeout=RESULT_TIMEOUT)
    assert again[:2] == mixed[:2]
    assert np.array_equal(again[2][0], ints)
    assert again[2][1] == "tail"


# -- the private parts of multiprocessing.Queue this transport uses ---------------------


def test_multiprocessing_queue_internals_are_still_there() -> None:
    plain = multiprocessing.get_context("spawn").Queue()
    for name in ("_reader", "_writer", "_thread", "_on_queue_feeder_error"):
        assert hasattr(plain, name), name
    plain.close()

    q = _Queue(ctx=multiprocessing.get_context("spawn"))
    reader, writer, feeder = _internals(q)
    assert feeder is None  # no feeder thread before the first put
    assert reader.fileno() != writer.fileno()
    q.put((5, 1, b"payload", (b"buffer",)))
    feeder = _internals(q).feeder
    assert isinstance(feeder, threading.Thread)
    assert q.get(timeout=5) == (5, 1, b"payload", (b"buffer",))
    q.close()
    feeder.join(5)
    assert not feeder.is_alive()
    # The feeder closed both ends on its way out; closing them again is harmless.
    assert reader.closed
    assert writer.closed


def test_closing_this_process_copy_of_the_writer_gives_the_reader_end_of_file() -> None:
    q = _Queue(ctx=multiprocessing.get_context("spawn"))
    _internals(q).writer.close()
    with pytest.raises(EOFError):
        q.get(timeout=5)
    _internals(q).reader.close()


def test_feeder_errors_reach_the_log_but_a_broken_pipe_does_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = _Queue(ctx=multiprocessing.get_context("spawn"))
    with caplog.at_level(logging.ERROR, logger="pipework.transports.queue"):
        q.put(lambda: None)  # type: ignore[arg-type]  # cannot be pickled
        wait_until(lambda: "queue feeder thread failed" in caplog.text, 5.0)
        _internals(q).reader.close()  # no reader left: the next write breaks the pipe
        caplog.clear()
        q.put((5, 0, b"x" * MiB, ()))
        q.close()
        feeder = _internals(q).feeder
        assert feeder is not None
        feeder.join(5)
        assert not feeder.is_alive()
    assert caplog.text == ""


# -- a worker's last frames -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 3 * MiB], ids=["small", "3MiB"])
def test_a_retiring_worker_last_result_is_not_lost(
    queue_pool: Callable[..., WorkerService], tmp_path: Path, size: int
) -> None:
    # A worker at its task limit sends RETIRE, its result, and exits at once:
    # the dispatcher may see it exit before the reader thread has handed over
    # the result. It must still get it, not run the task again elsewhere.
    pool = queue_pool(2, max_tasks_per_worker=1)
    futures = [
        pool.submit(faults.record_pid_then, str(tmp_path / f"task-{i}"), faults.pattern, i, size)
        for i in range(24)
    ]
    for i, future in enumerate(futures):
        assert future.result(timeout=RESULT_TIMEOUT) == faults.pattern(i, size)
    runs = [len(faults.read_pids(tmp_path / f"task-{i}")) for i in range(24)]
    assert runs == [1] * 24
