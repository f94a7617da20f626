"""The blocking client: one ZeroMQ DEALER talking to ``pipework serve``.

Every request carries a fresh id; the client waits for the reply with that
id, dropping stale replies (answers to requests it already gave up on) and
keeping ``task_done`` events for ``call()``. A request that gets no reply
within ``timeout`` is resent as is, same id, up to ``resends`` times, then
``Unavailable`` is raised. Resending is safe: reads and ``cancel`` are
idempotent and every submit carries an idempotency key.

```
Client ──request (id r)──▶ daemon        no reply in timeout: resend r
       ◀──reply (id r)───                reply with another id: stale, drop
       ◀──task_done (id of a submit)──   kept for call()
```
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import zmq

from pipework.protocol._requests import (
    POLL_SLICE,
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

__all__ = ["Client"]

_log = logging.getLogger(__name__)


class Client:
    """A blocking client for the pipework daemon.

    Not thread-safe: a ZeroMQ socket belongs to one thread. Give each thread
    its own ``Client`` (they may share a ``zmq.Context``), or use
    ``AsyncClient`` for many requests in flight on one socket.

    Example::

        with Client() as client:
            reply = client.submit("add", [1, 2])
            print(client.result(reply.task_id, wait=10).result)
            print(client.call("add", [2, 3], wait=10))
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 5.0,
        resends: int = 2,
        secret_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        """Connect to a daemon (ZeroMQ connects lazily; nothing blocks here).

        Args:
            endpoint: the daemon's endpoint; None means ``default_endpoint()``.
            timeout: seconds to wait for each reply before resending.
            resends: how many times to resend a request that got no reply.
            secret_key, server_key: this client's ``NAME.key_secret`` file and
                the daemon's public ``NAME.key`` file, for a CURVE endpoint
                (every ``tcp://`` daemon endpoint is one).
            context: the ZeroMQ context to use; None makes a private one,
                terminated by ``close()``.

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
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            use_curve(self._socket, secret_key, server_key)
        except ValueError:
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        try:
            self._socket.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot connect to {self.endpoint!r}: {exc}") from exc
        self._requests = RequestBuilder()
        self._events = EventBuffer()
        self._closed = False
        # Whether a daemon ever answered: until one has, a missing ipc:// socket
        # file fails a request at once (no daemon); after, it may be a restart.
        self._answered = False
        self._unreadable: ProtocolError | None = None  # during the current exchange

    # --- operations ---------------------------------------------------------

    def submit(
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
            key: idempotency key; None generates one (a uuid4), which makes
                this call's own resends harmless but not a later retry of it.
            timeout: seconds one run may take (0 < timeout <= 604800).
            retries: re-runs after the worker dies (0-100); None takes the
                daemon's setting.
            priority: -1000 to 1000; higher runs first.
            delay: seconds (0 to 31536000) before the task may start.
            notify: ask the daemon to push a ``task_done`` event; ``call()``
                uses it.

        Returns:
            The task's id and state, and whether ``key`` named a task already.

        Raises:
            ProtocolError: an error reply (``unknown_task``,
                ``key_conflict``, ``draining``, ``queue_full``...), or
                ``invalid`` for a bad argument, refused before sending.
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
        return expect(self._exchange(request, self.timeout), SubmitReply)

    def status(self, task_id: str) -> TaskInfo:
        """Describe a task.

        Args:
            task_id: the id ``submit`` returned.

        Returns:
            The task as it is now.

        Raises:
            ProtocolError: ``not_found`` if there is no such task (or it was pruned).
            Unavailable: no reply after all resends.
        """
        request = self._requests.status(task_id)
        return expect(self._exchange(request, self.timeout), StatusReply).task

    def result(self, task_id: str, wait: float = 0.0) -> TaskInfo:
        """Describe a finished task, waiting up to ``wait`` seconds for it to finish.

        Args:
            task_id: the id ``submit`` returned.
            wait: seconds (0 to 3600) the daemon holds the request.

        Returns:
            The task in its terminal state; ``.result`` or ``.error`` say how.

        Raises:
            ProtocolError: ``timeout`` if it has not finished by then (the
                task as it was under ``detail["task"]``), ``not_found``.
            Unavailable: no reply within ``wait + timeout``, after all resends.
        """
        request = self._requests.result(task_id, wait)
        return expect(self._exchange(request, request.wait + self.timeout), ResultReply).task

    def cancel(self, task_id: str) -> CancelReply:
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
        return expect(self._exchange(request, self.timeout), CancelReply)

    def list(
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
        return expect(self._exchange(request, self.timeout), ListReply).tasks

    def stats(self) -> Stats:
        """The daemon's counters.

        Returns:
            Version, uptime, queue sizes and task counts.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.stats()
        return expect(self._exchange(request, self.timeout), StatsReply).stats

    def workers(self) -> builtins.list[WorkerInfo]:
        """The daemon's workers.

        Returns:
            Each worker's pid and the task it is running, if any.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.workers()
        return expect(self._exchange(request, self.timeout), WorkersReply).workers

    def tasks(self) -> builtins.list[TaskSummary]:
        """The task names the daemon runs.

        Returns:
            Each registered task's name, signature and docstring's first line, by name.

        Raises:
            Unavailable: no reply after all resends.
        """
        request = self._requests.tasks()
        return expect(self._exchange(request, self.timeout), TasksReply).tasks

    def call(
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

        The daemon pushes a ``task_done`` event when the task finishes. If
        that event is lost (the daemon restarted, the connection was
        re-established), the client notices within ``timeout`` and asks with
        ``result`` instead, in slices of at most 30 s.

        Args:
            task: a registered task name.
            args: positional arguments, JSON values.
            kwargs: keyword arguments, JSON values.
            wait: the most seconds to wait for the task to finish; None
                waits forever (Ctrl-C still interrupts within a second).
            key: as for ``submit``.
            timeout: as for ``submit``.
            retries: as for ``submit``.
            priority: as for ``submit``.
            delay: as for ``submit``.

        Returns:
            The task's return value.

        Raises:
            TaskFailed: it ended ``failed``, ``cancelled``, ``timed_out`` or
                ``quarantined`` (``.task`` has the details).
            ProtocolError: ``timeout`` if ``wait`` ran out first (the task
                goes on); any error ``submit`` or ``result`` may raise.
            Unavailable: the daemon stopped answering.
        """
        deadline = Deadline(wait)
        submitted = self.submit(
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
        try:
            if submitted.state not in TERMINAL_STATES:
                event = self._wait_event(submitted.id, deadline.slice(self.timeout))
                if event is not None and event.task.state in TERMINAL_STATES:
                    return finish(event.task, submitted)
            last: ProtocolError | None = None
            while True:
                try:
                    info = self.result(submitted.task_id, wait=deadline.slice(RESULT_SLICE))
                except ProtocolError as exc:
                    if exc.code != ErrorCode.TIMEOUT:
                        raise
                    last = exc
                else:
                    if info.state in TERMINAL_STATES:
                        return finish(info, submitted)
                event = self._events.pop(submitted.id)  # it came while we asked
                if event is not None and event.task.state in TERMINAL_STATES:
                    return finish(event.task, submitted)
                if deadline.expired():
                    raise wait_timeout(submitted, wait, last)
        finally:
            self._events.pop(submitted.id)

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close the socket, dropping unsent requests, and a private context. Idempotent."""
        self._closed = True
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Self:
        """Use the client in a ``with`` block that closes it.

        Returns:
            The client.
        """
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    # --- the exchange -------------------------------------------------------

    def _exchange(self, request: Request, budget: float) -> Reply:
        """Send ``request`` and return the reply with its id, resending on silence."""
        if self._closed:
            raise RuntimeError("the client is closed")
        if not self._answered and (reason := missing_ipc_socket(self.endpoint)):
            raise Unavailable(self.endpoint, 0.0, request.id, reason)
        body = encode(request)
        started = time.monotonic()
        self._unreadable = None
        for _ in range(self.resends + 1):
            # zmq.Again: nowhere to queue it (no connection yet, or the queue
            # is full); the attempt then times out like a lost request.
            with contextlib.suppress(zmq.Again):
                self._socket.send(body, zmq.NOBLOCK)
            end = time.monotonic() + budget
            while (message := self._receive(end, request.id)) is not None:
                if isinstance(message, TaskDoneEvent):
                    self._events.add(message)
                elif message.id == request.id:
                    self._answered = True
                    return message
                else:
                    _log.debug("dropping a stale reply to request %s", message.id)
        if self._unreadable is not None:
            # Something answered, but nothing we could read: not "no daemon".
            raise unreadable_reply(self.endpoint, self._unreadable, request.id)
        raise Unavailable(self.endpoint, time.monotonic() - started, request.id)

    def _wait_event(self, submit_id: str, seconds: float) -> TaskDoneEvent | None:
        """The ``task_done`` event for ``submit_id``, if it comes within ``seconds``."""
        event = self._events.pop(submit_id)
        end = time.monotonic() + seconds
        while event is None:
            message = self._receive(end, None)
            if message is None:
                return None
            if isinstance(message, TaskDoneEvent):
                if message.id == submit_id:
                    return message
                self._events.add(message)
        return event

    def _receive(self, end: float, request_id: str | None) -> Reply | TaskDoneEvent | None:
        """The next message from the daemon, or None at monotonic time ``end``."""
        while (remaining := end - time.monotonic()) > 0:
            timeout_ms = math.ceil(min(remaining, POLL_SLICE) * 1000)
            if not self._socket.poll(timeout_ms, zmq.POLLIN):
                continue
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            try:
                return decode_reply(frames[-1])
            except ProtocolError as exc:
                if request_id is not None and exc.request_id == request_id:
                    raise unreadable_reply(self.endpoint, exc, request_id) from None
                self._unreadable = exc
                _log.warning("dropping an unreadable message from %s: %s", self.endpoint, exc)
        return None
