"""``map``: ordered results, zip semantics, errors and timeouts, lazy bounded input."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import operator
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

import pytest

from pipework.service import SerializationError, TaskFuture, WorkerService
from tests import tasks, tasks_more

MakePool = Callable[..., WorkerService]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def _record_submits(
    pool: WorkerService, monkeypatch: pytest.MonkeyPatch, sizes: list[int] | None = None
) -> list[TaskFuture[Any]]:
    """Every future ``pool.map`` submits from now on (map calls ``pool.submit``),
    and each chunk's size in ``sizes`` (map empties a chunk's result as it yields it)."""
    futures: list[TaskFuture[Any]] = []
    submit = pool.submit

    def recording(fn: Any, /, *args: Any, **kwargs: Any) -> TaskFuture[Any]:
        future = submit(fn, *args, **kwargs)
        futures.append(future)
        if sizes is not None:
            sizes.append(len(args[1]))
        return future

    monkeypatch.setattr(pool, "submit", recording)
    return futures


@pytest.mark.parametrize("chunksize", [None, 1, 7, 1000], ids=lambda c: f"chunksize={c}")
@pytest.mark.parametrize("n", [0, 1, 10, 2500], ids=lambda n: f"items={n}")
def test_results_in_order(pool: WorkerService, n: int, chunksize: int | None) -> None:
    results = pool.map(tasks.square, range(n), chunksize=chunksize, timeout=60)
    assert list(results) == [i * i for i in range(n)]


@pytest.mark.parametrize("chunksize", [1, 3], ids=lambda c: f"chunksize={c}")
def test_multiple_iterables_zip_to_the_shortest(pool: WorkerService, chunksize: int) -> None:
    results = pool.map(tasks.add, range(10), range(100, 107), chunksize=chunksize, timeout=30)
    assert list(results) == list(map(operator.add, range(10), range(100, 107)))
    assert list(pool.map(tasks.add, [], range(5), timeout=30)) == []


@pytest.mark.parametrize("chunksize", [None, 1, 3], ids=lambda c: f"chunksize={c}")
def test_one_iterable_passes_each_item_as_one_argument(
    pool: WorkerService, chunksize: int | None
) -> None:
    # Items of one iterable travel bare, not as 1-tuples: a tuple item must
    # still reach the function whole, never unpacked into several arguments.
    items: list[Any] = [(1, 2), (), [3], None, "ab"]
    assert list(pool.map(tasks.identity, items, chunksize=chunksize, timeout=30)) == items


def test_next_and_for_loops_share_one_stream(pool: WorkerService) -> None:
    # ``for`` runs over a C-level chain of the chunks; next() must read the same stream.
    results = pool.map(tasks.square, range(50), chunksize=7, timeout=30)
    head = [next(results), next(results)]
    middle = list(itertools.islice(results, 10))
    rest = list(results)
    assert head + middle + rest == [i * i for i in range(50)]
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 7], ids=lambda c: f"chunksize={c}")
def test_exception_raises_when_its_item_is_reached(pool: WorkerService, chunksize: int) -> None:
    bad = 10
    # The bad item fails at once while the items before it take a while, so
    # its failure is known first; it must still surface only in its turn.
    results = pool.map(
        tasks_more.fail_on, range(30), itertools.repeat(bad), itertools.repeat(0.02),
        chunksize=chunksize, timeout=30,
    )  # fmt: skip
    seen: list[int] = []
    with pytest.raises(ValueError, match="item 10 is bad"):
        seen.extend(results)  # keeps what came out before the error
    # Everything in the chunks before the bad item's chunk came out first.
    assert seen == list(range(bad // chunksize * chunksize))
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 3], ids=lambda c: f"chunksize={c}")
def test_unpicklable_item_raises_when_reached(pool: WorkerService, chunksize: int) -> None:
    bad = 10
    items: list[Any] = list(range(30))
    items[bad] = threading.Lock()
    # Submitted lazily, the bad item's chunk fails to pickle while earlier
    # results are still unread; those must not be lost, and the error must
    # name the item's type, not the chunk's.
    results = pool.map(tasks.identity, items, chunksize=chunksize, buffersize=2, timeout=30)
    seen: list[int] = []
    with pytest.raises(SerializationError) as info:
        seen.extend(results)
    assert seen == list(range(bad // chunksize * chunksize))
    assert info.value.type_name == "_thread.lock"
    assert list(pool.map(tasks.square, range(3), timeout=30)) == [0, 1, 4]


def test_timeout_raises_and_frees_the_worker(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1)
    futures = _record_submits(pool, monkeypatch)
    results = pool.map(tasks.sleep_then, [30.0, 30.0, 30.0], timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - start < 10
    assert issubclass(cf.TimeoutError, TimeoutError)
    # As concurrent.futures does, no task of the map is left to run on, not
    # even the one whose result timed out: the single worker is free again.
    assert len(futures) == 3
    assert [f.done() for f in futures] == [True, True, True]
    assert pool.submit(tasks.square, 3).result(timeout=10) == 9


class _Closable(Iterator[T_co], Protocol):
    def close(self) -> None: ...


def _closable(results: Iterator[T]) -> _Closable[T]:
    """``map``'s iterator, which has ``close()`` (as the generator of ``concurrent.futures``)."""
    assert callable(getattr(results, "close", None)), type(results)
    return cast("_Closable[T]", results)


def _counting(source: Iterator[int], counter: list[int]) -> Iterator[int]:
    for item in source:
        counter[0] += 1
        yield item


@pytest.mark.parametrize(
    ("chunksize", "buffersize"),
    [(1, None), (1, 3), (7, 2), (7, None)],
    ids=str,
)
def test_lazy_over_an_infinite_input(
    pool: WorkerService, chunksize: int, buffersize: int | None
) -> None:
    pulled = [0]
    results = _closable(
        pool.map(
            tasks.square,
            _counting(itertools.count(), pulled),
            chunksize=chunksize,
            buffersize=buffersize,
            timeout=60,
        )
    )
    first = list(itertools.islice(results, 100))
    assert first == [i * i for i in range(100)]
    ahead = buffersize if buffersize is not None else 4 * pool.max_workers
    # 100 items read, ``ahead`` chunks in flight, plus the rest of the current chunk.
    assert pulled[0] <= 100 + ahead * chunksize + chunksize, pulled[0]
    results.close()


@pytest.mark.parametrize("read", [0, 1], ids=lambda n: f"read={n}")
def test_closing_the_iterator_cancels_outstanding_work(
    pool: WorkerService, monkeypatch: pytest.MonkeyPatch, read: int
) -> None:
    futures = _record_submits(pool, monkeypatch)
    # Item 0 returns at once; every later one would run for 30 s.
    results = _closable(pool.map(tasks_more.fast_then_slow, range(10), buffersize=6, timeout=30))
    assert list(itertools.islice(results, read)) == [0] * read
    results.close()
    assert len(futures) == 6 + read  # six ahead of the reader, one more per result read
    # Nothing the map submitted is left pending or running: the rest is cancelled.
    assert all(f.done() for f in futures), futures
    assert all(f.cancelled() for f in futures[1:]), futures
    # Workers killed to cancel running tasks are replaced; the pool still works.
    assert list(pool.map(tasks.square, range(8), timeout=30)) == [i * i for i in range(8)]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_invalid_chunksize_is_value_error(pool: WorkerService, chunksize: int) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(tasks.square, range(3), chunksize=chunksize)


def test_unpicklable_function_fails_in_map_itself(pool: WorkerService) -> None:
    lock = threading.Lock()  # a lambda travels by value; one holding a lock cannot
    with pytest.raises(SerializationError) as info:
        pool.map(lambda x: lock.locked(), range(3))
    assert info.value.type_name == "function"
    assert list(pool.map(tasks.square, range(3), timeout=30)) == [0, 1, 4]


def test_automatic_chunks_grow_for_tiny_items_and_stay_small_for_slow_ones(
    pool: WorkerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers up first: a chunk that waits for a worker to start looks slow.
    assert [f.result(timeout=30) for f in [pool.submit(tasks.square, i) for i in range(8)]] == [
        i * i for i in range(8)
    ]
    sizes: list[int] = []
    _record_submits(pool, monkeypatch, sizes)
    assert list(pool.map(tasks.square, range(20_000), timeout=60)) == [i * i for i in range(20_000)]
    assert sizes[0] == 1  # the first result does not wait for a big chunk
    assert max(sizes) >= 256, sizes  # tiny items end up travelling many to a task
    # ... and soon: a chunk of tiny items that comes back far under the target
    # makes the next ones eight times larger, not twice.
    steps = [b / a for a, b in itertools.pairwise(dict.fromkeys(sizes)) if b > a]
    assert 8 in steps, sizes
    sizes.clear()
    slow = list(pool.map(tasks.sleep_then, [0.06] * 6, range(6), timeout=60))
    assert slow == list(range(6))
    assert sizes == [1] * 6  # each takes longer than the target
