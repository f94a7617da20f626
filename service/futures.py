"""``TaskFuture``: a slim ``concurrent.futures.Future`` that can cancel a running task.

It differs from its base in three ways, all visible to users:

- ``cancel()`` also succeeds while the task runs: the worker running it is
  killed and replaced. Waiters (``wait``, ``as_completed``) hear of a
  cancellation at once, not when the dispatcher next looks.
- A done-callback that raises is logged with the task id and swallowed, so
  one bad callback never stops the collector thread from resolving others.
- It is small. A ``concurrent.futures.Future`` carries a ``Condition`` (an
  RLock, bound methods, a waiter deque: ~1.9 KB), which is most of what a
  pending task costs a pool. Here every future shares one module-level
  ``RLock`` as its ``_condition``, ``result()`` waits on a waiter of its own
  like ``concurrent.futures.wait`` does, and the waiter and callback lists
  exist only once someone adds to them.

``concurrent.futures.wait`` and ``as_completed`` keep working: they only
acquire each future's ``_condition`` and add waiters to ``_waiters``; one
shared reentrant lock makes their acquiring of many futures' locks trivially
deadlock-free. The lock is held only to read or change a future's state, never
while a callback runs.
"""

from __future__ import annotations

import concurrent.futures._base as _cf
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pipework.service.logs import get_logger

if TYPE_CHECKING:
    from pipework.service.ledger import Task

__all__ = ["TaskFuture"]

T = TypeVar("T")
_log = get_logger("pipework.callbacks")

_LOCK = threading.RLock()
"""Guards the state of every TaskFuture (see the module docstring)."""
_DONE = frozenset({_cf.CANCELLED, _cf.CANCELLED_AND_NOTIFIED, _cf.FINISHED})
_CANCELLED = frozenset({_cf.CANCELLED, _cf.CANCELLED_AND_NOTIFIED})


class _ResultWaiter:
    """What ``result()`` and ``exception()`` block on: woken by any outcome.

    A bare lock, taken at birth and released by the outcome: an ``Event``
    would build a Condition, a deque and a lock per wait, which on a one-task
    round trip is both time and garbage-collector work.
    """

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()

    def add_result(self, future: object) -> None:
        # A future settles once, so each waiter is released at most once.
        self.lock.release()

    add_exception = add_cancelled = add_result

    def wait(self, timeout: float | None) -> bool:
        """Block until the outcome, or ``timeout`` seconds; True if it came."""
        return self.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class TaskFuture(_cf.Future[T]):
    """The future of one pipework task."""

    __slots__ = (
        "_callbacks",
        "_exception",
        "_pw_listener",
        "_pw_on_cancel",
        "_pw_task",
        "_result",
        "_state",
        "_waiter_list",
        "task_id",
        "worker_pid",
    )

    _condition: threading.Condition = _LOCK  # type: ignore[assignment]  # acquire/release suffice

    def __init__(self, task: Task, on_cancel: Callable[[Task, bool], None]) -> None:
        # The base __init__ is not called on purpose: it builds the Condition
        # and lists this class exists to avoid.
        self._state = _cf.PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[_cf.Future[T]], object]] | None = None
        self._waiter_list: list[Any] | None = None
        self._pw_task: Task | None = task
        self._pw_listener: Callable[[_cf.Future[T]], object] | None = None
        self._pw_on_cancel = on_cancel
        self.task_id: int = task.id
        """The id pipework gave the task; errors and logs name it."""
        self.worker_pid: int | None = None
        """The pid of the worker that last started the task (None until one has)."""

    @property
    def _waiters(self) -> list[Any]:
        # concurrent.futures.wait/as_completed append here while holding _condition.
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def __repr__(self) -> str:
        return f"<TaskFuture task_id={self.task_id} state={self._state}>"

    # -- reading --------------------------------------------------------------------

    def cancelled(self) -> bool:
        """True if the future was cancelled."""
        return self._state in _CANCELLED

    def running(self) -> bool:
        """True if a worker has the task and it has not finished."""
        return self._state == _cf.RUNNING

    def done(self) -> bool:
        """True if the future finished or was cancelled."""
        return self._state in _DONE

    def _wait(self, timeout: float | None) -> None:
        """Block until done or ``timeout``; raise CancelledError/TimeoutError as cf does."""
        if self._state not in _DONE:
            waiter = _ResultWaiter()
            with _LOCK:
                if self._state not in _DONE:
                    self._waiters.append(waiter)
                else:
                    waiter = None  # type: ignore[assignment]
            if waiter is not None:
                try:
                    waiter.wait(timeout)
                finally:
                    with _LOCK:
                        self._waiters.remove(waiter)
        state = self._state
        if state in _CANCELLED:
            raise _cf.CancelledError()
        if state != _cf.FINISHED:
            raise TimeoutError()

    def result(self, timeout: float | None = None) -> T:
        """The task's return value, waiting up to ``timeout`` seconds.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: it did not finish in time.
            Exception: whatever the task raised.
        """
        self._wait(timeout)
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del self, exc  # break the traceback -> frame -> self cycle, as cf does
        return self._result  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the task raised (None if it returned), waiting up to ``timeout``."""
        self._wait(timeout)
        return self._exception

    # -- changing -------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the task, killing its worker if it is already running.

        Returns:
            False if the task has already finished, True otherwise.
        """
        with _LOCK:
            state = self._state
            if state == _cf.FINISHED:
                return False
            if state in _CANCELLED:
                return True
            self._state = _cf.CANCELLED_AND_NOTIFIED
            for waiter in self._waiter_list or ():
                waiter.add_cancelled(self)
        task, self._pw_task = self._pw_task, None
        if task is not None:
            self._pw_on_cancel(task, state == _cf.RUNNING)
        self._invoke_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """PENDING -> RUNNING; False if the future was cancelled (see ``concurrent.futures``).

        Raises:
            RuntimeError: the future is neither pending nor cancelled.
        """
        with _LOCK:
            if self._state == _cf.CANCELLED:
                self._state = _cf.CANCELLED_AND_NOTIFIED
                return False
            if self._state == _cf.PENDING:
                self._state = _cf.RUNNING
                return True
            if self._state == _cf.CANCELLED_AND_NOTIFIED:
                return False
        raise RuntimeError(f"Future in unexpected state: {self._state}")

    def set_result(self, result: T) -> None:
        """Mark the future done with ``result``; raises InvalidStateError if it is done."""
        if not self._settle(result, None):
            raise _cf.InvalidStateError(f"{self._state}: {self!r}")

    def set_exception(self, exception: BaseException | None) -> None:
        """Mark the future failed with ``exception``; raises InvalidStateError if it is done."""
        if not self._settle(None, exception):
            raise _cf.InvalidStateError(f"{self._state}: {self!r}")

    def _settle(self, result: Any, exc: BaseException | None) -> bool:
        with _LOCK:
            if self._state in _DONE:
                return False
            self._result = result
            self._exception = exc
            self._state = _cf.FINISHED
            waiters = self._waiter_list
            if waiters:
                if exc is None:
                    for waiter in waiters:
                        waiter.add_result(self)
                else:
                    for waiter in waiters:
                        waiter.add_exception(self)
        self._invoke_callbacks()
        return True

    def add_done_callback(self, fn: Callable[[_cf.Future[T]], object]) -> None:
        """Call ``fn(future)`` when the future is done; see ``concurrent.futures``.

        Callbacks run on the collector thread (or at once, here, if the future
        is already done). One that raises is logged with the task id and does
        not affect any other callback.
        """
        with _LOCK:
            if self._state not in _DONE:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        self._call(fn)

    def _invoke_callbacks(self) -> None:
        self._pw_tell()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for fn in callbacks:
                self._call(fn)

    def _call(self, fn: Callable[[_cf.Future[T]], object]) -> None:
        try:
            fn(self)
        except BaseException:
            _log.exception("callback raised", task_id=self.task_id, callback=repr(fn))

    # -- the dispatcher's and collector's side ----------------------------------------

    def _pw_listen(self, listener: Callable[[_cf.Future[T]], object]) -> None:
        """pipework's own done-callback: ``listener(self)`` runs on whichever
        thread resolves the future, the dispatcher's included, so a plain
        result needs no hop to the collector thread.

        Only for pipework's code (the daemon, map): the listener must be quick
        and never block (hand the future to a queue and wake a loop, say). One
        listener per future; it runs at once if the future is done.
        """
        with _LOCK:
            if self._state not in _DONE:
                self._pw_listener = listener
                return
        self._call(listener)

    def _pw_tell(self) -> None:
        listener, self._pw_listener = self._pw_listener, None
        if listener is not None:
            self._call(listener)

    def _pw_start(self) -> bool:
        """PENDING -> RUNNING for the dispatcher; False if it was cancelled."""
        with _LOCK:
            if self._state == _cf.PENDING:
                self._state = _cf.RUNNING
                return True
            return self._state == _cf.RUNNING  # a retry: it was already running

    def _pw_resolve_plain(self, value: Any) -> bool:
        """Set ``value`` on this thread unless callbacks wait (they run on the collector).

        Returns False only for that: a future cancelled meanwhile needs nothing set.
        """
        with _LOCK:
            if self._callbacks:
                return False
            if self._state not in _DONE:
                self._result = value
                self._state = _cf.FINISHED
                for waiter in self._waiter_list or ():
                    waiter.add_result(self)
        self._pw_task = None
        self._pw_tell()
        return True

    def _pw_resolve(self, value: Any = None, exc: BaseException | None = None) -> bool:
        """Set the outcome unless the future was cancelled meanwhile; True if set."""
        self._pw_task = None
        return self._settle(value, exc)
