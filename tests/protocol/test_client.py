"""Client and AsyncClient against a real ROUTER socket served by a thread in the test.

``FakeDaemon`` decodes each request with the real codec and asks the test's
handler what to send back: nothing (a lost request), stale replies, events,
or replies in any order. Every daemon thread, socket and context is closed
at teardown with a bounded join.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from pipework.protocol import (
    AsyncClient,
    Client,
    ErrorCode,
    ProtocolError,
    Request,
    ResultReply,
    ResultRequest,
    StatusReply,
    StatusRequest,
    SubmitReply,
    SubmitRequest,
    TaskDoneEvent,
    TaskError,
    TaskFailed,
    TaskInfo,
    TaskState,
    Unavailable,
    decode_request,
    encode,
    error_reply,
)

Handler = Callable[[Request], list[bytes]]
TASK_ID = "6f1c0e2a9b8d4c55a1e3f0b7c2d49e81"


class FakeDaemon:
    """A ROUTER on a thread; ``handler(request)`` returns the frames to send back."""

    def __init__(self, endpoint: str, handler: Handler) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.received: list[Request] = []
        self.failure: BaseException | None = None
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-daemon", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(20, zmq.POLLIN):
                    continue
                identity, *frames = self._socket.recv_multipart()
                try:
                    request, delimited = decode_request(frames, 1 << 20)
                except ProtocolError as err:
                    bodies = [error_reply(err.request_id, err.code, err.message, err.detail)]
                    delimited = len(frames) == 2
                else:
                    self.received.append(request)
                    bodies = self.handler(request)
                for body in bodies:
                    self._socket.send_multipart([identity, *([b""] if delimited else []), body])
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "fake daemon thread did not stop"
        self._socket.close(linger=0)
        self._context.term()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[str]:
    # A Unix socket path must fit in 107 bytes; pytest's tmp_path may not.
    if len(str(tmp_path)) < 90:
        yield f"ipc://{tmp_path}/daemon.sock"
        return
    with tempfile.TemporaryDirectory(prefix="pw-") as short:
        yield f"ipc://{short}/daemon.sock"


@pytest.fixture
def serve(endpoint: str) -> Iterator[Callable[[Handler], FakeDaemon]]:
    daemons: list[FakeDaemon] = []

    def start(handler: Handler) -> FakeDaemon:
        daemons.append(FakeDaemon(endpoint, handler))
        return daemons[-1]

    yield start
    for daemon in daemons:
        daemon.stop()
    assert not [t for t in threading.enumerate() if t.name == "fake-daemon"]


@pytest.fixture
def client(endpoint: str) -> Iterator[Client]:
    with Client(endpoint, timeout=2.0, resends=1) as c:
        yield c


def task_info(state: TaskState = TaskState.DONE, result: Any = None, **fields: Any) -> TaskInfo:
    return TaskInfo(task_id=TASK_ID, task="add", key="k", state=state, result=result, **fields)


def answer(request: Request, task: TaskInfo | None = None) -> bytes:
    """The ordinary reply to ``request``, for ops the tests use."""
    if isinstance(request, SubmitRequest):
        return encode(SubmitReply(id=request.id, task_id=TASK_ID, state=TaskState.QUEUED))
    info = task or task_info(result=5)
    if isinstance(request, StatusRequest):
        return encode(StatusReply(id=request.id, task=info))
    if isinstance(request, ResultRequest):
        return encode(ResultReply(id=request.id, task=info))
    raise AssertionError(f"unexpected request {request}")


# --- Client ---------------------------------------------------------------------


def test_submit_then_status(serve: Callable[[Handler], FakeDaemon], client: Client) -> None:
    daemon = serve(lambda request: [answer(request)])
    reply = client.submit("add", (1, 2), {"x": [None]}, priority=5, timeout=30)
    assert (reply.task_id, reply.state, reply.duplicate) == (TASK_ID, TaskState.QUEUED, False)
    info = client.status(reply.task_id)
    assert (info.task_id, info.state, info.result) == (TASK_ID, TaskState.DONE, 5)

    sent, status = daemon.received
    assert isinstance(sent, SubmitRequest)
    assert (sent.task, sent.args, sent.kwargs, sent.priority) == ("add", [1, 2], {"x": [None]}, 5)
    assert sent.timeout == 30.0
    assert sent.key is not None
    assert len(sent.key) == 32  # generated, so a resend cannot run it twice
    assert sent.id != status.id
    assert sent.id.split("-")[0] == status.id.split("-")[0]  # one prefix per client


def test_stale_replies_are_ignored(serve: Callable[[Handler], FakeDaemon], client: Client) -> None:
    stale = task_info(result="stale")

    def handler(request: Request) -> list[bytes]:
        return [
            encode(StatusReply(id="gone-1", task=stale)),
            error_reply("gone-2", ErrorCode.NOT_FOUND, "an old error"),
            answer(request),
        ]

    serve(handler)
    assert client.status(TASK_ID).result == 5


def test_a_lost_request_is_resent_with_the_same_id(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    def handler(request: Request) -> list[bytes]:
        return [] if len(daemon.received) == 1 else [answer(request)]

    daemon = serve(handler)
    with Client(endpoint, timeout=0.3, resends=2) as client:
        reply = client.submit("add", [1, 2])
    first, second = daemon.received
    assert first == second  # same id, same key
    assert reply.id == first.id


def _stale_socket(endpoint: str) -> None:
    """A socket file nobody listens on, as a daemon killed with -9 leaves it.

    Without any file the client fails at once (tests/daemon/test_new_user.py);
    with one, a daemon may be restarting there, so the client resends.
    """
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(endpoint.removeprefix("ipc://"))


def test_no_daemon_is_unavailable_after_the_resends(endpoint: str) -> None:
    _stale_socket(endpoint)
    with Client(endpoint, timeout=0.2, resends=2) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.stats()
        elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 5.0  # 3 attempts x 0.2 s
    err = info.value
    assert err.code == ErrorCode.UNAVAILABLE
    assert err.endpoint == endpoint
    assert err.waited >= 0.55
    assert err.request_id is not None


def test_an_error_reply_raises_its_code(
    serve: Callable[[Handler], FakeDaemon], client: Client
) -> None:
    def handler(request: Request) -> list[bytes]:
        return [error_reply(request.id, ErrorCode.NOT_FOUND, "no such task", {"task_id": "x"})]

    serve(handler)
    with pytest.raises(ProtocolError) as info:
        client.status("x")
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.detail == {"task_id": "x"}
    assert info.value.request_id is not None


def test_bad_arguments_never_reach_the_socket(
    serve: Callable[[Handler], FakeDaemon], client: Client
) -> None:
    daemon = serve(lambda request: [answer(request)])
    bad: list[dict[str, Any]] = [
        {"priority": 1001},
        {"priority": True},
        {"retries": -1},
        {"timeout": 0},
        {"key": ""},
        {"args": [object()]},
        {"args": [float("nan")]},
        {"kwargs": {1: 2}},
        {"args": "12"},
    ]
    for options in bad:
        with pytest.raises(ProtocolError) as info:
            client.submit("add", **options)
        assert info.value.code == ErrorCode.INVALID, options
    with pytest.raises(ProtocolError):
        client.list(limit=0)
    with pytest.raises(ProtocolError):
        client.result(TASK_ID, wait=3601)
    assert client.status(TASK_ID).result == 5  # the socket is fine
    assert len(daemon.received) == 1


def test_call_returns_the_pushed_result(
    serve: Callable[[Handler], FakeDaemon], client: Client
) -> None:
    def handler(request: Request) -> list[bytes]:
        assert isinstance(request, SubmitRequest)
        assert request.notify
        event = TaskDoneEvent(id=request.id, task=task_info(result={"sum": 5}))
        return [answer(request), encode(event)]

    daemon = serve(handler)
    assert client.call("add", [2, 3], wait=10) == {"sum": 5}
    assert [r.op for r in daemon.received] == ["submit"]  # no polling


def test_call_raises_task_failed(serve: Callable[[Handler], FakeDaemon], client: Client) -> None:
    failed = task_info(
        TaskState.FAILED, error=TaskError(type="ZeroDivisionError", message="division by zero")
    )

    def handler(request: Request) -> list[bytes]:
        return [answer(request), encode(TaskDoneEvent(id=request.id, task=failed))]

    serve(handler)
    with pytest.raises(TaskFailed) as info:
        client.call("div", [1, 0], wait=10)
    assert info.value.task == failed
    assert "ZeroDivisionError" in str(info.value)


def test_call_falls_back_to_result_when_the_event_is_lost(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    daemon = serve(lambda request: [answer(request)])  # never sends the event
    with Client(endpoint, timeout=0.2, resends=1) as client:
        assert client.call("add", [2, 3], wait=10) == 5
    assert [r.op for r in daemon.received] == ["submit", "result"]


def test_call_gives_up_when_wait_runs_out(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    running = task_info(TaskState.RUNNING)

    def handler(request: Request) -> list[bytes]:
        if isinstance(request, ResultRequest):
            detail = {"task": running.model_dump(mode="json")}
            return [error_reply(request.id, ErrorCode.TIMEOUT, "not finished", detail)]
        return [answer(request)]

    serve(handler)
    with Client(endpoint, timeout=0.2, resends=1) as client, pytest.raises(ProtocolError) as info:
        client.call("sleep", [60], wait=0.5)
    assert info.value.code == ErrorCode.TIMEOUT
    assert info.value.detail["task_id"] == TASK_ID
    assert info.value.detail["task"]["state"] == "running"


def test_a_req_socket_gets_its_delimiter_back(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    serve(lambda request: [answer(request)])
    context = zmq.Context()
    try:
        req = context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, 5000)
        req.connect(endpoint)
        req.send(b'{"v": 1, "id": "r", "op": "status", "task_id": "t"}')
        assert b'"id":"r"' in req.recv()  # REQ strips the delimiter it got back
        req.close()
    finally:
        context.term()


# --- AsyncClient ------------------------------------------------------------------


def test_async_concurrent_requests_answered_out_of_order(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    held: list[Request] = []

    def handler(request: Request) -> list[bytes]:
        held.append(request)
        if len(held) < 20:
            return []
        assert isinstance(request, StatusRequest)
        # All 20 are in: answer newest first, each with its own task id.
        replies = []
        for pending in reversed(held):
            assert isinstance(pending, StatusRequest)
            info = task_info(result=pending.task_id).model_copy(update={"task_id": pending.task_id})
            replies.append(encode(StatusReply(id=pending.id, task=info)))
        return replies

    serve(handler)

    async def main() -> list[TaskInfo]:
        async with AsyncClient(endpoint, timeout=5.0, resends=0) as client:
            return await asyncio.gather(*(client.status(f"task-{i}") for i in range(20)))

    infos = asyncio.run(main())
    assert [info.task_id for info in infos] == [f"task-{i}" for i in range(20)]
    assert [info.result for info in infos] == [f"task-{i}" for i in range(20)]


def test_async_resend_unavailable_and_call(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    _stale_socket(endpoint)

    async def no_daemon() -> float:
        async with AsyncClient(endpoint, timeout=0.2, resends=1) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.stats()
            return time.monotonic() - started

    assert 0.35 <= asyncio.run(no_daemon()) < 5.0

    def handler(request: Request) -> list[bytes]:
        if len(daemon.received) == 1:
            return []  # the first submit is lost
        event = TaskDoneEvent(id=request.id, task=task_info(result=7))
        return [answer(request), encode(event)]

    daemon = serve(handler)

    async def call() -> Any:
        async with AsyncClient(endpoint, timeout=0.3, resends=2) as client:
            with pytest.raises(ProtocolError) as info:
                await client.submit("add", priority=-1001)
            assert info.value.code == ErrorCode.INVALID
            return await client.call("add", [3, 4], wait=10)

    assert asyncio.run(call()) == 7
    assert [r.op for r in daemon.received] == ["submit", "submit"]
    assert daemon.received[0] == daemon.received[1]


def test_async_error_reply_and_fallback(
    serve: Callable[[Handler], FakeDaemon], endpoint: str
) -> None:
    def handler(request: Request) -> list[bytes]:
        if isinstance(request, StatusRequest):
            return [error_reply(request.id, ErrorCode.NOT_FOUND, "no such task")]
        return [answer(request)]  # no event: call() must ask with result

    serve(handler)

    async def main() -> Any:
        async with AsyncClient(endpoint, timeout=0.2, resends=1) as client:
            with pytest.raises(ProtocolError) as info:
                await client.status("nope")
            assert info.value.code == ErrorCode.NOT_FOUND
            return await client.call("add", [2, 3], wait=10)

    assert asyncio.run(main()) == 5
