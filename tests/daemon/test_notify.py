"""sd_notify as systemd sees it: READY, WATCHDOG, STOPPING and STATUS, in order.

The test plays systemd: it binds an AF_UNIX datagram socket in a private
directory (or at an abstract address), starts a real ``pipework serve`` with
``NOTIFY_SOCKET`` pointing at it, and keeps every datagram with the sender's
pid from SCM_CREDENTIALS, which is what systemd checks for ``NotifyAccess=main``.
A reader thread drains the socket at once: the kernel queues only
``net.unix.max_dgram_qlen`` datagrams (10 here), and the daemon drops, rather
than waits for, a message the queue cannot take.

Running the daemon under a real systemd (``systemd-run``) is not possible on
this machine: PID 1 is not systemd (deploy/README.md has what it printed).
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipework.service.ops import notify as sd
from tests.support.daemons import READY_TIMEOUT, DaemonFactory
from tests.support.waiting import wait_until

WATCHDOG_USEC = 400_000  # pings every 0.2 s
_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Message:
    """One datagram: when it arrived (monotonic), its sender's pid, its lines."""

    at: float
    pid: int
    lines: tuple[str, ...]

    def get(self, key: str) -> str | None:
        for line in self.lines:
            name, _, value = line.partition("=")
            if name == key:
                return value
        return None


class NotifySocket:
    """A test-owned ``$NOTIFY_SOCKET``: a datagram socket and a thread that keeps every message.

    Args:
        address: a filesystem path, or ``@name`` for an abstract address.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(_UCRED.size)
        while self._running:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, space)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            msg = Message(time.monotonic(), pid, tuple(data.decode().split("\n")))
            with self._lock:
                self.messages.append(msg)

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, pred: Callable[[Message], bool], timeout: float, what: str) -> int:
        """Wait until a message matches ``pred``; return its index (fail after ``timeout``)."""
        found: list[int] = []

        def check() -> bool:
            found[:] = [i for i, m in enumerate(self.snapshot()) if pred(m)][:1]
            return bool(found)

        wait_until(check, timeout, what)
        return found[0]

    def close(self) -> None:
        self._running = False
        self._thread.join(5.0)
        self.sock.close()
        assert not self._thread.is_alive(), "the notify reader thread did not stop"


@pytest.fixture
def notify_dir() -> Iterator[Path]:
    # Short and private: AF_UNIX paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="pw-notify-"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def listeners() -> Iterator[Callable[[str], NotifySocket]]:
    made: list[NotifySocket] = []

    def make(address: str) -> NotifySocket:
        made.append(NotifySocket(address))
        return made[-1]

    yield make
    for ns in made:
        ns.close()


def _is(line: str) -> Callable[[Message], bool]:
    return lambda m: line in m.lines


def _status(m: Message) -> str | None:
    return m.get("STATUS")


# -- a real daemon ------------------------------------------------------------------


def test_ready_watchdog_stopping_in_order(
    daemon: DaemonFactory, notify_dir: Path, listeners: Callable[[str], NotifySocket]
) -> None:
    ns = listeners(str(notify_dir / "notify.sock"))
    env = {"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    d = daemon(env=env, ready=False)

    # READY=1 comes first, with the status, once every worker has started.
    i = ns.wait_for(_is("READY=1"), READY_TIMEOUT, "READY=1")
    workers = d.workers()  # asked the moment READY arrived
    assert len(workers) == 2, workers
    assert all(isinstance(w["pid"], int) for w in workers), workers
    ready = ns.snapshot()[i]
    assert i == 0, f"messages before READY=1: {ns.snapshot()[:i]}"
    assert ready.get("STATUS") == f"serving at {d.endpoint}, 2 workers, 0 recovered"
    assert d.stats()["workers"] == 2

    # WATCHDOG=1 from the idle loop every WATCHDOG_USEC/2, though it sleeps up to 1 s:
    # the third ping comes within 1.2 s of READY=1.
    def pings() -> list[Message]:
        return [m for m in ns.snapshot() if "WATCHDOG=1" in m.lines]

    wait_until(lambda: len(pings()) >= 3, 10.0, "three WATCHDOG=1 pings")
    assert pings()[2].at <= ready.at + 1.2, ns.snapshot()

    # A task that is running when SIGTERM comes: the drain waits for it.
    task_id = d.submit("sleep", 1.5)["task_id"]
    wait_until(lambda: any(w["task_id"] == task_id for w in d.workers()), 20.0, "the task running")
    assert d.stop() == 0

    last = ns.wait_for(lambda m: (_status(m) or "").startswith("stopped"), 10.0, "final STATUS")
    messages = ns.snapshot()
    assert {m.pid for m in messages} == {d.pid}, "every message must come from the main pid"
    events = [m.lines for m in messages if m.lines != ("WATCHDOG=1",)]
    assert events == [
        ("READY=1", f"STATUS=serving at {d.endpoint}, 2 workers, 0 recovered"),
        ("STOPPING=1",),
        ("STATUS=draining: 1 running, 0 queued",),
        ("STATUS=draining: 0 running, 0 queued",),
        ("STATUS=stopped: drained, 0 queued for the next start",),
    ], messages
    assert last == len(messages) - 1, "nothing may follow the final STATUS"
    stopping = ns.wait_for(_is("STOPPING=1"), 0.0, "STOPPING=1")
    # The loop keeps pinging while it drains (1.5 s at 0.2 s): systemd would
    # otherwise kill a daemon that drains for longer than WatchdogSec.
    assert any(m.lines == ("WATCHDOG=1",) for m in messages[stopping:last]), messages


def test_watchdog_pid_of_another_process_means_no_pings(
    daemon: DaemonFactory, listeners: Callable[[str], NotifySocket]
) -> None:
    # An abstract address this time (systemd's own form: NOTIFY_SOCKET=@...).
    ns = listeners(f"@pw-notify-{uuid.uuid4().hex}")
    env = {
        "NOTIFY_SOCKET": ns.address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": str(os.getpid()),  # this test process, not the daemon
    }
    d = daemon(env=env, ready=False)
    ns.wait_for(_is("READY=1"), READY_TIMEOUT, "READY=1")
    time.sleep(1.2)  # six pings' worth
    assert d.stop() == 0
    ns.wait_for(lambda m: (_status(m) or "").startswith("stopped"), 10.0, "final STATUS")
    messages = ns.snapshot()
    assert not [m for m in messages if "WATCHDOG=1" in m.lines], messages
    assert [m.lines[0] for m in messages][:2] == ["READY=1", "STOPPING=1"], messages


# -- the client alone ---------------------------------------------------------------


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = sd.Notifier.from_environ({"WATCHDOG_USEC": "400000"})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert n.notify("READY=1") is False
    assert n.status("anything") is False
    assert n.ping() is None


def test_environment_is_read_and_optionally_removed() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    n = sd.Notifier.from_environ(env)
    assert n.enabled
    assert n.watchdog_interval == 30.0
    assert len(env) == 3
    sd.Notifier.from_environ(env, unset=True)
    assert env == {}


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("400000", None, 0.4),
        ("400000", "self", 0.4),
        ("400000", "1", None),  # meant for another process
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert sd.watchdog_interval() == expected


def test_notify_sends_one_datagram(
    monkeypatch: pytest.MonkeyPatch, notify_dir: Path, listeners: Callable[[str], NotifySocket]
) -> None:
    ns = listeners(str(notify_dir / "n.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
    assert sd.notify("READY=1", "STATUS=hello")
    ns.wait_for(_is("READY=1"), 5.0, "the datagram")
    assert ns.snapshot()[0].lines == ("READY=1", "STATUS=hello")
    assert ns.snapshot()[0].pid == os.getpid()


def test_a_receiver_that_stops_reading_never_blocks_the_sender(notify_dir: Path) -> None:
    path = notify_dir / "deaf.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(str(path))
        n = sd.Notifier(str(path), watchdog=0.4)
        sent = [n.notify("WATCHDOG=1") for _ in range(100)]  # the queue holds far fewer
    assert sent[0] is True
    assert sent[-1] is False  # dropped (and logged), not waited for
    assert n.notify("WATCHDOG=1") is False  # the socket is gone now: still no exception
