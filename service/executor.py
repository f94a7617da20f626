"""``WorkerService``: a ``concurrent.futures.Executor`` that survives its workers.

```
 caller ── submit ──▶ pickle (SerializationError here) ──▶ Ledger (max_pending) ──▶ Dispatcher
 caller ◀── TaskFuture ◀── Collector (callbacks) ◀────────────────────────────────────┘
```

It is a drop-in for ``ProcessPoolExecutor``: ``submit``, ``map``,
``shutdown`` and the context manager keep their meaning, and
``loop.run_in_executor`` works. What changes is what happens when things go
wrong: a worker that dies fails (or retries) only the task it held, a task
that runs too long is killed, a running task can be cancelled, and ``submit``
pushes back when too much is outstanding.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import itertools
import multiprocessing
import multiprocessing.util  # its exit hook must register before ours
import os
import pickle
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar, final

from pipework.service import pickling
from pipework.service.collector import Collector
from pipework.service.dispatcher import Dispatcher
from pipework.service.errors import BrokenService, SerializationError, ServiceClosed
from pipework.service.futures import TaskFuture
from pipework.service.ledger import Ledger, Task
from pipework.service.map import lazy_map
from pipework.service.supervisor import StartMethod, Supervisor, default_start_method
from pipework.service.transports import Transport, TransportName, get_transport
from pipework.service.worker import call_chunk, map_chunk, type_name

__all__ = [
    "DEFAULT_MAX_PENDING",
    "EXIT_GRACE",
    "TaskOptions",
    "WorkerService",
]

T = TypeVar("T")

DEFAULT_MAX_PENDING = 100_000
"""Default bound on accepted but unfinished tasks. Past it, ``submit`` blocks."""
EXIT_GRACE = 5.0
"""Unused, kept so that imports of it keep working. At interpreter exit,
accepted tasks now run to completion as in ``concurrent.futures``, bounded
only by ``shutdown_timeout``."""

_live: weakref.WeakSet[WorkerService] = weakref.WeakSet()
_main_file: str | None = None
"""The main script's path, seen while it ran (see ``_shutdown_all``)."""


def _check_positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} or None, got {value!r}")


def _check_count(
    name: str, value: int | None, *, allow_none: bool = True, minimum: int = 1
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _pickles(obj: object) -> bool:
    try:
        pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def _innermost_unpicklable(obj: object, depth: int = 0) -> object:
    """The innermost part of a container that fails to pickle (``obj`` if none smaller)."""
    if depth >= 8:
        return obj
    if isinstance(obj, tuple | list | set | frozenset):
        parts: list[object] = list(obj)
    elif isinstance(obj, dict):
        parts = [*obj.keys(), *obj.values()]
    else:
        return obj
    bad = next((part for part in parts if not _pickles(part)), None)
    return obj if bad is None else _innermost_unpicklable(bad, depth + 1)


def _blame(
    exc: Exception, head: object, rest: Iterable[object], head_is: str, rest_are: str
) -> SerializationError:
    """A SerializationError naming the first of ``head, *rest`` that fails to pickle."""
    candidates = itertools.chain([(head_is, head)], ((rest_are, item) for item in rest))
    what, culprit = next(((w, i) for w, i in candidates if not _pickles(i)), (head_is, head))
    err = SerializationError(
        type_name(_innermost_unpicklable(culprit)), what, f"{type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


_BY_REFERENCE = (types.FunctionType, types.BuiltinFunctionType)
"""Callables pickle turns into a module and a name, never their state."""
_REFERENCES_KEPT = 256


def _main_is_importable() -> bool:
    """Whether a worker can import this program's ``__main__`` to find its functions.

    Not when the code came from ``python -c``, stdin, a REPL or a notebook:
    there is no file for a spawned or forkserver worker to run again.
    """
    main = sys.modules.get("__main__")
    if main is None:
        return False
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) is not None:
        return True
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and os.path.exists(path)  # not "<stdin>"


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = {ast.dump(test.left), ast.dump(test.comparators[0])}
    return sides == {ast.dump(ast.Name("__name__", ast.Load())), ast.dump(ast.Constant("__main__"))}


def _check_main_guard(start_method: str) -> None:
    """Refuse, with one clear error, a pool started by a main script's top-level code.

    A spawn or forkserver worker runs the main script again (as
    ``__mp_main__``) to find its functions; without the guard, that run
    starts a pool of its own in every worker, and each dies with a
    multiprocessing traceback. Checked on the caller's side, before any worker
    starts: the ``<module>`` frame of ``__main__`` that led here must be inside
    an ``if __name__ == "__main__":`` block of the file.

    Raises:
        RuntimeError: it is not.
    """
    main = sys.modules.get("__main__")
    if start_method == "fork" or main is None:
        return
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and not (
        frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    if frame is None:
        return
    path, line = frame.f_code.co_filename, frame.f_lineno
    main_file = getattr(main, "__file__", None)
    # Only the file workers would run again: not a notebook cell's, say.
    if not isinstance(main_file, str) or os.path.abspath(main_file) != os.path.abspath(path):
        return
    try:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
    except (OSError, SyntaxError, ValueError):  # -c, stdin: workers do not run it again
        return
    for node in tree.body:
        end = node.end_lineno or node.lineno
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= end:
            return
    raise RuntimeError(
        f"{path}, line {line}: a WorkerService is started by the main script's top-level "
        f"code. With start_method={start_method!r}, each worker runs the main script again "
        "to find its functions, and would start a pool of its own. Put the code that "
        'starts the pool under `if __name__ == "__main__":` (or use start_method="fork").'
    )


def _pickle_function(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled by reference (module and name) if a worker can find it so, else by value.

    Lambdas, closures, nested functions and functions defined in a ``__main__``
    that has no file go by value, with cloudpickle (as loky does): code,
    defaults and the globals and cells it uses. What cloudpickle cannot
    pickle either raises here.
    """
    if fn.__module__ != "__main__" or _main_is_importable():
        try:
            by_reference = pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
        else:
            if "<" not in getattr(fn, "__qualname__", ""):  # <lambda>, <locals>
                return by_reference
    import cloudpickle  # type: ignore[import-untyped]  # noqa: PLC0415  (paid for on first use)

    return bytes(cloudpickle.dumps(fn, pickle.HIGHEST_PROTOCOL))


def _reference(fn: Callable[..., Any], references: dict[Callable[..., Any], bytes]) -> bytes:
    reference = references.get(fn)
    if reference is None:
        if len(references) >= _REFERENCES_KEPT:
            references.clear()
        reference = references[fn] = _pickle_function(fn)
    return reference


def _pickle_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    references: dict[Callable[..., Any], bytes],
) -> tuple[bytes, list[memoryview]]:
    """Pickle a call as ``(fn or its pickled bytes, args, kwargs)``.

    A plain function pickles to the same bytes every time, but finding them
    (module lookup, attribute checks, or cloudpickle's walk of a lambda)
    costs more than pickling a tiny call's arguments: ``references`` keeps
    them per function, and the worker keeps the function each one unpickles
    to (``service.worker``), so neither side pays twice. A ``map`` chunk's
    user function travels the same way.
    """
    try:
        if fn is call_chunk or fn is map_chunk:
            inner = args[0]
            if type(inner) in _BY_REFERENCE:
                args = (_reference(inner, references), *args[1:])
            return pickling.dumps((fn, args, kwargs))
        if type(fn) in _BY_REFERENCE:
            return pickling.dumps((_reference(fn, references), args, kwargs))
        return pickling.dumps((fn, args, kwargs))
    except Exception as exc:
        if fn is call_chunk or fn is map_chunk:  # a map chunk: (user function, items)
            fn, args = args[0], args[1:]
        raise _blame(exc, fn, [*args, *kwargs.values()], "function", "argument") from exc


@final
class TaskOptions:
    """Per-task settings for the next ``submit``/``map`` calls; see ``WorkerService.options``."""

    __slots__ = ("_retries", "_service", "_timeout")

    def __init__(self, service: WorkerService, timeout: float | None, retries: int) -> None:
        self._service = service
        self._timeout = timeout
        self._retries = retries

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture[T]:
        """Like ``WorkerService.submit``, with these options."""
        return self._service._submit(fn, args, kwargs, self._timeout, self._retries)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ``WorkerService.map``, with these options."""
        return self._service._map(self.submit, fn, iterables, timeout, chunksize, buffersize)


class WorkerService(Executor):
    """A process pool that does not break, hang or lose work when a worker dies.

    Args:
        max_workers: worker processes to keep running (default: CPU count).
        transport: how tasks reach workers: ``"pipe"`` (two OS pipes per
            worker), ``"queue"`` (two ``multiprocessing.Queue`` per worker),
            ``"zmq"`` (ZeroMQ over ``ipc://``), ``"zmq+tcp"`` (over
            ``tcp://127.0.0.1``), or a transport instance such as
            ``ZmqTransport(heartbeat_timeout=...)``, which then belongs to
            this service alone.
        start_method: ``"forkserver"`` (default where available), ``"spawn"``
            or ``"fork"``.
        initializer: called as ``initializer(*initargs)`` in each worker
            before its first task. If it raises, the service is broken:
            pending and later tasks fail with ``BrokenService``.
        initargs: arguments for ``initializer``.
        task_timeout: default limit in seconds for one run of a task; past
            it the worker is killed (SIGTERM, then SIGKILL) and the future
            fails with ``TaskTimeout``. None: no limit.
        retries: default number of times a task is run again when its
            worker dies under it (not when it raises or times out).
        max_tasks_per_worker: recycle a worker after this many tasks.
        max_memory_per_worker: recycle a worker whose RSS exceeds this many
            bytes, checked between tasks.
        max_pending: bound on accepted but unfinished tasks; past it
            ``submit`` blocks (default ``DEFAULT_MAX_PENDING``). A submit
            made from a done-callback never blocks: it is admitted over the
            bound, so callbacks cannot deadlock the service.
        submit_timeout: how long a blocked ``submit`` waits before raising
            ``QueueFull``. None: wait as long as it takes.
        shutdown_timeout: how long ``shutdown`` lets running tasks finish
            before killing them (their futures fail with ``ServiceClosed``).
            None: wait for them, as ``concurrent.futures`` does.

    Raises:
        TypeError, ValueError: a setting is of the wrong type or out of range.
        SerializationError: the initializer cannot be sent to a worker.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        transport: TransportName | Transport = "pipe",
        start_method: StartMethod | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        task_timeout: float | None = None,
        retries: int = 0,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        submit_timeout: float | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        _check_count("max_workers", max_workers, allow_none=False, minimum=-sys.maxsize)
        if max_workers <= 0:
            # concurrent.futures' own words: code written against it matches on them.
            raise ValueError("max_workers must be greater than 0")
        _check_positive("task_timeout", task_timeout)
        _check_count("retries", retries, allow_none=False, minimum=0)
        _check_count("max_tasks_per_worker", max_tasks_per_worker)
        _check_count("max_memory_per_worker", max_memory_per_worker)
        _check_count("max_pending", max_pending, allow_none=False)
        _check_positive("submit_timeout", submit_timeout, allow_zero=True)
        _check_positive("shutdown_timeout", shutdown_timeout, allow_zero=True)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        if start_method is None:
            start_method = default_start_method()
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method {start_method!r} is not available here; expected one of "
                f"{multiprocessing.get_all_start_methods()}"
            )
        _check_main_guard(start_method)
        if start_method != "fork" and initializer is not None:
            try:
                pickle.dumps((initializer, initargs), pickle.HIGHEST_PROTOCOL)
            except RuntimeError as exc:
                # multiprocessing's Queue, Lock, Event... refuse plain pickling
                # but travel to a process as it starts, as initargs do: the
                # same as ProcessPoolExecutor (whose tests pass a Queue so).
                if "through inheritance" not in str(exc):
                    raise _blame(exc, initializer, initargs, "initializer", "initargs") from exc
            except Exception as exc:
                raise _blame(exc, initializer, initargs, "initializer", "initargs") from exc

        self._max_workers = max_workers
        self._task_timeout = task_timeout
        self._retries = retries
        self._submit_timeout = submit_timeout
        self._shutdown_timeout = shutdown_timeout
        self._ids = itertools.count(1)
        self._cancel_hook = self._on_cancel  # one bound method for every future, not one each
        self._references: dict[Callable[..., Any], bytes] = {}
        self._shutdown_lock = threading.Lock()
        self._shut_down = False

        supervisor = Supervisor(
            get_transport(transport),
            start_method,
            initializer,
            initargs,
            max_tasks_per_worker,
            max_memory_per_worker,
        )
        self._ledger = Ledger(max_pending, wake=self._wake)
        self._collector = Collector(self._ledger)
        self._dispatcher = Dispatcher(supervisor, self._ledger, self._collector, max_workers)
        global _main_file
        _main_file = _main_file or getattr(sys.modules.get("__main__"), "__file__", None)
        self._collector.start()
        self._dispatcher.start(prespawn=start_method == "fork")
        # If the service is dropped without shutdown, let it wind down by itself.
        weakref.finalize(self, _abandon, self._ledger, self._dispatcher).atexit = False
        _live.add(self)

    def _wake(self) -> None:
        self._dispatcher.wake()

    # -- submitting -----------------------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` to run in a worker.

        Returns:
            A ``TaskFuture`` (a ``concurrent.futures.Future``).

        Raises:
            SerializationError: ``fn`` or an argument cannot be pickled.
            QueueFull: ``max_pending`` tasks are outstanding and none finished
                within ``submit_timeout``.
            ServiceClosed: the service is shut down.
            BrokenService: the service cannot run tasks (its initializer raised).
        """
        return self._submit(fn, args, kwargs, self._task_timeout, self._retries)

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> TaskOptions:
        """Settings for particular tasks: ``pool.options(timeout=2).submit(fn, x)``.

        Args:
            timeout: limit in seconds for one run of each task (default:
                the service's ``task_timeout``).
            retries: runs after a worker death (default: the service's ``retries``).
        """
        _check_positive("timeout", timeout)
        if retries is not None:
            _check_count("retries", retries, allow_none=False, minimum=0)
        return TaskOptions(
            self,
            self._task_timeout if timeout is None else timeout,
            self._retries if retries is None else retries,
        )

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        retries: int,
    ) -> TaskFuture[T]:
        self._raise_if_closed()
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        payload, buffers = _pickle_call(fn, args, kwargs, self._references)
        task = Task(next(self._ids), payload, buffers or (), timeout, retries)
        future: TaskFuture[T] = TaskFuture(task, self._cancel_hook)
        task.future = future  # type: ignore[assignment]
        bounded = threading.get_ident() != self._collector.ident
        try:
            self._ledger.admit(
                task, self._submit_timeout, bounded=bounded, hand=self._dispatcher.hand_direct
            )
        except ServiceClosed:
            self._raise_if_closed()
            raise
        return future

    def _raise_if_closed(self) -> None:
        broken = self._dispatcher.broken
        if broken is not None:
            err = BrokenService(broken.reason, broken.traceback)
            raise err from broken.__cause__
        if self._shut_down:
            raise ServiceClosed()

    def _on_cancel(self, task: Task, running: bool) -> None:
        self._ledger.release(task)
        if running:
            self._dispatcher.cancel_running(task)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like ``map(fn, *iterables)``, run in the workers, results in order.

        Unlike ``concurrent.futures``, the inputs are read lazily: at most
        ``buffersize`` chunks are submitted ahead of the result being read
        (default: four per worker), so an endless or huge input is fine.

        Args:
            fn: the function to call.
            iterables: argument streams, zipped as ``map`` does.
            timeout: seconds, from this call, after which reading a result
                not yet available raises ``TimeoutError``.
            chunksize: items sent to a worker per task. None (the default):
                sized as it goes, starting at one item and growing while a
                chunk takes well under ``AUTO_CHUNK_SECONDS``, so tiny items
                travel thousands to a task and slow ones one by one.
            buffersize: chunks kept in flight ahead of the reader.

        Raises:
            Whatever ``fn`` raised, when its result is reached. Whatever the
            input raised: from ``map()`` itself if it raised while ``map()``
            read the first ``buffersize`` chunks (as ``concurrent.futures``,
            which reads it all there), else after the result of every item
            read before it. Items read before it run in both cases.
        """
        return self._map(self.submit, fn, iterables, timeout, chunksize, buffersize)

    def _map(
        self,
        submit: Callable[..., TaskFuture[Any]],
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | None,
        buffersize: int | None,
    ) -> Iterator[T]:
        _check_count("chunksize", chunksize)
        _check_count("buffersize", buffersize)
        _check_positive("timeout", timeout, allow_zero=True)
        ahead = buffersize if buffersize is not None else 4 * self._max_workers
        end = None if timeout is None else time.monotonic() + timeout
        if len(iterables) == 1:
            items: Iterator[Any] = iter(iterables[0])
            run_chunk: Callable[..., list[Any]] = map_chunk
        else:
            items = zip(*iterables, strict=False)
            run_chunk = call_chunk
        return lazy_map(lambda chunk: submit(run_chunk, fn, chunk), items, chunksize, ahead, end)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``await pool.run(fn, x)``: submit and await the result in asyncio."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    # -- introspection and shutdown -------------------------------------------------

    @property
    def max_workers(self) -> int:
        """How many workers the service keeps running."""
        return self._max_workers

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (a snapshot; they change as workers are replaced)."""
        return self._dispatcher.pids()

    def running_tasks(self) -> dict[int, int]:
        """Which task each busy worker runs: worker pid -> ``TaskFuture.task_id`` (a snapshot)."""
        return self._dispatcher.running()

    def restart_workers(self) -> None:
        """Replace every worker, each once its current task is done (a rolling restart).

        Nothing is cancelled or lost: busy workers finish their task first,
        and replacements start as the old workers stop. Returns at once.
        """
        self._dispatcher.restart_workers()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks and release the workers once the queue is done.

        Args:
            wait: block until every accepted task is resolved and every
                worker has exited.
            cancel_futures: cancel the tasks that have not started; their
                futures resolve as cancelled at once.

        Running tasks finish, or are killed when ``shutdown_timeout`` passes.
        Calling it again is harmless.
        """
        self._close(
            cancel_futures,
            None if self._shutdown_timeout is None else time.monotonic() + self._shutdown_timeout,
        )
        if wait:
            self._dispatcher.join()
            self._collector.join()

    def _close(self, cancel_futures: bool, deadline: float | None) -> None:
        with self._shutdown_lock:
            self._shut_down = True
        self._ledger.close("cannot schedule new tasks after shutdown")
        if cancel_futures:
            for task in self._ledger.drain():
                if task.future is not None:
                    task.future.cancel()
                self._ledger.release(task)
        # With cancel_futures, tasks already handed to a worker but queued
        # behind its running one are not started either: the dispatcher
        # cancels them (the worker skips them), as cf cancels its call queue.
        self._dispatcher.shutdown(deadline, cancel_queued=cancel_futures)

    def _exit(self) -> None:
        # Nothing accepted is lost, at exit either: as concurrent.futures
        # does, every accepted task runs to completion before the interpreter
        # exits, unless shutdown_timeout bounds it.
        timeout = self._shutdown_timeout
        self._close(False, None if timeout is None else time.monotonic() + timeout)
        self._dispatcher.join(None if timeout is None else timeout + 5.0)
        self._collector.join(None if timeout is None else 5.0)


def _abandon(ledger: Ledger, dispatcher: Dispatcher) -> None:
    ledger.close("the service was garbage-collected")
    dispatcher.shutdown(None)


@atexit.register
def _shutdown_all() -> None:
    # atexit runs hooks last-registered first; multiprocessing.util is imported
    # above so that its hook, which joins every child process, runs after this
    # one has stopped our workers instead of waiting on them forever.
    services = list(_live)
    main = sys.modules.get("__main__")
    # CPython deletes __main__.__file__ once the script has run, so a worker
    # started from here on (spawn, forkserver) could not import the script
    # and find its functions: put it back for them.
    if services and _main_file and main is not None and getattr(main, "__file__", None) is None:
        main.__file__ = _main_file
    for service in services:
        service._exit()
