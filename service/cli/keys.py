"""CURVE key pairs for ``tcp://`` endpoints: ``pipework keys generate DIR NAME``.

Each party (the daemon, every client, every remote worker) has a key pair in
``zmq.auth`` format: ``NAME.key`` holds the public key (mode 0644; copy it to
whoever must accept or reach this party) and ``NAME.key_secret`` the secret
one as well (mode 0600; it never leaves its host). The daemon accepts the
public key files found in its allow-list directory. Everyone reads them with
``pipework.protocol.curve.load_keypair`` / ``load_public_key``.

The files are written in a private temporary directory and linked into
place, so the secret is never readable by others, not even for a moment,
and an existing file is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import zmq.auth

__all__ = ["generate"]

_PUBLIC_MODE = 0o644
_SECRET_MODE = 0o600
_DIR_MODE = 0o700


def generate(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write a new CURVE key pair: ``DIR/NAME.key`` (0644) and ``DIR/NAME.key_secret`` (0600).

    Args:
        directory: where to write them; created with mode 0700 if missing
            (an existing directory keeps its mode).
        name: the file stem: letters, digits and ``_ . -``, not starting with a dot.

    Returns:
        ``(public_path, secret_path)``.

    Raises:
        ValueError: ``name`` is not a plain file name.
        FileExistsError: either file exists already; nothing is written.
        OSError: the directory cannot be created or written.
    """
    if not _plain_name(name):
        raise ValueError(
            f"key name {name!r} must be a plain file name: letters, digits and _ . -, "
            "not starting with a dot"
        )
    folder = Path(directory)
    folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                errno.EEXIST, "refusing to overwrite an existing key file", str(path)
            )
    scratch = Path(tempfile.mkdtemp(prefix=".pipework-keys-", dir=folder))  # mode 0700
    try:
        new_public, new_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(new_secret, _SECRET_MODE)
        os.chmod(new_public, _PUBLIC_MODE)
        # link() fails if the target exists: no check-then-write race with another writer.
        os.link(new_secret, secret)
        try:
            os.link(new_public, public)
        except BaseException:
            with contextlib.suppress(OSError):
                secret.unlink()
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public, secret


def _plain_name(name: str) -> bool:
    return (
        0 < len(name) <= 200
        and not name.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "_.-") for c in name)
    )
