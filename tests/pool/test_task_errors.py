"""What a caller sees when a task, its arguments or its result go wrong.

Unpicklable arguments fail in ``submit`` itself; a task's own exception keeps
its type with the remote traceback in ``__cause__``; an exception or result
that cannot cross the process boundary fails that task only.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipework.service import RemoteError, SerializationError, WorkerService
from tests import tasks, tasks_more
from tests.conftest import TRANSPORTS
from tests.support.processes import wait_gone

MakePool = Callable[..., WorkerService]


def _numbers() -> Iterator[int]:
    yield 1


# (fn, args, kwargs, expected .what, expected .type_name)
_LOCKED = threading.Lock()
UNPICKLABLE_CALLS = [
    # Lambdas and closures travel by value (cloudpickle): only one that holds
    # something cloudpickle cannot pickle either is refused.
    pytest.param(
        lambda x: _LOCKED.locked(),
        (1,),
        {},
        "function",
        "function",
        id="closure-over-lock-fn",
    ),
    pytest.param(
        tasks.identity, (threading.Lock(),), {}, "argument", "_thread.lock", id="lock-arg"
    ),
    pytest.param(tasks.add, (1,), {"b": _numbers()}, "argument", "generator", id="generator-kwarg"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs", "what", "type_name"), UNPICKLABLE_CALLS)
def test_unpicklable_call_fails_in_submit_and_queues_nothing(
    make_pool: MakePool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    what: str,
    type_name: str,
) -> None:
    # max_pending=1: a slot leaked by the failed submit would make the next
    # submit wait, and submit_timeout turns that wait into QueueFull.
    pool = make_pool(2, max_pending=1, submit_timeout=10)
    with pytest.raises(SerializationError) as info:
        pool.submit(fn, *args, **kwargs)
    err = info.value
    assert err.what == what
    assert err.type_name == type_name
    assert type_name in str(err)
    assert err.__cause__ is not None  # the pickling error itself
    results = pool.map(tasks.square, range(20), timeout=30)
    assert list(results) == [i * i for i in range(20)]


ERROR_TYPES = [
    pytest.param(
        tasks.raise_value_error,
        ("boom",),
        ValueError,
        {"args": ("boom",)},
        "raise_value_error",
        id="ValueError",
    ),
    pytest.param(
        tasks.raise_custom,
        (42,),
        tasks.CustomError,
        {"code": 42, "detail": "custom failure", "args": (42, "custom failure")},
        "raise_custom",
        id="CustomError",
    ),
]


@pytest.mark.parametrize(("fn", "args", "exc_type", "attrs", "frame"), ERROR_TYPES)
def test_task_exception_keeps_type_attributes_and_remote_traceback(
    pool: WorkerService,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    exc_type: type[BaseException],
    attrs: dict[str, Any],
    frame: str,
) -> None:
    future = pool.submit(fn, *args)
    exc = future.exception(timeout=30)
    assert type(exc) is exc_type
    for name, value in attrs.items():
        assert getattr(exc, name) == value
    with pytest.raises(exc_type):
        future.result(timeout=1)
    cause = str(exc.__cause__)
    assert "Traceback (most recent call last)" in cause
    assert frame in cause  # the worker-side frame, not ours


# (fn, suffix of .type_name, .message, worker-side frame in the traceback)
UNTRAVELLED = [
    pytest.param(
        tasks.raise_unpicklable,
        "UnpicklableError",
        "cannot travel",
        "raise_unpicklable",
        id="unpicklable-in-worker",
    ),
    pytest.param(tasks.raise_bad_init, "BadInitError", "a/b", "raise_bad_init", id="bad-unpickle"),
]


@pytest.mark.parametrize(("fn", "type_suffix", "message", "frame"), UNTRAVELLED)
def test_exception_that_cannot_travel_becomes_remote_error(
    pool: WorkerService, fn: Callable[..., Any], type_suffix: str, message: str, frame: str
) -> None:
    exc = pool.submit(fn).exception(timeout=30)
    assert isinstance(exc, RemoteError), repr(exc)
    assert exc.type_name.endswith(type_suffix)
    assert exc.message == message
    assert frame in exc.traceback
    assert "Traceback (most recent call last)" in exc.traceback
    assert frame in str(exc.__cause__)
    # The worker survived it and keeps serving.
    assert pool.submit(tasks.square, 5).result(timeout=30) == 25


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        pytest.param(tasks.return_unpicklable, "_thread.lock", id="unpicklable-in-worker"),
        pytest.param(tasks_more.return_bad_unpickle, "tests.tasks.BadInitError", id="bad-unpickle"),
    ],
)
def test_result_that_cannot_travel_fails_only_that_task(
    pool: WorkerService, fn: Callable[..., Any], type_name: str
) -> None:
    others = [pool.submit(tasks.sleep_then, 0.05, i) for i in range(10)]
    bad = pool.submit(fn)
    more = [pool.submit(tasks.sleep_then, 0.05, i) for i in range(10, 20)]
    exc = bad.exception(timeout=30)
    # A result the worker cannot pickle arrives as the pickling error itself
    # (as in concurrent.futures), a SerializationError naming the result as
    # its cause; one the parent cannot unpickle is a SerializationError.
    if exc is not None and not isinstance(exc, SerializationError):
        exc = exc.__cause__
    assert isinstance(exc, SerializationError), repr(exc)
    assert exc.what == "result"
    assert exc.type_name == type_name
    assert type_name in str(exc)
    assert exc.__cause__ is not None  # why it failed
    assert [f.result(timeout=30) for f in others + more] == list(range(20))


def test_argument_that_cannot_be_unpickled_in_worker_fails_only_that_task(
    pool: WorkerService,
) -> None:
    # Pickles here, fails in the worker's pickle.loads (__init__ wants two arguments).
    bad = pool.submit(tasks.identity, tasks.BadInitError("a", "b"))
    others = [pool.submit(tasks.square, i) for i in range(10)]
    exc = bad.exception(timeout=30)
    assert isinstance(exc, TypeError), repr(exc)
    assert "Traceback (most recent call last)" in str(exc.__cause__)
    assert [f.result(timeout=30) for f in others] == [i * i for i in range(10)]


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt], ids=lambda k: k.__name__)
def test_base_exception_in_task_comes_back_and_worker_keeps_serving(
    make_pool: MakePool, kind: type[BaseException]
) -> None:
    pool = make_pool(1)
    pid = pool.submit(tasks.pid_of_worker).result(timeout=30)
    exc = pool.submit(tasks_more.raise_base, kind.__name__).exception(timeout=30)
    assert type(exc) is kind
    assert "raise_base" in str(exc.__cause__)
    assert pool.submit(tasks.pid_of_worker).result(timeout=30) == pid
    assert pool.worker_pids() == [pid]


# -- values survive the round trip ----------------------------------------------------

_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
)
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module", params=TRANSPORTS, ids=lambda t: f"transport={t}")
def shared_pool(request: pytest.FixtureRequest) -> Iterator[WorkerService]:
    """One pool for every hypothesis example (@given forbids function-scoped fixtures)."""
    pool = WorkerService(2, transport=request.param)
    yield pool
    pids = pool.worker_pids()
    pool._close(True, time.monotonic() + 5.0)
    assert pool._dispatcher.join(15.0), "dispatcher thread did not finish"
    pool._collector.join(5.0)
    survivors = wait_gone(pids, 5.0)
    assert not survivors, f"worker processes left behind: {survivors}"


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(value=_values)
def test_picklable_values_round_trip_unchanged(shared_pool: WorkerService, value: Any) -> None:
    result = shared_pool.submit(tasks.identity, value).result(timeout=30)
    assert result == value
    assert repr(result) == repr(value)  # same types all the way down (1 vs 1.0 vs True)


def test_round_trip_results_come_back_via_as_completed(shared_pool: WorkerService) -> None:
    values = [[i, {"k": b"x" * i}, float(i) / 3] for i in range(50)]
    futures: dict[cf.Future[Any], Any] = {shared_pool.submit(tasks.identity, v): v for v in values}
    for future in cf.as_completed(futures, timeout=30):
        assert future.result() == futures[future]
