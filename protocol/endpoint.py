"""Where the daemon listens by default, as the spec fixes it.

Pure functions: they read the environment and create nothing (the daemon
makes the 0700 directory when it binds).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENDPOINT_ENV", "default_endpoint", "missing_ipc_socket", "runtime_dir"]

ENDPOINT_ENV = "PIPEWORK_ENDPOINT"
"""The environment variable that overrides the endpoint, for daemon and clients alike."""


def runtime_dir() -> Path:
    """The private directory that holds the daemon's ``ipc://`` socket.

    Returns:
        ``$XDG_RUNTIME_DIR/pipework``, or ``/tmp/pipework-$UID`` when
        ``XDG_RUNTIME_DIR`` is unset or empty.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "pipework"
    return Path(f"/tmp/pipework-{os.getuid()}")


def missing_ipc_socket(endpoint: str) -> str | None:
    """Why no daemon can be listening at an ``ipc://`` endpoint, or None if one may be.

    A daemon bound to ``ipc://PATH`` has a socket file at PATH; when there is
    none, nothing can answer, so a client can say so at once instead of
    waiting out its timeout. Other transports return None.

    Returns:
        A sentence for the error message, or None.
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if not path or path.startswith("@"):  # abstract namespace (Linux): no file to look at
        return None
    if not os.path.lexists(path):
        return f"its socket file {path} does not exist"
    return None


def default_endpoint() -> str:
    """The endpoint a daemon binds and a client connects to when given none.

    Returns:
        ``$PIPEWORK_ENDPOINT`` if set and non-empty, else
        ``ipc://<runtime_dir()>/pipework.sock``.
    """
    override = os.environ.get(ENDPOINT_ENV)
    if override:
        return override
    return f"ipc://{runtime_dir() / 'pipework.sock'}"
