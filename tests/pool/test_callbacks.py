"""Done-callbacks: where they run, what a raising one does, and submitting from one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from structlog.typing import EventDict

from pipework.service import DEFAULT_MAX_PENDING, WorkerService
from tests import tasks, tasks_more

MakePool = Callable[..., WorkerService]

COLLECTOR = "pipework-collector"


@pytest.fixture
def captured() -> Iterator[list[EventDict]]:
    """structlog events logged while the test runs.

    ``capture_logs`` leaves structlog configured, which would reroute
    pipework's logs away from ``logging`` for every later test; undo that.
    """
    was_configured = structlog.is_configured()
    with capture_logs() as entries:
        yield entries
    if not was_configured:
        structlog.reset_defaults()


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A path a ``wait_for_path`` task blocks on until the test creates it."""
    return tmp_path / "gate"


def _recorder() -> tuple[list[str], threading.Event, Callable[[Any], None]]:
    names: list[str] = []
    called = threading.Event()

    def record(_future: Any) -> None:
        names.append(threading.current_thread().name)
        called.set()

    return names, called, record


def test_callback_runs_on_collector_thread(pool: WorkerService, gate: Path) -> None:
    future = pool.submit(tasks_more.wait_for_path, str(gate), "v")
    names, called, record = _recorder()
    future.add_done_callback(record)
    assert not future.done()  # the gate is shut: the callback cannot have run here
    gate.touch()
    assert called.wait(30)
    assert names == [COLLECTOR]
    assert future.result(timeout=1) == "v"


@pytest.mark.parametrize("error", [RuntimeError, SystemExit], ids=lambda e: e.__name__)
def test_raising_callback_is_logged_and_others_still_run(
    pool: WorkerService, gate: Path, captured: list[EventDict], error: type[BaseException]
) -> None:
    first = pool.submit(tasks_more.wait_for_path, str(gate), 1)
    second = pool.submit(tasks_more.wait_for_path, str(gate), 2)
    ran: list[tuple[int, str]] = []
    all_ran = threading.Event()

    def good(tag: str) -> Callable[[Any], None]:
        def callback(future: Any) -> None:
            ran.append((future.result(), tag))
            if len(ran) == 3:
                all_ran.set()

        return callback

    def bad(_future: Any) -> None:
        raise error("callback failure")

    first.add_done_callback(good("before"))
    first.add_done_callback(bad)
    first.add_done_callback(good("after"))
    second.add_done_callback(good("other"))
    assert not first.done()
    assert not second.done()
    gate.touch()
    assert all_ran.wait(30), ran
    assert sorted(ran) == [(1, "after"), (1, "before"), (2, "other")]
    # Callbacks of one future run in order; the bad one sits between two good ones.
    assert [tag for value, tag in ran if value == 1] == ["before", "after"]
    events = [e for e in captured if e.get("event") == "callback raised"]
    assert len(events) == 1, captured
    assert events[0]["task_id"] == first.task_id
    assert events[0]["log_level"] == "error"
    # The collector is not stalled: later work still resolves with callbacks.
    later = pool.submit(tasks.square, 3)
    _, called, record = _recorder()
    later.add_done_callback(record)
    assert called.wait(30)
    assert later.result(timeout=1) == 9


@pytest.mark.parametrize("max_pending", [1, DEFAULT_MAX_PENDING], ids=lambda n: f"max_pending={n}")
def test_callbacks_can_chain_submits_without_deadlock(
    make_pool: MakePool, max_pending: int
) -> None:
    pool = make_pool(2, max_pending=max_pending)
    steps = 100
    seen: list[int] = []
    threads: set[str] = set()
    finished = threading.Event()
    failures: list[BaseException] = []

    def next_step(future: Any) -> None:
        threads.add(threading.current_thread().name)
        try:
            n = future.result()
            seen.append(n)
            if n >= steps:
                finished.set()
                return
            # Submitted from the collector thread while the finishing task
            # still holds its slot: must be admitted over max_pending.
            pool.submit(tasks.add, n, b=1).add_done_callback(next_step)
        except BaseException as exc:
            failures.append(exc)
            finished.set()
            raise

    pool.submit(tasks.add, 0, b=1).add_done_callback(next_step)
    assert finished.wait(45), f"chain stalled after {len(seen)} steps"
    assert not failures, failures
    assert seen == list(range(1, steps + 1))
    # Every step but (perhaps) the first ran on the collector thread.
    assert threads <= {COLLECTOR, threading.current_thread().name}
    assert COLLECTOR in threads
    assert pool.submit(tasks.square, 4).result(timeout=30) == 16


def test_callback_added_after_completion_runs_at_once_in_caller(pool: WorkerService) -> None:
    future = pool.submit(tasks.square, 6)
    assert future.result(timeout=30) == 36
    names, called, record = _recorder()
    future.add_done_callback(record)
    assert called.is_set()  # synchronously, before add_done_callback returned
    assert names == [threading.current_thread().name]


def test_raising_callback_added_after_completion_is_logged_not_raised(
    pool: WorkerService, captured: list[EventDict]
) -> None:
    future = pool.submit(tasks.square, 2)
    assert future.result(timeout=30) == 4

    def bad(_future: Any) -> None:
        raise ValueError("late callback failure")

    future.add_done_callback(bad)  # must not raise here
    events = [e for e in captured if e.get("event") == "callback raised"]
    assert [e["task_id"] for e in events] == [future.task_id]
