"""The remote-worker messages of protocol version 1 (``docs/protocol.md``, second part).

A remote worker connects a DEALER to the daemon's worker endpoint; both sides
send one-frame UTF-8 JSON messages, each with ``"v": 1``, a ``"type"`` and the
``session`` it belongs to::

    worker                                    daemon
    hello(session, slots, host, pid, tasks) ──▶
                    ◀── welcome(session, heartbeat, expiry)
    ready(session, credit)                  ──▶
                    ◀── task(session, task_id, attempt, task, args, kwargs, timeout)
    result(session, task_id, attempt, state, result, error, exitcode, signal) ──▶
                    ◀── cancel(session, task_id)      ◀── stop(session)
    heartbeat(session)                     ◀──▶      bye(session) ──▶

The models are strict in both directions, since both ends are pipework:
unknown fields are refused, ``"1"`` is not an integer, numbers must be
finite (in ``args``, ``kwargs`` and ``result`` too), and strings have
limits (a session 64 characters, names 200, a host 255). ``v`` and
``type`` default, so code builds ``Ready(session=s, credit=4)``; on the wire
both are required, which ``decode_worker_message`` enforces.

``decode_worker_message`` turns one message's frames into a model and
raises only ``ProtocolError`` (``bad_frame``, ``too_large``, ``bad_json``,
``unsupported_version``, ``invalid``); ``encode`` (the codec's) turns a
model into bytes. A worker clips an error's message and traceback to
``MAX_ERROR_TEXT`` characters, so a result message is at most its result's
JSON plus ``RESULT_OVERHEAD`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from pipework.protocol.codec import (
    _PARSE_ERRORS,
    _as_bytes,
    _bad_json,
    _parse_object,
    encode,
    invalid_error,
)
from pipework.protocol.errors import ErrorCode, ProtocolError
from pipework.protocol.messages import PROTOCOL_VERSION, _Float, _Int, _Name, _Str, _Version

__all__ = [
    "MAX_ERROR_TEXT",
    "RESULT_OVERHEAD",
    "WORKER_MESSAGE_TYPES",
    "Bye",
    "Cancel",
    "Heartbeat",
    "Hello",
    "Ready",
    "ResultError",
    "ResultMessage",
    "ResultState",
    "Stop",
    "TaskMessage",
    "Welcome",
    "WorkerMessage",
    "decode_worker_message",
    "encode",
]

WORKER_MESSAGE_TYPES: tuple[str, ...] = (
    "hello",
    "welcome",
    "ready",
    "task",
    "result",
    "cancel",
    "heartbeat",
    "stop",
    "bye",
)
"""Every remote-worker message ``type`` of version 1."""

MAX_ERROR_TEXT = 16_384
"""Characters of an error's ``message`` and of its ``traceback`` a result may carry."""

RESULT_OVERHEAD = 256 * 1024
"""Bytes a result message may need beyond its result's JSON: envelope, error
texts at their limit (JSON-escaped). A daemon that allows ``max_message_bytes``
of result JSON decodes worker messages up to that plus this."""

ResultState: TypeAlias = Literal["done", "failed", "timed_out", "worker_lost"]
"""How one run on a remote worker ended."""

_MAX_CREDIT = 10_000
_MAX_TASKS = 10_000  # names a hello may list


def _finite_json(value: Any) -> Any:
    """Refuse NaN and the infinities anywhere in a JSON value (a 1e400 parses as inf)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return value


_Session = Annotated[_Str, Field(min_length=1, max_length=64)]
_TaskId = Annotated[_Str, Field(min_length=1, max_length=64)]
_Count = Annotated[_Int, Field(ge=1, le=_MAX_CREDIT)]
_Attempt = Annotated[_Int, Field(ge=1)]
_Seconds = Annotated[_Float, Field(gt=0)]
_Args = Annotated[list[Any], AfterValidator(_finite_json)]
_Kwargs = Annotated[dict[str, Any], AfterValidator(_finite_json)]
_Result = Annotated[Any, AfterValidator(_finite_json)]
_ErrorText = Annotated[_Str, Field(max_length=MAX_ERROR_TEXT)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: _Version = 1


class Hello(_Message):
    """Worker -> daemon: start a session (a new random ``session`` per connection attempt)."""

    type: Literal["hello"] = "hello"
    session: _Session
    slots: _Count
    host: Annotated[_Str, Field(min_length=1, max_length=255)]
    pid: Annotated[_Int, Field(ge=1)]
    tasks: Annotated[list[_Name], Field(max_length=_MAX_TASKS)]


class Welcome(_Message):
    """Daemon -> worker: the session is open; the worker adopts these timings (seconds)."""

    type: Literal["welcome"] = "welcome"
    session: _Session
    heartbeat: _Seconds
    expiry: _Seconds

    @model_validator(mode="after")
    def _expiry_after_heartbeat(self) -> Self:
        if self.expiry <= self.heartbeat:
            raise ValueError("expiry must be longer than heartbeat")
        return self


class Ready(_Message):
    """Worker -> daemon: ``credit`` more tasks may be sent (credit adds up)."""

    type: Literal["ready"] = "ready"
    session: _Session
    credit: _Count


class TaskMessage(_Message):
    """Daemon -> worker: run the registered task ``task``; uses one credit."""

    type: Literal["task"] = "task"
    session: _Session
    task_id: _TaskId
    attempt: _Attempt
    task: _Name
    args: _Args = Field(default_factory=list)
    kwargs: _Kwargs = Field(default_factory=dict)
    timeout: _Seconds | None = None


class ResultError(BaseModel):
    """Why a run did not return: the task's exception, or what happened to it."""

    model_config = ConfigDict(extra="forbid")

    type: _Name
    message: _ErrorText
    traceback: _ErrorText = ""


class ResultMessage(_Message):
    """Worker -> daemon: the outcome of one run.

    ``done`` carries ``result`` and no error; ``failed`` and ``timed_out``
    carry ``error`` and no result; ``worker_lost`` may carry an error and
    tells how the local process died in ``exitcode`` and ``signal``.
    """

    type: Literal["result"] = "result"
    session: _Session
    task_id: _TaskId
    attempt: _Attempt
    state: ResultState
    result: _Result = None
    error: ResultError | None = None
    exitcode: Annotated[_Int, Field(ge=-255, le=255)] | None = None
    signal: Annotated[_Str, Field(min_length=1, max_length=32)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.state == "done":
            if self.error is not None:
                raise ValueError("a done result carries no error")
        else:
            if self.result is not None:
                raise ValueError(f"a {self.state} result carries no result")
            if self.error is None and self.state != "worker_lost":
                raise ValueError(f"a {self.state} result needs an error")
        if self.state != "worker_lost" and (self.exitcode is not None or self.signal is not None):
            raise ValueError("only a worker_lost result has exitcode or signal")
        return self


class Cancel(_Message):
    """Daemon -> worker: stop running ``task_id`` (kill its process); no result is expected."""

    type: Literal["cancel"] = "cancel"
    session: _Session
    task_id: _TaskId


class Heartbeat(_Message):
    """Both ways: sent when nothing else was sent for ``heartbeat`` seconds."""

    type: Literal["heartbeat"] = "heartbeat"
    session: _Session


class Stop(_Message):
    """Daemon -> worker: take nothing new and exit."""

    type: Literal["stop"] = "stop"
    session: _Session


class Bye(_Message):
    """Worker -> daemon: leaving; the tasks it still holds are lost (and retried)."""

    type: Literal["bye"] = "bye"
    session: _Session


def _tag(value: Any) -> str | None:
    # A body without "v" has no tag, so it fails here even though the models
    # default v (for building them): on the wire both v and type are required.
    if isinstance(value, dict):
        kind = value.get("type") if "v" in value else None
    else:
        kind = getattr(value, "type", None)
    return kind if isinstance(kind, str) else None


WorkerMessage: TypeAlias = Annotated[
    Annotated[Hello, Tag("hello")]
    | Annotated[Welcome, Tag("welcome")]
    | Annotated[Ready, Tag("ready")]
    | Annotated[TaskMessage, Tag("task")]
    | Annotated[ResultMessage, Tag("result")]
    | Annotated[Cancel, Tag("cancel")]
    | Annotated[Heartbeat, Tag("heartbeat")]
    | Annotated[Stop, Tag("stop")]
    | Annotated[Bye, Tag("bye")],
    Discriminator(_tag),
]
"""Any remote-worker message, told apart by ``type``."""

_validate = TypeAdapter[WorkerMessage](WorkerMessage).validate_json


def decode_worker_message(
    frames: Sequence[bytes | bytearray | memoryview], max_bytes: int
) -> WorkerMessage:
    """Turn the frames of one remote-worker message into a validated model.

    Args:
        frames: the message's frames (after the ROUTER identity on the
            daemon's side): exactly one, the JSON body.
        max_bytes: the largest body accepted.

    Returns:
        The message; dispatch on its class (or ``type``).

    Raises:
        ProtocolError: ``bad_frame`` (not exactly one non-empty frame),
            ``too_large``, ``bad_json`` (not a UTF-8 JSON object),
            ``unsupported_version`` (``v`` missing or not 1) or ``invalid``
            (unknown ``type``, a field missing, mistyped, out of range or unknown).
    """
    if len(frames) != 1:
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"expected one body frame, got {len(frames)} frames"
        )
    body = frames[0]
    size = len(body)
    if size == 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, "the body frame is empty")
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"the body is {size} bytes, over the limit of {max_bytes}",
            {"limit": max_bytes, "size": size},
        )
    data = _as_bytes(body)
    try:
        return _validate(data)
    except ValidationError as exc:
        raise _classify(data, exc) from None
    except _PARSE_ERRORS as exc:
        raise _bad_json(exc) from None


def _classify(body: bytes | bytearray, exc: ValidationError) -> ProtocolError:
    """Which rule a body that failed validation broke first: JSON, then v, type, fields."""
    raw = _parse_object(body, exc)
    if isinstance(raw, ProtocolError):
        return raw
    version = raw.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        reason = "missing" if version is None else "not a supported version"
        return ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"'v' is {reason}; this side speaks version {PROTOCOL_VERSION}",
            {"supported": [PROTOCOL_VERSION]},
        )
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in WORKER_MESSAGE_TYPES:
        reason = "missing" if kind is None else "not a message type"
        return ProtocolError(
            ErrorCode.INVALID,
            f"'type' is {reason}; expected one of {', '.join(WORKER_MESSAGE_TYPES)}",
            {"errors": [{"loc": ["type"], "msg": f"'type' is {reason}"}]},
        )
    return invalid_error(exc, tag=kind)
