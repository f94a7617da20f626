"""``TaskFuture``: a ``concurrent.futures.Future`` that can cancel a running task.

It differs from its base in two ways, both visible to users:

- ``cancel()`` also succeeds while the task runs: the worker running it is
  killed and replaced. Waiters (``wait``, ``as_completed``) hear of a
  cancellation at once, not when the dispatcher next looks.
- A done-callback that raises is logged with the task id and swallowed, so
  one bad callback never stops the collector thread from resolving others.

It relies on the base class's ``_condition``, ``_state`` and ``_waiters``, as
``concurrent.futures.wait`` and ``as_completed`` themselves do.
"""

from __future__ import annotations

import concurrent.futures._base as _cf
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from service.logs import get_logger

if TYPE_CHECKING:
    from service.ledger import Task

__all__ = ["TaskFuture"]

T = TypeVar("T")
_log = get_logger("pipework.callbacks")


class TaskFuture(_cf.Future[T]):
    """The future of one pipework task."""

    def __init__(self, task: Task, on_cancel: Callable[[Task, bool], None]) -> None:
        super().__init__()
        self._pw_task: Task | None = task
        self._pw_on_cancel = on_cancel
        self.task_id: int = task.id
        """The id pipework gave the task; errors and logs name it."""
        self.worker_pid: int | None = None
        """The pid of the worker that last started the task (None until one has)."""

    def __repr__(self) -> str:
        return f"<TaskFuture task_id={self.task_id} state={self._state}>"

    def cancel(self) -> bool:
        """Cancel the task, killing its worker if it is already running.

        Returns:
            False if the task has already finished, True otherwise.
        """
        with self._condition:
            state = self._state
            if state == _cf.FINISHED:
                return False
            if state in (_cf.CANCELLED, _cf.CANCELLED_AND_NOTIFIED):
                return True
            self._state = _cf.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        task, self._pw_task = self._pw_task, None
        if task is not None:
            self._pw_on_cancel(task, state == _cf.RUNNING)
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def add_done_callback(self, fn: Callable[[_cf.Future[T]], object]) -> None:
        """Call ``fn(future)`` when the future is done; see ``concurrent.futures``.

        Callbacks run on the collector thread (or at once, here, if the future
        is already done). One that raises is logged with the task id and does
        not affect any other callback.
        """
        task_id = self.task_id

        def guarded(future: _cf.Future[T]) -> None:
            try:
                fn(future)
            except BaseException:
                _log.exception("callback raised", task_id=task_id, callback=repr(fn))

        super().add_done_callback(guarded)

    def _pw_start(self) -> bool:
        """PENDING -> RUNNING for the dispatcher; False if it was cancelled."""
        with self._condition:
            if self._state == _cf.PENDING:
                self._state = _cf.RUNNING
                return True
            return self._state == _cf.RUNNING  # a retry: it was already running

    def _pw_resolve(self, value: Any = None, exc: BaseException | None = None) -> bool:
        """Set the outcome unless the future was cancelled meanwhile; True if set."""
        task, self._pw_task = self._pw_task, None
        del task
        try:
            if exc is not None:
                self.set_exception(exc)
            else:
                self.set_result(value)
        except _cf.InvalidStateError:
            return False
        return True
