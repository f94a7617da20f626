"""The remote worker end to end: a real ``pipework worker`` process against a fake daemon.

The fake daemon is a pyzmq ROUTER driven by hand with JSON, never with the
daemon's code, so these tests pin the worker to docs/protocol.md ("Remote
workers") alone. It binds ``ipc://`` in a private 0700 directory, or
``tcp://127.0.0.1`` with CURVE for the authentication tests.

Every wait is bounded. Teardown stops each worker still running (SIGTERM,
then SIGKILL by pid and a failure), then checks that every process the
worker ever had (tracked with psutil while it ran) is gone; leftovers are
killed by pid and fail the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipework.protocol.curve import load_keypair
from pipework.service.cli import keys
from pipework.service.daemon.registry import load_tasks
from pipework.service.remote_worker import (
    BACKOFF_MAX,
    RemoteWorker,
    RemoteWorkerError,
    worker_settings,
)
from tests.support.processes import REPO, ProcessTree, clean_env, descendants, wait_gone
from tests.support.waiting import wait_until

TASKS = "tests.remote_tasks"
WAIT = 15.0  # bound on any one expected message
EXIT_WAIT = 15.0  # bound on a worker's exit once told to go
ORPHAN_GRACE = 2.0  # the no-orphans contract: local processes gone this soon
WORKER = [sys.executable, "-m", "pipework", "worker"]


# -- the worker process ----------------------------------------------------------------


class Worker(ProcessTree):
    """A ``python -m pipework worker`` process and every descendant it ever had."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        with log.open("ab") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        super().__init__(proc, interval=0.05)

    def signal(self, sig: int) -> None:
        self.track()
        os.kill(self.pid, sig)

    def wait(self, timeout: float = EXIT_WAIT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker {self.pid} did not exit within {timeout} s\n{self.log_tail()}")
        self.stop_watching()
        return code

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- worker {self.pid} log (tail) ---\n{text[-chars:] or '(empty)'}"

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


# -- the fake daemon -------------------------------------------------------------------


@dataclass
class Session:
    """One session the fake daemon opened with a worker."""

    daemon: FakeDaemon
    ident: bytes
    id: str
    hello: dict[str, Any]
    heartbeat: float
    keepalive: bool = True
    seen: list[dict[str, Any]] = field(default_factory=list)

    def send(self, kind: str, **fields: Any) -> None:
        self.daemon.send(self.ident, {"type": kind, "session": self.id, **fields})

    def task(
        self, task_id: str, name: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> None:
        self.send(
            "task",
            task_id=task_id,
            attempt=1,
            task=name,
            args=list(args),
            kwargs=kwargs,
            timeout=timeout,
        )

    def expect(self, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next message of ``kind`` from this session; what came before it goes in ``seen``."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"no {kind} from session {self.id} within {timeout} s; "
                    f"saw {[m['type'] for m in self.seen[-20:]]}\n{self.daemon.logs()}"
                )
            got = self.daemon.recv(min(left, 0.2))
            if got is None:
                continue
            ident, msg = got
            assert ident == self.ident, f"a message from another connection: {msg}"
            assert msg.get("session") == self.id, f"a message for another session: {msg}"
            if msg["type"] == kind:
                return msg
            self.seen.append(msg)

    def collect(self, seconds: float) -> list[dict[str, Any]]:
        """Every message from this session for ``seconds`` (keeping the session alive)."""
        end = time.monotonic() + seconds
        out = []
        while (left := end - time.monotonic()) > 0:
            got = self.daemon.recv(min(left, 0.2))
            if got is not None:
                assert got[0] == self.ident, got
                out.append(got[1])
        self.seen.extend(out)
        return out

    def result(self, task_id: str, timeout: float = WAIT) -> dict[str, Any]:
        """The result of ``task_id``, then the credit the worker gives back for it."""
        msg = self.expect("result", timeout)
        assert msg["task_id"] == task_id, msg
        return msg


class FakeDaemon:
    """A ROUTER speaking the daemon's side of the remote-worker protocol, by hand."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, sock: zmq.Socket[Any]) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.sock = sock
        self.sessions: list[Session] = []
        self.workers: list[Worker] = []
        self._last_beat = 0.0

    def recv(self, timeout: float) -> tuple[bytes, dict[str, Any]] | None:
        """One message (identity, JSON) within ``timeout`` s, else None; keeps sessions alive."""
        self._beat()
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) == 2, f"a worker message must be one frame: {frames!r}"
        msg = json.loads(frames[1])
        assert isinstance(msg, dict)
        assert msg.get("v") == 1, msg
        return frames[0], msg

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < 0.25:
            return
        self._last_beat = now
        for s in self.sessions:
            if s.keepalive:
                s.send("heartbeat")

    def send(self, ident: bytes, msg: dict[str, Any]) -> None:
        self.sock.send_multipart([ident, json.dumps({"v": 1, **msg}).encode()])

    def expect_hello(self, timeout: float = WAIT) -> tuple[bytes, dict[str, Any]]:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            got = self.recv(min(left, 0.2))
            if got is not None and got[1]["type"] == "hello":
                return got
        pytest.fail(f"no hello within {timeout} s\n{self.logs()}")

    def handshake(
        self,
        heartbeat: float = 0.5,
        expiry: float = 10.0,
        *,
        keepalive: bool = True,
        first: tuple[bytes, dict[str, Any]] | None = None,
    ) -> Session:
        """hello -> welcome -> ready: the session, with the ready in ``seen[0]``.

        A worker that got no welcome within its backoff says hello again on a
        new socket (a loaded machine can be that slow): welcome the latest.
        """
        ident, hello = first or self.expect_hello()
        end = time.monotonic() + WAIT
        while True:
            self.send(
                ident,
                {
                    "type": "welcome",
                    "session": hello["session"],
                    "heartbeat": heartbeat,
                    "expiry": expiry,
                },
            )
            got = None
            while got is None or got[0] != ident or got[1]["type"] != "ready":
                if got is not None and got[1]["type"] == "hello":
                    break
                if time.monotonic() > end:
                    pytest.fail(f"no ready after welcome within {WAIT} s\n{self.logs()}")
                got = self.recv(0.2)
            else:
                break
            ident, hello = got
        ready = got[1]
        assert ready["session"] == hello["session"], ready
        session = Session(self, ident, hello["session"], hello, heartbeat, keepalive, [ready])
        self.sessions.append(session)
        return session

    def start_worker(self, *args: str, slots: int = 2, endpoint: str | None = None) -> Worker:
        log = Path(tempfile.mkstemp(prefix="pw-remote-", suffix=".log")[1])
        argv = [
            *WORKER,
            "--connect",
            endpoint or self.endpoint,
            "--tasks",
            TASKS,
            "--slots",
            str(slots),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            *args,
        ]
        worker = Worker(argv, log)
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(w.log_tail() for w in self.workers)

    def close(self) -> list[str]:
        problems = []
        for w in self.workers:
            if w.running():
                with contextlib.suppress(ProcessLookupError):
                    w.signal(signal.SIGTERM)
                try:
                    w.proc.wait(EXIT_WAIT)
                except subprocess.TimeoutExpired:
                    w.kill()
                    problems.append(f"worker {w.pid} ignored SIGTERM; SIGKILLed\n{w.log_tail()}")
            w.stop_watching()
            survivors = w.wait_descendants_gone(3.0)
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if survivors:
                problems.append(f"worker {w.pid}'s processes {survivors} outlived it")
            with contextlib.suppress(OSError):
                w.log.unlink()
        self.sock.close(linger=0)
        return problems


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes: a short private directory (mkdtemp: 0700).
    path = Path(tempfile.mkdtemp(prefix="pw-rw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(zctx: zmq.Context[Any], sock_dir: Path) -> Iterator[FakeDaemon]:
    """A fake daemon on a fresh ipc:// endpoint; teardown checks the workers left nothing."""
    endpoint = f"ipc://{sock_dir}/workers.sock"
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    daemon = FakeDaemon(zctx, endpoint, router)
    yield daemon
    problems = daemon.close()
    if problems:
        pytest.fail("\n\n".join(problems))


def read_pid(path: Path, timeout: float = WAIT) -> int:
    wait_until(path.exists, timeout, f"the task to write {path}")
    return int(path.read_text())


def gone(pid: int, timeout: float) -> bool:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return not wait_gone([proc], timeout)


# -- session and outcomes --------------------------------------------------------------


def test_hello_welcome_ready_then_a_task_is_done(fake: FakeDaemon) -> None:
    worker = fake.start_worker(slots=3)
    s = fake.handshake()
    hello = s.hello
    assert hello["type"] == "hello"
    assert 1 <= len(hello["session"]) <= 64
    assert hello["slots"] == 3
    assert hello["pid"] == worker.pid
    assert hello["host"] == socket.gethostname()
    assert hello["tasks"] == sorted(load_tasks(TASKS))
    assert s.seen == [{"v": 1, "type": "ready", "session": s.id, "credit": 3}]

    s.task("t1", "add", 2, 3)
    result = s.result("t1")
    assert result == {
        "v": 1,
        "type": "result",
        "session": s.id,
        "task_id": "t1",
        "attempt": 1,
        "state": "done",
        "result": 5,
        "error": None,
        "exitcode": None,
        "signal": None,
    }
    assert s.expect("ready")["credit"] == 1


def _failed_with_traceback(result: dict[str, Any]) -> bool:
    error = result["error"]
    return error["message"] == "boom" and "raise TaskFailure(msg)" in error["traceback"]


def _killed(result: dict[str, Any]) -> bool:
    return (result["exitcode"], result["signal"]) == (-signal.SIGKILL, "SIGKILL")


# (id, task, args, kwargs, timeout, state, error type, extra check)
OUTCOMES: list[tuple[str, str, list[Any], dict[str, Any], float | None, str, str | None, Any]] = [
    ("done", "add", [2, 3], {}, None, "done", None, lambda r: r["result"] == 5),
    (
        "JSON round trip",
        "echo",
        [{"a": [1, "x", None, 2.5, True]}],
        {},
        None,
        "done",
        None,
        lambda r: r["result"] == {"a": [1, "x", None, 2.5, True]},
    ),
    ("kwargs", "add", [], {"a": 1, "b": 2}, None, "done", None, lambda r: r["result"] == 3),
    (
        "raises",
        "fail",
        ["boom"],
        {},
        None,
        "failed",
        "TaskFailure",
        _failed_with_traceback,
    ),
    ("bad arguments", "add", ["a"], {}, None, "failed", "TypeError", None),
    ("not JSON", "not_json", [], {}, None, "failed", "ResultNotJSON", None),
    ("unknown task", "no_such_task", [], {}, None, "failed", "UnknownTask", None),
    (
        "killed",
        "crash",
        [],
        {},
        None,
        "worker_lost",
        "WorkerLost",
        _killed,
    ),
    ("timeout", "sleep", [30], {}, 0.5, "timed_out", "TaskTimeout", None),
]


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "timeout", "state", "error_type", "check"),
    [row[1:] for row in OUTCOMES],
    ids=[row[0] for row in OUTCOMES],
)
def test_outcomes(
    fake: FakeDaemon,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
    state: str,
    error_type: str | None,
    check: Callable[[dict[str, Any]], bool] | None,
) -> None:
    fake.start_worker()
    s = fake.handshake()
    s.task("t1", task, *args, timeout=timeout, **kwargs)
    result = s.result("t1")
    assert result["state"] == state, result
    if error_type is None:
        assert result["error"] is None
    else:
        assert result["error"]["type"] == error_type, result
        assert result["result"] is None
    if check is not None:
        assert check(result), result
    assert s.expect("ready")["credit"] == 1  # the slot is offered again
    # The pool replaced a killed worker: the next task runs.
    s.task("t2", "add", 1, 1)
    assert s.result("t2")["result"] == 2


def test_cancel_kills_the_running_task_and_returns_its_credit(
    fake: FakeDaemon, tmp_path: Path
) -> None:
    worker = fake.start_worker()
    s = fake.handshake()
    s.task("t1", "announce", str(tmp_path / "pid"), 60)
    pid = read_pid(tmp_path / "pid")
    assert pid in worker.track()
    s.send("cancel", task_id="t1")
    assert gone(pid, 10.0), f"the cancelled task's process {pid} still runs"
    assert s.expect("ready")["credit"] == 1
    s.task("t2", "add", 1, 2)
    assert s.result("t2")["result"] == 3
    assert not [m for m in s.seen if m["type"] == "result"], "a cancelled task got a result"
    s.send("cancel", task_id="t-unknown")  # harmless
    s.task("t3", "add", 2, 2)
    assert s.result("t3")["result"] == 4


def test_tasks_beyond_the_credit_wait_for_a_free_slot(fake: FakeDaemon, tmp_path: Path) -> None:
    # The daemon never exceeds the credit; if one did, the worker neither
    # refuses the extra tasks nor runs more than `slots` at once, and offers
    # no credit back for them.
    fake.start_worker(slots=2)
    s = fake.handshake()
    gate = tmp_path / "gate"
    marks = [tmp_path / f"mark{i}" for i in range(4)]
    for i, mark in enumerate(marks):
        s.task(f"t{i}", "gate", str(gate), 60, str(mark))
    wait_until(lambda: sum(m.exists() for m in marks) == 2, WAIT, "two tasks to start")
    s.collect(0.5)
    assert sum(m.exists() for m in marks) == 2, "more tasks ran than slots"
    gate.touch()
    done: set[str] = set()
    while len(done) < 4:
        msg = s.expect("result")
        assert msg["state"] == "done", msg
        done.add(msg["task_id"])
    s.collect(0.5)
    credit = sum(m["credit"] for m in s.seen if m["type"] == "ready")
    assert credit == 2 + 2, "after four tasks on two credits, the credit is two again"


# -- liveness ---------------------------------------------------------------------------


def test_heartbeats_when_idle(fake: FakeDaemon) -> None:
    fake.start_worker()
    s = fake.handshake(heartbeat=0.2, expiry=5.0)
    got = s.collect(1.5)
    beats = [m for m in got if m["type"] == "heartbeat"]
    assert len(beats) >= 3, got
    assert all(m == {"v": 1, "type": "heartbeat", "session": s.id} for m in got), got


def test_heartbeats_go_out_while_a_task_holds_the_gil_in_c(fake: FakeDaemon) -> None:
    fake.start_worker()
    s = fake.handshake(heartbeat=0.2, expiry=5.0)
    s.collect(0.3)
    s.task("t1", "spin_in_c", 2.0)
    times: list[float] = []
    start = time.monotonic()
    while True:
        got = fake.recv(WAIT)
        assert got is not None, f"the worker went silent\n{fake.logs()}"
        times.append(time.monotonic())
        if got[1]["type"] == "result":
            assert got[1]["state"] == "done", got
            break
        assert got[1]["type"] == "heartbeat", got
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    assert len(times) - 1 >= 3, "too few heartbeats while the task held the GIL"
    assert max(gaps) < 5.0, f"silent for {max(gaps):.2f} s: the daemon would declare it lost"


def test_a_silent_daemon_is_left_and_greeted_again(fake: FakeDaemon, tmp_path: Path) -> None:
    worker = fake.start_worker()
    # The expiry must outlast the task's start (a pool process picking it up on
    # a loaded machine), or the session is dropped before the task runs at all.
    expiry = 3.0
    s = fake.handshake(heartbeat=0.2, expiry=expiry, keepalive=False)
    silent_since = time.monotonic()  # the welcome was the daemon's last word
    s.task("t1", "announce", str(tmp_path / "pid"), 60)
    pid = read_pid(tmp_path / "pid")
    assert pid in worker.track()
    ident, hello = fake.expect_hello(timeout=expiry + BACKOFF_MAX + 5.0)
    assert hello["session"] != s.id
    assert ident != s.ident, "the new hello must come on a new socket"
    # Not before expiry (the task message was a sign of life too; a few ms of slack).
    assert time.monotonic() - silent_since >= expiry - 0.1
    assert gone(pid, 5.0), "the task of the lost session still runs"
    again = fake.handshake(first=(ident, hello))
    assert again.seen[0]["credit"] == 2  # nothing held any more
    again.task("t2", "add", 2, 2)
    assert again.result("t2")["result"] == 4


@pytest.mark.parametrize("how", ["never connected", "session lost"])
def test_exit_after_without_a_session(fake: FakeDaemon, sock_dir: Path, how: str) -> None:
    if how == "never connected":
        worker = fake.start_worker("--exit-after", "1", endpoint=f"ipc://{sock_dir}/nobody.sock")
    else:
        worker = fake.start_worker("--exit-after", "1")
        fake.handshake(heartbeat=0.2, expiry=0.6, keepalive=False)
    assert worker.wait() == 0, worker.log_tail()
    assert worker.wait_descendants_gone(ORPHAN_GRACE) == []
    assert any(e.get("event", "").startswith("no session") for e in worker.log_events())


# -- leaving ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "SIGTERM", "SIGINT"])
def test_leaving_kills_tasks_says_bye_and_leaves_nothing(
    fake: FakeDaemon, tmp_path: Path, how: str
) -> None:
    worker = fake.start_worker()
    s = fake.handshake()
    s.task("t1", "announce", str(tmp_path / "pid"), 60)
    pid = read_pid(tmp_path / "pid")
    pool = worker.track()
    assert pid in pool
    if how == "stop":
        s.send("stop")
    else:
        worker.signal(getattr(signal, how))
    bye = s.expect("bye")
    assert bye == {"v": 1, "type": "bye", "session": s.id}
    assert not [m for m in s.seen if m["type"] == "result"], "a result for a killed task"
    assert worker.wait() == 0, worker.log_tail()
    assert gone(pid, ORPHAN_GRACE)
    assert worker.wait_descendants_gone(ORPHAN_GRACE) == []


def test_a_stop_instead_of_a_welcome_ends_the_worker(fake: FakeDaemon) -> None:
    # What a daemon answers a worker that serves none of its tasks.
    worker = fake.start_worker()
    ident, hello = fake.expect_hello()
    fake.send(ident, {"type": "stop", "session": hello["session"]})
    while True:
        got = fake.recv(WAIT)
        assert got is not None, f"no bye\n{fake.logs()}"
        if got[1]["type"] == "bye":
            break
        assert got[1]["type"] == "hello", got  # sent before the stop arrived
    assert got == (ident, {"v": 1, "type": "bye", "session": hello["session"]})
    assert worker.wait() == 0, worker.log_tail()


def test_kill9_of_the_worker_leaves_no_local_processes(fake: FakeDaemon, tmp_path: Path) -> None:
    worker = fake.start_worker()
    s = fake.handshake()
    s.task("t1", "announce", str(tmp_path / "pid"), 60)
    s.task("t2", "spin_in_c", 60)
    pid = read_pid(tmp_path / "pid")
    wait_until(lambda: len(worker.track()) >= 2, WAIT, "the local pool to start")
    assert pid in worker.track()
    worker.kill()
    start = time.monotonic()
    survivors = worker.wait_descendants_gone(ORPHAN_GRACE)
    assert survivors == [], f"alive {time.monotonic() - start:.2f} s after kill -9: {survivors}"


# -- hostile input ----------------------------------------------------------------------


def test_malformed_and_foreign_messages_are_dropped(fake: FakeDaemon) -> None:
    worker = fake.start_worker()
    s = fake.handshake()
    fake.sock.send_multipart([s.ident, b"\xff not json"])
    fake.sock.send_multipart([s.ident, b"{}", b"{}"])
    fake.sock.send_multipart([s.ident, b""])
    fake.send(s.ident, {"v": 2, "type": "stop", "session": s.id})
    fake.send(s.ident, {"type": "task", "session": s.id, "task_id": "bad", "attempt": 0})
    s.send("stop", extra="field")
    fake.send(s.ident, {"type": "stop", "session": "another-session"})
    fake.send(
        s.ident,
        {
            "type": "task",
            "session": "another-session",
            "task_id": "foreign",
            "attempt": 1,
            "task": "add",
            "args": [1, 1],
        },
    )
    s.send("ready", credit=5)  # a worker's message, from the daemon
    s.task("t1", "add", 20, 22)
    assert s.result("t1")["result"] == 42
    s.collect(0.3)
    assert worker.running()
    assert {m["type"] for m in s.seen} <= {"ready", "heartbeat"}, s.seen  # no new hello
    events = [e.get("event") for e in worker.log_events()]
    assert events.count("malformed message from the daemon dropped") >= 5
    assert events.count("message for another session dropped") == 2


# -- CURVE ------------------------------------------------------------------------------


@pytest.fixture
def curve(
    tmp_path: Path,
) -> Iterator[tuple[FakeDaemon, dict[str, tuple[Path, Path]]]]:
    """A fake daemon on tcp://127.0.0.1 with CURVE and a ZAP allow-list of the worker's key."""
    pairs = {name: keys.generate(tmp_path / "keys", name) for name in ("daemon", "w1", "stranger")}
    allow = tmp_path / "allow"
    allow.mkdir(mode=0o700)
    shutil.copy(pairs["w1"][0], allow / "w1.key")
    ctx: zmq.Context[Any] = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allow))
    public, secret = load_keypair(pairs["daemon"][1])
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.curve_server = True
    router.curve_publickey = public
    router.curve_secretkey = secret
    router.bind("tcp://127.0.0.1:0")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    daemon = FakeDaemon(ctx, endpoint, router)
    try:
        yield daemon, pairs
    finally:
        problems = daemon.close()
        auth.stop()
        ctx.destroy(linger=0)
    if problems:
        pytest.fail("\n\n".join(problems))


def test_curve_lets_the_allowed_key_in_and_keeps_a_stranger_out(
    curve: tuple[FakeDaemon, dict[str, tuple[Path, Path]]],
) -> None:
    fake, pairs = curve
    server_key = str(pairs["daemon"][0])
    stranger = fake.start_worker(
        "--secret-key", str(pairs["stranger"][1]), "--server-key", server_key, "--exit-after", "3"
    )
    good = fake.start_worker("--secret-key", str(pairs["w1"][1]), "--server-key", server_key)
    s = fake.handshake()
    assert s.hello["pid"] == good.pid
    s.task("t1", "add", 1, 2)
    assert s.result("t1")["result"] == 3
    assert stranger.wait() == 0  # gave up after --exit-after, never having a session
    seen = s.collect(0.3)
    assert all(m["session"] == s.id for m in seen)
    assert not [m for m in s.seen if m["type"] == "hello"]
    refused = [
        e for e in stranger.log_events() if "refused this worker's key" in e.get("event", "")
    ]
    assert refused, stranger.log_tail()


# -- configuration ----------------------------------------------------------------------


def test_tcp_without_keys_is_refused_with_exit_2() -> None:
    done = subprocess.run(
        [*WORKER, "--connect", "tcp://127.0.0.1:9", "--tasks", TASKS],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "CURVE" in done.stderr
    assert "--secret-key" in done.stderr


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    public, secret = keys.generate(tmp_path, "w")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"connect": "tcp://127.0.0.1:9"}, "CURVE"),
        ({"connect": "inproc://x"}, "expected tcp://"),
        ({"secret_key": secret}, "both"),
        ({"server_key": public}, "both"),
        ({"secret_key": public, "server_key": public}, "no secret key"),
        ({"secret_key": tmp_path / "nope", "server_key": public}, "cannot be read"),
        ({"slots": 0}, "slots"),
        ({"slots": 10_001}, "slots"),
        ({"exit_after": 0}, "exit_after"),
        ({"exit_after": float("inf")}, "exit_after"),
        ({"tasks": "no.such.module"}, "cannot import"),
    ]
    for changes, message in bad:
        kwargs: dict[str, Any] = {"connect": "ipc:///nonexistent/w.sock", "tasks": TASKS, **changes}
        with pytest.raises(RemoteWorkerError, match=message):
            RemoteWorker(worker_settings(**kwargs))
    RemoteWorker(
        worker_settings(
            connect="tcp://127.0.0.1:9", tasks=TASKS, secret_key=secret, server_key=public
        )
    )


def test_the_python_api_serves_until_stop_is_called(fake: FakeDaemon) -> None:
    before = {p.pid for p in descendants()}
    worker = RemoteWorker(worker_settings(connect=fake.endpoint, tasks=TASKS, slots=1))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    try:
        s = fake.handshake()
        assert s.hello["pid"] == os.getpid()
        assert s.seen[0]["credit"] == 1
        s.task("t1", "add", 1, 2)
        assert s.result("t1")["result"] == 3
        worker.stop()  # from another thread than run()'s
        s.expect("bye")
        thread.join(EXIT_WAIT)
        assert not thread.is_alive(), "run() did not return after stop()"
        assert codes == [0]
    finally:
        worker.stop()
        thread.join(EXIT_WAIT)
    stray = [p.pid for p in descendants() if p.pid not in before]
    assert wait_gone(stray, ORPHAN_GRACE) == []
