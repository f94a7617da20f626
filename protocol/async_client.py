"""The asyncio client: many requests in flight on one DEALER socket.

A single reader task receives every frame and hands each reply to the
future of the request with its id, and each ``task_done`` event to whoever
waits for it (or keeps it until someone asks). Requests, resends, timeouts
and errors follow the blocking ``Client`` exactly; both build and read
their messages through ``protocol._requests``.

```
request coroutines ──send──▶ DEALER ──▶ daemon
      ▲ future by id             │
      └──── reader task ◀────────┘   replies by id, events by submit id
```
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import zmq
import zmq.asyncio

from pipework.protocol._requests import (
    RESULT_SLICE,
    Deadline,
    EventBuffer,
    RequestBuilder,
    expect,
    finish,
    unreadable_reply,
    wait_timeout,
)
from pipework.protocol.codec import decode_reply, encode
from pipework.protocol.curve import use_curve
from pipework.protocol.endpoint import check_client_endpoint, default_endpoint, missing_ipc_socket
from pipework.protocol.errors import ErrorCode, ProtocolError, Unavailable
from pipework.protocol.messages import (
    TERMINAL_STATES,
    CancelReply,
    ListReply,
    Reply,
    Request,
    ResultReply,
    Stats,
    StatsReply,
    StatusReply,
    SubmitReply,
    TaskDoneEvent,
    TaskInfo,
    TasksReply,
    TaskState,
    TaskSummary,
    WorkerInfo,
    WorkersReply,
)

__all__ = ["AsyncClient"]

_log = logging.getLogger(__name__)


class AsyncClient:
    """An asyncio client for the pipework daemon; requests may run concurrently.

    Use it from one event loop. Example::

        async with AsyncClient() as client:
            replies = await asyncio.gather(*(client.submit("add", [i, 1]) for i in range(100)))
            print(await client.call("add", [2, 3], wait=10))
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 5.0,
        resends: int = 2,
        secret_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        """Connect to a daemon (ZeroMQ connects lazily; nothing blocks here).

        Args:
            endpoint: the daemon's endpoint; None means ``default_endpoint()``.
            timeout: seconds to wait for each reply before resending.
            resends: how many times to resend a request that got no reply.
            secret_key, server_key: this client's ``NAME.key_secret`` file and
                the daemon's public ``NAME.key`` file, for a CURVE endpoint
                (every ``tcp://`` daemon endpoint is one).
            context: the ``zmq.asyncio`` context to use; None makes a private
                one, terminated by ``aclose()``.

        Raises:
            ValueError: ``timeout`` is not positive, ``resends`` is
                negative, ZeroMQ refuses the endpoint, or an ``ipc://``
                endpoint is not in a directory private to this user
                (``protocol.endpoint.check_client_endpoint``).
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if resends < 0:
            raise ValueError(f"resends must be >= 0, got {resends}")
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        self.resends = resends
        check_client_endpoint(self.endpoint, curve=server_key is not None)
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            use_curve(self._socket, secret_key, server_key)
        except ValueError:
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        self._closed = False
        # Whether a daemon ever answered: until one has, a missing ipc:// socket
        # file fails a request at once (no daemon); after, it may be a restart.
        self._answered = False
        try:
            self._socket.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self._close_socket()
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc}") from exc
        self._requests = RequestBuilder()
        self._events = EventBuffer()
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._event_waiters: dict[str, asyncio.Future[TaskDoneEvent]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._unreadable: tuple[float, ProtocolError] | None = None  # the last one, and when

    # --- operations ---------------------------------------------------------

    async def submit(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int = 0,
        delay: float = 0.0,
        notify: bool = False,
    ) -> SubmitReply:
        """Enqueue a task; returns once the daemon has journalled it.

        Args:
            task: a task name registered with the daemon.
            args: positional arguments, JSON values.
            kwargs: keyword arguments, JSON values.
            key: idempotency key; None generates one (a uuid4).
            timeout: seconds one run may take (0 < timeout <= 604800).
            retries: re-runs after the worker dies (0-100); None takes the
                daemon's setting.
            priority: -1000 to 1000; higher runs first.
            delay: seconds (0 to 31536000) before the task may start.
            notify: ask the daemon to push a ``task_done`` event.

        Returns:
            The task's id and state, and whether ``key`` named a task already.

        Raises:
            ProtocolError: an error reply, or ``invalid`` for a bad argument,
                refused before sending.
            Unavailable: no reply after all resends.
        """
        request = self._requests.submit(
            task,
            args,
            kwargs,
            key=key,
            timeout=timeout,
            retries=retries,
            priority=priority,
            delay=delay,
            notify=notify,
        )
        return expect(await self._exchange(request, self.timeout), SubmitReply)

    async def status(self, task_id: str) -> TaskInfo:
        """Describe a task.

        Args:
            task_id: the id ``submit`` returned.

        Returns:
            The task as it is now.

        Raises:
            ProtocolError: ``not_found``.
            Unavailable: no reply after all resends.
        """
        request = self._requests.status(task_id)
        return expect(await self._exchange(request, self.timeout), StatusReply).task

    async def result(self, task_id: str, wait: float = 0.0) -> TaskInfo:
        """Describe a finished task, waiting up to ``wait`` seconds for it to finish.

        Args:
            task_id: the id ``submit`` returned.
            wait: seconds (0 to 3600) the daemon holds the request.

        Returns:
            The task in its terminal state.

        Raises:
            ProtocolError: ``timeout`` if it has not finished by then,
                ``not_found``.
            Unavailable: no reply within ``wait + timeout``, after all resends.
        """
        request = self._requests.result(task_id, wait)
        reply = await self._exchange(request, request.wait + self.timeout)
        return expect(reply, ResultReply).task

    async def cancel(self, task_id: str) -> CancelReply:
        """Cancel a task; a running one has its worker killed. Harmless if repeated.

        Args:
            task_id: the id ``submit`` returned.

        Returns:
            Whether it was cancelled (false if it had finished) and the task.

        Raises:
            ProtocolError: ``not_found``.
            Unavailable: no reply after all resends.
        """
        request = self._requests.cancel(task_id)
        return expect(await self._exchange(request, self.timeout), CancelReply)

    async def list(
        self, state: TaskState | str | None = None, limit: int = 100
    ) -> builtins.list[TaskInfo]:
        """List tasks, newest first, without results, errors or history.

        Args:
            state: only tasks in this state; None for all.
            limit: at most this many (1-1000).

        Returns:
            The tasks.

        Raises:
            ProtocolError: ``invalid`` for a bad state or limit.
            Unavailable: no reply after all resends.
        """
        request = self._requests.list(state, limit)
        return expect(await self._exchange(request, self.timeout), ListReply).tasks

    async def stats(self) -> Stats:
        """The daemon's counters.

        Returns:
            Version, uptime, queue sizes and task counts.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.stats()
        return expect(await self._exchange(request, self.timeout), StatsReply).stats

    async def workers(self) -> builtins.list[WorkerInfo]:
        """The daemon's workers.

        Returns:
            Each worker's pid and the task it is running, if any.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.workers()
        return expect(await self._exchange(request, self.timeout), WorkersReply).workers

    async def tasks(self) -> builtins.list[TaskSummary]:
        """The task names the daemon runs.

        Returns:
            Each registered task's name, signature and docstring's first line, by name.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.tasks()
        return expect(await self._exchange(request, self.timeout), TasksReply).tasks

    async def call(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        wait: float | None = None,
        key: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        priority: int = 0,
        delay: float = 0.0,
    ) -> Any:
        """Run a task and return its result: ``submit(notify=True)``, then wait.

        As ``Client.call``: the ``task_done`` event answers; if it was lost,
        ``result`` requests in slices of at most 30 s do.

        Args:
            task: a registered task name.
            args: positional arguments, JSON values.
            kwargs: keyword arguments, JSON values.
            wait: the most seconds to wait for the task to finish; None
                waits until it does (cancel the coroutine to stop).
            key: as for ``submit``.
            timeout: as for ``submit``.
            retries: as for ``submit``.
            priority: as for ``submit``.
            delay: as for ``submit``.

        Returns:
            The task's return value.

        Raises:
            TaskFailed: it ended in a terminal state other than ``done``.
            ProtocolError: ``timeout`` if ``wait`` ran out first; any error
                ``submit`` or ``result`` may raise.
            Unavailable: the daemon stopped answering.
        """
        deadline = Deadline(wait)
        submitted = await self.submit(
            task,
            args,
            kwargs,
            key=key,
            timeout=timeout,
            retries=retries,
            priority=priority,
            delay=delay,
            notify=True,
        )
        # No await between the buffer check and registering the waiter: the
        # reader cannot slip the event in between.
        waiter: asyncio.Future[TaskDoneEvent] = asyncio.get_running_loop().create_future()
        early = self._events.pop(submitted.id)
        if early is not None:
            waiter.set_result(early)
        else:
            self._event_waiters[submitted.id] = waiter
        try:
            if submitted.state not in TERMINAL_STATES:
                try:
                    event = await asyncio.wait_for(
                        asyncio.shield(waiter), deadline.slice(self.timeout)
                    )
                except TimeoutError:
                    pass
                else:
                    if event.task.state in TERMINAL_STATES:
                        return finish(event.task, submitted)
            last: ProtocolError | None = None
            while True:
                try:
                    info = await self.result(submitted.task_id, wait=deadline.slice(RESULT_SLICE))
                except ProtocolError as exc:
                    if exc.code != ErrorCode.TIMEOUT:
                        raise
                    last = exc
                else:
                    if info.state in TERMINAL_STATES:
                        return finish(info, submitted)
                if waiter.done() and waiter.result().task.state in TERMINAL_STATES:
                    return finish(waiter.result().task, submitted)
                if deadline.expired():
                    raise wait_timeout(submitted, wait, last)
        finally:
            self._event_waiters.pop(submitted.id, None)
            waiter.cancel()

    # --- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the reader, fail pending requests, close the socket. Idempotent.

        Requests still waiting are cancelled (they raise ``CancelledError``).
        """
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        futures: list[asyncio.Future[Any]] = [*self._pending.values()]
        futures.extend(self._event_waiters.values())
        for future in futures:
            future.cancel()
        self._close_socket()

    async def __aenter__(self) -> Self:
        """Use the client in an ``async with`` block that closes it.

        Returns:
            The client.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        await self.aclose()

    # --- the exchange -------------------------------------------------------

    def _close_socket(self) -> None:
        self._closed = True
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    async def _exchange(self, request: Request, budget: float) -> Reply:
        """Send ``request`` and await the reply with its id, resending on silence."""
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name=f"pipework-client-reader {self.endpoint}"
            )
        if not self._answered and (reason := missing_ipc_socket(self.endpoint)):
            raise Unavailable(self.endpoint, 0.0, request.id, reason)
        body = encode(request)
        reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = reply
        started = time.monotonic()
        try:
            for _ in range(self.resends + 1):
                # zmq.Again: nowhere to queue it; the attempt times out like a lost request.
                with contextlib.suppress(zmq.Again):
                    await self._socket.send(body, zmq.NOBLOCK)
                try:
                    answer = await asyncio.wait_for(asyncio.shield(reply), budget)
                except TimeoutError:
                    continue
                self._answered = True
                return answer
        finally:
            del self._pending[request.id]
            if reply.done() and not reply.cancelled():
                reply.exception()  # retrieved: an error that came too late is not logged
            reply.cancel()
        unreadable = self._unreadable
        if unreadable is not None and unreadable[0] >= started:
            # Something answered, but nothing we could read: not "no daemon".
            raise unreadable_reply(self.endpoint, unreadable[1], request.id)
        raise Unavailable(self.endpoint, time.monotonic() - started, request.id)

    async def _read_forever(self) -> None:
        """Route every incoming frame: replies to their request, events to their waiter."""
        while True:
            try:
                frames = await self._socket.recv_multipart()
            except zmq.ZMQError as exc:
                _log.warning("client socket for %s failed: %s", self.endpoint, exc)
                for request_id, future in self._pending.items():
                    if not future.done():
                        future.set_exception(Unavailable(self.endpoint, 0.0, request_id))
                return
            try:
                message = decode_reply(frames[-1])
            except ProtocolError as exc:
                rid = exc.request_id
                failed = self._pending.get(rid) if rid else None
                if rid is not None and failed is not None and not failed.done():
                    failed.set_exception(unreadable_reply(self.endpoint, exc, rid))
                else:
                    self._unreadable = (time.monotonic(), exc)
                    _log.warning("dropping an unreadable message from %s: %s", self.endpoint, exc)
                continue
            if isinstance(message, TaskDoneEvent):
                waiter = self._event_waiters.pop(message.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
                else:
                    self._events.add(message)
                continue
            pending = self._pending.get(message.id) if message.id is not None else None
            if pending is not None and not pending.done():
                pending.set_result(message)
            else:
                _log.debug("dropping a stale reply to request %s", message.id)
