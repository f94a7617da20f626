"""The harness for the daemon end-to-end tests: real ``pipework serve`` processes.

The fixtures live in tests/daemon/conftest.py (tests/remote/conftest.py takes them too).
``daemon`` is a factory: ``daemon(*extra_args, journal=..., env=...)`` starts
``python -m pipework serve`` from the repository root with two workers,
``--tasks tests.daemon.tasks`` and an ``ipc://`` endpoint in a private 0700
directory, waits until it answers ``stats`` and returns a :class:`Daemon`
handle. ``module_daemons`` is the same factory with module scope, for test
modules that share one daemon.

The harness talks to the daemon with raw pyzmq sockets and JSON, never with
``protocol.Client``: the client is under test elsewhere and must not be the
thing that decides whether the daemon works.

Teardown is bounded and strict: a daemon still running gets SIGTERM and must
exit 0 within its drain timeout (else it is SIGKILLed by pid and the test
fails); every descendant it had while alive (recorded with psutil) must be
gone 3 s after it is; leftovers are SIGKILLed by pid and fail the test. A
failing test shows the tail of each of its daemons' stderr (JSON logs).

``PIPEWORK_TEST_SERVE`` (a command line, split with shlex) runs the suite
against another build of the daemon instead of ``python -m pipework serve``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support.processes import PIPEWORK, REPO, ProcessTree, clean_env

TASKS_MODULE = "tests.daemon.tasks"
READY_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
DRAIN_TIMEOUT = 5.0
ORPHAN_GRACE = 3.0

SERVE = (
    shlex.split(os.environ["PIPEWORK_TEST_SERVE"])
    if os.environ.get("PIPEWORK_TEST_SERVE")
    else [*PIPEWORK, "serve"]
)

#: Every error code docs/protocol.md defines.
ERROR_CODES = frozenset(
    {
        "bad_frame",
        "too_large",
        "bad_json",
        "unsupported_version",
        "unknown_op",
        "invalid",
        "unknown_task",
        "key_conflict",
        "forbidden",
        "not_found",
        "timeout",
        "draining",
        "queue_full",
        "journal_unavailable",
        "internal",
    }
)
TERMINAL = frozenset({"done", "failed", "cancelled", "timed_out", "quarantined"})
TASK_INFO_FIELDS = frozenset(
    {
        "task_id",
        "task",
        "key",
        "state",
        "attempts",
        "priority",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
        "history",
    }
)

_ids = itertools.count()
# The factories alive now: this test's own and its module's (one process per xdist worker).
OPEN_FACTORIES: list[DaemonFactory] = []
_ZMQ: zmq.Context[Any] = zmq.Context.instance()


class DaemonError(AssertionError):
    """The daemon did not behave as the harness needs (no reply, early exit)."""


def next_id(prefix: str = "t") -> str:
    """A request id unique in this test process."""
    return f"{prefix}{os.getpid()}-{next(_ids)}"


class Conn:
    """One ZeroMQ socket connected to a daemon, speaking JSON frames.

    ``send`` fills in ``v`` and ``id`` when the message has none and returns
    the id; ``recv`` returns the next reply (events are kept aside in
    ``events`` unless ``events=True``). Every receive is bounded.
    """

    def __init__(self, daemon: Daemon, kind: int = zmq.DEALER) -> None:
        self.daemon = daemon
        self.kind = kind
        self.sock = _ZMQ.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(daemon.endpoint)
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: dict[str, Any]) -> str:
        msg = {"v": 1, "id": next_id(), **msg}
        self.sock.send(json.dumps(msg).encode())
        return str(msg["id"])

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv_frames(self, timeout: float = REQUEST_TIMEOUT) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise DaemonError(
                f"no reply within {timeout} s from {self.daemon.endpoint}\n"
                + self.daemon.stderr_tail()
            )
        return self.sock.recv_multipart()

    def recv(self, timeout: float = REQUEST_TIMEOUT, events: bool = False) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            frames = self.recv_frames(max(0.0, end - time.monotonic()))
            assert len(frames) == 1, f"a reply must be one frame, got {frames!r}"
            msg = json.loads(frames[0])
            assert isinstance(msg, dict), msg
            if "event" in msg and not events:
                self.events.append(msg)
                continue
            return msg

    def recv_event(self, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        if self.events:
            return self.events.pop(0)
        msg = self.recv(timeout, events=True)
        assert "event" in msg, f"expected an event, got the reply {msg}"
        return msg

    def request(self, msg: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        rid = self.send(msg)
        reply = self.recv(timeout)
        assert reply.get("id") == rid, f"reply {reply} does not answer request {rid}"
        return reply


class Daemon(ProcessTree):
    """A running ``pipework serve`` started by the test; see the module docstring.

    As a :class:`ProcessTree` it records every worker the daemon ever had (they come
    and go: crash, cancel, SIGHUP), so that teardown checks each one is gone.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: list[str],
        endpoint: str,
        journal_path: Path | None,
        stdout_path: Path,
        stderr_path: Path,
        drain_timeout: float,
    ) -> None:
        super().__init__(proc, interval=0.1)
        self.argv = argv
        self.endpoint = endpoint
        self.journal_path = journal_path
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.drain_timeout = drain_timeout
        self.expected_exit: set[int] | None = None  # set once the test stops or kills it

    # -- processes ----------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        self.track()
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the daemon to exit; its exit code or None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send ``sig`` and wait for the exit; SIGKILL and fail if it does not come.

        Returns:
            The daemon's exit code.
        """
        if timeout is None:
            timeout = self.drain_timeout + 15.0
        self.expected_exit = {0}
        if self.running():
            self.send_signal(sig)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            pytest.fail(
                f"daemon {self.pid} did not exit within {timeout} s of {signal.Signals(sig).name}"
                f"; SIGKILLed\n{self.stderr_tail()}"
            )
        self.stop_watching()
        return code

    def kill9(self) -> None:
        """SIGKILL the daemon (by pid) and reap it; its workers are left to fend for themselves."""
        self.expected_exit = {-signal.SIGKILL}
        self.kill()

    def workers(self) -> list[dict[str, Any]]:
        reply = self.request({"op": "workers"})
        assert reply["ok"], reply
        return list(reply["workers"])

    def worker_pids(self) -> set[int]:
        return {w["pid"] for w in self.workers()}

    # -- requests -----------------------------------------------------------

    def connect(self, kind: int = zmq.DEALER) -> Conn:
        return Conn(self, kind)

    def request(self, msg: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """One request on a fresh DEALER: fills ``v`` and ``id``; returns the reply."""
        with self.connect() as conn:
            return conn.request(msg, timeout)

    def ok(self, msg: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """``request`` that fails the test unless the reply is ok."""
        reply = self.request(msg, timeout)
        assert reply.get("ok") is True, f"{msg} -> {reply}"
        return reply

    def submit(self, task: str, *args: Any, **fields: Any) -> dict[str, Any]:
        return self.ok({"op": "submit", "task": task, "args": list(args), **fields})

    def result(self, task_id: str, wait: float = 30.0) -> dict[str, Any]:
        """The finished task's TaskInfo (waits up to ``wait`` s; fails otherwise)."""
        reply = self.request(
            {"op": "result", "task_id": task_id, "wait": wait}, timeout=wait + REQUEST_TIMEOUT
        )
        assert reply.get("ok") is True, f"result of {task_id}: {reply}"
        return dict(reply["task"])

    def status(self, task_id: str) -> dict[str, Any]:
        return dict(self.ok({"op": "status", "task_id": task_id})["task"])

    def stats(self) -> dict[str, Any]:
        return dict(self.ok({"op": "stats"})["stats"])

    def run(self, task: str, *args: Any, wait: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Submit and wait for the result's TaskInfo."""
        return self.result(self.submit(task, *args, **fields)["task_id"], wait)

    def wait_state(self, task_id: str, states: set[str], timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``status`` until the task is in one of ``states``; return its TaskInfo."""
        end = time.monotonic() + timeout
        while True:
            info = self.status(task_id)
            if info["state"] in states:
                return info
            if time.monotonic() > end:
                pytest.fail(f"task {task_id} not in {states} within {timeout} s: {info}")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the daemon answers ``stats``; fail with its stderr if it never does."""
        end = time.monotonic() + timeout
        sent: set[str] = set()
        with self.connect() as conn:
            while True:
                if not self.running():
                    self.expected_exit = {self.proc.returncode}  # reported here, not again
                    raise DaemonError(
                        f"daemon exited with {self.proc.returncode} before it was ready: "
                        f"{shlex.join(self.argv)}\n{self.stderr_tail()}"
                    )
                if time.monotonic() > end:
                    raise DaemonError(
                        f"daemon did not answer stats within {timeout} s: "
                        f"{shlex.join(self.argv)}\n{self.stderr_tail()}"
                    )
                # Requests sent before the daemon bound are delivered once it
                # does: any of them answering ok means it is ready.
                sent.add(conn.send({"op": "stats"}))
                if conn.sock.poll(250):
                    reply = json.loads(conn.sock.recv())
                    if reply.get("id") in sent and reply.get("ok"):
                        self.track()
                        return

    # -- logs ---------------------------------------------------------------

    def stderr_tail(self, chars: int = 6000) -> str:
        return f"--- daemon {self.pid} stderr (tail) ---\n" + file_tail(self.stderr_path, chars)


def file_tail(path: Path, chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return text[-chars:] if text else "(empty)"


class DaemonFactory:
    """Starts daemons in one private directory; ``close`` tears them all down."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # ipc:// paths are limited to ~107 bytes: keep sockets in a short private dir.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="pw-e2e-"))
        self.started: list[Daemon] = []
        self._n = itertools.count()
        OPEN_FACTORIES.append(self)

    def endpoint(self, name: str = "d") -> str:
        return f"ipc://{self.sock_dir}/{name}.sock"

    def __call__(
        self,
        *args: str,
        journal: bool | Path = True,
        env: dict[str, str] | None = None,
        workers: int | None = 2,
        tasks: str | None = TASKS_MODULE,
        endpoint: str | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        ready: bool = True,
        prefix: list[str] | None = None,
    ) -> Daemon:
        """Start a daemon; see the module docstring.

        Args:
            args: more ``serve`` arguments.
            journal: True for a fresh journal in the test's directory, a path
                to use (or reuse) that journal, False for ``--no-journal``.
            env: more environment variables for the daemon.
            workers, tasks: ``--workers`` / ``--tasks`` (None leaves them out).
            endpoint: the endpoint (default: a new ``ipc://`` socket).
            drain_timeout: ``--drain-timeout``; also bounds ``stop``.
            ready: wait until it answers ``stats``.
            prefix: a command the daemon runs under (``ip netns exec NS``; it
                must exec the daemon in place, so the pid stays the daemon's).
        """
        n = next(self._n)
        endpoint = endpoint or self.endpoint(f"d{n}")
        argv = [
            *(prefix or []),
            *SERVE,
            "--endpoint",
            endpoint,
            "--drain-timeout",
            str(drain_timeout),
        ]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if tasks is not None:
            argv += ["--tasks", tasks]
        journal_path: Path | None = None
        if journal is True:
            journal_path = self.base / f"journal-{n}.sqlite"
        elif journal is not False:
            journal_path = Path(journal)
        argv += ["--journal", str(journal_path)] if journal_path else ["--no-journal"]
        argv += list(args)
        stdout_path = self.base / f"daemon-{n}.out"
        stderr_path = self.base / f"daemon-{n}.err"
        with stdout_path.open("ab") as out, stderr_path.open("ab") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=clean_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        d = Daemon(proc, argv, endpoint, journal_path, stdout_path, stderr_path, drain_timeout)
        self.started.append(d)
        if ready:
            d.wait_ready()
        return d

    @classmethod
    @contextlib.contextmanager
    def checked(cls, base: Path) -> Iterator[DaemonFactory]:
        """A factory in ``base`` that, on exit, tears its daemons down and fails on any problem."""
        factory = cls(base)
        try:
            yield factory
        finally:
            problems = factory.close()
        if problems:
            pytest.fail("\n\n".join(problems))

    def close(self) -> list[str]:
        """Stop every daemon still running, check for leftovers; return the problems."""
        problems: list[str] = []
        for d in self.started:
            if d.running():
                code = None
                with contextlib.suppress(ProcessLookupError):
                    d.send_signal(signal.SIGTERM)
                    code = d.wait(d.drain_timeout + 15.0)
                if code is None:
                    d.kill()
                    problems.append(
                        f"daemon {d.pid} ignored SIGTERM at teardown; SIGKILLed\n{d.stderr_tail()}"
                    )
                elif code != 0:
                    problems.append(
                        f"daemon {d.pid} exited {code} on SIGTERM at teardown\n{d.stderr_tail()}"
                    )
            elif d.expected_exit is None:
                problems.append(
                    f"daemon {d.pid} exited on its own with {d.proc.returncode} during the test\n"
                    + d.stderr_tail()
                )
            elif d.proc.returncode not in d.expected_exit:
                problems.append(
                    f"daemon {d.pid} exited with {d.proc.returncode}, not "
                    f"{sorted(d.expected_exit)}\n{d.stderr_tail()}"
                )
            d.stop_watching()
            survivors = d.wait_descendants_gone(ORPHAN_GRACE)
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if survivors:
                problems.append(
                    f"daemon {d.pid}'s processes {survivors} outlived it by {ORPHAN_GRACE} s"
                )
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        OPEN_FACTORIES.remove(self)
        return problems
