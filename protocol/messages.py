"""The messages of protocol version 1 as pydantic models: ``docs/protocol.md`` in code.

Requests (client -> daemon) are strict: unknown fields are refused, ``"1"``
is not an integer, ``true`` is not an integer, an integer is a number. Their
``v``, ``id`` and ``op`` have no defaults, because a request without them is
an error on the wire; build one with ``v=1`` and ``op`` given explicitly.

Replies and events (daemon -> client) are lenient: unknown fields are
ignored, so that a version-1 client keeps working against a daemon that has
added fields. Their ``v``, ``ok`` and ``op`` default, so the daemon builds
``SubmitReply(id=..., task_id=..., state=..., duplicate=False)``.

``Request`` is the discriminated union of the request models (tag ``op``);
``REQUEST_ADAPTER`` validates one from JSON in a single pass. ``Reply`` is
the union of the reply models, including ``ErrorReply``. Turning bytes into
these models is ``protocol.codec``'s job.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetPydanticSchema,
    Strict,
    Tag,
    TypeAdapter,
)
from pydantic_core import core_schema

from pipework.protocol.errors import ErrorCode

__all__ = [
    "FAILURE_STATES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "REPLY_ADAPTER",
    "REQUEST_ADAPTER",
    "TERMINAL_STATES",
    "Attempt",
    "CancelReply",
    "CancelRequest",
    "ErrorBody",
    "ErrorReply",
    "JSONValue",
    "ListReply",
    "ListRequest",
    "Reply",
    "Request",
    "ResultReply",
    "ResultRequest",
    "Stats",
    "StatsReply",
    "StatsRequest",
    "StatusReply",
    "StatusRequest",
    "SubmitReply",
    "SubmitRequest",
    "TaskDoneEvent",
    "TaskError",
    "TaskInfo",
    "TaskState",
    "TaskSummary",
    "TasksReply",
    "TasksRequest",
    "WorkerInfo",
    "WorkersReply",
    "WorkersRequest",
]

PROTOCOL_VERSION = 1
"""The protocol version this package speaks (the ``v`` of every message)."""

OPERATIONS: tuple[str, ...] = (
    "submit",
    "status",
    "result",
    "cancel",
    "list",
    "stats",
    "workers",
    "tasks",
)
"""Every request ``op`` of version 1."""


class TaskState(enum.StrEnum):
    """Where a task is in its life; see the state table of the spec."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    QUARANTINED = "quarantined"


TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {
        TaskState.DONE,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.TIMED_OUT,
        TaskState.QUARANTINED,
    }
)
"""The states a task never leaves."""

FAILURE_STATES: frozenset[TaskState] = frozenset(
    {TaskState.FAILED, TaskState.TIMED_OUT, TaskState.QUARANTINED}
)
"""The terminal states that mean the task did not do its work (not ``cancelled``)."""

# --- field types ------------------------------------------------------------
#
# pydantic's Literal[1] accepts true and 1.0 even in strict mode, so the
# version goes through a strict int first; all of it stays in pydantic-core.
_Version = Annotated[
    Literal[1],
    GetPydanticSchema(
        lambda tp, handler: core_schema.chain_schema(
            [core_schema.int_schema(strict=True), handler(tp)]
        )
    ),
]
_RequestId = Annotated[str, Strict(), Field(min_length=1, max_length=64)]
_Name = Annotated[str, Strict(), Field(min_length=1, max_length=200)]
_Str = Annotated[str, Strict()]
_Int = Annotated[int, Strict()]
# A strict float still takes a JSON integer (the spec's "number").
_Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_Bool = Annotated[bool, Strict()]
# Task arguments and results: any JSON value, left unvalidated (the hot path).
JSONValue: TypeAlias = Any


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: _Version
    id: _RequestId


class SubmitRequest(_Request):
    """Run the registered task ``task`` with JSON arguments."""

    op: Literal["submit"]
    task: _Name
    args: Annotated[list[JSONValue], Strict()] = Field(default_factory=list)
    kwargs: Annotated[dict[str, JSONValue], Strict()] = Field(default_factory=dict)
    key: _Name | None = None
    timeout: Annotated[_Float, Field(gt=0, le=604800)] | None = None
    retries: Annotated[_Int, Field(ge=0, le=100)] | None = None
    priority: Annotated[_Int, Field(ge=-1000, le=1000)] = 0
    delay: Annotated[_Float, Field(ge=0, le=31536000)] = 0.0
    notify: _Bool = False


class StatusRequest(_Request):
    """Describe one task."""

    op: Literal["status"]
    task_id: _Str


class ResultRequest(_Request):
    """Describe one task once it is finished, holding the request up to ``wait`` s."""

    op: Literal["result"]
    task_id: _Str
    wait: Annotated[_Float, Field(ge=0, le=3600)] = 0.0


class CancelRequest(_Request):
    """Cancel one task (kill its worker if it is running)."""

    op: Literal["cancel"]
    task_id: _Str


class ListRequest(_Request):
    """List tasks, newest first, optionally only those in ``state``."""

    op: Literal["list"]
    state: TaskState | None = None
    limit: Annotated[_Int, Field(ge=1, le=1000)] = 100


class StatsRequest(_Request):
    """The daemon's counters."""

    op: Literal["stats"]


class WorkersRequest(_Request):
    """The daemon's workers and what each is running."""

    op: Literal["workers"]


class TasksRequest(_Request):
    """The task names the daemon runs, each with its signature."""

    op: Literal["tasks"]


Request: TypeAlias = Annotated[
    SubmitRequest
    | StatusRequest
    | ResultRequest
    | CancelRequest
    | ListRequest
    | StatsRequest
    | WorkersRequest
    | TasksRequest,
    Field(discriminator="op"),
]
"""Any request, told apart by ``op``."""

REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)
"""Validates a ``Request`` (``validate_json`` takes the body bytes in one pass)."""


# --- shared shapes ----------------------------------------------------------


class _Lenient(BaseModel):
    # Replies ignore unknown fields: a v1 client must accept a newer daemon.
    model_config = ConfigDict(extra="ignore")


class TaskError(_Lenient):
    """Why a task did not return: its exception, or what the daemon did to it."""

    type: str
    message: str
    traceback: str = ""


class Attempt(_Lenient):
    """One attempt of a task that ended because its worker died."""

    attempt: int
    worker_pid: int | None = None
    outcome: Literal["worker_lost"] = "worker_lost"
    exitcode: int | None = None
    signal: str | None = None
    at: float


class TaskInfo(_Lenient):
    """A task as the daemon describes it in replies and events."""

    task_id: str
    task: str
    # The spec types ``key`` as a string, but a client other than ours may
    # submit without one.
    key: str | None = None
    state: TaskState
    attempts: int = 0
    priority: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: JSONValue = None
    error: TaskError | None = None
    history: list[Attempt] = Field(default_factory=list)


class Stats(_Lenient):
    """The daemon's counters, as the ``stats`` reply carries them."""

    version: str
    uptime: float
    draining: bool
    journal: bool
    workers: int
    queued: int
    running: int
    states: dict[str, int] = Field(default_factory=dict)
    accepted: int
    finished: int
    journal_error: str | None = None
    """Why the journal cannot write now (submits get ``journal_unavailable``), or None."""


class RemoteInfo(_Lenient):
    """Where a remote worker slot is: its host, its process, its session."""

    host: str
    pid: int
    session: str


class WorkerInfo(_Lenient):
    """One worker slot and the task it is running, if any (``remote`` for remote ones)."""

    pid: int
    task_id: str | None = None
    task: str | None = None
    since: float | None = None
    remote: RemoteInfo | None = None


# --- replies ----------------------------------------------------------------


class _Reply(_Lenient):
    v: Literal[1] = 1
    id: str
    ok: Literal[True] = True


class SubmitReply(_Reply):
    """The task is journalled: its id, its state, and whether ``key`` named it already."""

    op: Literal["submit"] = "submit"
    task_id: str
    state: TaskState
    duplicate: bool = False


class StatusReply(_Reply):
    """The answer to ``status``."""

    op: Literal["status"] = "status"
    task: TaskInfo


class ResultReply(_Reply):
    """The answer to ``result``: the task, in a terminal state."""

    op: Literal["result"] = "result"
    task: TaskInfo


class CancelReply(_Reply):
    """The answer to ``cancel``; ``cancelled`` is false if the task had finished."""

    op: Literal["cancel"] = "cancel"
    cancelled: bool
    task: TaskInfo


class ListReply(_Reply):
    """The answer to ``list``, newest first, without results, errors or history."""

    op: Literal["list"] = "list"
    tasks: list[TaskInfo]


class StatsReply(_Reply):
    """The answer to ``stats``."""

    op: Literal["stats"] = "stats"
    stats: Stats


class WorkersReply(_Reply):
    """The answer to ``workers``."""

    op: Literal["workers"] = "workers"
    workers: list[WorkerInfo]


class TaskSummary(_Lenient):
    """One registered task: its name, its Python signature as text, its docstring's first line."""

    name: str
    signature: str = ""
    doc: str = ""


class TasksReply(_Reply):
    """The answer to ``tasks``, sorted by name."""

    op: Literal["tasks"] = "tasks"
    tasks: list[TaskSummary]


class ErrorBody(_Lenient):
    """The ``error`` object of an error reply."""

    # left_to_right: a known code becomes an ErrorCode, a newer one stays a str.
    code: ErrorCode | str = Field(union_mode="left_to_right")
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ErrorReply(_Lenient):
    """The reply to a request that failed; ``id`` is null if the request's was unreadable."""

    v: Literal[1] = 1
    id: str | None
    ok: Literal[False] = False
    error: ErrorBody


class TaskDoneEvent(_Lenient):
    """Pushed, unprompted, when a task submitted with ``notify`` finishes.

    ``id`` is the submit request's id. Events have ``event`` and no ``ok``.
    """

    v: Literal[1] = 1
    event: Literal["task_done"] = "task_done"
    id: str
    task: TaskInfo


def _message_tag(value: Any) -> str | None:
    """Which daemon->client message ``value`` is: an op, ``error`` or ``event:<name>``."""
    if isinstance(value, dict):
        event, ok, op = value.get("event"), value.get("ok"), value.get("op")
    else:
        event, ok, op = (getattr(value, f, None) for f in ("event", "ok", "op"))
    if event is not None:
        return f"event:{event}"
    if ok is False:
        return "error"
    return op if isinstance(op, str) else None


Reply: TypeAlias = Annotated[
    Annotated[SubmitReply, Tag("submit")]
    | Annotated[StatusReply, Tag("status")]
    | Annotated[ResultReply, Tag("result")]
    | Annotated[CancelReply, Tag("cancel")]
    | Annotated[ListReply, Tag("list")]
    | Annotated[StatsReply, Tag("stats")]
    | Annotated[WorkersReply, Tag("workers")]
    | Annotated[TasksReply, Tag("tasks")]
    | Annotated[ErrorReply, Tag("error")],
    Discriminator(_message_tag),
]
"""Any reply a client can get to a request, including ``ErrorReply``."""

_Incoming: TypeAlias = Annotated[
    Annotated[SubmitReply, Tag("submit")]
    | Annotated[StatusReply, Tag("status")]
    | Annotated[ResultReply, Tag("result")]
    | Annotated[CancelReply, Tag("cancel")]
    | Annotated[ListReply, Tag("list")]
    | Annotated[StatsReply, Tag("stats")]
    | Annotated[WorkersReply, Tag("workers")]
    | Annotated[TasksReply, Tag("tasks")]
    | Annotated[ErrorReply, Tag("error")]
    | Annotated[TaskDoneEvent, Tag("event:task_done")],
    Discriminator(_message_tag),
]

REPLY_ADAPTER: TypeAdapter[Reply | TaskDoneEvent] = TypeAdapter(_Incoming)
"""Validates anything a daemon sends a client: a ``Reply`` or a ``TaskDoneEvent``."""
