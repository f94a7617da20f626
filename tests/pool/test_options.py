"""Per-task ``options()`` and constructor validation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipework.service import TaskTimeout, WorkerLost, WorkerService
from tests import tasks, tasks_more

MakePool = Callable[..., WorkerService]


def test_options_has_submit_and_map(pool: WorkerService) -> None:
    opts = pool.options(timeout=30.0, retries=1)
    assert opts.submit(tasks.add, 2, b=5).result(timeout=30) == 7
    assert list(opts.map(tasks.square, range(10), chunksize=3, timeout=30)) == [
        i * i for i in range(10)
    ]


@pytest.mark.parametrize(
    ("pool_timeout", "option_timeout"),
    [(None, 0.5), (0.5, None), (60.0, 0.5)],
    ids=["option-only", "inherited-from-pool", "option-overrides-pool"],
)
def test_options_timeout_applies(
    make_pool: MakePool, pool_timeout: float | None, option_timeout: float | None
) -> None:
    pool = make_pool(1, task_timeout=pool_timeout)
    future = pool.options(timeout=option_timeout).submit(tasks.sleep_then, 30.0)
    exc = future.exception(timeout=20)
    assert isinstance(exc, TaskTimeout), repr(exc)
    assert exc.timeout == 0.5
    assert exc.task_id == future.task_id
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9


@pytest.mark.parametrize(
    ("pool_retries", "option_retries", "survives"),
    [(0, None, False), (0, 1, True), (1, None, True), (1, 0, False)],
    ids=["none", "option-only", "inherited-from-pool", "option-overrides-pool"],
)
def test_options_retries_apply(
    make_pool: MakePool,
    tmp_path: Path,
    pool_retries: int,
    option_retries: int | None,
    survives: bool,
) -> None:
    pool = make_pool(1, retries=pool_retries)
    future = pool.options(retries=option_retries).submit(
        tasks_more.die_once, str(tmp_path / "died")
    )
    if survives:
        assert future.result(timeout=30) == "survived"
    else:
        exc = future.exception(timeout=30)
        assert isinstance(exc, WorkerLost), repr(exc)
        assert exc.exitcode == 9
        assert exc.task_id == future.task_id


def _ids(cases: list[tuple[Any, ...]]) -> list[str]:
    def show(v: Any) -> str:
        return v.__name__ if callable(v) else repr(v)

    return ["+".join(f"{k}={show(v)}" for k, v in kwargs.items()) for kwargs, *_ in cases]


# (options kwargs, error type)
BAD_OPTIONS = [
    ({"timeout": -1}, ValueError),
    ({"timeout": 0}, ValueError),
    ({"timeout": "1"}, TypeError),
    ({"retries": -1}, ValueError),
    ({"retries": 1.5}, TypeError),
    ({"retries": True}, TypeError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_OPTIONS, ids=_ids(BAD_OPTIONS))
def test_options_rejects_bad_values_at_once(
    make_pool: MakePool, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    pool = make_pool(1)
    (name,) = kwargs
    with pytest.raises(error, match=name):
        pool.options(**kwargs)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _pipework_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("pipework-")}


def _construct(**kwargs: Any) -> None:
    """Build a ``WorkerService`` that validation should reject; clean up if it did not."""
    leaked = WorkerService(**kwargs)
    leaked.shutdown(wait=True, cancel_futures=True)


# (constructor kwargs, error type, the argument named in the message)
BAD_SETTINGS = [
    ({"max_workers": 0}, ValueError, "max_workers"),
    ({"max_workers": -1}, ValueError, "max_workers"),
    ({"max_workers": 1.5}, TypeError, "max_workers"),
    ({"max_pending": 0}, ValueError, "max_pending"),
    ({"max_pending": None}, TypeError, "max_pending"),
    ({"task_timeout": -1}, ValueError, "task_timeout"),
    ({"task_timeout": 0}, ValueError, "task_timeout"),
    ({"retries": -1}, ValueError, "retries"),
    ({"max_tasks_per_worker": 0}, ValueError, "max_tasks_per_worker"),
    ({"max_memory_per_worker": 0}, ValueError, "max_memory_per_worker"),
    ({"submit_timeout": -1}, ValueError, "submit_timeout"),
    ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
    ({"start_method": "nope"}, ValueError, "start_method"),
    ({"transport": "nope"}, ValueError, "transport"),
    ({"initializer": 42}, TypeError, "initializer"),
    ({"initializer": tasks.remember, "initargs": ["k", 1]}, TypeError, "initargs"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    BAD_SETTINGS,
    ids=_ids(BAD_SETTINGS),
)
def test_constructor_rejects_bad_settings_without_starting_anything(
    transport: str, kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    kwargs = {"transport": transport, **kwargs}
    children = _children()
    threads = _pipework_threads()
    with pytest.raises(error, match=name):
        _construct(**kwargs)
    assert _children() == children
    assert _pipework_threads() == threads
