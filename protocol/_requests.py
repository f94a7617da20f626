"""What ``Client`` and ``AsyncClient`` share: building requests, reading replies.

Both clients do their I/O differently (blocking poll vs. one reader task) but
build, validate and interpret messages here, so the two cannot drift apart:

- ``RequestBuilder`` makes validated request models with fresh ids (a random
  per-client prefix and a counter), refusing bad arguments locally with the
  same ``ProtocolError(invalid)`` the daemon would send;
- ``expect`` turns a reply into the expected model or raises its error;
- ``EventBuffer`` keeps ``task_done`` events nobody is waiting for yet;
- ``Deadline``, ``finish`` and ``wait_timeout`` are the rules of ``call()``.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pipework.protocol.codec import invalid_error
from pipework.protocol.errors import ErrorCode, ProtocolError, TaskFailed
from pipework.protocol.messages import (
    PROTOCOL_VERSION,
    CancelRequest,
    ErrorReply,
    ListRequest,
    Reply,
    ResultRequest,
    StatsRequest,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
    TaskDoneEvent,
    TaskInfo,
    TasksRequest,
    TaskState,
    WorkersRequest,
)

# call(): how long one result request asks the daemon to hold it. The spec
# allows 3600 s; shorter slices notice a restarted daemon sooner.
RESULT_SLICE = 30.0
# The longest a blocking poll sleeps, so Ctrl-C is noticed within this bound.
POLL_SLICE = 1.0
# task_done events kept for callers that have not asked for them yet.
EVENT_BUFFER = 1024
# Nesting deeper than the daemon's JSON parser accepts (about 200) is refused here.
_MAX_DEPTH = 190

_M = TypeVar("_M", bound=BaseModel)
_R = TypeVar("_R", bound=BaseModel)


class RequestBuilder:
    """Builds validated request models, each with a fresh id."""

    def __init__(self) -> None:
        """Pick this client's random id prefix."""
        self._prefix = secrets.token_hex(4)
        self._count = 0

    def next_id(self) -> str:
        """A request id unique to this client and unlikely to collide with others'.

        Returns:
            ``"<8 hex>-<n>"``.
        """
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def submit(
        self,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        *,
        key: str | None,
        timeout: float | None,
        retries: int | None,
        priority: int,
        delay: float,
        notify: bool,
    ) -> SubmitRequest:
        """Build a submit; a missing ``key`` becomes a fresh uuid4, so resends are harmless.

        Args:
            task: the registered task name.
            args: positional arguments, JSON values (tuples become arrays).
            kwargs: keyword arguments, JSON values.
            key: the idempotency key, or None for a new one.
            timeout: seconds one run may take, or None for no limit.
            retries: re-runs after a worker death, or None for the daemon's.
            priority: -1000 to 1000; higher runs first.
            delay: seconds before the task may start.
            notify: ask for a ``task_done`` event.

        Returns:
            The request.

        Raises:
            ProtocolError: ``invalid`` if an argument breaks the spec.
        """
        if isinstance(args, str | bytes | bytearray):
            raise _local_invalid(["args"], "args must be a sequence of arguments, not a string")
        args_list = list(args)
        kwargs_dict = {} if kwargs is None else dict(kwargs)
        _check_json(args_list, ["args"])
        _check_json(kwargs_dict, ["kwargs"])
        return self._build(
            SubmitRequest,
            op="submit",
            task=task,
            args=args_list,
            kwargs=kwargs_dict,
            key=uuid.uuid4().hex if key is None else key,
            timeout=timeout,
            retries=retries,
            priority=priority,
            delay=delay,
            notify=notify,
        )

    def status(self, task_id: str) -> StatusRequest:
        """Build a status request.

        Args:
            task_id: the task's id.

        Returns:
            The request.

        Raises:
            ProtocolError: ``invalid`` if ``task_id`` is not a string.
        """
        return self._build(StatusRequest, op="status", task_id=task_id)

    def result(self, task_id: str, wait: float) -> ResultRequest:
        """Build a result request.

        Args:
            task_id: the task's id.
            wait: seconds the daemon may hold the request, 0 to 3600.

        Returns:
            The request.

        Raises:
            ProtocolError: ``invalid`` if an argument breaks the spec.
        """
        return self._build(ResultRequest, op="result", task_id=task_id, wait=wait)

    def cancel(self, task_id: str) -> CancelRequest:
        """Build a cancel request.

        Args:
            task_id: the task's id.

        Returns:
            The request.

        Raises:
            ProtocolError: ``invalid`` if ``task_id`` is not a string.
        """
        return self._build(CancelRequest, op="cancel", task_id=task_id)

    def list(self, state: TaskState | str | None, limit: int) -> ListRequest:
        """Build a list request.

        Args:
            state: only tasks in this state, or None for all.
            limit: at most this many tasks, 1 to 1000.

        Returns:
            The request.

        Raises:
            ProtocolError: ``invalid`` if an argument breaks the spec.
        """
        return self._build(ListRequest, op="list", state=state, limit=limit)

    def stats(self) -> StatsRequest:
        """Build a stats request.

        Returns:
            The request.
        """
        return self._build(StatsRequest, op="stats")

    def workers(self) -> WorkersRequest:
        """Build a workers request.

        Returns:
            The request.
        """
        return self._build(WorkersRequest, op="workers")

    def tasks(self) -> TasksRequest:
        """Build a tasks request.

        Returns:
            The request.
        """
        return self._build(TasksRequest, op="tasks")

    def _build(self, model: type[_M], **fields: Any) -> _M:
        try:
            return model.model_validate({"v": PROTOCOL_VERSION, "id": self.next_id(), **fields})
        except ValidationError as exc:
            # Nothing was sent, so the error answers no request id.
            raise invalid_error(exc) from None


def expect(reply: Reply, kind: type[_R]) -> _R:
    """The reply as the model its request expects, or the error it carries, raised.

    Args:
        reply: a reply whose id matched the request's.
        kind: the expected reply model.

    Returns:
        ``reply``, typed.

    Raises:
        ProtocolError: the reply's error (code, message, detail, request id),
            or ``invalid`` if the daemon answered with another op's reply.
    """
    if isinstance(reply, ErrorReply):
        body = reply.error
        raise ProtocolError(body.code, body.message, body.detail, reply.id)
    if not isinstance(reply, kind):
        raise ProtocolError(
            ErrorCode.INVALID,
            f"expected a {kind.__name__}, the daemon sent a {type(reply).__name__}",
            request_id=reply.id,
        )
    return reply


class EventBuffer:
    """``task_done`` events by submit id, the oldest dropped past ``EVENT_BUFFER``.

    A dropped event costs nothing but latency: ``call()`` falls back to
    asking with ``result``.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._events: OrderedDict[str, TaskDoneEvent] = OrderedDict()

    def add(self, event: TaskDoneEvent) -> None:
        """Keep ``event`` until someone pops it.

        Args:
            event: the event.
        """
        self._events[event.id] = event
        if len(self._events) > EVENT_BUFFER:
            self._events.popitem(last=False)

    def pop(self, submit_id: str) -> TaskDoneEvent | None:
        """Take the event for a submit, if it came.

        Args:
            submit_id: the submit request's id.

        Returns:
            The event, or None.
        """
        return self._events.pop(submit_id, None)


class Deadline:
    """A point in monotonic time, or none at all (wait forever)."""

    def __init__(self, seconds: float | None) -> None:
        """Start counting.

        Args:
            seconds: how long from now, or None for never.
        """
        self._end = math.inf if seconds is None else time.monotonic() + max(0.0, seconds)

    def remaining(self) -> float:
        """Seconds left, never negative; ``inf`` for no deadline.

        Returns:
            The seconds left.
        """
        return max(0.0, self._end - time.monotonic())

    def slice(self, most: float) -> float:
        """The next wait: ``most`` seconds, or what is left if that is less.

        Args:
            most: the longest wait wanted.

        Returns:
            The seconds to wait.
        """
        return min(most, self.remaining())

    def expired(self) -> bool:
        """Whether the deadline has passed.

        Returns:
            True once no time is left.
        """
        return self.remaining() <= 0.0


def finish(task: TaskInfo, submit: SubmitReply) -> Any:
    """The value ``call()`` returns for a finished task.

    Args:
        task: the task, in a terminal state.
        submit: the reply to its submit.

    Returns:
        The task's result if it is ``done``.

    Raises:
        TaskFailed: it ended in any other state.
    """
    if task.state is TaskState.DONE:
        return task.result
    raise TaskFailed(task, submit.id)


def wait_timeout(
    submit: SubmitReply, wait: float | None, last: ProtocolError | None
) -> ProtocolError:
    """The error ``call()`` raises when its ``wait`` runs out first.

    Args:
        submit: the reply to the task's submit.
        wait: the ``wait`` the caller gave.
        last: the daemon's last ``timeout`` error, whose ``detail.task`` is
            the task as it was then.

    Returns:
        ``ProtocolError(timeout)`` with ``detail.task_id`` (and
        ``detail.task`` when known).
    """
    detail: dict[str, Any] = {"task_id": submit.task_id}
    if last is not None and "task" in last.detail:
        detail["task"] = last.detail["task"]
    return ProtocolError(
        ErrorCode.TIMEOUT,
        f"task {submit.task_id} did not finish within {wait} s",
        detail,
        submit.id,
    )


def _check_json(value: Any, loc: list[str | int]) -> None:
    """Refuse what is not JSON before pydantic would quietly coerce it (bytes, sets, NaN)."""
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if len(where) > _MAX_DEPTH:
            raise _local_invalid(where[:3], f"nested deeper than {_MAX_DEPTH} levels (or a cycle)")
        if item is None or isinstance(item, str | int):  # bool is an int
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise _local_invalid(where, f"{item} is not a JSON number")
        elif isinstance(item, list | tuple):
            stack.extend((sub, [*where, i]) for i, sub in enumerate(item))
        elif isinstance(item, dict):
            for name, sub in item.items():
                if not isinstance(name, str):
                    raise _local_invalid(where, f"object keys must be strings, not {type(name)}")
                stack.append((sub, [*where, name]))
        else:
            raise _local_invalid(where, f"a {type(item).__name__} is not a JSON value")


def _local_invalid(loc: list[str | int], msg: str) -> ProtocolError:
    where = ".".join(str(p) for p in loc)
    return ProtocolError(
        ErrorCode.INVALID, f"{where}: {msg}", {"errors": [{"loc": loc, "msg": msg}]}
    )


def unreadable_reply(endpoint: str, error: ProtocolError, request_id: str) -> ProtocolError:
    """The error a client raises for a reply it received but cannot read.

    A daemon answered: that is not ``Unavailable`` ("is it running?"). The
    code stays the decoder's (``bad_json``, ``invalid``).
    """
    return ProtocolError(
        error.code,
        f"the daemon at {endpoint} answered, but its reply cannot be read: {error.message}",
        error.detail,
        request_id,
    )
