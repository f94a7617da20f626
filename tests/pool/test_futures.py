"""TaskFuture keeps every ``concurrent.futures.Future`` behaviour though it is slim.

It shares one lock between all futures and builds no Condition, so these
tests drive it the ways cf code does: ``wait`` in each mode, ``as_completed``,
``result``/``exception`` with timeouts from many threads at once, asyncio's
``wrap_future``, and the state errors of ``set_result``/``set_exception``.
Most use bare futures (no pool) so each state change happens exactly when
the test says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from typing import Any

import pytest

from pipework.service import WorkerService
from pipework.service.futures import TaskFuture
from pipework.service.ledger import Task
from tests.support.waiting import wait_until
from tests.tasks import add, raise_value_error, sleep_then

pytestmark = pytest.mark.timeout(30)


def _future(task_id: int = 1) -> TaskFuture[object]:
    cancelled: list[tuple[Task, bool]] = []
    return TaskFuture(Task(task_id, b"", (), None, 0), lambda t, r: cancelled.append((t, r)))


def test_is_a_concurrent_futures_future_without_a_condition_of_its_own() -> None:
    a, b = _future(1), _future(2)
    assert isinstance(a, cf.Future)
    assert a._condition is b._condition  # shared, not built per future
    assert not a.done()
    assert not a.running()
    assert not a.cancelled()


def test_result_and_exception_wait_then_return_or_raise() -> None:
    ok, bad = _future(1), _future(2)
    threading.Timer(0.05, ok.set_result, (7,)).start()
    threading.Timer(0.05, bad.set_exception, (KeyError("k"),)).start()
    assert ok.result(timeout=5) == 7
    assert ok.exception() is None
    assert isinstance(bad.exception(timeout=5), KeyError)
    with pytest.raises(KeyError):
        bad.result()


def test_timeouts_and_cancellation_raise_what_cf_raises() -> None:
    fut = _future()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        fut.exception(timeout=0)
    assert fut.cancel()
    assert fut.cancel()
    with pytest.raises(cf.CancelledError):
        fut.result()
    with pytest.raises(cf.CancelledError):
        fut.exception()
    assert not fut._waiters  # every waiter removed itself


def test_setting_a_done_future_twice_is_an_invalid_state() -> None:
    fut = _future()
    fut.set_result(1)
    with pytest.raises(cf.InvalidStateError):
        fut.set_result(2)
    with pytest.raises(cf.InvalidStateError):
        fut.set_exception(ValueError())
    assert not fut.cancel()
    assert fut.result() == 1


def test_set_running_or_notify_cancel_follows_cf() -> None:
    fut = _future()
    assert fut.set_running_or_notify_cancel()
    assert fut.running()
    with pytest.raises(RuntimeError):
        fut.set_running_or_notify_cancel()
    other = _future()
    other._state = cf._base.CANCELLED
    assert not other.set_running_or_notify_cancel()
    assert other.cancelled()


def test_many_threads_block_on_many_futures_and_each_gets_its_own() -> None:
    futures = [_future(i) for i in range(40)]
    got: dict[int, object] = {}
    lock = threading.Lock()

    def read(i: int) -> None:
        value = futures[i].result(timeout=10)
        with lock:
            got[i] = value

    threads = [threading.Thread(target=read, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    # Let them block (not required for correctness): each result() registers a waiter.
    wait_until(lambda: all(f._waiters for f in futures), 10, "every reader to block")
    for i in reversed(range(40)):
        futures[i].set_result(i * 10)
    for t in threads:
        t.join(10)
    assert got == {i: i * 10 for i in range(40)}


@pytest.mark.parametrize("mode", [cf.FIRST_COMPLETED, cf.FIRST_EXCEPTION, cf.ALL_COMPLETED])
def test_wait_mixes_task_futures_and_plain_futures(mode: str) -> None:
    ours, plain, failing = _future(1), cf.Future[object](), _future(2)
    threading.Timer(0.05, failing.set_exception, (ValueError("x"),)).start()
    threading.Timer(0.1, ours.set_result, (1,)).start()
    threading.Timer(0.15, plain.set_result, (2,)).start()
    done, not_done = cf.wait([ours, plain, failing], timeout=5, return_when=mode)
    assert failing in done
    if mode == cf.ALL_COMPLETED:
        assert done == {ours, plain, failing}
        assert not not_done
    cf.wait([ours, plain], timeout=5)
    assert not ours._waiters


def test_wait_wakes_on_cancel() -> None:
    fut = _future()
    threading.Timer(0.05, fut.cancel).start()
    done, _ = cf.wait([fut], timeout=5, return_when=cf.FIRST_COMPLETED)
    assert done == {fut}
    assert fut.cancelled()


def test_as_completed_yields_each_once_and_times_out() -> None:
    futures = [_future(i) for i in range(5)]
    for i, fut in enumerate(futures[:4]):
        threading.Timer(0.01 * (5 - i), fut.set_result, (i,)).start()
    seen: list[int] = []

    def drain() -> None:
        for fut in cf.as_completed(list[cf.Future[object]](futures), timeout=1.0):
            seen.append(fut.result())  # type: ignore[arg-type]

    with pytest.raises(TimeoutError):
        drain()
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(not f._waiters for f in futures)


def test_callbacks_run_once_in_order_and_at_once_when_done() -> None:
    fut = _future()
    calls: list[str] = []
    fut.add_done_callback(lambda f: calls.append("a"))
    fut.add_done_callback(lambda f: calls.append("b"))
    fut.set_result(None)
    fut.add_done_callback(lambda f: calls.append("c"))
    assert calls == ["a", "b", "c"]


def test_asyncio_wraps_it() -> None:
    with WorkerService(max_workers=1) as pool:

        async def main() -> list[object]:
            loop = asyncio.get_running_loop()
            ok = loop.run_in_executor(pool, add, 2, 3)
            bad = asyncio.wrap_future(pool.submit(raise_value_error, "no"))
            return list(await asyncio.gather(ok, bad, return_exceptions=True))

        ok, bad = asyncio.run(main())
    assert ok == 5
    assert isinstance(bad, Exception)
    assert "no" in str(bad)


def test_pool_futures_under_wait_and_as_completed() -> None:
    with WorkerService(max_workers=2) as pool:
        futures = [pool.submit(add, i, 1) for i in range(200)]
        slow = pool.submit(sleep_then, 0.2, "slow")
        done, _ = cf.wait([*futures, slow], timeout=20, return_when=cf.FIRST_COMPLETED)
        assert done
        results = [f.result() for f in cf.as_completed(list[cf.Future[int]](futures), timeout=20)]
        assert sorted(results) == list(range(1, 201))
        assert slow.result(timeout=20) == "slow"


def test_internal_listener_runs_once_on_the_resolving_thread() -> None:
    # pipework's own listener (the daemon's, map's) runs where the future is
    # resolved: on the dispatcher thread for a small plain result, with no hop
    # to the collector; on the collector's for an exception; inline on cancel.
    heard: list[tuple[str, bool]] = []
    done = threading.Event()

    def listen(future: cf.Future[Any]) -> None:
        heard.append((threading.current_thread().name, future.done()))
        done.set()

    with WorkerService(max_workers=1) as pool:
        # Each task waits behind a sleeper on the one worker, so its listener
        # is in place before it can finish.
        pool.submit(sleep_then, 0.2)
        ok = pool.submit(add, 1, 2)
        ok._pw_listen(listen)
        assert ok.result(timeout=20) == 3
        assert done.wait(20)
        assert heard == [("pipework-dispatcher", True)]

        heard.clear()
        done.clear()
        pool.submit(sleep_then, 0.2)
        bad = pool.submit(raise_value_error, "no")
        bad._pw_listen(listen)
        with pytest.raises(ValueError, match="no"):
            bad.result(timeout=20)
        assert done.wait(20)
        assert heard == [("pipework-collector", True)]

        heard.clear()
        slow = pool.submit(sleep_then, 30)
        slow._pw_listen(listen)
        assert slow.cancel()
        assert heard == [("MainThread", True)]

    late = _future()
    late.set_result(1)
    heard.clear()
    late._pw_listen(listen)  # already done: at once, here
    assert heard == [("MainThread", True)]


def test_a_raising_internal_listener_is_logged_and_the_future_still_resolves() -> None:
    future = _future()

    def broken(_: cf.Future[object]) -> None:
        raise RuntimeError("listener bug")

    future._pw_listen(broken)
    future.set_result(5)
    assert future.result(timeout=1) == 5
