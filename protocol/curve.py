"""CURVE on the client side: how a client or remote worker proves who it is.

A daemon serving ``tcp://`` accepts only CURVE peers whose public key is in
its allow-list (docs/protocol.md, "Security"). A peer needs its own key pair
(the ``NAME.key_secret`` file ``pipework keys generate`` writes) and the
daemon's public key (the daemon's ``NAME.key``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

__all__ = ["KeyFileError", "load_keypair", "load_public_key", "use_curve"]


class KeyFileError(ValueError):
    """A CURVE key file cannot be used: missing, not a key file, or readable by others.

    The daemon, ``pipework worker`` and the clients all read keys here, so a bad
    key file gets the same message wherever it is given.

    Attributes:
        path: the file.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(path, reason)

    def __str__(self) -> str:
        return f"key file {self.path}: {self.reason}"


def load_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """Read ``(public, secret)`` from a ``NAME.key_secret`` file only its owner can read.

    Raises:
        KeyFileError: the file is missing, not a secret key file, or readable by
            group or others (``chmod 600`` it).
    """
    file = Path(path)
    public, secret = _load(file)
    if secret is None:
        raise KeyFileError(
            file,
            "holds no secret key; pass the NAME.key_secret file written by "
            "`pipework keys generate`",
        )
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o077:
        # As ssh does: a secret others can read is no longer a secret.
        raise KeyFileError(file, f"is readable by others (mode {mode:04o}); run: chmod 600 {file}")
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Read the public key from a ``NAME.key`` (or ``NAME.key_secret``) file.

    Raises:
        KeyFileError: the file is missing or holds no public key.
    """
    public, _ = _load(Path(path))
    return public


def _load(file: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(file)
    except OSError as exc:
        raise KeyFileError(file, f"cannot be read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # zmq.auth: no public key in the file
        raise KeyFileError(file, f"is not a zmq.auth key file ({exc})") from exc
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(file, "does not hold Z85 CURVE keys (40 characters each)")
    return public, secret


def use_curve(
    sock: zmq.Socket[Any],
    secret_key: str | os.PathLike[str] | None,
    server_key: str | os.PathLike[str] | None,
) -> bool:
    """Make ``sock`` a CURVE client before it connects; False when no keys are given.

    Args:
        sock: an unconnected socket.
        secret_key: this peer's ``NAME.key_secret`` file.
        server_key: the daemon's public ``NAME.key`` file.

    Raises:
        ValueError: only one of the two is given.
        KeyFileError: a file is missing or not a key, or the secret key file is
            readable by group or others (a ``ValueError`` too).
    """
    if secret_key is None and server_key is None:
        return False
    if secret_key is None or server_key is None:
        raise ValueError("CURVE needs both secret_key (yours) and server_key (the daemon's)")
    public, secret = load_keypair(secret_key)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public_key(server_key)
    return True
