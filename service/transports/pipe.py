"""The ``pipe`` transport: two OS pipes per worker, framed by a fixed header.

```
dispatcher --task pipe-->   worker      (parent writes, non-blocking)
dispatcher <--result pipe-- worker      (parent reads, non-blocking)
```

Why raw pipes and not ``multiprocessing.Connection``: ``Connection.recv_bytes``
blocks until a whole message has arrived, so a worker that is stopped (or
merely slow) halfway through writing a 64 MiB result would freeze the one
thread that serves every worker. Here the parent reads whatever is there,
keeps partial frames per channel, and a worker killed mid-write leaves a
truncated frame that is discarded at end of file. Each worker has its own
pair of pipes, so no writer ever holds a lock another writer needs.

Frame: a ``<QBQH`` header (body length, kind, task id, number of out-of-band
buffers), then the body: one 8-byte length per buffer, the payload, the
buffers. The sender hands the OS every piece with one ``writev`` (no copy);
a large body is read straight into one preallocated buffer, and the payload
and buffers are views of it (no copy either).

Why large payloads cross the pipe rather than shared memory: what moving
64 MiB costs on a VM is mostly faulting in fresh pages, not copying them.
The receive buffer is backed by huge pages (``shm.receive_buffer``: 32
faults instead of 16,384), which ``/dev/shm`` and memfd segments cannot have
where shmem huge pages are off (the default). Measured on the 2-core
development VM, echo of a 64 MiB array: pipe with huge-page receive buffers
~800-1,600 MiB/s; with the arguments in a memfd and results in named
segments ~420-1,080 MiB/s (the echo row of ``pipework bench pool``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import select
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection

from pipework.service.transports import shm
from pipework.service.transports.base import (
    ParentChannel,
    TransportBroken,
    TransportClosed,
    WorkerEndpoint,
)
from pipework.service.transports.frames import KIND_OF, Frame, Kind, Payload

__all__ = ["PipeTransport"]

_HEADER = struct.Struct("<QBQH")
_LENGTH = struct.Struct("<Q")
# Small enough that os.read's buffer comes from the heap, not a fresh mmap per
# call; bodies larger than this are read in place (see _FrameReader).
_CHUNK = 64 * 1024
# Bytes one recv() call may consume before yielding to the other channels.
_RECV_BUDGET = 16 * 1024 * 1024
_PIPE_SIZE = 1024 * 1024
# writev() rejects more than IOV_MAX buffers.
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 512)
_JOIN_MAX = 16 * 1024


def _grow_pipe(fd: int) -> None:
    # A bigger pipe means fewer wake-ups per large payload; the kernel may
    # refuse (per-user pipe budget), which only costs speed.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class _FrameReader:
    """Reassembles frames from a byte stream read in arbitrary pieces."""

    __slots__ = ("_body", "_buf", "_filled", "_kind", "_nbufs", "_task_id", "drained")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._body: memoryview | None = None
        self._filled = 0
        self._kind = 0
        self._task_id = 0
        self._nbufs = 0
        self.drained = False

    def read_once(self, fd: int) -> int:
        """Do one read(2) from ``fd``; return the bytes read (0 at end of file).

        Sets ``drained`` when the read got less than it asked for: the pipe
        held no more at that instant.
        """
        if self._body is not None:
            want = len(self._body) - self._filled
            n = os.readv(fd, [self._body[self._filled :]])
            self._filled += n
        else:
            want = _CHUNK
            chunk = os.read(fd, _CHUNK)
            self._buf += chunk
            n = len(chunk)
        self.drained = n < want
        return n

    def pop_frames(self, out: list[Frame]) -> None:
        """Move every complete frame into ``out``."""
        if self._body is not None:
            if self._filled < len(self._body):
                return
            out.append(_frame(self._kind, self._task_id, self._nbufs, self._body))
            self._body = None
        buf = self._buf
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:  # slices of a view copy once, not twice
            while end - pos >= _HEADER.size:
                length, kind, task_id, nbufs = _HEADER.unpack_from(view, pos)
                if kind not in KIND_OF:
                    raise TransportBroken(f"malformed frame: unknown kind {kind}")
                start = pos + _HEADER.size
                if end - start >= length:
                    small = bytes(view[start : start + length])
                    out.append(_frame(kind, task_id, nbufs, small))
                    pos = start + length
                    continue
                if length > _CHUNK:
                    # Read the rest of a large payload in place instead of growing buf.
                    body = shm.receive_buffer(length)
                    have = end - start
                    body[:have] = view[start:end]
                    self._body, self._filled = body, have
                    self._kind, self._task_id, self._nbufs = kind, task_id, nbufs
                    pos = end
                break
        del buf[:pos]

    @property
    def partial(self) -> bool:
        """True if a frame has started but not finished."""
        return self._body is not None or bool(self._buf)


def _frame(kind: int, task_id: int, nbufs: int, body: Payload) -> Frame:
    if not nbufs:
        return Frame(KIND_OF[kind], task_id, body)
    view = memoryview(body)
    table = _LENGTH.size * nbufs
    if table > len(body):
        raise TransportBroken("malformed frame: buffer table past the end")
    lengths = [_LENGTH.unpack_from(view, i * _LENGTH.size)[0] for i in range(nbufs)]
    end = len(body) - sum(lengths)
    if end < table:
        raise TransportBroken("malformed frame: buffers longer than the frame")
    buffers = []
    pos = end
    for n in lengths:
        buffers.append(view[pos : pos + n])
        pos += n
    return Frame(KIND_OF[kind], task_id, view[table:end], tuple(buffers))


def _pieces(
    kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview]
) -> list[memoryview]:
    """The frame as a list of buffers for writev, none of them copied but a small payload."""
    if not buffers and len(payload) <= _JOIN_MAX:
        # One piece: copying a small payload costs less than another iovec.
        return [memoryview(_HEADER.pack(len(payload), kind, task_id, 0) + payload)]
    sizes = [b.nbytes for b in buffers]
    table = b"".join(_LENGTH.pack(n) for n in sizes)
    length = len(table) + len(payload) + sum(sizes)
    out = [memoryview(_HEADER.pack(length, kind, task_id, len(buffers)))]
    if table:
        out.append(memoryview(table))
    if payload:
        out.append(memoryview(payload))
    out.extend(b.cast("B") if b.format != "B" or b.ndim != 1 else b for b in buffers)
    return out


def _write_some(fd: int, bufs: collections.deque[memoryview]) -> None:
    """Write from the front of ``bufs`` until it is empty or the fd would block."""
    while bufs:
        batch = [bufs[i] for i in range(min(len(bufs), _IOV_MAX))]
        n = os.writev(fd, batch)
        while n:
            head = bufs[0]
            if n >= len(head):
                n -= len(head)
                bufs.popleft()
            else:
                bufs[0] = head[n:]
                n = 0


class _ParentPipeChannel:
    """Dispatcher side: reads results, writes tasks, never blocks."""

    def __init__(self, result_r: int, task_w: int) -> None:
        self._rfd = result_r
        self._wfd = task_w
        os.set_blocking(result_r, False)
        os.set_blocking(task_w, False)
        self._reader = _FrameReader()
        self._out: collections.deque[memoryview] = collections.deque()
        self._eof = False
        self._closed = False

    def fileno(self) -> int:
        return self._rfd

    def write_fileno(self) -> int:
        return self._wfd

    def pending(self) -> bool:
        return False

    def lost(self) -> bool:
        return False  # a pipe has no silent failure: its worker's sentinel tells

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        if self._closed:
            raise TransportClosed("channel is closed")
        self._out.extend(_pieces(kind, task_id, payload, buffers))

    def flush(self) -> bool:
        if self._closed:
            raise TransportClosed("channel is closed")
        try:
            _write_some(self._wfd, self._out)
        except BlockingIOError:
            return False
        except OSError as exc:  # EPIPE: the worker is gone
            raise TransportBroken("worker end of task pipe is closed") from exc
        return not self._out

    def recv(self) -> list[Frame]:
        if self._closed:
            raise TransportClosed("channel is closed")
        frames: list[Frame] = []
        budget = _RECV_BUDGET
        while not self._eof and budget > 0:
            try:
                n = self._reader.read_once(self._rfd)
            except BlockingIOError:
                break
            except OSError as exc:
                raise TransportBroken("result pipe failed") from exc
            if n == 0:
                self._eof = True
            budget -= n
            self._reader.pop_frames(frames)
            if self._reader.drained and n:
                # The pipe is empty now (level-triggered: the selector says when
                # more comes); asking again would cost a read(2) and an EAGAIN.
                break
        if self._eof and not frames:
            raise TransportBroken(
                "worker closed its result pipe"
                + (" in the middle of a frame" if self._reader.partial else "")
            )
        return frames

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.clear()
            os.close(self._rfd)
            os.close(self._wfd)


class _WorkerPipeChannel:
    """Worker side: blocking reads of tasks, blocking writes of results."""

    def __init__(self, task_r: int, result_w: int) -> None:
        self._rfd = task_r
        self._wfd = result_w
        os.set_blocking(task_r, True)
        os.set_blocking(result_w, True)
        self._reader = _FrameReader()
        self._ready: collections.deque[Frame] = collections.deque()
        self._poll = select.poll()
        self._poll.register(task_r, select.POLLIN)

    def recv(self) -> Frame:
        while not self._ready:
            frames: list[Frame] = []
            try:
                n = self._reader.read_once(self._rfd)
            except OSError as exc:
                raise TransportBroken("task pipe failed") from exc
            if n == 0:
                raise TransportBroken("dispatcher closed the task pipe")
            self._reader.pop_frames(frames)
            self._ready.extend(frames)
        return self._ready.popleft()

    def recv_nowait(self) -> Frame | None:
        if not self._ready and self._poll.poll(0):
            frames: list[Frame] = []
            try:
                n = self._reader.read_once(self._rfd)  # readable: returns at once
            except OSError as exc:
                raise TransportBroken("task pipe failed") from exc
            if n == 0:
                raise TransportBroken("dispatcher closed the task pipe")
            self._reader.pop_frames(frames)
            self._ready.extend(frames)
        return self._ready.popleft() if self._ready else None

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        pieces = _pieces(kind, task_id, payload, buffers)
        try:
            if len(pieces) == 1:  # the usual small result: a plain write, no deque
                view = pieces[0]
                while view:
                    view = view[os.write(self._wfd, view) :]
            else:
                _write_some(self._wfd, collections.deque(pieces))
        except OSError as exc:
            raise TransportBroken("dispatcher closed the result pipe") from exc

    def close(self) -> None:
        os.close(self._rfd)
        os.close(self._wfd)


class _PipeEndpoint:
    """The worker's two pipe ends, wrapped in Connections so spawn/forkserver pass them."""

    def __init__(self, task_r: int, result_w: int) -> None:
        self._task_r = Connection(task_r, writable=False)
        self._result_w = Connection(result_w, readable=False)

    def open(self) -> _WorkerPipeChannel:
        # Connection has no detach(): take our own descriptors, drop its.
        channel = _WorkerPipeChannel(os.dup(self._task_r.fileno()), os.dup(self._result_w.fileno()))
        self.release()
        return channel

    def release(self) -> None:
        self._task_r.close()
        self._result_w.close()


class PipeTransport:
    """Frames over a pair of OS pipes per worker."""

    name = "pipe"
    durable_sends = True  # writev returned: the bytes are in the kernel's pipe
    direct_sends = True  # pipes are level-triggered

    def pair(self) -> tuple[_ParentPipeChannel, _PipeEndpoint]:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        _grow_pipe(task_w)
        _grow_pipe(result_w)
        return _ParentPipeChannel(result_r, task_w), _PipeEndpoint(task_r, result_w)

    def started(self, endpoint: WorkerEndpoint) -> None:
        assert isinstance(endpoint, _PipeEndpoint)
        endpoint.release()

    def inheritable_fds(self, channel: ParentChannel) -> list[int]:
        return [channel.fileno(), channel.write_fileno()]

    def close(self) -> None:
        pass
