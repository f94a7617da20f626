"""CURVE on the client side: how a client or remote worker proves who it is.

A daemon serving ``tcp://`` accepts only CURVE peers whose public key is in
its allow-list (docs/protocol.md, "Security"). A peer needs its own key pair
(the ``NAME.key_secret`` file ``pipework keys generate`` writes) and the
daemon's public key (the daemon's ``NAME.key``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

__all__ = ["use_curve"]


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
        ValueError: only one of the two is given, a file is missing or not a key,
            or the secret key file is readable by group or others.
    """
    if secret_key is None and server_key is None:
        return False
    if secret_key is None or server_key is None:
        raise ValueError("CURVE needs both secret_key (yours) and server_key (the daemon's)")
    secret_path = Path(secret_key)
    try:
        if secret_path.stat().st_mode & 0o077:
            # As ssh does: a secret others can read is no longer a secret.
            raise ValueError(f"{secret_path} is readable by others; chmod 600 it")
        public, secret = zmq.auth.load_certificate(secret_path)
        server_public, _ = zmq.auth.load_certificate(Path(server_key))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load CURVE keys: {exc}") from exc
    if secret is None:
        raise ValueError(f"{secret_key} holds no secret key (use the NAME.key_secret file)")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
    return True
