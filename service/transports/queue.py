"""The ``queue`` transport: two ``multiprocessing.Queue`` per worker, and a reader thread.

```
 dispatcher thread                 parent                              worker n
 send/flush ──put──▶ task queue n ──(feeder thread)── pipe ──▶ get() ─▶ worker loop
 recv ◀─ deque ◀─ reader thread n ◀─get()── pipe ──(feeder thread)── result queue n ◀─ put()
      ◀─ wake-up pipe (fileno()) ◀┘
```

Why not one Queue shared by every worker, as ``multiprocessing.Pool`` does:
a Queue's writers share a lock and its pipe. A worker SIGKILLed while its
feeder thread holds that lock leaves it held forever, and every other
writer blocks; one killed in the middle of a message leaves half a message
in the shared pipe, and the reader mis-frames whatever comes next. So, as
for pipes, every worker gets its own task Queue and its own result Queue:
no queue, no lock and no pipe is shared between two writers, and whatever
a death breaks belongs to the dead worker alone.

Why a reader thread per worker: ``Queue.get()`` blocks until a whole
message has arrived once its first bytes have, even with a timeout, so the
dispatcher thread, which serves every worker, must never call it. Each
worker's results are read by a small daemon thread in the parent that
blocks in ``get()`` and hands complete frames to the dispatcher through a
deque, plus one byte on a wake-up pipe whose read end is the channel's
``fileno()``. That pipe is level-triggered, so ``pending()`` is always
False. A worker stopped or killed in the middle of a message blocks only
its own reader thread.

How a reader ends: a Queue keeps both ends of its pipe in every process
that holds it, so the parent closes its copy of the result queue's writer
(and of the task queue's reader) in ``started()``. When the worker dies,
no writer is left: the reader's ``get()`` raises ``EOFError`` (or
``OSError`` if the death cut a message short; the partial message is
discarded, never mis-framed) and the channel reports end of file. Once the
result pipe has hung up, ``recv()`` waits (boundedly) for the reader to
reach end of file, which takes at most a pipe's worth of reading and one
unpickle, so the dispatcher reaping a dead worker gets every frame it
wrote, as it does from a pipe. ``close()`` also stops the reader, through
a stop pipe it polls beside the result pipe; the reader closes its own
descriptors as it exits (closing a descriptor another thread still reads
would let its number be reused under that read), and ``QueueTransport.close()``
waits, with a bound, for every reader and feeder thread to be gone. (A process
the worker forked without closing its descriptors keeps the result pipe's
writer open after the worker dies: its reader then sees no end of file, so
``recv()`` does not wait for it and ``close()`` is what ends it.)

The worker's end: ``get()`` on its task queue blocks, which is fine in a
worker (the dispatcher's death closes the task pipe, so ``get()`` fails; the
watchdog learns of it from the worker's lifeline, see ``service.supervisor``). ``put()`` on the
result queue returns at once; its feeder thread writes in the background,
so the worker's ``close()`` flushes it (``Queue.close()``, then a join of
the feeder bounded by ``WORKER_LINGER``) before the worker exits.

Copies: a Queue pickles what it carries in band, so an out-of-band buffer
put into it would be copied into ``bytes``, pickled, written, read and
unpickled, into fresh memory at every step (60-140 MiB/s for a 64 MiB echo
on the 2-core development VM). So buffers of ``shm.SHARED_MIN`` bytes or
more cross in shared memory and only their descriptors go through the Queue
(``service.transports.shm``): a task's arguments in a memfd that the channel holds
until the worker has answered for that task (or is gone), a result in a
named segment that ``recv()`` claims as it takes the frame and ``close()``
sweeps if the worker died before it was sent (170-670 MiB/s for the same
echo there).

Fork: a sibling started with fork inherits the parent's descriptors of
every live channel; ``inheritable_fds`` lists them (the wake-up and stop
pipes, the task queue's writer, the result queue's reader) and the worker
closes them first thing. Descriptors in that list stay open until the
dispatcher has released the channel, so their numbers are never reused
while a fork could still close them.

Private attributes: ``multiprocessing.Queue`` has no public way to drop one
end of its pipe in one process, to wait for its feeder thread with a
bound, or to keep the feeder quiet about a worker that died. The few
private names this needs are used in ``_Queue`` and ``_internals`` only.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import multiprocessing
import multiprocessing.queues
import os
import select
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NamedTuple

from pipework.service.logs import get_logger
from pipework.service.transports import shm
from pipework.service.transports.base import (
    ParentChannel,
    TransportBroken,
    TransportClosed,
    WorkerEndpoint,
)
from pipework.service.transports.frames import KIND_OF, Frame, Kind

__all__ = ["WORKER_LINGER", "QueueTransport"]

_log = get_logger("pipework.transports.queue")

WORKER_LINGER = 5.0
"""Seconds a worker's ``close()`` waits for its feeder thread to write its last frames."""
_DRAIN_TIMEOUT = 2.0
# Seconds recv() waits for a reader whose worker has gone to reach end of file.
_JOIN_TIMEOUT = 5.0
# Seconds QueueTransport.close() waits for every reader and feeder thread to end.
_PIPE_SIZE = 1024 * 1024
# Semaphores created in a spawn context can be handed to a worker started any
# way (a fork child inherits them; spawn and forkserver reopen them by name);
# those of a fork context cannot cross to spawn or forkserver.
_CTX = multiprocessing.get_context("spawn")

_Envelope = tuple[int, int, bytes, tuple[bytes, ...]]
"""A frame as a queue carries it: ``(kind, task_id, payload, buffers)``."""

if TYPE_CHECKING:
    _QueueBase = multiprocessing.queues.Queue[_Envelope]
else:  # not subscriptable at run time before Python 3.12
    _QueueBase = multiprocessing.queues.Queue


class _Queue(_QueueBase):
    """A ``multiprocessing.Queue`` whose feeder thread is silent about a dead reader."""

    @staticmethod
    def _on_queue_feeder_error(e: Exception, obj: object) -> None:
        # Private hook (CPython's concurrent.futures overrides it too). The
        # default prints a traceback; a broken pipe only means the other side
        # died, which its process sentinel reports, so it is not an error here.
        if not isinstance(e, BrokenPipeError):
            _log.error("queue feeder thread failed", error=repr(e))


class _Internals(NamedTuple):
    reader: Connection[Any, Any]
    writer: Connection[Any, Any]
    feeder: threading.Thread | None


def _internals(q: _Queue) -> _Internals:
    """The ends of ``q``'s pipe held in this process, and its feeder thread (None until a put)."""
    # Private attributes of multiprocessing.Queue, the same from Python 3.4 to
    # 3.13 (tests/test_queue_transport.py checks them): the public API can
    # neither close one end of the pipe in one process (every process holding
    # the Queue keeps both, so the reader never sees end of file) nor wait for
    # the feeder thread with a bound (join_thread() has no timeout).
    return _Internals(q._reader, q._writer, q._thread)  # type: ignore[attr-defined]


def _grow_pipe(conn: Connection[Any, Any]) -> None:
    # Fewer wake-ups per large payload; the kernel may refuse (per-user pipe
    # budget), which only costs speed.
    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _envelope(kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview]) -> _Envelope:
    # bytes(): the feeder thread pickles later, and a memoryview cannot be pickled.
    return int(kind), task_id, bytes(payload), tuple(bytes(b) for b in buffers)


def _frame(item: object) -> Frame:
    if not isinstance(item, tuple) or len(item) != 4:
        raise TransportBroken(f"malformed frame: {type(item).__name__}")
    kind, task_id, payload, buffers = item
    if kind not in KIND_OF or type(task_id) is not int:
        raise TransportBroken(f"malformed frame: kind {kind!r}, task id {task_id!r}")
    if not isinstance(payload, bytes) or not isinstance(buffers, tuple):
        raise TransportBroken("malformed frame: payload or buffers of the wrong type")
    if not all(isinstance(b, bytes) for b in buffers):
        raise TransportBroken("malformed frame: a buffer that is not bytes")
    return Frame(KIND_OF[kind], task_id, payload, buffers)


class _ParentQueueChannel:
    """Dispatcher side: puts tasks, takes the frames its reader thread collected."""

    _names = itertools.count(1)

    def __init__(self, tasks: _Queue, results: _Queue, prefix: str) -> None:
        self._tasks = tasks
        self._results = results
        self._prefix = prefix
        # The dispatcher owns the wake-up pipe's read end and the stop pipe's
        # write end; the reader thread owns the other two and the result
        # queue's reader, and closes them when it ends.
        self._wake_r, self._wake_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fds = [
            self._wake_r,
            self._wake_w,
            self._stop_r,
            self._stop_w,
            _internals(tasks).writer.fileno(),
            _internals(results).reader.fileno(),
        ]
        self._result_fd = _internals(results).reader.fileno()
        self._frames: collections.deque[Frame] = collections.deque()
        self._out: list[tuple[Kind, int, bytes, Sequence[memoryview]]] = []
        # Shared arguments, by task id, kept until the worker answers for the task.
        self._lent: dict[int, list[memoryview]] = {}
        self._ended = threading.Event()
        self._why = ""
        self._cause: BaseException | None = None
        self._closed = False
        self._reader = threading.Thread(
            target=self._read,
            name=f"pipework-queue-reader-{next(self._names)}",
            daemon=True,
        )
        self._reader.start()

    # -- the dispatcher's side ------------------------------------------------------

    def fileno(self) -> int:
        return self._wake_r

    def write_fileno(self) -> int:
        return -1

    def pending(self) -> bool:
        return False  # the wake-up pipe stays readable until recv() drains it

    def lost(self) -> bool:
        return False  # no silent failure: a dead worker's sentinel tells

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        if self._closed:
            raise TransportClosed("channel is closed")
        if any(b.nbytes >= shm.SHARED_MIN for b in buffers):
            buffers = self._lend(task_id, buffers)
        self._out.append((kind, task_id, payload, buffers))

    def _lend(self, task_id: int, buffers: Sequence[memoryview]) -> list[memoryview]:
        """Put the large ``buffers`` in shared memory; send their descriptors instead."""
        out = []
        for buf in buffers:
            shared = shm.share(buf) if buf.nbytes >= shm.SHARED_MIN else None
            if shared is None:
                out.append(buf)
            else:
                out.append(shared)
                self._lent.setdefault(task_id, []).append(shared)
        return out

    def flush(self) -> bool:
        if self._closed:
            raise TransportClosed("channel is closed")
        # put() never blocks (the queue is unbounded); the feeder thread writes.
        for frame in self._out:
            self._tasks.put(_envelope(*frame))
        self._out.clear()
        return True

    def recv(self) -> list[Frame]:
        if self._closed:
            raise TransportClosed("channel is closed")
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        # Read "ended" before taking frames: the reader appends its last frame
        # before it sets it, so none can be left behind when we raise.
        ended = self._ended.is_set()
        if not ended and self._writer_gone():
            # The worker has exited: what it wrote is in the pipe or in the
            # reader's hands, and the reader reaches end of file after at most
            # a pipe's worth of reading. Wait for it, so that the dispatcher,
            # reaping the worker, gets every frame, as it would from a pipe.
            ended = self._ended.wait(_DRAIN_TIMEOUT)
        frames: list[Frame] = []
        with contextlib.suppress(IndexError):
            while True:
                frame = shm.claim(self._frames.popleft())
                if self._lent and frame.task_id:
                    # The worker answers for a task only after it has mapped its arguments.
                    self._lent.pop(frame.task_id, None)
                frames.append(frame)
        if not frames and ended:
            raise TransportBroken(self._why) from self._cause
        return frames

    def _writer_gone(self) -> bool:
        """True once no process holds the result queue's writer: POLLHUP on its pipe."""
        poller = select.poll()
        poller.register(self._result_fd, 0)  # POLLHUP is always reported
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        self._lent.clear()
        os.close(self._stop_w)  # the reader sees POLLHUP, ends, closes its own ends
        os.close(self._wake_r)
        # With a feeder thread, Queue.close() has it write what is left (to a
        # dead worker: a broken pipe, silenced), then close the queue's pipe.
        self._tasks.close()
        if _internals(self._tasks).feeder is None:
            _internals(self._tasks).writer.close()
        shm.sweep(self._prefix)

    def inheritable_fds(self) -> list[int]:
        return list(self._fds)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for this channel's threads to end; True if they have."""
        end = time.monotonic() + timeout
        self._reader.join(timeout)
        feeder = _internals(self._tasks).feeder
        if feeder is not None:
            feeder.join(max(0.0, end - time.monotonic()))
        return not self.busy()

    def busy(self) -> bool:
        """True until the channel is closed and its threads have ended."""
        feeder = _internals(self._tasks).feeder
        return (
            not self._closed
            or self._reader.is_alive()
            or (feeder is not None and feeder.is_alive())
        )

    # -- the reader thread ----------------------------------------------------------

    def _read(self) -> None:
        try:
            self._read_until_end()
            # Keep the descriptors open until close(): until then the
            # dispatcher may list them for a forked sibling to close.
            self._wait_for_stop()
        finally:
            for fd in (self._wake_w, self._stop_r):
                os.close(fd)
            _internals(self._results).reader.close()

    def _read_until_end(self) -> None:
        poller = select.poll()
        poller.register(self._result_fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        why = "worker closed its result queue"
        cause: BaseException | None = None
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return  # closed: nobody wants what may still come
                # Blocks until the whole message is in, which is why this is
                # not the dispatcher's thread.
                item: object = self._results.get()
                self._frames.append(_frame(item))
                self._wake()
        except EOFError as exc:
            cause = exc
        except OSError as exc:  # "got end of file during message": discarded
            why, cause = "worker closed its result queue in the middle of a frame", exc
        except TransportBroken as exc:
            why, cause = str(exc), exc
        except Exception as exc:  # unpickling garbage may raise anything
            why, cause = f"malformed frame: {exc!r}", exc
        self._why, self._cause = why, cause
        self._ended.set()
        self._wake()

    def _wait_for_stop(self) -> None:
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        while not poller.poll():
            pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # full of wake-ups already
        except OSError:
            pass  # the dispatcher closed its end: it wants nothing more


class _WorkerQueueChannel:
    """Worker side: blocking gets of tasks, puts of results written by the feeder thread."""

    def __init__(self, tasks: _Queue, results: _Queue) -> None:
        self._tasks = tasks
        self._results = results

    def recv(self) -> Frame:
        try:
            item: object = self._tasks.get()
        except (EOFError, OSError) as exc:
            raise TransportBroken("dispatcher closed the task queue") from exc
        return _frame(item)

    def recv_nowait(self) -> Frame | None:
        try:
            if self._tasks.empty():
                return None
        except (EOFError, OSError) as exc:
            raise TransportBroken("dispatcher closed the task queue") from exc
        return self.recv()  # something has arrived: the rest of it follows at once

    def send(
        self, kind: Kind, task_id: int, payload: bytes, buffers: Sequence[memoryview] = ()
    ) -> None:
        # Never fails: the feeder thread writes later. A dispatcher that is
        # gone is noticed by recv() and by the watchdog.
        self._results.put(_envelope(kind, task_id, payload, buffers))

    def close(self) -> None:
        self._results.close()
        feeder = _internals(self._results).feeder
        if feeder is not None:
            feeder.join(WORKER_LINGER)
        # Past the linger, exit anyway: multiprocessing would otherwise join
        # the feeder at exit without a bound.
        self._results.cancel_join_thread()


class _QueueEndpoint:
    """The worker's two queues; pickled for spawn and forkserver, inherited by fork."""

    def __init__(self, tasks: _Queue, results: _Queue, prefix: str) -> None:
        self._tasks = tasks
        self._results = results
        self._prefix = prefix

    def open(self) -> _WorkerQueueChannel:
        shm.serve_as_worker(self._prefix)
        # Drop the dispatcher's ends that came along. With fork the worker has
        # already closed them by number (they are in inheritable_fds) and
        # opened nothing since, so close() fails with EBADF, harmlessly, and
        # marks them closed so that nothing closes those numbers again.
        for conn in (_internals(self._tasks).writer, _internals(self._results).reader):
            with contextlib.suppress(OSError):
                conn.close()
        return _WorkerQueueChannel(self._tasks, self._results)

    def release(self) -> None:
        """In the parent, once the worker started: drop the worker's ends."""
        _internals(self._tasks).reader.close()
        _internals(self._results).writer.close()


class QueueTransport:
    """Frames over a task Queue and a result Queue per worker, read by a thread per worker."""

    name = "queue"
    durable_sends = False  # put() returns before the feeder thread writes
    direct_sends = False  # its send path (feeder thread, shared arguments) has one caller

    def __init__(self) -> None:
        self._channels: list[_ParentQueueChannel] = []

    def pair(self) -> tuple[_ParentQueueChannel, _QueueEndpoint]:
        self._channels = [c for c in self._channels if c.busy()]
        tasks = _Queue(ctx=_CTX)
        results = _Queue(ctx=_CTX)
        # The parent never waits for its task feeder at exit: join() bounds it.
        tasks.cancel_join_thread()
        _grow_pipe(_internals(tasks).writer)
        _grow_pipe(_internals(results).writer)
        prefix = shm.new_prefix()
        channel = _ParentQueueChannel(tasks, results, prefix)
        self._channels.append(channel)
        return channel, _QueueEndpoint(tasks, results, prefix)

    def started(self, endpoint: WorkerEndpoint) -> None:
        assert isinstance(endpoint, _QueueEndpoint)
        endpoint.release()

    def inheritable_fds(self, channel: ParentChannel) -> list[int]:
        assert isinstance(channel, _ParentQueueChannel)
        return channel.inheritable_fds()

    def close(self) -> None:
        end = time.monotonic() + _JOIN_TIMEOUT
        for channel in self._channels:
            channel.close()
        stuck = [c for c in self._channels if not c.join(max(0.0, end - time.monotonic()))]
        if stuck:
            _log.warning("queue transport threads still running at close", channels=len(stuck))
        self._channels = stuck
