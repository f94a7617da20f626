"""Where the daemon listens by default, as the spec fixes it.

``runtime_dir`` and ``default_endpoint`` read the environment and create
nothing (the daemon makes the 0700 directory when it binds).
``check_client_endpoint`` is what a client runs before it connects: the
socket's directory is what keeps other local users from serving a fake daemon
there, so it must be this user's and private.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "ENDPOINT_ENV",
    "check_client_endpoint",
    "default_endpoint",
    "missing_ipc_socket",
    "runtime_dir",
]

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


def check_client_endpoint(endpoint: str, *, curve: bool) -> None:
    """Refuse to connect where another local user could be the one listening.

    An ``ipc://PATH`` endpoint is safe only in a directory that this user
    owns and nobody else may enter (mode 0700): anyone who can create the
    socket there can pose as the daemon, read the arguments sent and forge
    the results. The daemon applies the same rule when it binds. A missing
    directory whose parent exists is created 0700 here, so that nobody else
    can create it first. An abstract ``ipc://@name`` socket has no
    directory: it is refused unless CURVE authenticates the daemon
    (``curve``: a server key was given).

    Args:
        endpoint: the endpoint about to be connected to.
        curve: whether the connection authenticates the daemon's key.

    Raises:
        ValueError: the endpoint's directory is another user's, or open to
            others, or the endpoint is abstract without CURVE.
    """
    if not endpoint.startswith("ipc://"):
        return
    where = endpoint[len("ipc://") :]
    if where.startswith("@"):
        if not curve:
            raise ValueError(
                f"refusing {endpoint}: an abstract socket has no file permissions, so any "
                "local user could be serving it; use an ipc:// path in a private directory, "
                "or CURVE (a server key) to authenticate the daemon"
            )
        return
    directory = Path(where).parent
    try:
        info = directory.stat()
    except FileNotFoundError:
        if not directory.parent.is_dir():
            return  # nothing serves there, and nobody else can make it appear below us
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # someone made it meanwhile: checked below
        except OSError as exc:
            raise ValueError(f"cannot create the ipc socket directory {directory}: {exc}") from None
        info = directory.stat()
    uid = os.getuid()
    if info.st_uid != uid or info.st_mode & 0o077:
        raise ValueError(
            f"refusing {endpoint}: its directory {directory} must belong to this user "
            f"(uid {uid}) with mode 0700, but it belongs to uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}; another user could be serving a fake daemon "
            "there. Remove it, or point PIPEWORK_ENDPOINT (or --endpoint) elsewhere"
        )
