"""IPC mechanisms measured bare: round-trip latency and echo bandwidth, each in its own child.

```
 parent (pipework bench ipc) ──per mechanism──▶ child: python -m pipework.benchmarks.ipc --one KEY
   │  progress on stderr                          ├─ watchdog (--limit-seconds): reports, exits
   │                                              ├─ opens the channel, starts ONE peer process
   │                                              ├─ latency: small messages, one at a time
   │                                              └─ bandwidth: numpy arrays echoed by the peer
   │◀──────────────── one JSON line in the child's stdout file ──┘
   ├─ stdout: the table, the machine, the date
   └─ --write-docs: the marked blocks of docs/ipc.md and docs/ipc.zh.md (same numbers)
```

Every mechanism is driven the same way: the parent sends a message, the peer
sends back what it received, the parent waits for it. The peer (started with
``forkserver``, pinned to nothing) does nothing else. ``MECHANISMS`` lists
them: ``multiprocessing`` Queue, Pipe (duplex, and two one-way pipes),
Manager queues, ``shared_memory`` signalled by semaphores, a Pipe carrying
pickle protocol 5 out-of-band buffers, and ZeroMQ PUSH/PULL, REQ/REP and
ROUTER/DEALER, each over ``ipc://`` and ``tcp://127.0.0.1``.

- latency: a 64-byte ``bytes`` message, ``FULL.round_trips`` times after a
  warm-up; nearest-rank p50 and p99 in microseconds.
- bandwidth: a 1 MiB and a 64 MiB ``uint8`` array (``--quick``: 1 MiB only),
  echoed; MiB/s = 2 * size / median round trip (the bytes cross twice).

Run: ``pipework bench ipc`` (or ``python -m pipework.benchmarks.ipc``); ``--write-docs``
rewrites the generated blocks of the IPC chapter in both languages.
"""

# ruff: noqa: PLC0415, RUF001
# PLC0415: numpy and pyzmq load only in the processes that use them.
# RUF001: the Chinese text uses full-width punctuation; the tables use the multiplication sign.

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import multiprocessing
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

from pipework.benchmarks.common import (
    MIB,
    JSONDict,
    Progress,
    emit_result,
    fmt,
    git_state,
    loadavg,
    machine_info,
    percentile,
    project_root,
    run_child,
)
from pipework.benchmarks.common import rewrite_blocks as common_rewrite_blocks

__all__ = [
    "DOCS",
    "FULL",
    "MECHANISMS",
    "QUICK",
    "SECTIONS",
    "SIZES",
    "Channel",
    "Counts",
    "Link",
    "Mechanism",
    "ObjectLink",
    "PeerEnd",
    "Same",
    "echo_peer",
    "main",
    "render_block",
    "render_terminal",
    "rewrite_blocks",
    "run",
    "write_docs",
]

Lang = Literal["en", "zh"]

RESULT_PREFIX = "IPC_BENCH_RESULT "
"""Marks the child's result line, so stray output is never taken for it."""
KILL_MARGIN = 5.0
"""Seconds past ``--limit-seconds`` the parent waits for the child's watchdog, then kills it."""
CONNECT_TIMEOUT_MS = 30_000
"""How long a ZeroMQ parent waits for its peer's hello."""
SMALL = 64
"""Bytes in the latency message."""
VERSIONS_OF = ("pipework", "pyzmq", "numpy")
DOCS: dict[Lang, str] = {"en": "ipc.md", "zh": "ipc.zh.md"}
"""The IPC chapter in English and Chinese, under ``docs/``; both carry the same blocks."""
COMMAND = "pipework bench ipc --write-docs"


@dataclasses.dataclass(frozen=True)
class Counts:
    """How much each measure does."""

    latency_warm_up: int
    round_trips: int
    payloads: tuple[tuple[int, int], ...]
    """``(bytes, timed echoes)`` per payload size."""
    payload_warm_up: int


FULL = Counts(
    latency_warm_up=200,
    round_trips=2_000,
    payloads=((1 * MIB, 50), (64 * MIB, 8)),
    payload_warm_up=1,
)
QUICK = Counts(latency_warm_up=20, round_trips=200, payloads=((1 * MIB, 3),), payload_warm_up=1)
SIZES = (1 * MIB, 64 * MIB)
"""Columns of the bandwidth table (a ``--quick`` run leaves 64 MiB empty)."""


def _nbytes(data: Any) -> int:
    with memoryview(data) as view:
        return view.nbytes


# -- links: one end of a channel; the peer echoes whatever it receives ------------------


class Link(Protocol):
    """One end of a channel, as the measuring loops use it."""

    def send(self, payload: Any) -> None:
        """Send ``payload`` (``bytes`` or a numpy array) as one message."""

    def recv(self) -> Any:
        """Receive one message; anything with the buffer protocol."""

    def close(self) -> None:
        """Release this end."""


class PeerEnd(Protocol):
    """What the peer process is handed (picklable); ``open`` runs in the peer."""

    def open(self) -> Link:
        """Open the peer's end of the channel."""


def echo_peer(end: PeerEnd) -> None:
    """The peer process: echo every message until an empty one."""
    link = end.open()
    try:
        while True:
            message = link.recv()
            if _nbytes(message) == 0:
                return
            link.send(message)
            del message
    finally:
        link.close()


class Same:
    """A ``PeerEnd`` that is already open: the link itself crosses to the peer."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def open(self) -> Link:
        return self.link


class ObjectLink:
    """Objects out through one call (``put``/``send``), in through another: Queue, Pipe, Manager."""

    def __init__(self, out: Callable[[Any], None], inp: Callable[[], Any]) -> None:
        self._out = out
        self._in = inp

    def send(self, payload: Any) -> None:
        self._out(payload)

    def recv(self) -> Any:
        return self._in()

    def close(self) -> None:
        pass


class _Pickle5Link:
    """A Pipe carrying pickle protocol 5: the pickle, then each out-of-band buffer as is."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def send(self, payload: Any) -> None:
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        self._conn.send((header, len(raws)))
        for raw in raws:
            self._conn.send_bytes(raw)  # written from the array's own memory

    def recv(self) -> Any:
        header, count = self._conn.recv()
        return pickle.loads(header, buffers=[self._conn.recv_bytes() for _ in range(count)])

    def close(self) -> None:
        self._conn.close()


class _ShmLink:
    """A shared-memory region (8-byte length, then data) and two semaphores to take turns."""

    def __init__(self, name: str, post: Any, wait: Any) -> None:
        self.name = name
        self._post = post
        self._wait = wait
        self._shm: Any = None

    def open(self) -> _ShmLink:
        from multiprocessing import shared_memory

        self._shm = shared_memory.SharedMemory(name=self.name)
        return self

    def send(self, payload: Any) -> None:
        buf = self._shm.buf
        with memoryview(payload) as view, view.cast("B") as data:
            buf[:8] = len(data).to_bytes(8, "little")
            buf[8 : 8 + len(data)] = data
        self._post.release()

    def recv(self) -> bytes:
        self._wait.acquire()
        buf = self._shm.buf
        n = int.from_bytes(buf[:8], "little")
        return bytes(buf[8 : 8 + n])  # the receiver's own copy, as a pipe would give

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()


ZmqPattern = Literal["pushpull", "reqrep", "routerdealer"]


class _ZmqLink:
    """ZeroMQ sockets: ``out`` to send, ``inp`` to receive (the same socket but for PUSH/PULL).

    ``route`` is the peer's routing id when ``out`` is a ROUTER. Arrays go out
    with ``copy=False``; with ``zero_copy`` set, messages come in as frames
    that wrap libzmq's buffer rather than ``bytes`` copies.
    """

    def __init__(self, ctx: Any, out: Any, inp: Any, *, zero_copy: bool) -> None:
        self._ctx = ctx
        self._out = out
        self._in = inp
        self.route: bytes | None = None
        self.zero_copy = zero_copy

    def send(self, payload: Any) -> None:
        # pyzmq copies anything under zmq.COPY_THRESHOLD (64 KiB) even with copy=False.
        if self.route is None:
            self._out.send(payload, copy=False)
        else:
            self._out.send_multipart([self.route, payload], copy=False)

    def recv(self) -> Any:
        if self.route is None:
            return self._in.recv(copy=not self.zero_copy)
        return self._in.recv_multipart(copy=not self.zero_copy)[-1]

    def hello(self) -> None:
        """Wait for the peer's first message (and learn its routing id on a ROUTER)."""
        if not self._in.poll(CONNECT_TIMEOUT_MS):
            raise RuntimeError("the peer did not connect")
        frames = self._in.recv_multipart()
        if len(frames) == 2:
            self.route = frames[0]

    def close(self) -> None:
        for sock in [self._out] if self._out is self._in else [self._out, self._in]:
            sock.close(linger=0)
        self._ctx.term()


_ZMQ_TYPES: dict[ZmqPattern, tuple[str, str, str, str]] = {
    # parent out, parent in, peer out, peer in (socket type names)
    "pushpull": ("PUSH", "PULL", "PUSH", "PULL"),
    "reqrep": ("REQ", "REQ", "REP", "REP"),
    "routerdealer": ("ROUTER", "ROUTER", "DEALER", "DEALER"),
}


class _ZmqPeerEnd:
    """The peer's sockets, connected to the parent's bound endpoints."""

    def __init__(self, pattern: ZmqPattern, to_peer: str, to_parent: str) -> None:
        self.pattern = pattern
        self.to_peer = to_peer
        self.to_parent = to_parent

    def open(self) -> Link:
        import zmq

        ctx = zmq.Context()
        _, _, out_type, in_type = _ZMQ_TYPES[self.pattern]
        inp = ctx.socket(getattr(zmq, in_type))
        inp.connect(self.to_peer)
        if self.pattern == "pushpull":
            out = ctx.socket(getattr(zmq, out_type))
            out.connect(self.to_parent)
        else:
            out = inp
        link = _ZmqLink(ctx, out, inp, zero_copy=True)
        if self.pattern != "reqrep":  # a REP socket may not speak first
            out.send(b"hello")
        return link


# -- mechanisms (in the child) -----------------------------------------------------------


class Channel:
    """An open channel in the measuring child: its link, the peer's end, and cleanup."""

    def __init__(self, link: Link, peer: PeerEnd, cleanup: Callable[[], None]) -> None:
        self.link = link
        self.peer = peer
        self.cleanup = cleanup
        self.after_start: Callable[[], None] = lambda: None


def _queue(ctx: BaseContext, max_bytes: int) -> Channel:
    to_peer, to_parent = ctx.Queue(), ctx.Queue()

    def cleanup() -> None:
        for q in (to_peer, to_parent):
            q.close()
            q.join_thread()

    return Channel(
        ObjectLink(to_peer.put, to_parent.get),
        Same(ObjectLink(to_parent.put, to_peer.get)),
        cleanup,
    )


def _pipe_duplex(ctx: BaseContext, max_bytes: int) -> Channel:
    mine, theirs = ctx.Pipe()
    channel = Channel(
        ObjectLink(mine.send, mine.recv), Same(ObjectLink(theirs.send, theirs.recv)), mine.close
    )
    channel.after_start = theirs.close
    return channel


def _pipe_oneway(ctx: BaseContext, max_bytes: int) -> Channel:
    peer_in, parent_out = ctx.Pipe(duplex=False)
    parent_in, peer_out = ctx.Pipe(duplex=False)

    def cleanup() -> None:
        parent_out.close()
        parent_in.close()

    def drop_peer_ends() -> None:
        peer_in.close()
        peer_out.close()

    channel = Channel(
        ObjectLink(parent_out.send, parent_in.recv),
        Same(ObjectLink(peer_out.send, peer_in.recv)),
        cleanup,
    )
    channel.after_start = drop_peer_ends
    return channel


def _manager(ctx: BaseContext, max_bytes: int) -> Channel:
    manager = ctx.Manager()
    to_peer, to_parent = manager.Queue(), manager.Queue()
    return Channel(
        ObjectLink(to_peer.put, to_parent.get),
        Same(ObjectLink(to_parent.put, to_peer.get)),
        manager.shutdown,
    )


def _shared_memory(ctx: BaseContext, max_bytes: int) -> Channel:
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=8 + max_bytes)
    to_peer, to_parent = ctx.Semaphore(0), ctx.Semaphore(0)
    link = _ShmLink(shm.name, post=to_peer, wait=to_parent).open()

    def cleanup() -> None:
        link.close()
        shm.close()
        shm.unlink()

    return Channel(link, _ShmLink(shm.name, post=to_parent, wait=to_peer), cleanup)


def _pickle5(ctx: BaseContext, max_bytes: int) -> Channel:
    mine, theirs = ctx.Pipe()
    channel = Channel(_Pickle5Link(mine), Same(_Pickle5Link(theirs)), mine.close)
    channel.after_start = theirs.close
    return channel


def _zmq(
    pattern: ZmqPattern, where: Literal["ipc", "tcp"]
) -> Callable[[BaseContext, int], Channel]:
    def open_channel(ctx: BaseContext, max_bytes: int) -> Channel:
        import zmq

        zctx = zmq.Context()
        out_type, in_type, _, _ = _ZMQ_TYPES[pattern]
        private = tempfile.mkdtemp(prefix="pipework-bench-ipc-") if where == "ipc" else None

        def bind(sock: Any, name: str) -> str:
            sock.bind(f"ipc://{private}/{name}" if private else "tcp://127.0.0.1:*")
            return str(sock.getsockopt_string(zmq.LAST_ENDPOINT))

        out = zctx.socket(getattr(zmq, out_type))
        to_peer = bind(out, "to-peer")
        if pattern == "pushpull":
            inp = zctx.socket(getattr(zmq, in_type))
            to_parent = bind(inp, "to-parent")
        else:
            inp, to_parent = out, to_peer
        link = _ZmqLink(zctx, out, inp, zero_copy=False)

        def cleanup() -> None:
            link.close()
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)

        channel = Channel(link, _ZmqPeerEnd(pattern, to_peer, to_parent), cleanup)
        if pattern != "reqrep":
            channel.after_start = link.hello
        return channel

    return open_channel


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One row of the table."""

    label: str
    """Its name in the table: code, so it reads the same in every language."""
    open: Callable[[BaseContext, int], Channel]
    """``open(ctx, largest payload)``, in the measuring child: the channel, peer not started."""


MECHANISMS: dict[str, Mechanism] = {
    "queue": Mechanism("`Queue` ×2", _queue),
    "pipe-duplex": Mechanism("`Pipe()`", _pipe_duplex),
    "pipe-oneway": Mechanism("`Pipe(duplex=False)` ×2", _pipe_oneway),
    "manager": Mechanism("`Manager().Queue()` ×2", _manager),
    "shared-memory": Mechanism("`SharedMemory` + `Semaphore` ×2", _shared_memory),
    "pickle5": Mechanism("`Pipe()` + pickle 5 out-of-band", _pickle5),
    "zmq-pushpull-ipc": Mechanism("ZeroMQ PUSH/PULL ×2 `ipc://`", _zmq("pushpull", "ipc")),
    "zmq-pushpull-tcp": Mechanism("ZeroMQ PUSH/PULL ×2 `tcp://`", _zmq("pushpull", "tcp")),
    "zmq-reqrep-ipc": Mechanism("ZeroMQ REQ/REP `ipc://`", _zmq("reqrep", "ipc")),
    "zmq-reqrep-tcp": Mechanism("ZeroMQ REQ/REP `tcp://`", _zmq("reqrep", "tcp")),
    "zmq-routerdealer-ipc": Mechanism("ZeroMQ ROUTER/DEALER `ipc://`", _zmq("routerdealer", "ipc")),
    "zmq-routerdealer-tcp": Mechanism("ZeroMQ ROUTER/DEALER `tcp://`", _zmq("routerdealer", "tcp")),
}
"""Every mechanism measured, in table order. ``tcp://`` is always 127.0.0.1."""

SECTIONS: dict[str, tuple[str, ...]] = {
    "queue": ("queue",),
    "pipe": ("pipe-duplex", "pipe-oneway"),
    "manager": ("manager",),
    "shared-memory": ("shared-memory",),
    "pickle5": ("pipe-duplex", "pickle5"),
    "zmq-push-pull": ("zmq-pushpull-ipc", "zmq-pushpull-tcp"),
    "zmq-req-rep": ("zmq-reqrep-ipc", "zmq-reqrep-tcp"),
    "zmq-router-dealer": ("zmq-routerdealer-ipc", "zmq-routerdealer-tcp"),
}
"""The chapter's per-section blocks and the rows each shows (``table`` is the whole table)."""


# -- measuring (in the child) ------------------------------------------------------------


class _Child:
    """The one mechanism measured in this child process, and its single report."""

    def __init__(self, key: str, limit: float) -> None:
        self.key = key
        self.limit = limit
        self.phase = "open"
        self.latency: JSONDict = {}
        self.bandwidth: JSONDict = {}
        self._emit_lock = threading.Lock()
        self._t0 = time.perf_counter()

    def report(self, status: str, error: str | None = None, **extra: Any) -> JSONDict:
        return {
            "key": self.key,
            "status": status,
            "error": error,
            "phase": self.phase,
            "latency": self.latency,
            "bandwidth": self.bandwidth,
            "child_s": round(time.perf_counter() - self._t0, 3),
            "loadavg_at_end": loadavg(),
            **extra,
        }

    def emit(self, record: JSONDict, exitcode: int) -> NoReturn:
        with self._emit_lock:
            emit_result(RESULT_PREFIX, record, exitcode)

    def watchdog(self) -> None:
        time.sleep(self.limit)
        error = f"not finished within {self.limit:g} s (phase {self.phase!r})"
        self.emit(self.report("timeout", error), 3)


def _measure_latency(link: Link, counts: Counts, child: _Child) -> None:
    message = b"x" * SMALL
    for _ in range(counts.latency_warm_up):
        link.send(message)
        link.recv()
    gc.collect()
    child.phase = "latency"
    clock = time.perf_counter_ns
    samples: list[float] = []
    for _ in range(counts.round_trips):
        t0 = clock()
        link.send(message)
        reply = link.recv()
        samples.append((clock() - t0) / 1000)
        if _nbytes(reply) != SMALL:
            raise RuntimeError(f"sent {SMALL} bytes, got {_nbytes(reply)} back")
    samples.sort()
    child.latency.update(
        n=len(samples),
        p50_us=round(percentile(samples, 50), 1),
        p99_us=round(percentile(samples, 99), 1),
        mean_us=round(statistics.fmean(samples), 1),
    )


def _measure_bandwidth(link: Link, counts: Counts, child: _Child) -> None:
    import numpy as np

    if isinstance(link, _ZmqLink):
        link.zero_copy = True
    for size, reps in counts.payloads:
        child.phase = f"echo {size // MIB} MiB"
        # Written through, so first-touch page faults are not timed.
        payload = np.full(size, 0x5A, dtype=np.uint8)
        for _ in range(counts.payload_warm_up):
            link.send(payload)
            link.recv()
        gc.collect()
        times: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            link.send(payload)
            got = _nbytes(link.recv())
            times.append(time.perf_counter() - t0)
            if got != size:
                raise RuntimeError(f"sent {size} bytes, got {got} back")
        median = statistics.median(times)
        child.bandwidth[str(size)] = {
            "reps": reps,
            "median_s": round(median, 6),
            "best_s": round(min(times), 6),
            "mib_per_s": round(2 * size / MIB / median, 1),
        }
        del payload


def _stop(proc: BaseProcess, link: Link) -> None:
    """Tell the peer to stop and wait for it; kill it if it does not go."""
    link.send(b"")
    proc.join(10.0)
    if proc.exitcode is None:
        proc.kill()
        proc.join()


def _run_one(key: str, quick: bool, limit: float) -> NoReturn:
    """Measure one mechanism in this process and print its result line."""
    child = _Child(key, limit)
    threading.Thread(target=child.watchdog, name="watchdog", daemon=True).start()
    counts = QUICK if quick else FULL
    try:
        ctx = multiprocessing.get_context("forkserver")
        channel = MECHANISMS[key].open(ctx, max(size for size, _ in counts.payloads))
        try:
            proc = ctx.Process(target=echo_peer, args=(channel.peer,), daemon=True)
            proc.start()
            channel.after_start()
            child.phase = "warm-up"
            _measure_latency(channel.link, counts, child)
            _measure_bandwidth(channel.link, counts, child)
            child.phase = "close"
            _stop(proc, channel.link)
        finally:
            channel.cleanup()
    except BaseException as exc:
        child.emit(
            child.report("error", f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()),
            1,
        )
    child.phase = "done"
    child.emit(child.report("ok"), 0)


# -- orchestrating (in the parent) -------------------------------------------------------


def _measure(key: str, quick: bool, limit: float) -> JSONDict:
    """Run one mechanism in a fresh child; never raises for its failure, never hangs."""
    args = ["-m", "pipework.benchmarks.ipc", "--one", key, "--limit-seconds", str(limit)]
    if quick:
        args.append("--quick")
    outcome = run_child(args, limit, result_prefix=RESULT_PREFIX, kill_margin=KILL_MARGIN)
    record = outcome.record
    if record is None:
        status = "timeout" if outcome.killed else "error"
        why = (
            f"killed after {outcome.wall_s:.0f} s with no report"
            if outcome.killed
            else f"child exited {outcome.returncode} with no report"
        )
        record = {"key": key, "status": status, "error": why, "latency": {}, "bandwidth": {}}
    record["wall_s"] = round(outcome.wall_s, 2)
    if record["status"] != "ok":
        record["stderr_tail"] = outcome.stderr[-4000:]
    return record


def _libzmq_version() -> str | None:
    try:
        import zmq
    except ImportError:
        return None
    return str(zmq.zmq_version())


def _machine() -> JSONDict:
    machine = machine_info(VERSIONS_OF)
    machine["kernel"] = f"{platform.system()} {platform.release()}"
    machine["libzmq"] = _libzmq_version()
    machine["git"] = git_state()
    return machine


# -- rendering ---------------------------------------------------------------------------

_TEXT: dict[Lang, dict[str, str]] = {
    "en": {
        "header": "| mechanism | round trip p50 µs | p99 µs | echo 1 MiB, MiB/s "
        "| echo 64 MiB, MiB/s |",
        "generated": "Generated by `{command}` on {date}; run it again to regenerate this "
        "table in docs/ipc.md and docs/ipc.zh.md. Do not edit by hand.",
        "machine": "Machine: {cpus} CPUs ({model}), {memory:,} MiB RAM; {kernel}; {python}; "
        "pyzmq {pyzmq}, libzmq {libzmq}, numpy {numpy}. 1-minute load average {load_start} "
        "at start, {load_end} at end.",
        "method": "Round trip: a {small}-byte message sent to one peer process, which sends it "
        "back; {n:,} of them after {warm:,} untimed. Echo: a numpy `uint8` array sent and "
        "received back; MiB/s = 2 × size / median round trip, over {reps}. "
        "`tcp://` is 127.0.0.1.",
        "quick": "Quick run (`--quick`): few repetitions, 1 MiB only; not for comparison.",
        "failed": "Not measured: {label}: {status} ({error}).",
        "see": "From the same run as the table in [Measured here](#measured):",
    },
    "zh": {
        "header": "| 机制 | 往返延迟 p50 µs | p99 µs | 回显 1 MiB，MiB/s | 回显 64 MiB，MiB/s |",
        "generated": "由 `{command}` 于 {date} 生成；重新运行该命令即可同时更新 docs/ipc.md "
        "与 docs/ipc.zh.md 中的这张表。请勿手工修改。",
        "machine": "测量环境：{cpus} 个 CPU（{model}），内存 {memory:,} MiB；{kernel}；{python}；"
        "pyzmq {pyzmq}，libzmq {libzmq}，numpy {numpy}。1 分钟平均负载：开始时 {load_start}，"
        "结束时 {load_end}。",
        "method": "往返延迟：把 {small} 字节的消息发给一个对端进程，对端原样发回；先不计时地"
        "预热 {warm:,} 次，再计时 {n:,} 次。回显带宽：发送一个 numpy `uint8` 数组并收回；"
        "MiB/s = 2 × 大小 ÷ 往返时间中位数，重复次数为 {reps}。`tcp://` 均指 127.0.0.1。",
        "quick": "快速运行（`--quick`）：重复次数少，只测 1 MiB，不宜用来比较。",
        "failed": "未测得：{label}：{status}（{error}）。",
        "see": "与[本机实测](#measured)中的表格出自同一次运行：",
    },
}


def _date(iso: str) -> str:
    """``2025-01-31T12:00:00+00:00`` as ``2025-01-31 12:00 UTC``."""
    moment = datetime.datetime.fromisoformat(iso).astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _cells(record: JSONDict | None) -> list[str]:
    """The four number cells of a row (em dash where nothing was measured)."""
    if record is None:
        return ["—"] * 4
    latency = record.get("latency") or {}
    bandwidth = record.get("bandwidth") or {}
    cells = [fmt(latency.get("p50_us"), ",.1f"), fmt(latency.get("p99_us"), ",.1f")]
    for size in SIZES:
        measured = bandwidth.get(str(size))
        cells.append(fmt(None if measured is None else measured["mib_per_s"], ",.0f"))
    return cells


def _rows(records: Mapping[str, JSONDict], keys: Sequence[str], lang: Lang) -> list[str]:
    lines = [_TEXT[lang]["header"], "|---|---:|---:|---:|---:|"]
    for key in keys:
        cells = " | ".join(_cells(records.get(key)))
        lines.append(f"| {MECHANISMS[key].label} | {cells} |")
    return lines


def render_block(
    name: str, records: Mapping[str, JSONDict], machine: JSONDict, quick: bool, lang: Lang
) -> str:
    """The text of one generated block: ``table`` (the whole run) or a ``SECTIONS`` name."""
    text = _TEXT[lang]
    if name != "table":
        return "\n".join([text["see"], "", *_rows(records, SECTIONS[name], lang)])
    counts = QUICK if quick else FULL
    versions = machine.get("versions", {})
    reps = ", ".join(f"{size // MIB} MiB ×{n}" for size, n in counts.payloads)
    lines = [
        text["generated"].format(command=COMMAND, date=_date(machine["date"])),
        "",
        *_rows(records, [key for key in MECHANISMS if key in records], lang),
        "",
        text["machine"].format(
            cpus=machine["cpu_count"],
            model=machine.get("cpu_model") or "?",
            memory=machine["memory_total_mib"],
            kernel=machine.get("kernel", "?"),
            python=machine["python"],
            pyzmq=versions.get("pyzmq") or "?",
            libzmq=machine.get("libzmq") or "?",
            numpy=versions.get("numpy") or "?",
            load_start=machine["loadavg_1m_at_start"],
            load_end=machine.get("loadavg_1m_at_end", "?"),
        ),
        "",
        text["method"].format(
            small=SMALL, n=counts.round_trips, warm=counts.latency_warm_up, reps=reps
        ),
    ]
    if quick:
        lines += ["", text["quick"]]
    for key, record in records.items():
        if record["status"] != "ok":
            lines += [
                "",
                text["failed"].format(
                    label=MECHANISMS[key].label, status=record["status"], error=record["error"]
                ),
            ]
    return "\n".join(lines)


def render_terminal(records: Mapping[str, JSONDict], machine: JSONDict, quick: bool) -> str:
    """What ``pipework bench ipc`` prints: the English table block, then the per-run detail."""
    git = machine.get("git") or {}
    changed = git.get("uncommitted")
    tree = f"pipework at commit {git.get('commit') or '?'}" + (
        f" plus uncommitted changes to {', '.join(changed)}" if changed else ""
    )
    title = f"## IPC round trip and echo bandwidth{' (--quick)' if quick else ''}"
    return "\n".join([title, "", render_block("table", records, machine, quick, "en"), "", tree])


# -- the docs ----------------------------------------------------------------------------

BLOCK_PREFIX = "pipework-bench-ipc"
"""Marks the chapter's generated blocks: ``<!-- BEGIN pipework-bench-ipc:NAME -->``."""


def rewrite_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``common.rewrite_blocks`` for the IPC chapter's markers."""
    return common_rewrite_blocks(text, blocks, BLOCK_PREFIX)


def _docs_dir() -> Path:
    """``docs/`` of the source tree benchmarks/ sits in, else of the current directory."""
    for root in (project_root(), Path.cwd()):
        if (root / "docs" / DOCS["en"]).exists():
            return root / "docs"
    raise FileNotFoundError(
        f"no docs/{DOCS['en']} next to {project_root()} or in {Path.cwd()}: "
        "run --write-docs from a pipework source checkout"
    )


def write_docs(
    records: Mapping[str, JSONDict], machine: JSONDict, quick: bool, docs: Path | None = None
) -> list[Path]:
    """Rewrite every generated block of both chapters (same numbers); return the files written.

    Both files are checked before either is written, so a bad marker changes nothing.
    """
    where = _docs_dir() if docs is None else docs
    new: dict[Path, str] = {}
    for lang, filename in DOCS.items():
        names = ["table", *SECTIONS]
        blocks = {name: render_block(name, records, machine, quick, lang) for name in names}
        path = where / filename
        new[path] = rewrite_blocks(path.read_text(encoding="utf-8"), blocks)
    for path, text in new.items():
        path.write_text(text, encoding="utf-8")
    return list(new)


# -- entry points ------------------------------------------------------------------------


def run(
    *,
    quick: bool = False,
    docs: bool = False,
    json_path: Path | None = None,
    limit: float | None = None,
    only: Sequence[str] | None = None,
) -> int:
    """Measure every mechanism (or ``only`` those), print the table, maybe write the docs.

    Args:
        quick: few repetitions and 1 MiB only (a smoke run; refused with ``docs``).
        docs: rewrite the generated blocks of docs/ipc.md and docs/ipc.zh.md.
        json_path: also write every record, and the machine, here.
        limit: seconds each mechanism's child may take (default 120, 30 with ``quick``).
        only: mechanism keys to measure (default: all; refused with ``docs``).

    Returns:
        0 if every mechanism was measured, 1 if one failed, 2 for a usage error.
    """
    keys = list(MECHANISMS) if only is None else list(only)
    unknown = [k for k in keys if k not in MECHANISMS]
    if unknown:
        sys.stderr.write(f"pipework bench ipc: unknown mechanism(s) {unknown}\n")
        return 2
    if docs and (quick or only is not None):
        sys.stderr.write("pipework bench ipc: --write-docs takes a full run of every mechanism\n")
        return 2
    docs_dir = None
    if docs:
        try:
            docs_dir = _docs_dir()  # before measuring for a minute, not after
        except FileNotFoundError as exc:
            sys.stderr.write(f"pipework bench ipc: {exc}\n")
            return 2
    seconds = limit if limit is not None else 30.0 if quick else 120.0
    machine = _machine()
    records: dict[str, JSONDict] = {}
    progress = Progress(len(keys))
    for key in keys:
        progress.start(key)
        record = _measure(key, quick, seconds)
        progress.done(key, record["status"], record["wall_s"])
        if record["status"] != "ok":
            sys.stderr.write(f"  {key}: {record['error']}\n{record.get('stderr_tail', '')}\n")
        records[key] = record
    progress.finish()
    machine["loadavg_1m_at_end"] = loadavg()[0]
    print(render_terminal(records, machine, quick), flush=True)
    if docs_dir is not None:
        for path in write_docs(records, machine, quick, docs_dir):
            sys.stderr.write(f"wrote {path}\n")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "ipc",
            "quick": quick,
            "counts": dataclasses.asdict(QUICK if quick else FULL),
            "machine": machine,
            "results": records,
        }
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipework.benchmarks.ipc``: the same as ``pipework bench ipc``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipework.benchmarks.ipc", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions, 1 MiB only")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the docs' tables")
    parser.add_argument("--json", type=Path, default=None, help="also write the records here")
    parser.add_argument("--only", default=None, help="comma-separated mechanism keys")
    parser.add_argument("--limit-seconds", type=float, default=None, help="per mechanism")
    parser.add_argument("--one", choices=list(MECHANISMS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        _run_one(args.one, args.quick, args.limit_seconds or 30.0)
    return run(
        quick=args.quick,
        docs=args.write_docs,
        json_path=args.json,
        limit=args.limit_seconds,
        only=None if args.only is None else [k.strip() for k in args.only.split(",")],
    )


if __name__ == "__main__":
    sys.exit(main())
