"""Heartbeating transports find a worker that is alive but silent, and only that one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pipework.service import WorkerLost, WorkerService
from pipework.service.transports.zmq import ZmqTransport
from tests import tasks
from tests.support.processes import wait_gone
from tests.support.waiting import wait_until

HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture(params=["ipc", "tcp"], ids=lambda w: f"transport=zmq-{w}")
def transport(request: pytest.FixtureRequest) -> ZmqTransport:
    """A zmq transport with a short heartbeat, so a silent worker is found quickly."""
    return ZmqTransport(request.param, heartbeat_timeout=HEARTBEAT_TIMEOUT)


def test_stopped_worker_is_declared_lost_and_replaced(make_pool, tmp_path: Path) -> None:
    pool: WorkerService = make_pool(2)
    mark = tmp_path / "started"
    stuck = pool.submit(tasks.touch_then, str(mark), "sleep_then", 60, None)
    wait_until(mark.exists)
    victim = _running_pid(pool, stuck.task_id)
    os.kill(victim, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        stuck.result(timeout=HEARTBEAT_TIMEOUT + 20)
    assert time.monotonic() - start >= HEARTBEAT_TIMEOUT * 0.5
    assert info.value.pid == victim
    assert info.value.signal == "SIGKILL"
    assert wait_gone([victim], 5.0) == []
    assert pool.submit(tasks.square, 7).result(timeout=30) == 49


def test_worker_holding_the_gil_past_the_heartbeat_timeout_is_not_lost(make_pool) -> None:
    # libzmq's I/O thread answers pings without the GIL: slow is not dead.
    pool: WorkerService = make_pool(1)
    future = pool.submit(tasks.spin_in_c, HEARTBEAT_TIMEOUT * 1.5)
    assert future.result(timeout=HEARTBEAT_TIMEOUT * 1.5 + 20) is None


def _running_pid(pool: WorkerService, task_id: int) -> int:
    for handle in list(pool._dispatcher._workers):
        if handle.tasks and handle.tasks[0].id == task_id and handle.pid is not None:
            return handle.pid
    raise AssertionError(f"task {task_id} is not running")
