"""Fixtures shared by the behaviour suite.

``make_pool`` builds ``WorkerService`` instances over every transport (the
``transport`` parameter) and, at teardown, shuts them down with a bound and
checks that every worker process they started is gone, killing leftovers by
pid and failing the test if there were any.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipework.service import WorkerService
from pipework.service.transports import NAMES
from tests.support.processes import descendants, wait_gone

TRANSPORTS = list(NAMES)
"""Every transport ``WorkerService`` accepts by name (``zmq``: ipc://, ``zmq+tcp``: loopback)."""


@pytest.fixture(params=TRANSPORTS, ids=lambda t: f"transport={t}")
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_pool(transport: str) -> Iterator[Callable[..., WorkerService]]:
    pools: list[WorkerService] = []
    # Processes alive before the test (a module-scoped pool's workers) are not its to check.
    before = {p.pid for p in descendants()}

    def make(max_workers: int = 2, **kwargs: Any) -> WorkerService:
        kwargs.setdefault("transport", transport)
        pool = WorkerService(max_workers, **kwargs)
        pools.append(pool)
        return pool

    yield make

    leaked = []
    for pool in pools:
        pool._close(True, time.monotonic() + 5.0)
        if not pool._dispatcher.join(15.0):
            leaked.append("dispatcher thread did not finish")
        pool._collector.join(5.0)
    stray = [p.pid for p in descendants() if p.pid not in before]
    survivors = wait_gone(stray, 5.0)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, leaked
    assert not survivors, f"worker processes left behind: {survivors}"


@pytest.fixture
def pool(make_pool: Callable[..., WorkerService]) -> WorkerService:
    """A two-worker pool on the parametrized transport."""
    return make_pool(2)


# tests/daemon/test_status_page.py screenshots the status page here; CI keeps it.
STATUS_PAGE_SHOT = Path(__file__).resolve().parent.parent / ".ci" / "artifacts" / "status-page.png"
_SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the status page screenshot when this run made one (before the closing line)."""
    try:
        made = STATUS_PAGE_SHOT.stat().st_mtime >= _SESSION_STARTED
    except OSError:
        return
    if made:
        terminalreporter.write_sep("-", "artifacts")
        terminalreporter.write_line(f"status page screenshot: {STATUS_PAGE_SHOT}")
