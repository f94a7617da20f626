"""Client-side CURVE: both keys or none, readable key files, a private secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from pipework.protocol import use_curve
from pipework.service.cli.keys import generate


@pytest.fixture
def sock():
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    yield s
    s.close(linger=0)
    ctx.term()


def test_no_keys_means_no_curve(sock) -> None:
    assert use_curve(sock, None, None) is False
    assert sock.mechanism == zmq.NULL


def test_a_key_pair_and_the_server_key_make_a_curve_client(sock, tmp_path: Path) -> None:
    _, secret = generate(tmp_path, "client")
    server_public, _ = generate(tmp_path, "server")
    assert use_curve(sock, secret, server_public) is True
    assert sock.mechanism == zmq.CURVE


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("only-secret", "needs both"),
        ("missing", "cannot be read"),
        ("public-as-secret", "holds no secret key"),
        ("shared-secret", "readable by others"),
    ],
)
def test_unusable_keys_are_refused(sock, tmp_path: Path, which: str, message: str) -> None:
    public, secret = generate(tmp_path, "client")
    server_public, _ = generate(tmp_path, "server")
    args: tuple[Path | None, Path | None] = (secret, server_public)
    if which == "only-secret":
        args = (secret, None)
    elif which == "missing":
        args = (tmp_path / "nope.key_secret", server_public)
    elif which == "public-as-secret":
        public.chmod(0o600)
        args = (public, server_public)
    else:
        secret.chmod(0o640)
    with pytest.raises(ValueError, match=message):
        use_curve(sock, *args)
