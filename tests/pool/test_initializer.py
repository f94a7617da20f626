"""The worker initializer: state it sets, and a broken one breaking the service cleanly."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipework.service import BrokenService, SerializationError, WorkerService
from tests import tasks, tasks_more
from tests.support.processes import descendants, wait_gone

MakePool = Callable[..., WorkerService]


def _wait_all(futures: Sequence[cf.Future[Any]], timeout: float) -> None:
    _, not_done = cf.wait(futures, timeout=timeout)
    assert not not_done, f"{len(not_done)} futures never resolved"


def _shutdown_within(pool: WorkerService, timeout: float) -> None:
    """``shutdown(wait=True)``, failing the test instead of hanging if it does not return."""
    thread = threading.Thread(target=pool.shutdown, name="test-shutdown", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"shutdown did not return within {timeout} s"


# (initializer, the exception it raises, its str(), the worker-side frame)
RAISING = [
    pytest.param(
        tasks.die_in_initializer,
        RuntimeError,
        "initializer exploded",
        "die_in_initializer",
        id="RuntimeError",
    ),
    pytest.param(
        tasks_more.exit_in_initializer, SystemExit, "5", "exit_in_initializer", id="SystemExit"
    ),
]


def _assert_broken_by(
    err: BaseException | None, cause_type: type[BaseException], message: str, frame: str
) -> None:
    assert isinstance(err, BrokenService), repr(err)
    assert isinstance(err, cf.BrokenExecutor)
    cause = err.__cause__
    assert type(cause) is cause_type, repr(cause)
    assert str(cause) == message
    assert frame in err.traceback
    assert "Traceback (most recent call last)" in err.traceback
    assert cause_type.__name__ in str(err)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_initializer_state_is_visible_to_tasks(make_pool: MakePool, start_method: str) -> None:
    pool = make_pool(
        2, start_method=start_method, initializer=tasks.remember, initargs=("key", [1, "two"])
    )
    futures = [pool.submit(tasks.recall, "key") for _ in range(10)]
    assert [f.result(timeout=30) for f in futures] == [[1, "two"]] * 10


@pytest.mark.parametrize(("initializer", "cause_type", "message", "frame"), RAISING)
def test_raising_initializer_breaks_the_service(
    make_pool: MakePool,
    initializer: Callable[[], None],
    cause_type: type[BaseException],
    message: str,
    frame: str,
) -> None:
    pool = make_pool(2, initializer=initializer)
    # Submitted before any worker can have run the initializer: pending tasks.
    pending = [pool.submit(tasks.square, i) for i in range(5)]
    _wait_all(pending, 30)
    for future in pending:
        _assert_broken_by(future.exception(timeout=0), cause_type, message, frame)
    with pytest.raises(BrokenService) as info:
        pool.submit(tasks.square, 1)
    _assert_broken_by(info.value, cause_type, message, frame)
    with pytest.raises(cf.BrokenExecutor):
        pool.map(tasks.square, range(3))
    _shutdown_within(pool, 15)


def test_raising_initializer_is_not_a_crash_loop(make_pool: MakePool, tmp_path: Path) -> None:
    starts = str(tmp_path / "starts")
    pool = make_pool(2, initializer=tasks_more.count_then_die, initargs=(starts,))
    future = pool.submit(tasks.square, 2)
    _assert_broken_by(
        future.exception(timeout=30), RuntimeError, "initializer exploded", "die_in_initializer"
    )
    # A broken pool's dispatcher starts no worker and ends once its workers are reaped:
    # after that, a crash loop would have shown itself in the count of worker starts.
    assert pool._dispatcher.join(15.0), "the broken pool's dispatcher did not finish"
    assert 1 <= tasks_more.starts_recorded(starts) <= pool.max_workers
    assert not wait_gone([p.pid for p in descendants()], 10), "workers of a broken pool linger"
    assert tasks_more.starts_recorded(starts) <= pool.max_workers
    with pytest.raises(BrokenService):
        pool.submit(tasks.square, 3)


def _construct(**kwargs: Any) -> None:
    """Build a ``WorkerService`` that validation should reject; clean up if it did not."""
    leaked = WorkerService(**kwargs)
    leaked.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize(
    ("initializer", "initargs", "type_name"),
    [
        pytest.param(lambda: None, (), "function", id="lambda"),
        pytest.param(tasks.remember, ("k", threading.Lock()), "_thread.lock", id="lock-initarg"),
    ],
)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_unpicklable_initializer_fails_in_constructor(
    start_method: str,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
    type_name: str,
) -> None:
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(SerializationError) as info:
        _construct(
            max_workers=2, start_method=start_method, initializer=initializer, initargs=initargs
        )
    # It names the object that cannot be pickled, as submit() does for arguments.
    assert info.value.type_name == type_name
    assert info.value.what in {"initializer", "initargs"}
    assert type_name in str(info.value)
    assert {p.pid for p in psutil.Process().children(recursive=True)} == children


def test_unpicklable_initializer_is_fine_with_fork(make_pool: MakePool) -> None:
    pool = make_pool(1, start_method="fork", initializer=lambda: tasks.remember("via", "fork"))
    assert pool.submit(tasks.recall, "via").result(timeout=30) == "fork"


def test_initializer_that_exits_breaks_after_a_few_attempts(
    make_pool: MakePool, tmp_path: Path
) -> None:
    starts = str(tmp_path / "starts")
    pool = make_pool(2, initializer=tasks_more.count_then_exit, initargs=(starts, 7))
    future = pool.submit(tasks.square, 2)
    exc = future.exception(timeout=30)
    assert isinstance(exc, BrokenService), repr(exc)
    assert isinstance(exc, cf.BrokenExecutor)
    assert "exited while starting" in str(exc)
    assert "exit code 7" in str(exc)
    with pytest.raises(BrokenService, match="exited while starting"):
        pool.submit(tasks.square, 3)
    assert pool._dispatcher.join(15.0), "the broken pool's dispatcher did not finish"
    started = tasks_more.starts_recorded(starts)
    assert 3 <= started <= 6, f"{started} workers started: a crash loop?"
    assert not wait_gone([p.pid for p in descendants()], 10), "workers of a broken pool linger"
    assert tasks_more.starts_recorded(starts) == started
    _shutdown_within(pool, 15)
