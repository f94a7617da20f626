"""The raw floors under the pool benchmark: the bare mechanism, no pool.

```
 measuring child ──link (bare Pipe / ZeroMQ / shared memory)──▶ ONE peer process
                                        ├─ task_peer: unpickle (fn, args), run, pickle back
                                        └─ echo_peer: send back what came
```

- ``TaskFloor``: pickled ``(fn, args)`` to one peer that runs them; ``flood``
  keeps ``WINDOW`` messages in flight (tiny-task throughput), ``round_trip``
  sends one and waits (latency). Over a bare ``multiprocessing.Pipe``
  (``send_bytes``/``recv_bytes``) or ZeroMQ PUSH/PULL over ``ipc://``.
- ``ReaderFloor``: ``round_trip`` over the same bare Pipe, but the reply is
  read by a second thread that wakes the caller: the least any pool pays
  that resolves futures on a thread of its own (all of the peers, and
  pipework), one thread hop per task on top of the bare Pipe.
- ``EchoFloor``: a numpy array echoed by the peer over ``Pipe.send_bytes``,
  ZeroMQ frames sent and received with ``copy=False``, or one reused
  shared-memory segment signalled by semaphores (the channels of
  ``benchmarks.ipc``, so both benchmarks measure the same floor).
- ``slots_handles``: the least a pool must keep per pending task, a
  ``__slots__`` handle and the pickled call, in a dict by task id.
- ``process_and_pipe``: construct → first result with one ``Process`` and a
  ``Pipe``, for a start method.
- ``static_split``: N CPU-bound tasks split evenly among the workers up
  front, no scheduling at all.
"""

# ruff: noqa: RUF002  (the multiplication sign)

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from pipework.benchmarks import ipc, tasks
from pipework.benchmarks.pool_subjects import Counter

__all__ = [
    "FLOOR_CHANNELS",
    "WINDOW",
    "EchoFloor",
    "ReaderFloor",
    "TaskFloor",
    "process_and_pipe",
    "slots_handles",
    "static_split",
    "task_peer",
]

WINDOW = 64
"""Messages in flight in the throughput floors."""
STOP = b""
"""The message that stops a floor's peer."""


def _nbytes(data: Any) -> int:
    with memoryview(data) as view:
        return view.nbytes


def _pipe_bytes(ctx: BaseContext, max_bytes: int) -> ipc.Channel:
    """A duplex ``Pipe`` carrying bytes as is (``send_bytes``/``recv_bytes``)."""
    mine, theirs = ctx.Pipe()
    channel = ipc.Channel(
        ipc.ObjectLink(mine.send_bytes, mine.recv_bytes),
        ipc.Same(ipc.ObjectLink(theirs.send_bytes, theirs.recv_bytes)),
        mine.close,
    )
    channel.after_start = theirs.close
    return channel


FLOOR_CHANNELS = {
    "pipe": ("bare Pipe send_bytes", _pipe_bytes),
    "zmq": ("ZeroMQ PUSH/PULL ipc:// copy=False", ipc.MECHANISMS["zmq-pushpull-ipc"].open),
    "shm": ("shared memory, reused", ipc.MECHANISMS["shared-memory"].open),
}
"""Floor channels by key: label and ``open(ctx, largest payload)``."""


def task_peer(end: ipc.PeerEnd) -> None:
    """A floor's peer in task mode: run each pickled ``(fn, args)``, send the pickled result."""
    link = end.open()
    loads = pickle.loads
    dumps = pickle.dumps
    try:
        while True:
            message = link.recv()
            if _nbytes(message) == 0:
                return
            fn, args = loads(memoryview(message))
            link.send(dumps(fn(*args), pickle.HIGHEST_PROTOCOL))
    finally:
        link.close()


class _Floor:
    """One channel and one forkserver peer process running ``peer``."""

    peer: Any = None

    def __init__(self, key: str, max_bytes: int = 1024) -> None:
        self.key = key
        self.label = FLOOR_CHANNELS[key][0]
        self.start_method = "forkserver"
        self._max_bytes = max_bytes
        self._channel: ipc.Channel | None = None
        self._proc: BaseProcess | None = None

    @property
    def link(self) -> ipc.Link:
        assert self._channel is not None
        return self._channel.link

    def open(self) -> None:
        """Open the channel and start the peer."""
        ctx: Any = multiprocessing.get_context(self.start_method)
        self._channel = FLOOR_CHANNELS[self.key][1](ctx, self._max_bytes)
        self._proc = ctx.Process(target=type(self).peer, args=(self._channel.peer,), daemon=True)
        self._proc.start()
        self._channel.after_start()
        if hasattr(self._channel.link, "zero_copy"):  # ZeroMQ: receive frames, not copies
            self._channel.link.zero_copy = True

    def close(self) -> None:
        """Stop the peer, wait for it (kill it if it does not go), release the channel."""
        assert self._channel is not None
        assert self._proc is not None
        try:
            self.link.send(STOP)
            self._proc.join(10.0)
            if self._proc.exitcode is None:
                self._proc.kill()
                self._proc.join()
        finally:
            self._channel.cleanup()


class TaskFloor(_Floor):
    """Pickled ``(fn, args)`` to a peer that runs them: the floor of a pool's per-task path."""

    peer = staticmethod(task_peer)

    def round_trip(self, i: int) -> Any:
        """Run ``tasks.inc(i)`` in the peer; return the result."""
        self.link.send(pickle.dumps((tasks.inc, (i,)), pickle.HIGHEST_PROTOCOL))
        return pickle.loads(memoryview(self.link.recv()))

    def flood(self, n: int, counter: Counter) -> None:
        """``tasks.inc(i)`` for ``i < n``, ``WINDOW`` in flight; ``counter`` counts results."""
        send = self.link.send
        recv = self.link.recv
        dumps = pickle.dumps
        loads = pickle.loads
        fn = tasks.inc
        protocol = pickle.HIGHEST_PROTOCOL
        sent = 0
        for _ in range(min(WINDOW, n)):
            send(dumps((fn, (sent,)), protocol))
            sent += 1
        for _ in range(n):
            loads(memoryview(recv()))
            counter.done += 1  # one thread: no lock, this is the floor
            if sent < n:
                send(dumps((fn, (sent,)), protocol))
                sent += 1
        counter.t_done = time.perf_counter()
        counter.all_done.set()


class ReaderFloor(TaskFloor):
    """``TaskFloor.round_trip`` with the reply read by a second thread that wakes the caller."""

    def open(self) -> None:
        """Open the channel, start the peer, then the reader thread."""
        super().open()
        self._value: Any = None
        self._replied = threading.Event()
        self._reader = threading.Thread(target=self._read, name="floor-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        recv = self.link.recv
        while True:
            try:
                message = recv()
            except (EOFError, OSError):  # the peer stopped
                return
            self._value = pickle.loads(memoryview(message))
            self._replied.set()

    def round_trip(self, i: int) -> Any:
        """Send ``tasks.inc(i)``; block until the reader thread has its result."""
        # A fresh Event per call, as a future's waiter is.
        replied = self._replied = threading.Event()
        self.link.send(pickle.dumps((tasks.inc, (i,)), pickle.HIGHEST_PROTOCOL))
        replied.wait()
        return self._value

    def close(self) -> None:
        """Stop the peer (which ends the reader), and wait for the reader."""
        super().close()
        self._reader.join(10.0)


class EchoFloor(_Floor):
    """A buffer sent to a peer that sends it back: the floor of a pool's payload path."""

    peer = staticmethod(ipc.echo_peer)

    def echo(self, payload: Any) -> int:
        """Send ``payload``, wait for it to come back; return the bytes received."""
        self.link.send(payload)
        return _nbytes(self.link.recv())


class _Handle:
    """The slimmest pending-task handle: what a pool must know about a task, no more."""

    __slots__ = ("callbacks", "payload", "result", "state", "task_id")

    def __init__(self, task_id: int, payload: bytes) -> None:
        self.task_id = task_id
        self.payload = payload
        self.state = 0
        self.result: Any = None
        self.callbacks: Any = None


def slots_handles(n: int) -> dict[int, _Handle]:
    """``n`` pending ``tasks.inc`` calls as slim handles (pickled call included), by id."""
    dumps = pickle.dumps
    fn = tasks.inc
    return {i: _Handle(i, dumps((fn, (i,)), pickle.HIGHEST_PROTOCOL)) for i in range(n)}


def process_and_pipe(start_method: str) -> float:
    """Seconds from nothing to a first result with one ``Process`` and a ``Pipe``."""
    ctx: Any = multiprocessing.get_context(start_method)
    t0 = time.perf_counter()
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=tasks.pipe_worker, args=(child,), daemon=True)
    proc.start()
    child.close()
    conn.send((tasks.inc, (1,)))
    conn.recv()
    elapsed = time.perf_counter() - t0
    conn.send(None)
    proc.join(10.0)
    conn.close()
    return elapsed


def static_split(workers: int, n: int, ms: float) -> float:
    """Seconds for ``n`` × ``spin(ms)`` split evenly among ``workers`` forkserver processes."""
    ctx = multiprocessing.get_context("forkserver")
    shares = [n // workers + (1 if w < n % workers else 0) for w in range(workers)]
    conns = []
    procs = []
    for share in shares:
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=tasks.split_worker, args=(child, share, ms), daemon=True)
        proc.start()
        child.close()
        conns.append(conn)
        procs.append(proc)
    for conn in conns:  # every process is up before the clock starts
        conn.recv()
    t0 = time.perf_counter()
    for conn in conns:
        conn.send("go")
    for conn in conns:
        conn.recv()
    elapsed = time.perf_counter() - t0
    for proc in procs:
        proc.join(10.0)
    return elapsed
