"""Wire error codes and the one exception tree the protocol raises.

```
ProtocolError        code, message, detail, request_id
  Unavailable        endpoint, waited        (client: no reply at all)
  TaskFailed         task                    (client: call() ended not done)
```

``ErrorCode`` holds the stable code strings of ``docs/protocol.md``. Two codes
never travel on the wire; a client makes them up itself: ``unavailable`` (the
daemon did not answer) and ``task_failed`` (the task ran and ended ``failed``,
``cancelled``, ``timed_out`` or ``quarantined``).

The codec raises only ``ProtocolError``; the daemon turns one into an error
reply with ``codec.error_reply(e.request_id, e.code, e.message, e.detail)``,
and the clients turn an error reply back into one. Every error survives
``pickle.loads(pickle.dumps(err))`` with its attributes.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipework.protocol.messages import TaskInfo

__all__ = ["ErrorCode", "ProtocolError", "TaskFailed", "Unavailable"]


class ErrorCode(enum.StrEnum):
    """The stable error code strings of protocol version 1.

    New codes may appear within version 1 (the spec allows it): a client that
    receives a code it does not know keeps it as a plain ``str`` in
    ``ProtocolError.code``, so compare codes with ``==``, not ``is``.
    """

    BAD_FRAME = "bad_frame"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    INVALID = "invalid"
    UNKNOWN_TASK = "unknown_task"
    KEY_CONFLICT = "key_conflict"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    DRAINING = "draining"
    QUEUE_FULL = "queue_full"
    JOURNAL_UNAVAILABLE = "journal_unavailable"
    INTERNAL = "internal"
    # Client-only: never sent by the daemon.
    UNAVAILABLE = "unavailable"
    TASK_FAILED = "task_failed"


class ProtocolError(Exception):
    """An error reply, or a message that breaks the protocol.

    Attributes:
        code: what went wrong, an ``ErrorCode`` (or the raw string of a code
            newer than this library, received from a newer daemon).
        message: human-readable text; not stable, do not parse it.
        detail: JSON-safe context whose keys the spec names per code
            (``limit``, ``supported``, ``errors``, ``task``).
        request_id: the id of the request this error answers, or None when
            the request's id could not be read.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        detail: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        """Build the error.

        Args:
            code: the error code.
            message: human-readable text.
            detail: JSON-safe context; None means ``{}``.
            request_id: the id of the request this error answers, if known.
        """
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = {} if detail is None else detail
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.detail, self.request_id))


class Unavailable(ProtocolError):
    """No reply came back within the client's timeout, after all its resends.

    The daemon may be down, not yet started, or too busy; a ``submit`` may or
    may not have been accepted (resending it with the same ``key`` is safe).

    Attributes:
        endpoint: the endpoint the client is connected to.
        waited: seconds spent waiting across all attempts.
    """

    def __init__(
        self,
        endpoint: str,
        waited: float,
        request_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Build the error.

        Args:
            endpoint: the endpoint the client is connected to.
            waited: seconds spent waiting across all attempts.
            request_id: the id of the request that got no reply.
            reason: why no daemon can be there, when the client knows without
                asking (an ``ipc://`` socket file that does not exist).
        """
        message = (
            f"no daemon at {endpoint}: {reason}; is `pipework serve` running there?"
            if reason
            else f"no reply from {endpoint} within {waited:.2f} s; "
            "is `pipework serve` running there?"
        )
        super().__init__(
            ErrorCode.UNAVAILABLE, message, {"endpoint": endpoint, "waited": waited}, request_id
        )
        self.endpoint = endpoint
        self.waited = waited
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.endpoint, self.waited, self.request_id, self.reason))


class TaskFailed(ProtocolError):
    """``call()``'s task finished in a terminal state other than ``done``.

    Attributes:
        task: the task's final ``TaskInfo``; ``task.state`` says how it ended
            and ``task.error`` carries type, message and traceback text.
    """

    def __init__(self, task: TaskInfo, request_id: str | None = None) -> None:
        """Build the error.

        Args:
            task: the task's final ``TaskInfo``.
            request_id: the id of the submit request that started the task.
        """
        what = f"task {task.task!r} ({task.task_id}) ended {task.state}"
        if task.error is not None:
            what += f": {task.error.type}: {task.error.message}"
        super().__init__(
            ErrorCode.TASK_FAILED, what, {"task_id": task.task_id, "state": task.state}, request_id
        )
        self.task = task

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.request_id))
