"""``pipework keys generate``: CURVE key pairs with private permissions, never overwritten."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.auth

from pipework.protocol import curve
from pipework.service.cli import keys
from tests.support.processes import run_pipework


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_a_pair_with_private_permissions(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "keys"
    public, secret = keys.generate(folder, "worker-1")
    assert (public, secret) == (folder / "worker-1.key", folder / "worker-1.key_secret")
    assert mode(folder) == 0o700
    assert mode(public) == 0o644
    assert mode(secret) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["worker-1.key", "worker-1.key_secret"]
    pub, sec = zmq.auth.load_certificate(secret)
    assert sec is not None
    assert zmq.auth.load_certificate(public) == (pub, None)
    assert zmq.curve_public(sec) == pub
    assert curve.load_keypair(secret) == (pub, sec)
    assert curve.load_public_key(public) == pub


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    keys.generate(tmp_path, "k")
    assert mode(tmp_path) == 0o755


@pytest.mark.parametrize("existing", ["k.key", "k.key_secret"])
def test_it_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious")
    with pytest.raises(FileExistsError) as info:
        keys.generate(tmp_path, "k")
    assert info.value.filename == str(tmp_path / existing)
    assert (tmp_path / existing).read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]  # nothing else written


def test_two_pairs_differ(tmp_path: Path) -> None:
    a, _ = keys.generate(tmp_path, "a")
    b, _ = keys.generate(tmp_path, "b")
    assert curve.load_public_key(a) != curve.load_public_key(b)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up", "sp ace", "é", "x" * 201])
def test_names_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        keys.generate(tmp_path / "k", name)
    assert not (tmp_path / "k").exists()


def test_load_keypair_refuses_what_it_should(tmp_path: Path) -> None:
    public, secret = keys.generate(tmp_path, "k")
    with pytest.raises(curve.KeyFileError, match="no secret key"):
        curve.load_keypair(public)
    secret.chmod(0o640)
    with pytest.raises(curve.KeyFileError, match="chmod 600"):
        curve.load_keypair(secret)
    with pytest.raises(curve.KeyFileError, match="cannot be read"):
        curve.load_keypair(tmp_path / "missing.key_secret")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    with pytest.raises(curve.KeyFileError, match=r"not a zmq\.auth key file"):
        curve.load_public_key(junk)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_pipework("keys", *args, timeout=30)


def test_the_command(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    done = run_cli("generate", str(folder), "daemon")
    assert done.returncode == 0, done.stderr
    assert str(folder / "daemon.key") in done.stdout
    assert str(folder / "daemon.key_secret") in done.stdout
    assert mode(folder / "daemon.key_secret") == 0o600
    before = (folder / "daemon.key_secret").read_bytes()

    again = run_cli("generate", str(folder), "daemon")
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (folder / "daemon.key_secret").read_bytes() == before

    bad = run_cli("generate", str(folder), "../x")
    assert bad.returncode == 2
    assert "plain file name" in bad.stderr
    assert sorted(os.listdir(folder)) == ["daemon.key", "daemon.key_secret"]
    assert run_cli("generate", str(folder)).returncode == 2  # NAME missing


def test_client_and_daemon_refuse_a_bad_key_file_in_the_same_words(tmp_path: Path) -> None:
    """One loader: a shared secret gets one message from a client and from the daemon."""
    from pipework.protocol import use_curve  # noqa: PLC0415
    from pipework.service.daemon.security import CurveServer, SecurityError  # noqa: PLC0415

    public, secret = keys.generate(tmp_path / "k", "me")
    secret.chmod(0o644)
    ctx = zmq.Context()
    try:
        with ctx.socket(zmq.DEALER) as sock, pytest.raises(curve.KeyFileError) as client:
            use_curve(sock, secret, public)
        with pytest.raises(SecurityError) as daemon:
            CurveServer(ctx, secret, tmp_path / "k")
    finally:
        ctx.term()
    assert str(client.value) in str(daemon.value)
    assert "chmod 600" in str(client.value)
