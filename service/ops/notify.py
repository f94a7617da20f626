"""sd_notify: tell systemd (``Type=notify``) that the daemon is ready, alive, stopping.

```
 daemon loop ── READY=1 / WATCHDOG=1 / STOPPING=1 / STATUS=... ──▶ $NOTIFY_SOCKET
                 (one datagram each, never blocking)                (systemd, or a test)
```

The protocol is a datagram of ``KEY=value`` lines sent to the AF_UNIX socket
named in ``$NOTIFY_SOCKET`` (a path, or an abstract address written with a
leading ``@``); see sd_notify(3). When the variable is unset, as it is outside
systemd, every call here does nothing. ``$WATCHDOG_USEC`` is the unit's
``WatchdogSec=``; it is meant for this process only when ``$WATCHDOG_PID`` is
unset or names this process (sd_watchdog_enabled(3)).

Hand-written on purpose: it is a few dozen lines, and the PyPI clients for it
are either unmaintained (sdnotify: last release 2017; sd-notify: 2020) or bind
libsystemd (systemd-python, cysystemd), which a container or a host without
systemd lacks and which must be compiled against its headers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import final

from pipework.service.logs import get_logger

__all__ = ["Notifier", "notify", "watchdog_interval"]

_log = get_logger("pipework.notify")

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str | None) -> str | None:
    if not value or value[0] not in "/@":
        return None  # unset, or a form we do not speak (vsock: AF_VSOCK)
    return "\0" + value[1:] if value[0] == "@" else value


def _watchdog(environ: Mapping[str, str]) -> float | None:
    """``WATCHDOG_USEC`` in seconds, if it is meant for this process."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # set for another process (we were started by a wrapper)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


@final
class Notifier:
    """The sd_notify channel of one process, read once from the environment.

    Args:
        address: ``$NOTIFY_SOCKET`` as given (``/path`` or ``@abstract``), or
            None: then every method is a no-op.
        watchdog: the watchdog timeout in seconds (``WatchdogSec=``), or None.
    """

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self._address = _address(address)
        self.watchdog_interval = watchdog if self._address is not None else None
        self._next_ping = time.monotonic()
        self._status: str | None = None

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` and the watchdog variables.

        Args:
            environ: where to read them (default: ``os.environ``).
            unset: also remove them, as sd_notify's ``unset_environment`` does,
                so that child processes (workers, whatever tasks run) do not
                talk to systemd in our name.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), _watchdog(env))
        if unset:
            for name in _VARIABLES:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram.

        Returns:
            True if it was sent; False if there is no socket or it failed
            (logged: systemd going away must not stop the daemon).
        """
        if self._address is None or not lines:
            return False
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # MSG_DONTWAIT: a receiver that stopped reading must not wedge
                # the loop that sends the watchdog pings.
                sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            _log.warning("sd_notify failed", error=str(exc), message=lines[0])
            return False
        return True

    def status(self, text: str) -> bool:
        """Send ``STATUS=text`` unless it is the status sent last."""
        if self._address is None or text == self._status:
            return False
        self._status = text
        return self.notify(f"STATUS={text}")

    def ping(self, now: float | None = None) -> float | None:
        """Send WATCHDOG=1 if one is due (every half interval).

        Returns:
            Seconds until the next ping is due, or None without a watchdog:
            the caller's sleep must not be longer.
        """
        interval = self.watchdog_interval
        if interval is None:
            return None
        now = time.monotonic() if now is None else now
        if now >= self._next_ping:
            self.notify("WATCHDOG=1")
            self._next_ping = now + interval / 2
        return self._next_ping - now


def notify(*lines: str) -> bool:
    """Send ``lines`` to ``$NOTIFY_SOCKET`` as one datagram; False when unset or failed."""
    return Notifier.from_environ().notify(*lines)


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds this process must beat, or None.

    None when ``$WATCHDOG_USEC`` is unset or invalid, or ``$WATCHDOG_PID`` names
    another process. Ping (``notify("WATCHDOG=1")``) at half this interval.
    """
    return _watchdog(os.environ)
