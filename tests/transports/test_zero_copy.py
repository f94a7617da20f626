"""Large NumPy arrays and bytearrays: round trips, shared segments' lifetimes, and faults.

Large buffers never cross a channel as pickled bytes: the ``pipe`` and
``zmq`` transports send them out of band (``pipe`` reads them into huge-page
memory), and the ``queue`` transport hands them over shared memory
(``service.transports.shm``): a task's arguments in a memfd the parent holds, a result
in a named ``/dev/shm`` segment the parent claims and unlinks on arrival.
What must hold: every byte arrives, results are ordinary writable arrays
that outlive their segment's name, and no segment and no memfd outlives its
task, whenever a worker dies: after sharing its result and before sending
it, at random instants of the transfer, after mapping its argument, before
reading it; and when a task fails to pickle its result, times out or is
cancelled.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pipework.service import SerializationError, TaskTimeout, WorkerLost, WorkerService, pickling
from pipework.service.transports import shm
from tests import tasks, tasks_shm
from tests import tasks_faults as faults
from tests.support.waiting import wait_until

MiB = 1024 * 1024
RESULT_TIMEOUT = 30.0
SIZES = [shm.SHARED_MIN - 1, shm.SHARED_MIN, 3 * MiB + 5, 16 * MiB + 3]
START_METHODS = ["forkserver", "spawn", "fork"]


def our_segments() -> list[str]:
    """Named segments in /dev/shm made for pools of this process."""
    mine = f"{shm.PREFIX}{os.getpid()}-"
    return sorted(name for name in os.listdir(shm.DIRECTORY) if name.startswith(mine))


def our_memfds() -> int:
    """Shared-argument memfds this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:pipework"):
                count += 1
        except OSError:  # the listing's own descriptor, closed since
            continue
    return count


def mapping_of(value: np.ndarray[Any, Any]) -> object:
    """What the memory of an unpickled array ultimately belongs to."""
    base: object = value
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def wait_released(memfds: int) -> None:
    """Every named segment of ours gone, and no more memfds open than ``memfds``."""
    wait_until(lambda: not our_segments() and our_memfds() <= memfds, 10.0)


def ready_worker_pid(pool: WorkerService) -> int:
    """The pid of a one-worker pool's worker, once it has run a task."""
    pid = pool.submit(tasks.pid_of_worker).result(timeout=RESULT_TIMEOUT)
    assert pool.worker_pids() == [pid]
    return pid


# -- round trips, every transport ------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_array_round_trip(pool: WorkerService, size: int) -> None:
    memfds = our_memfds()
    data = tasks_shm.array(size % 97, size)
    back = pool.submit(tasks_shm.bump, data.copy()).result(timeout=RESULT_TIMEOUT)
    assert back.dtype == np.uint8
    assert np.array_equal(back, data + 1)  # the worker wrote into its argument
    back += 1  # and the result is writable here
    made = pool.submit(tasks_shm.make_array, 5, size).result(timeout=RESULT_TIMEOUT)
    assert np.array_equal(made, tasks_shm.array(5, size))
    del back, made
    wait_released(memfds)


def test_bytearray_round_trip(pool: WorkerService) -> None:
    size = 8 * MiB + 1
    data = bytearray(tasks_shm.array(3, size).tobytes())
    length, digest, writable = pool.submit(tasks_shm.checksum, data).result(timeout=RESULT_TIMEOUT)
    assert (length, digest) == tasks_shm.checksum(data)[:2]
    assert writable
    made = pool.submit(tasks_shm.make_bytearray, 4, size).result(timeout=RESULT_TIMEOUT)
    assert made == tasks_shm.make_bytearray(4, size)


def test_argument_mutated_by_the_task_is_unchanged_here(pool: WorkerService) -> None:
    data = tasks_shm.array(1, 4 * MiB)
    before = data.copy()
    pool.submit(tasks_shm.bump, data).result(timeout=RESULT_TIMEOUT)
    assert np.array_equal(data, before)


@pytest.mark.parametrize("transport", ["queue"])
@pytest.mark.parametrize("start_method", START_METHODS)
def test_shared_round_trip_every_start_method(
    make_pool: Callable[..., WorkerService], start_method: str
) -> None:
    memfds = our_memfds()
    pool = make_pool(2, start_method=start_method)
    data = tasks_shm.array(9, 16 * MiB)
    futures = [pool.submit(tasks_shm.bump, data) for _ in range(4)]
    for future in futures:
        assert np.array_equal(future.result(timeout=RESULT_TIMEOUT), data + 1)
    del futures
    wait_released(memfds)


# -- what a shared result is -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["queue"])
def test_result_outlives_its_segment_name(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(1)
    result = pool.submit(tasks_shm.make_array, 2, 16 * MiB).result(timeout=RESULT_TIMEOUT)
    assert isinstance(mapping_of(result), mmap.mmap)  # a view of the segment, not a copy
    assert our_segments() == []  # its name was unlinked as it arrived
    pool.shutdown()
    assert np.array_equal(result, tasks_shm.array(2, 16 * MiB))
    result[:] = 7
    assert int(result.sum()) == 7 * 16 * MiB


@pytest.mark.parametrize("transport", ["pipe"])
def test_large_pipe_bodies_are_read_into_fresh_mappings(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(1)
    result = pool.submit(tasks_shm.make_array, 2, 48 * MiB).result(timeout=RESULT_TIMEOUT)
    assert isinstance(mapping_of(result), mmap.mmap)
    assert np.array_equal(result, tasks_shm.array(2, 48 * MiB))


# -- workers dying in the middle of a shared transfer --------------------------------------


@pytest.mark.parametrize("transport", ["queue"])
def test_worker_killed_after_sharing_its_result(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(1)
    pid = ready_worker_pid(pool)
    victim = pool.submit(tasks_shm.big_then_die, 1, 16 * MiB)
    exc = victim.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, WorkerLost), repr(exc)
    assert (exc.pid, exc.signal) == (pid, "SIGKILL")
    wait_released(our_memfds())
    assert faults.replaced(pool, pid)
    made = pool.submit(tasks_shm.make_array, 2, 16 * MiB).result(timeout=RESULT_TIMEOUT)
    assert np.array_equal(made, tasks_shm.array(2, 16 * MiB))


@pytest.mark.parametrize("transport", ["queue"])
def test_worker_killed_at_any_instant_of_sharing_its_result(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(2)
    size = 32 * MiB
    expected = tasks_shm.array(3, size)
    outcomes = []
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        victim = pool.submit(tasks_shm.big_result_killed_after, 3, size, delay)
        exc = victim.exception(timeout=RESULT_TIMEOUT)
        if exc is None:
            assert np.array_equal(victim.result(timeout=0), expected)
        else:
            assert isinstance(exc, WorkerLost), repr(exc)
            assert exc.signal == "SIGKILL"
        outcomes.append(exc is None)
        del victim
        wait_released(our_memfds())
        wait_until(lambda: len(pool.worker_pids()) == 2, 10.0)
    assert not all(outcomes), "no kill landed before the result was sent"


@pytest.mark.parametrize("transport", ["queue", "pipe"])
@pytest.mark.parametrize("retries", [0, 1])
def test_worker_killed_after_mapping_its_argument(
    make_pool: Callable[..., WorkerService], retries: int
) -> None:
    memfds = our_memfds()
    pool = make_pool(1, retries=retries)
    data = tasks_shm.array(4, 16 * MiB)
    victim = pool.submit(tasks_shm.run_for, 0.0, (data, tasks_shm.DieWhenLoaded()))
    exc = victim.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, WorkerLost), repr(exc)
    assert exc.attempt == 1 + retries
    del victim, exc
    wait_released(memfds)
    assert (
        pool.submit(tasks_shm.checksum, data).result(timeout=RESULT_TIMEOUT)[:2]
        == (tasks_shm.checksum(data)[:2])
    )


@pytest.mark.parametrize("transport", ["queue"])
def test_worker_killed_before_reading_its_argument(
    make_pool: Callable[..., WorkerService],
) -> None:
    memfds = our_memfds()
    pool = make_pool(1)
    pid = ready_worker_pid(pool)
    os.kill(pid, signal.SIGSTOP)
    try:
        victim = pool.submit(tasks_shm.checksum, tasks_shm.array(5, 16 * MiB))
        # Sent, so lent: the channel holds its memfd for the stopped worker.
        wait_until(lambda: our_memfds() > memfds, 10.0)
    finally:
        os.kill(pid, signal.SIGKILL)
    exc = victim.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(exc, WorkerLost), repr(exc)
    del victim, exc
    wait_released(memfds)


# -- tasks that fail, time out or are cancelled --------------------------------------------


@pytest.mark.parametrize("transport", ["queue"])
def test_result_that_fails_to_pickle_leaves_no_segment(
    make_pool: Callable[..., WorkerService],
) -> None:
    pool = make_pool(1)
    exc = pool.submit(tasks_shm.big_then_unpicklable, 1, 16 * MiB).exception(timeout=RESULT_TIMEOUT)
    # The pickling error itself, with its own type, as concurrent.futures gives it.
    assert exc is not None
    assert isinstance(exc.__cause__, SerializationError), repr(exc)
    assert our_segments() == []  # unlinked by the worker itself, before it answered


@pytest.mark.parametrize("transport", ["queue"])
def test_timed_out_and_cancelled_tasks_release_their_arguments(
    make_pool: Callable[..., WorkerService],
) -> None:
    memfds = our_memfds()
    pool = make_pool(1)
    data = tasks_shm.array(6, 16 * MiB)
    timed_out = pool.options(timeout=0.5).submit(tasks_shm.run_for, 60.0, data)
    assert isinstance(timed_out.exception(timeout=RESULT_TIMEOUT), TaskTimeout)
    busy = pool.submit(tasks_shm.run_for, 60.0, data)
    wait_until(lambda: busy.running() and our_memfds() > memfds, 10.0)
    assert busy.cancel()
    wait_released(memfds)
    assert pool.submit(tasks_shm.run_for, 0.0, data).result(timeout=RESULT_TIMEOUT) == data.size


# -- the segments themselves ------------------------------------------------------------


def test_only_large_contiguous_buffers_go_out_of_band() -> None:
    # The fast path pickles once with no buffer list; a large buffer restarts
    # it on the slow path, which must still send every large buffer out of band.
    small = np.arange(100, dtype=np.uint8)
    large = np.arange(pickling.OUT_OF_BAND_MIN, dtype=np.uint8)
    strided = np.zeros(4 * pickling.OUT_OF_BAND_MIN, dtype=np.uint8)[::2]
    for obj, out_of_band in [
        ((1, "a", {}), 0),
        ((small, bytearray(10)), 0),
        ((small, large), 1),
        ((large, strided, large[:10], large.copy()), 2),
        (bytearray(large.tobytes()), 0),  # pickle writes a bytearray in band (BYTEARRAY8)
        (strided, 0),  # not contiguous: in band
    ]:
        payload, buffers = pickling.dumps(obj)
        assert len(buffers) == out_of_band, obj
        assert all(b.nbytes >= pickling.OUT_OF_BAND_MIN for b in buffers)
        back = pickling.loads(payload, buffers)
        np.testing.assert_equal(back, obj)


def test_share_and_attach_in_one_process() -> None:
    data = tasks_shm.array(8, 2 * MiB)
    desc = shm.share(data.data)
    assert desc is not None
    assert shm.is_descriptor(desc)
    mapped = shm.attach(desc)
    assert bytes(mapped) == data.tobytes()
    assert shm.attach(data.data) is not None  # not a descriptor: returned as is


def test_a_descriptor_whose_fd_was_reused_is_refused() -> None:
    first = shm.share(tasks_shm.array(1, MiB).data)
    assert first is not None
    stale = bytes(first)
    del first  # closes its memfd
    second = shm.share(tasks_shm.array(2, MiB).data)  # likely the same fd number
    assert second is not None
    with pytest.raises((OSError, ValueError)):
        shm.attach(stale)
    assert bytes(shm.attach(second)) == tasks_shm.array(2, MiB).tobytes()


def _exit_0_unless_shared(fd: int) -> None:
    # The number itself may be reused by then (multiprocessing reopens stdin).
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        os._exit(0)
    os._exit(1 if target.startswith("/memfd:pipework") else 0)


def test_a_forked_child_does_not_keep_shared_arguments() -> None:
    desc = shm.share(tasks_shm.array(1, MiB).data)
    assert desc is not None
    fd = int.from_bytes(bytes(desc[24:32]), "little")
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:pipework")
    child = multiprocessing.get_context("fork").Process(target=_exit_0_unless_shared, args=(fd,))
    child.start()
    child.join(RESULT_TIMEOUT)
    assert child.exitcode == 0


def test_segments_of_dead_processes_are_swept() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    dead_pid = int(dead.stdout)
    stale = shm.DIRECTORY / f"{shm.PREFIX}{dead_pid}-0123456789ab-1"
    live = shm.DIRECTORY / f"{shm.PREFIX}{os.getpid()}-0123456789ab-1"
    for path in (stale, live):
        path.write_bytes(b"x")
    try:
        shm.sweep_dead()
        assert not stale.exists()
        assert live.exists()  # ours: this process is alive
    finally:
        for path in (stale, live):
            path.unlink(missing_ok=True)
