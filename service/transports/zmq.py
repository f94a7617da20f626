"""The ``zmq`` transport: a ROUTER in the dispatcher, a DEALER in each worker.

```
 dispatcher                                   worker n
 ROUTER (bound, one per worker) <── ipc:// or tcp:// ──> DEALER (routing id b"w<n>")
   [id, header+payload, *buffers] ──TASK──▶        [header+payload, *buffers]
   ◀── READY / RESULT / ERROR / RETIRE ──
```

Each worker gets its own ROUTER endpoint (``ipc://`` in a private 0700
directory by default, ``tcp://127.0.0.1`` when asked), so a worker that dies
mid-message can only lose its own partial message, which libzmq discards:
ZeroMQ delivers whole messages or nothing. The dispatcher already gives each
worker work only when it has credit (it announced READY and holds no task),
so it knows exactly which worker holds which task.

Any local process can reach a worker's endpoint (a ``tcp://`` port; an
``ipc://`` socket, by a process of the same user). Each worker's routing id
therefore carries 128 random bits, handed to it through the process start, never
over the socket: it is the worker's secret in the ZMTP handshake, which no
stranger can guess, and ``ROUTER_HANDOVER`` is off, so no later connection can
take over an id in use. A message from any other peer is dropped and counted
(``ZmqTransport.dropped``) without being decoded, let alone unpickled; only the
worker's own connection (known by its descriptor, ``SRCFD``) counts when the
socket monitor reports a disconnect.

Socket options are set explicitly: ``ROUTER_MANDATORY`` (a send to a worker
that is not connected fails instead of vanishing), high-water marks,
``MAXMSGSIZE``, and ``LINGER=0`` in the dispatcher (closing never waits for a
dead peer). A worker lingers up to ``WORKER_LINGER_MS`` at exit so that its
last result is really sent. Each worker creates its own context after it
starts: a context must never cross a fork.

ZeroMQ's descriptor is edge-triggered, so the channel reports ``pending()``
input that arrived while the dispatcher was sending, and there is no
separate write descriptor: a send that would block is retried by the
dispatcher. A worker's death is seen through its process sentinel; a worker
that is alive but silent (stopped, wedged in the kernel, unreachable) is
found by ZMTP heartbeats both ways, which libzmq's I/O threads send and
answer without the GIL: the dispatcher's socket monitor reports the
disconnect, ``lost()`` says so, and the dispatcher kills and replaces it.
"""

from __future__ import annotations

import collections
import secrets
import shutil
import struct
import tempfile
from collections.abc import Sequence
from typing import Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipework.service.logs import get_logger
from pipework.service.transports.base import (
    ParentChannel,
    TransportBroken,
    TransportClosed,
    WorkerEndpoint,
)
from pipework.service.transports.frames import KIND_OF, Frame, Kind

__all__ = ["HEARTBEAT_TIMEOUT", "WORKER_LINGER_MS", "ZmqTransport"]

_HEADER = struct.Struct("<BQ")
_HWM = 1000
_INLINE_MAX = 64 * 1024
_MAX_MESSAGE = 1 << 34  # 16 GiB: local workers are trusted; it only bounds garbage
# Messages one recv() call takes before yielding to the other channels.
_RECV_BUDGET = 256
_POLL_MS = 1000
HEARTBEAT_TIMEOUT = 10.0
"""Default seconds of silence after which a worker is declared unreachable.

ZMTP heartbeats are sent and answered by libzmq's I/O threads, without the
GIL, so a worker busy in C code still answers. A stopped or wedged one does
not, and is killed (its task fails or is retried) once this passes. It is
well above a blink of the whole program: a pause (Ctrl-Z, a VM stall) also
stops the dispatcher's own heartbeats, and one longer than this makes every
worker look silent at once, so their tasks are treated as lost."""


WORKER_LINGER_MS = 5000
"""How long a worker's socket may take, at exit, to hand over its last frames."""

Where = Literal["ipc", "tcp"]

_log = get_logger("pipework.transport")


class _Strangers:
    """Messages dropped because they came from a peer that is not the channel's worker."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def _heartbeat(sock: zmq.Socket[bytes], timeout: float) -> None:
    timeout_ms = max(1, int(timeout * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, timeout_ms // 4))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)


def _encode(
    kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview]
) -> list[bytes | memoryview]:
    """Message parts: the header, with a small payload appended (one part less
    to send and receive), or followed by a large one; then the buffers."""
    header = _HEADER.pack(kind, task_id)
    if 0 < len(payload) <= _INLINE_MAX:
        return [header + payload, *buffers]
    return [header, payload, *buffers]


def _decode(parts: Sequence[zmq.Frame]) -> Frame:
    if not parts:
        raise TransportBroken("malformed message: no parts")
    head = parts[0].buffer
    if len(head) < _HEADER.size:
        raise TransportBroken(f"malformed frame: header of {len(head)} bytes")
    kind, task_id = _HEADER.unpack_from(head)
    if kind not in KIND_OF:
        raise TransportBroken(f"malformed frame: unknown kind {kind}")
    if len(head) > _HEADER.size:
        payload, rest = head[_HEADER.size :], parts[1:]
    elif len(parts) >= 2:
        payload, rest = parts[1].buffer, parts[2:]
    else:
        raise TransportBroken("malformed message: payload part missing")
    return Frame(KIND_OF[kind], task_id, payload, tuple(part.buffer for part in rest))


class _ParentZmqChannel:
    """Dispatcher side: a ROUTER with exactly one peer that counts, its worker."""

    def __init__(
        self, sock: zmq.Socket[bytes], peer: bytes, address: str, strangers: _Strangers
    ) -> None:
        self._sock = sock
        self._peer = peer
        self._address = address
        self._strangers = strangers
        self._stranger_seen = False
        self._peer_fd: int | None = None
        """The descriptor of the worker's connection, once it has said something."""
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._fd = int(sock.getsockopt(zmq.FD))
        self._out: collections.deque[list[bytes | memoryview]] = collections.deque()
        self._closed = False
        self._broken = False

    def fileno(self) -> int:
        return self._fd

    def write_fileno(self) -> int:
        return -1

    def pending(self) -> bool:
        if self._closed or self._broken:
            return False
        return bool(int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)

    def lost(self) -> bool:
        if self._closed:
            return False
        return self._peer_disconnected()

    def _peer_disconnected(self) -> bool:
        """Read the monitor's events; True if one is the worker's connection closing.

        A stranger that connects and hangs up makes the same event: only the
        descriptor tells them apart. Before the worker has spoken its
        descriptor is unknown, and its death shows through its sentinel.
        """
        gone = False
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return gone
            if event["event"] == zmq.EVENT_DISCONNECTED and int(event["value"]) == self._peer_fd:
                gone = True

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        if self._closed:
            raise TransportClosed("channel is closed")
        self._out.append([self._peer, *_encode(kind, task_id, payload, buffers)])

    def flush(self) -> bool:
        if self._closed:
            raise TransportClosed("channel is closed")
        while self._out:
            try:
                self._sock.send_multipart(self._out[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    # Not connected yet (a worker still starting), or gone: its
                    # sentinel will tell which. Keep the frame and retry.
                    return False
                raise TransportBroken("cannot send to worker") from exc
            self._out.popleft()
        return True

    def recv(self) -> list[Frame]:
        if self._closed:
            raise TransportClosed("channel is closed")
        if self._broken:
            raise TransportBroken("the worker sent a malformed message")
        frames: list[Frame] = []
        for _ in range(_RECV_BUDGET):
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                raise TransportBroken("cannot receive from worker") from exc
            if parts[0].bytes != self._peer:
                self._drop(parts[0].bytes)
                continue
            if self._peer_fd is None:
                # Events so far are about earlier connections, which may have
                # had this descriptor number: settle them before claiming it.
                self._peer_disconnected()
                self._peer_fd = int(parts[0].get(zmq.SRCFD))
            try:
                frames.append(_decode(parts[1:]))
            except TransportBroken:
                self._broken = True  # it is ours and it is broken: its sentinel follows
                raise
        return frames

    def _drop(self, sender: bytes) -> None:
        self._strangers.count += 1
        if not self._stranger_seen:  # once per worker: a stranger must not flood the log
            self._stranger_seen = True
            _log.warning(
                "dropped a message from an unknown peer on a worker's endpoint",
                endpoint=self._address,
                peer=sender[:16].hex(),
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.clear()
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)


class _WorkerZmqChannel:
    """Worker side: a DEALER connected to its own ROUTER."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes]) -> None:
        self._ctx = ctx
        self._sock = sock

    def recv(self) -> Frame:
        while True:
            try:
                # RCVTIMEO bounds each wait; the watchdog thread ends the
                # process if the dispatcher is gone.
                parts = self._sock.recv_multipart(copy=False)
                break
            except zmq.Again:
                continue
        return _decode(parts)

    def recv_nowait(self) -> Frame | None:
        if not self._sock.poll(0, zmq.POLLIN):
            return None
        return _decode(self._sock.recv_multipart(copy=False))  # whole messages only

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        self._sock.send_multipart(_encode(kind, task_id, payload, buffers), copy=False)

    def close(self) -> None:
        self._sock.close(linger=WORKER_LINGER_MS)
        self._ctx.term()


class _ZmqEndpoint:
    """Where a worker connects, and the routing id it takes."""

    def __init__(self, address: str, routing_id: bytes, heartbeat_timeout: float) -> None:
        self.address = address
        self.routing_id = routing_id
        self.heartbeat_timeout = heartbeat_timeout

    def open(self) -> _WorkerZmqChannel:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.routing_id)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MESSAGE)
        sock.setsockopt(zmq.RCVTIMEO, _POLL_MS)
        _heartbeat(sock, self.heartbeat_timeout)
        sock.connect(self.address)
        return _WorkerZmqChannel(ctx, sock)


class ZmqTransport:
    """Frames over ZeroMQ ROUTER/DEALER pairs, ``ipc://`` (default) or ``tcp://`` on loopback."""

    name = "zmq"
    durable_sends = False  # send() returns before libzmq's I/O thread writes
    direct_sends = False  # a send can consume the edge of ZMQ_FD the dispatcher waits for

    def __init__(
        self, where: Where = "ipc", *, heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    ) -> None:
        """Args:
        where: ``"ipc"`` (sockets in a private 0700 directory) or ``"tcp"`` (loopback).
        heartbeat_timeout: seconds of silence after which a live worker is
            declared unreachable, killed and replaced.
        """
        if where not in ("ipc", "tcp"):
            raise ValueError(f"zmq transport needs 'ipc' or 'tcp', not {where!r}")
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat_timeout must be > 0, got {heartbeat_timeout!r}")
        self._where = where
        self._heartbeat_timeout = heartbeat_timeout
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._dir: str | None = None
        self._count = 0
        self._strangers = _Strangers()

    @property
    def dropped(self) -> int:
        """Messages dropped so far because they came from a peer that is not a worker."""
        return self._strangers.count

    def _context(self) -> zmq.Context[zmq.Socket[bytes]]:
        if self._ctx is None:
            self._ctx = zmq.Context()
            if self._where == "ipc":
                self._dir = tempfile.mkdtemp(prefix="pipework-")  # mode 0700
        return self._ctx

    def pair(self) -> tuple[_ParentZmqChannel, _ZmqEndpoint]:
        sock = self._context().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 0)  # the first holder of an id keeps it
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MESSAGE)
        _heartbeat(sock, self._heartbeat_timeout)
        self._count += 1
        try:
            if self._where == "ipc":
                sock.bind(f"ipc://{self._dir}/w{self._count}.sock")
            else:
                sock.bind("tcp://127.0.0.1:*")
            address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close(linger=0)
            raise
        # The worker's secret (see the module docstring); "w<n>." keeps logs readable.
        peer = b"w%d." % self._count + secrets.token_hex(16).encode()
        endpoint = _ZmqEndpoint(address, peer, self._heartbeat_timeout)
        return _ParentZmqChannel(sock, peer, address, self._strangers), endpoint

    def started(self, endpoint: WorkerEndpoint) -> None:
        pass

    def inheritable_fds(self, channel: ParentChannel) -> list[int]:
        return []

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
