"""pipework's wire: message models, codec and the clients other programs use.

``docs/protocol.md`` is the specification; this package is it in code. It
owns no process and never imports ``service``, so a program that only talks
to a daemon installs nothing else::

    from pipework.protocol import Client, TaskFailed

    with Client() as client:                    # $PIPEWORK_ENDPOINT or the default
        print(client.call("add", [2, 3], wait=10))          # 5
        reply = client.submit("add", [1, 2], key="order-1187")
        task = client.result(reply.task_id, wait=30)
        print(task.state, task.result)                       # done 3

and with asyncio, many requests share one socket::

    from pipework.protocol import AsyncClient

    async with AsyncClient() as client:
        results = await asyncio.gather(*(client.call("add", [i, 1]) for i in range(10)))

A daemon decodes requests and encodes replies with ``decode_request``,
``encode`` and ``error_reply``; every failure is a ``ProtocolError`` whose
``code`` is a stable ``ErrorCode``.

Remote workers and the daemon exchange the messages of ``protocol.workers``
(``Hello``, ``Welcome``, ``Ready``, ``TaskMessage``, ``ResultMessage``,
``Cancel``, ``Heartbeat``, ``Stop``, ``Bye``), read with
``decode_worker_message`` and written with ``encode``.

``import protocol`` loads pydantic but not ZeroMQ: ``Client`` and
``AsyncClient`` are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipework.protocol.codec import (
    MAX_MESSAGE_BYTES,
    decode_reply,
    decode_request,
    encode,
    error_reply,
)
from pipework.protocol.endpoint import default_endpoint, runtime_dir
from pipework.protocol.errors import ErrorCode, ProtocolError, TaskFailed, Unavailable
from pipework.protocol.messages import (
    FAILURE_STATES,
    OPERATIONS,
    PROTOCOL_VERSION,
    TERMINAL_STATES,
    Attempt,
    CancelReply,
    CancelRequest,
    ErrorBody,
    ErrorReply,
    JSONValue,
    ListReply,
    ListRequest,
    RemoteInfo,
    Reply,
    Request,
    ResultReply,
    ResultRequest,
    Stats,
    StatsReply,
    StatsRequest,
    StatusReply,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
    TaskDoneEvent,
    TaskError,
    TaskInfo,
    TasksReply,
    TasksRequest,
    TaskState,
    TaskSummary,
    WorkerInfo,
    WorkersReply,
    WorkersRequest,
)
from pipework.protocol.workers import (
    MAX_ERROR_TEXT,
    RESULT_OVERHEAD,
    WORKER_MESSAGE_TYPES,
    Bye,
    Cancel,
    Heartbeat,
    Hello,
    Ready,
    ResultError,
    ResultMessage,
    ResultState,
    Stop,
    TaskMessage,
    Welcome,
    WorkerMessage,
    decode_worker_message,
)

if TYPE_CHECKING:
    from pipework.protocol.async_client import AsyncClient
    from pipework.protocol.client import Client
    from pipework.protocol.curve import use_curve

__all__ = [
    "FAILURE_STATES",
    "MAX_ERROR_TEXT",
    "MAX_MESSAGE_BYTES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "RESULT_OVERHEAD",
    "TERMINAL_STATES",
    "WORKER_MESSAGE_TYPES",
    "AsyncClient",
    "Attempt",
    "Bye",
    "Cancel",
    "CancelReply",
    "CancelRequest",
    "Client",
    "ErrorBody",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "Hello",
    "JSONValue",
    "ListReply",
    "ListRequest",
    "ProtocolError",
    "Ready",
    "RemoteInfo",
    "Reply",
    "Request",
    "ResultError",
    "ResultMessage",
    "ResultReply",
    "ResultRequest",
    "ResultState",
    "Stats",
    "StatsReply",
    "StatsRequest",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "SubmitReply",
    "SubmitRequest",
    "TaskDoneEvent",
    "TaskError",
    "TaskFailed",
    "TaskInfo",
    "TaskMessage",
    "TaskState",
    "TaskSummary",
    "TasksReply",
    "TasksRequest",
    "Unavailable",
    "Welcome",
    "WorkerInfo",
    "WorkerMessage",
    "WorkersReply",
    "WorkersRequest",
    "decode_reply",
    "decode_request",
    "decode_worker_message",
    "default_endpoint",
    "encode",
    "error_reply",
    "runtime_dir",
    "use_curve",
]

# The clients import ZeroMQ (and asyncio); most users of the models need neither.
_LAZY = {
    "Client": "pipework.protocol.client",
    "AsyncClient": "pipework.protocol.async_client",
    "use_curve": "pipework.protocol.curve",
}


def __getattr__(name: str) -> Any:
    """Import the ZeroMQ-using names (``Client``, ``AsyncClient``, ``use_curve``) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted(set(globals()) | set(__all__))
