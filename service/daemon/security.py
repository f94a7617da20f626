"""CURVE for the daemon's tcp:// endpoints: its key pair, the allow-list, refusals logged.

```
 peer ──CURVE handshake──▶ ROUTER (curve_server) ──ZAP──▶ AllowList (keys in curve_allow_dir)
   NULL / PLAIN / wrong server key: the handshake fails  ─▶ socket monitor ─▶ "peer refused"
   unknown client key: ZAP says 400                       ─▶ "peer refused"
```

Every message that gets through carries its sender's public key (ZeroMQ's
``User-Id`` property), which ``AllowList.name_of`` turns into the key file's
name, the unit ``client_tasks`` limits are written in. The allow-list is
read from the directory at start and again on ``reload()`` (the daemon calls
it on SIGHUP), so keys are rotated by adding the new public key file,
reloading, moving the peer over, then deleting the old file and reloading.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from pipework.protocol.curve import KeyFileError, load_keypair
from pipework.service.errors import PipeworkError
from pipework.service.logs import get_logger

__all__ = ["CLIENTS", "WORKERS", "AllowList", "CurveServer", "SecurityError", "needs_curve"]

CLIENTS = "clients"
WORKERS = "workers"

_log = get_logger("pipework.auth")

_REFUSALS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error (wrong mechanism, e.g. no CURVE)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused",
}


class SecurityError(PipeworkError):
    """The CURVE settings are missing or unusable; the message says which."""


def needs_curve(endpoint: str) -> bool:
    """Whether ``endpoint`` leaves the host's filesystem permissions behind.

    ``tcp://`` does, and so does ``ipc://@name``: a Linux abstract socket has
    no file, hence no directory whose permissions could keep other users out.
    """
    return endpoint.startswith(("tcp://", "ws://", "wss://", "ipc://@"))


class _Throttle:
    """At most ``burst`` log lines per ``window`` seconds; the rest are counted, then summed up.

    A peer that reconnects in a loop must not turn each refusal into a log
    line (the disk and the journal fill): the first few are logged, then one
    line per window says how many were not.
    """

    def __init__(self, burst: int = 5, window: float = 10.0) -> None:
        self._burst = burst
        self._window = window
        self._lock = threading.Lock()  # the ZAP thread and the loop thread both log
        self._start = -math.inf
        self._logged = 0
        self._suppressed = 0

    def allow(self) -> bool:
        """Whether to log this refusal (call once per refusal)."""
        now = time.monotonic()
        with self._lock:
            if now - self._start >= self._window:
                if self._suppressed:
                    _log.warning(
                        "peer refusals not logged",
                        suppressed=self._suppressed,
                        seconds=round(now - self._start, 1),
                    )
                self._start, self._logged, self._suppressed = now, 0, 0
            if self._logged < self._burst:
                self._logged += 1
                return True
            self._suppressed += 1
            return False


_refusals_log = _Throttle()


class AllowList:
    """The public keys (``NAME.key`` files) allowed in, and their names.

    Args:
        directory: where the allowed public key files are.

    Raises:
        SecurityError: the directory is missing or holds no key.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # the ZAP thread reads, the loop thread reloads
        self._names: dict[bytes, str] = {}
        self.reload()

    def reload(self) -> int:
        """Read the directory again; returns how many keys are allowed now."""
        if not self.directory.is_dir():
            raise SecurityError(f"curve_allow_dir {self.directory} is not a directory")
        names: dict[bytes, str] = {}
        for path in sorted(self.directory.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                _log.warning("unreadable public key file; skipped", path=str(path), error=str(exc))
                continue
            names[public] = path.stem
        if not names:
            raise SecurityError(f"curve_allow_dir {self.directory} holds no NAME.key file")
        with self._lock:
            self._names = names
        return len(names)

    def name_of(self, z85_key: bytes | str | None) -> str | None:
        """The key file name of an allowed public key, or None."""
        if z85_key is None:
            return None
        key = z85_key.encode() if isinstance(z85_key, str) else z85_key
        with self._lock:
            return self._names.get(key)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """ZAP: allow a client key in the list; log the ones refused."""
        allowed = self.name_of(z85_key) is not None
        if not allowed and _refusals_log.allow():
            _log.warning("peer refused: unknown CURVE key", client_key=z85_key.decode())
        return allowed


class CurveServer:
    """The daemon's CURVE identity and ZAP handler, shared by its tcp:// sockets.

    Args:
        context: the daemon's ZeroMQ context.
        secret_key: the daemon's ``zmq.auth`` secret key file.
        allow_dir: the directory of public keys allowed on the client endpoint.
        worker_dir: the directory of public keys allowed to connect as remote
            workers (they are sent task arguments); None: ``allow_dir``.

    Raises:
        SecurityError: a file is missing, not a secret key, or readable by others.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        secret_key: Path,
        allow_dir: Path,
        worker_dir: Path | None = None,
    ) -> None:
        try:
            public, secret = load_keypair(secret_key)
        except KeyFileError as exc:
            raise SecurityError(f"curve_secret_key: {exc}") from exc
        self.public_key = public
        self._secret = secret
        self.allow = AllowList(allow_dir)
        self.workers = self.allow if worker_dir is None else AllowList(worker_dir)
        # ZAP must be running before any CURVE socket binds, or the first
        # handshakes would be decided without it. Each socket names its domain,
        # so a client key cannot register as a worker (and receive task
        # arguments) unless the worker list has it too.
        self._auth = ThreadAuthenticator(context, log=_ZapLog())
        self._auth.start()
        self._auth.configure_curve_callback(domain=CLIENTS, credentials_provider=self.allow)
        self._auth.configure_curve_callback(domain=WORKERS, credentials_provider=self.workers)
        self._monitors: list[zmq.Socket[Any]] = []

    def secure(self, sock: zmq.Socket[Any], domain: str) -> zmq.Socket[Any]:
        """Make ``sock`` a CURVE server for ``domain`` (``CLIENTS`` or ``WORKERS``) before
        it binds; returns a monitor socket to poll for refused handshakes."""
        sock.zap_domain = domain.encode()
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public_key
        sock.curve_server = True
        monitor = sock.get_monitor_socket(sum(_REFUSALS))
        self._monitors.append(monitor)
        return monitor

    @staticmethod
    def log_refusals(monitor: zmq.Socket[Any]) -> int:
        """Log the handshake refusals waiting on ``monitor`` (call when it is readable).

        Returns:
            How many there were; a few a second at most are logged, each
            with its reason, and a summary line counts the others.
        """
        count = 0
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            what = _REFUSALS.get(event["event"])
            if what is not None:
                count += 1
                if not _refusals_log.allow():
                    continue
                endpoint = event["endpoint"]
                _log.warning(
                    "peer refused",
                    reason=what,
                    endpoint=endpoint.decode() if isinstance(endpoint, bytes) else endpoint,
                    errno=event["value"],
                )
        return count

    def close(self) -> None:
        """Stop the ZAP thread and the monitors."""
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        self._auth.stop()


class _ZapLog:
    """pyzmq's authenticator logs printf-style; ours logs events. Keep only its errors."""

    def debug(self, msg: str, *args: Any) -> None:
        pass

    def info(self, msg: str, *args: Any) -> None:
        pass

    def warning(self, msg: str, *args: Any) -> None:
        _log.warning("zap", detail=msg % args if args else msg)

    def error(self, msg: str, *args: Any) -> None:
        _log.error("zap", detail=msg % args if args else msg)
