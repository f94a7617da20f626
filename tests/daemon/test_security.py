"""CURVE on a tcp:// client endpoint (on loopback): keys allowed, limited, revoked."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from pipework.protocol import Client, ProtocolError, Unavailable
from pipework.service.cli.keys import generate
from tests.support.daemons import DaemonFactory
from tests.support.net import free_port
from tests.support.waiting import wait_until


@pytest.fixture
def curve_daemon(daemon: DaemonFactory, tmp_path: Path):
    store, allow = tmp_path / "keys", tmp_path / "allow"
    allow.mkdir(mode=0o700)
    server_public, server_secret = generate(store, "server")
    keys = {}
    for name in ("alice", "bob"):
        public, secret = generate(store, name)
        shutil.copy(public, allow / public.name)
        keys[name] = secret
    config = tmp_path / "pipework.toml"
    config.write_text('[client_tasks]\nbob = ["add"]\n')
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    d = daemon(
        "--config",
        str(config),
        "--curve-secret-key",
        str(server_secret),
        "--curve-allow-dir",
        str(allow),
        endpoint=endpoint,
        ready=False,
    )

    def client(name: str, timeout: float = 2.0) -> Client:
        return Client(
            endpoint, timeout=timeout, resends=0, secret_key=keys[name], server_key=server_public
        )

    def up() -> bool:
        try:
            with client("alice", 0.5) as c:
                c.stats()
        except Unavailable:
            return False
        return True

    wait_until(up, 30, "the daemon on tcp://127.0.0.1")
    return d, client, allow


def test_allowed_keys_work_and_client_tasks_limit_names(curve_daemon) -> None:
    _, client, _ = curve_daemon
    with client("alice") as alice:
        assert alice.call("echo", ["hi"], wait=20) == "hi"  # alice is not limited
    with client("bob") as bob:
        assert bob.call("add", [2, 3], wait=20) == 5
        with pytest.raises(ProtocolError) as err:
            bob.submit("echo", ["no"])
        assert err.value.code == "forbidden"


def test_a_key_removed_and_reloaded_is_refused_on_its_open_connection(curve_daemon) -> None:
    d, client, allow = curve_daemon
    with client("bob") as bob:
        assert bob.call("add", [1, 1], wait=20) == 2
        (allow / "bob.key").unlink()
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "allow-list reloaded" in d.stderr_tail(50_000), 10, "the reload")
        time.sleep(0.2)
        with pytest.raises(ProtocolError) as err:
            bob.stats()
        assert err.value.code == "forbidden"
    with client("alice") as alice:  # the others are untouched
        assert alice.stats().draining is False


def _hello_answered(endpoint: str, secret: Path, server_public: Path) -> bool:
    import json  # noqa: PLC0415

    import zmq  # noqa: PLC0415

    from pipework.protocol import use_curve  # noqa: PLC0415

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        use_curve(sock, secret, server_public)
        sock.connect(endpoint)
        hello = {
            "v": 1,
            "type": "hello",
            "session": "s",
            "slots": 1,
            "host": "h",
            "pid": 1,
            "tasks": ["add"],
        }
        sock.send(json.dumps(hello).encode())
        return bool(sock.poll(3000))
    finally:
        sock.close()
        ctx.term()


def test_worker_keys_are_a_separate_list_from_client_keys(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    store, clients, workers = tmp_path / "keys", tmp_path / "clients", tmp_path / "workers"
    clients.mkdir(mode=0o700)
    workers.mkdir(mode=0o700)
    server_public, server_secret = generate(store, "server")
    alice_public, alice_secret = generate(store, "alice")
    w1_public, w1_secret = generate(store, "w1")
    shutil.copy(alice_public, clients / alice_public.name)
    shutil.copy(w1_public, workers / w1_public.name)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon(
        "--workers-endpoint",
        endpoint,
        "--curve-secret-key",
        str(server_secret),
        "--curve-allow-dir",
        str(clients),
        "--curve-worker-dir",
        str(workers),
    )
    assert not _hello_answered(endpoint, alice_secret, server_public)  # a client key
    assert _hello_answered(endpoint, w1_secret, server_public)  # a worker key
