"""The daemon's live status page: the snapshot the loop publishes, and the server that shows it.

```
 daemon loop thread ── finished(...) per terminal task (failures, throughput)
        │           └─ publish(...) a few times a second: a new dict, swapped in whole
        ▼
 StatusBoard.snapshot ◀── read by ── StatusServer (ThreadingHTTPServer, daemon thread)
                                       GET /             the page (service.ops.status_page)
                                       GET /status.json  the snapshot as JSON
```

The HTTP thread never touches the journal, the sockets or the daemon's
indexes: it reads one attribute, a dict the loop built and never changes
again (a reference swap is atomic in CPython), and encodes it. So a slow or
hostile browser cannot stall the daemon, and the page costs the loop one
small dict a few times a second, whatever the request rate.

The recent failures come from the journal, as ``pipework status`` takes
them: the daemon seeds the board with the journal's newest failures when it
starts (``seed``), then adds each one as it happens, so the page and the CLI
list the same tasks, across restarts too (until ``result_ttl`` prunes them).

The page is read-only: GET and HEAD only (anything else: 405), two paths
(anything else: 404). It shows task names, error messages and tracebacks,
which can carry whatever a task's arguments held: ``status_host`` must be a
loopback address unless ``status_public`` says otherwise (``service.daemon.config``),
and on loopback a request must name a loopback host, so that a web page the
operator visits cannot read it through DNS rebinding.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, final
from urllib.parse import urlsplit

from pipework.protocol.messages import FAILURE_STATES, TERMINAL_STATES, TaskState
from pipework.service.logs import get_logger
from pipework.service.ops.status_page import CSP, PAGE

__all__ = [
    "BUCKETS",
    "BUCKET_SECONDS",
    "FAILURE_STATES",
    "RECENT_FAILURES",
    "StatusBoard",
    "StatusServer",
    "is_loopback",
]

_log = get_logger("pipework.status")

RECENT_FAILURES: Final = 20
"""Failures the page lists, newest first."""
BUCKET_SECONDS: Final = 5
"""Width of one throughput bucket."""
BUCKETS: Final = 60
"""Throughput buckets shown: five minutes, the last one still filling."""
_MESSAGE_CHARS: Final = 2_000
_TRACEBACK_CHARS: Final = 8_000  # its end: the exception line is last
_TERMINAL_ORDER: Final = tuple(s.value for s in TaskState if s in TERMINAL_STATES)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine's loopback."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _clip(text: object, chars: int, *, tail: bool = False) -> str:
    s = text if isinstance(text, str) else str(text)
    if len(s) <= chars:
        return s
    return "…" + s[-chars:] if tail else s[:chars] + "…"


@final
class StatusBoard:
    """What the status page shows, kept by the daemon's loop thread.

    Args:
        version: the daemon's version string.
        journal: whether the daemon journals its tasks.
        every: the least seconds between two snapshots (``due``).
    """

    def __init__(self, version: str, *, journal: bool, every: float = 0.25) -> None:
        self._version = version
        self._journal = journal
        self._every = every
        self._started = time.monotonic()
        self._next = 0.0
        self._states = dict.fromkeys(_TERMINAL_ORDER, 0)
        self._failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)
        # Completed buckets, oldest first, and the count of the one filling now.
        self._buckets: deque[int] = deque([0] * BUCKETS, maxlen=BUCKETS)
        self._bucket = int(self._started // BUCKET_SECONDS)
        self._filling = 0
        self._snapshot: Mapping[str, Any] = self._build(0, 0, 0, 0, False, [])

    @property
    def snapshot(self) -> Mapping[str, Any]:
        """The latest snapshot: a dict nobody changes after it is published (any thread)."""
        return self._snapshot

    def finished(
        self,
        task_id: str,
        task: str,
        state: str,
        *,
        attempts: int,
        finished_at: float,
        error_json: str | None,
    ) -> None:
        """A task reached the terminal ``state``; ``error_json`` is its journalled error."""
        self._roll(time.monotonic())
        self._filling += 1
        self._states[state] = self._states.get(state, 0) + 1
        if state in FAILURE_STATES:
            self._remember_failure(task_id, task, state, attempts, finished_at, error_json)

    def _remember_failure(
        self,
        task_id: str,
        task: str,
        state: str,
        attempts: int,
        finished_at: float,
        error_json: str | None,
    ) -> None:
        error: dict[str, str] = {"type": "Error", "message": "", "traceback": ""}
        if error_json is not None:
            with contextlib.suppress(ValueError):
                parsed = json.loads(error_json)
                if isinstance(parsed, dict):
                    error = {
                        "type": _clip(parsed.get("type", "Error"), 200),
                        "message": _clip(parsed.get("message", ""), _MESSAGE_CHARS),
                        "traceback": _clip(
                            parsed.get("traceback", ""), _TRACEBACK_CHARS, tail=True
                        ),
                    }
        self._failures.appendleft(
            {
                "task_id": task_id,
                "task": task,
                "state": state,
                "attempts": attempts,
                "finished_at": finished_at,
                "error": error,
            }
        )

    def seed(self, failures: Sequence[Mapping[str, Any]]) -> None:
        """Start the recent failures from the journal's: dicts of ``finished``'s arguments.

        Args:
            failures: ``task_id``, ``task``, ``state``, ``attempts``, ``finished_at``
                and ``error_json`` of each, in any order; the newest are kept.
        """
        newest = sorted(failures, key=lambda f: f["finished_at"] or 0.0)[-RECENT_FAILURES:]
        for f in newest:
            self._remember_failure(
                f["task_id"],
                f["task"],
                f["state"],
                f["attempts"],
                f["finished_at"],
                f["error_json"],
            )

    def due(self, now: float) -> bool:
        """Whether a snapshot is due at monotonic time ``now``."""
        return now >= self._next

    def publish(
        self,
        *,
        queued: int,
        running: int,
        accepted: int,
        finished: int,
        draining: bool,
        workers: Sequence[Mapping[str, Any]],
        journal_error: str | None = None,
    ) -> None:
        """Build a new snapshot from the loop's numbers and swap it in."""
        now = time.monotonic()
        self._next = now + self._every
        self._roll(now)
        self._snapshot = self._build(
            queued, running, accepted, finished, draining, workers, journal_error
        )

    def _roll(self, now: float) -> None:
        bucket = int(now // BUCKET_SECONDS)
        if bucket == self._bucket:
            return
        self._buckets.append(self._filling)
        self._buckets.extend([0] * min(bucket - self._bucket - 1, BUCKETS))
        self._bucket = bucket
        self._filling = 0

    def _build(
        self,
        queued: int,
        running: int,
        accepted: int,
        finished: int,
        draining: bool,
        workers: Sequence[Mapping[str, Any]],
        journal_error: str | None = None,
    ) -> dict[str, Any]:
        return {
            "journal_error": journal_error,
            "version": self._version,
            "pid": os.getpid(),
            "generated_at": time.time(),
            "uptime": round(time.monotonic() - self._started, 3),
            "draining": draining,
            "journal": self._journal,
            "queued": queued,
            "running": running,
            "accepted": accepted,
            "finished": finished,
            "states": dict(self._states),
            "workers": [dict(w) for w in workers],
            "throughput": {
                "bucket_seconds": BUCKET_SECONDS,
                "finished": [*list(self._buckets)[1:], self._filling],
            },
            "failures": list(self._failures),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    board: StatusBoard
    loopback_only: bool


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of ``/`` and ``/status.json``; 404 elsewhere, 405 for other methods."""

    server: _Server
    server_version = "pipework-status"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls every second
    timeout = 30  # an idle keep-alive connection is closed after this many seconds

    def parse_request(self) -> bool:
        # Runs before do_<METHOD> is looked up: the one place to refuse every
        # other method with 405, rather than the stdlib's 501 for unknown ones.
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self._refuse(405, "only GET and HEAD", allow="GET, HEAD")
            return False
        if self.server.loopback_only and not self._loopback_host():
            self._refuse(403, "this page answers only to a loopback host name")
            return False
        return True

    def _loopback_host(self) -> bool:
        host = self.headers.get("Host")
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser, so not a rebinding
        name = urlsplit("//" + host).hostname
        return name is not None and is_loopback(name)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, *, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/":
            self._send(200, PAGE, "text/html; charset=utf-8", body=body, csp=CSP)
        elif path == "/status.json":
            data = json.dumps(self.server.board.snapshot, separators=(",", ":")).encode()
            self._send(200, data, "application/json", body=body)
        else:
            self._refuse(404, "not found: the page is at / and its data at /status.json")

    def _send(
        self,
        code: int,
        data: bytes,
        content_type: str,
        *,
        body: bool = True,
        csp: str = "default-src 'none'; frame-ancestors 'none'",
        allow: str | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if allow is not None:
            self.send_header("Allow", allow)
        if code >= 400:
            # A refused request's body (a POST's) is never read: end the connection.
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _refuse(self, code: int, text: str, *, allow: str | None = None) -> None:
        self._send(
            code,
            f"{code} {text}\n".encode(),
            "text/plain; charset=utf-8",
            body=self.command != "HEAD",
            allow=allow,
        )

    def log_message(self, format: str, *args: Any) -> None:
        # One line per poll would drown the daemon's log; requests are not events.
        return


@final
class StatusServer:
    """The status page's HTTP server, on a daemon thread of its own.

    Args:
        board: the snapshot to serve.
        host: the address to bind (the daemon's default, 127.0.0.1).
        port: the TCP port; 0 picks a free one (see ``port``).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, board: StatusBoard, host: str, port: int) -> None:
        host = host.strip("[]")
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        self._server = server_class((host, port), _Handler)
        self._server.board = board
        self._server.loopback_only = is_loopback(host)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="pipework-status",
            daemon=True,
        )
        self._thread.start()
        _log.info("status page serving", url=self.url)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The page's address."""
        host = str(self._server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def close(self) -> None:
        """Stop serving (waits up to 0.5 s) and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
