"""``pipework demo``: a daemon on its embedded defaults, and a client that shows what it does.

```
(a) results        call("add"), 20 x fib(20) in flight at once, the result of each
(b) a failure      a task that raises: type, message and traceback reach the client
(c) a crash        a task that SIGKILLs its worker: retried, then quarantined with history
(d) a cancel       a running 30 s task is cancelled: its worker is killed and replaced
(e) a resend       the same idempotency key twice: one task, the second reply says duplicate
```

The demo starts its own ``pipework serve`` (embedded defaults otherwise) in a
private runtime directory of its own, with its own socket and journal, and
stops it with SIGTERM at the end (it drains and exits 0); the directory goes
with it. It never touches the user's default endpoint or journal: its tasks
do not show up in their ``stats``, and a daemon already running there is left
alone. Every scene checks its own outcome; ``run`` returns 1 if any check
failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from pipework.protocol.client import Client
from pipework.protocol.errors import ProtocolError, TaskFailed, Unavailable

__all__ = ["run"]

_START_WAIT = 20.0
_WAIT = 30.0


class _Checks:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failed += 1
        self.say(f"    {'ok' if ok else 'UNEXPECTED'}: {what}")


def _answers(endpoint: str) -> bool:
    try:
        with Client(endpoint, timeout=0.5, resends=0) as client:
            client.stats()
    except (Unavailable, ProtocolError):
        return False
    return True


@contextmanager
def _daemon(home: Path, checks: _Checks) -> Iterator[str]:
    """A daemon of the demo's own in ``home`` (a private directory); yields its endpoint."""
    endpoint = f"ipc://{home / 'pipework.sock'}"
    journal = home / "journal.sqlite3"
    checks.say(f"starting `pipework serve` in a private directory: {endpoint}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPEWORK_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipework",
            "serve",
            "--endpoint",
            endpoint,
            "--journal",
            str(journal),
            "--log-level",
            "error",
        ],
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + _START_WAIT
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start (exit code {proc.poll()})")
        yield endpoint
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            checks.say(f"stopped the daemon with SIGTERM: it drained and exited {code}")
            checks.check(code == 0, "the daemon exits 0 after a drain")


def _scenes(client: Client, checks: _Checks) -> None:
    say, check = checks.say, checks.check

    say("(a) results")
    check(client.call("add", [2, 3], wait=_WAIT) == 5, 'call("add", [2, 3]) == 5')
    start = time.monotonic()
    ids = [client.submit("fib", [20]).task_id for _ in range(20)]
    values = [client.result(i, wait=_WAIT).result for i in ids]
    took = time.monotonic() - start
    check(values == [6765] * 20, f"20 x fib(20) == 6765, all back in {took:.2f} s")

    say("(b) a failure")
    try:
        client.call("fail", ["disk full"], wait=_WAIT)
    except TaskFailed as exc:
        error = exc.task.error
        check(exc.task.state == "failed", f"state {exc.task.state}")
        check(
            error is not None and error.type == "RuntimeError" and error.message == "disk full",
            f"error {error.type if error else None}: {error.message if error else None}",
        )
        check(error is not None and "Traceback" in error.traceback, "remote traceback included")
    else:
        check(False, "fail() should raise TaskFailed")

    say("(c) a crash: the task SIGKILLs its own worker")
    pids_before = {w.pid for w in client.workers()}
    crash = client.submit("crash", retries=1)
    info = client.result(crash.task_id, wait=_WAIT)
    check(info.state == "quarantined", f"state {info.state} after {info.attempts} attempts")
    for entry in info.history:
        say(f"    attempt {entry.attempt}: worker {entry.worker_pid} lost ({entry.signal})")
    check(len(info.history) == 2, "one history entry per attempt (1 + retries=1)")
    pids_after = {w.pid for w in client.workers()}
    check(len(pids_after - pids_before) >= 1, f"workers replaced: now {sorted(pids_after)}")

    say("(d) a cancel")
    slow = client.submit("sleep", [30])
    deadline = time.monotonic() + _WAIT
    running_on: list[int] = []
    while not running_on and time.monotonic() < deadline:
        running_on = [w.pid for w in client.workers() if w.task_id == slow.task_id]
        time.sleep(0.02)
    reply = client.cancel(slow.task_id)
    check(reply.cancelled and reply.task.state == "cancelled", "a running task is cancelled")
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline and set(running_on) & {w.pid for w in client.workers()}:
        time.sleep(0.05)
    check(
        bool(running_on) and not set(running_on) & {w.pid for w in client.workers()},
        f"its worker {running_on} was killed and replaced",
    )

    say("(e) a resend with the same idempotency key")
    key = f"demo-{uuid.uuid4().hex[:8]}"
    first = client.submit("add", [1, 1], key=key)
    second = client.submit("add", [1, 1], key=key)
    check(second.task_id == first.task_id and second.duplicate, "one task; duplicate=true")

    stats = client.stats()
    say(
        f"stats: {stats.workers} workers, {stats.accepted} accepted, "
        f"{stats.finished} finished, journal={'on' if stats.journal else 'off'}"
    )


def run(out: TextIO | None = None) -> int:
    """Run the demo, printing to ``out`` (default stdout); 0 if every check held."""
    checks = _Checks(sys.stdout if out is None else out)
    # mkdtemp makes it 0700, as the daemon requires of an ipc:// directory. Short
    # prefix: an ipc:// path is limited to about 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="pw-demo-"))
    try:
        with _daemon(home, checks) as endpoint, Client(endpoint, timeout=10.0) as client:
            _scenes(client, checks)
    except (RuntimeError, ProtocolError) as exc:
        checks.say(f"UNEXPECTED: {exc}")
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if checks.failed:
        checks.say(f"demo done: {checks.failed} check(s) failed")
        return 1
    checks.say("demo done: every check held")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run())
