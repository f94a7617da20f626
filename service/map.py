"""``map``'s machinery: the input cut into chunks, chunks kept in flight, results in order.

```
 items ──▶ _Chunks ──chunk──▶ _InFlight ──submit──▶ the pool
                                  │  (at most `ahead` chunks submitted
                                  ▼   ahead of the reader)
 caller ◀── _MapIterator ◀── _results: each chunk's results, in order
```

``WorkerService.map`` checks its arguments and calls ``lazy_map``; nothing else
here is public. The input is read lazily, results already yielded are not
kept, and an error from the input comes after every result read before it.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar, final

from pipework.service.errors import PipeworkError
from pipework.service.futures import TaskFuture

__all__ = ["AUTO_CHUNK_MAX", "AUTO_CHUNK_SECONDS", "lazy_map"]

T = TypeVar("T")

AUTO_CHUNK_SECONDS = 0.05
"""``map`` with the automatic chunksize keeps a chunk's submit-to-result time near this."""
AUTO_CHUNK_MAX = 16_384
"""Largest automatic chunk, in items."""


@final
class _Chunks(Iterator[list[Any]]):
    """``map``'s input cut into chunks: of a fixed size, or sized by how long chunks take.

    The automatic size starts at 1 (the first result comes as soon as one
    item is done), grows eightfold each time a chunk finishes in less than an
    eighth of ``AUTO_CHUNK_SECONDS`` from its submit and doubles while it
    finishes in less than that, halving when one takes more than twice that.
    A chunk's time from submit includes waiting behind the other chunks in
    flight, so chunks settle at a fraction of that time each.
    """

    def __init__(self, items: Iterator[Any], size: int | None) -> None:
        self._items = items
        self.auto = size is None
        self.size = 1 if size is None else size
        self.error: Exception | None = None
        """What the input raised, until ``map`` places it; the chunk before holds what it read."""

    def __next__(self) -> list[Any]:
        chunk: list[Any] = []
        try:
            # extend() keeps the items read before the input raises.
            chunk.extend(itertools.islice(self._items, self.size))
        except Exception as exc:  # the caller's input: delivered where it stood
            self.error = exc
            self._items = iter(())
        if not chunk:
            raise StopIteration
        return chunk

    def observe(self, items: int, seconds: float) -> None:
        """A chunk of ``items`` took ``seconds`` from submit to result (any thread)."""
        if items < self.size:
            return  # from before the last change, or the input's tail
        if seconds < AUTO_CHUNK_SECONDS / 8:
            # Far under the target: tiny items. Doubling would spend a dozen
            # round trips on chunks too small to be worth their overhead.
            self.size = min(self.size * 8, AUTO_CHUNK_MAX)
        elif seconds < AUTO_CHUNK_SECONDS:
            self.size = min(self.size * 2, AUTO_CHUNK_MAX)
        elif seconds > 2 * AUTO_CHUNK_SECONDS:
            self.size = max(self.size // 2, 1)


@final
class _InFlight:
    """``map``'s chunks submitted ahead of the reader, oldest first.

    It cancels what is left when closed or garbage-collected. The iterator
    over results and the ``_MapIterator`` both hold it (never each other), so
    it lives exactly as long as someone can still read a result.
    """

    __slots__ = ("chunks", "end", "futures", "submit")

    def __init__(
        self,
        submit: Callable[[list[Any]], TaskFuture[list[Any]]],
        chunks: _Chunks,
        end: float | None,
    ) -> None:
        self.submit = submit
        self.chunks = chunks
        self.end = end
        self.futures: collections.deque[Future[list[Any]]] = collections.deque()

    def submit_next(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        future = self.submit(chunk)
        if self.chunks.auto:
            started, items, observe = time.monotonic(), len(chunk), self.chunks.observe
            future._pw_listen(lambda _: observe(items, time.monotonic() - started))
        self.futures.append(future)
        return True

    def refill(self) -> None:
        # Past the first chunks, a chunk that cannot be submitted, or an input
        # that raises, fails where its items are, so the results before it are
        # still delivered.
        try:
            self.submit_next()
        except PipeworkError as exc:
            self.fail_here(exc)
        if self.chunks.error is not None:
            self.fail_here(self.chunks.error)
            self.chunks.error = None

    def fail_here(self, exc: BaseException) -> None:
        failed: Future[list[Any]] = Future()
        failed.set_exception(exc)
        self.futures.append(failed)

    def close(self) -> None:
        while self.futures:
            self.futures.popleft().cancel()

    def __del__(self) -> None:
        self.close()


_END = object()


def _results(flight: _InFlight) -> Iterator[Iterator[Any]]:
    """Each chunk's results in order, refilling the window as chunks are taken.

    A chunk is handed out as an iterator that pops each result off the list
    as it yields it, at C speed: neither the list, nor its future, nor this
    generator keeps a result the caller has already been given (as in
    ``concurrent.futures``, whose ``map`` lets go of each result it yields).
    """
    while flight.futures:
        future = flight.futures.popleft()
        flight.refill()
        try:
            left = None if flight.end is None else flight.end - time.monotonic()
            chunk = future.result(left)
        except BaseException:
            future.cancel()  # a timed-out chunk must not keep its worker
            flight.close()
            raise
        del future
        chunk.append(_END)
        chunk.reverse()
        yield iter(chunk.pop, _END)
        del chunk


@final
class _MapIterator(Iterator[T]):
    """Results of ``map`` in order, keeping ``ahead`` chunks in flight.

    A class rather than a generator so that ``close()`` (or garbage
    collection) cancels outstanding chunks even before the first ``next()``.
    Iterating it (``for``, ``list``, ``sum``) runs over a C-level chain of the
    result chunks, not through a Python ``__next__`` call per item.
    """

    def __init__(
        self,
        submit: Callable[[list[Any]], TaskFuture[list[T]]],
        chunks: _Chunks,
        ahead: int,
        end: float | None,
    ) -> None:
        self._flight = _InFlight(submit, chunks, end)
        try:
            for _ in range(ahead):
                if not self._flight.submit_next():
                    break
        except BaseException:
            self._flight.close()  # as in concurrent.futures, map() raises for its first chunks
            raise
        error = chunks.error
        if error is not None:
            # As in concurrent.futures, which reads its whole input in map():
            # map() raises it, and what was submitted before it still runs.
            self._flight.futures.clear()
            chunks.error = None
            raise error
        self._items: Iterator[T] = itertools.chain.from_iterable(_results(self._flight))

    def __iter__(self) -> Iterator[T]:
        return self._items

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        """Cancel every chunk not yet read."""
        self._flight.close()


def lazy_map(
    submit_chunk: Callable[[list[Any]], TaskFuture[list[Any]]],
    items: Iterator[Any],
    chunksize: int | None,
    ahead: int,
    end: float | None,
) -> Iterator[Any]:
    """Results of ``items``, cut into chunks that ``submit_chunk`` sends, in input order.

    Args:
        submit_chunk: submits one chunk; its future's result is the chunk's results.
        items: the input, read lazily.
        chunksize: items per chunk; None: sized as it goes (see ``_Chunks``).
        ahead: chunks kept in flight ahead of the reader.
        end: ``time.monotonic()`` deadline for each result, or None.
    """
    return _MapIterator(submit_chunk, _Chunks(items, chunksize), ahead, end)
