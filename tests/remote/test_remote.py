"""Remote workers across real network namespaces, over tcp:// with CURVE.

The daemon runs in one namespace, remote workers (``pipework worker``) in
another; traffic crosses a veth pair (tests/daemon/netns.py). The test talks to
the daemon over its ipc:// socket, which is a file and so reachable from any
namespace. Faults are real: remote process trees SIGKILLed by pid, the link
brought down for longer than the heartbeat expiry, peers without CURVE or
with a key the daemon does not know.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipework.service.cli.keys import generate
from tests.daemon.netns import Host, host_pair, require_netns
from tests.support.daemons import TASKS_MODULE, DaemonFactory
from tests.support.processes import REPO, ProcessTree, clean_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

HEARTBEAT = 0.5
EXPIRY = 3.0
PORT = 7411
LOST_DAEMON = "nothing heard from the daemon within expiry"  # the remote worker's log line


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    require_netns()
    with host_pair() as pair:
        yield pair


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key pairs for the daemon, a worker, a client and a rogue; only worker and client allowed."""
    store = tmp_path / "keys"
    allow = tmp_path / "allow"
    allow.mkdir(mode=0o700)
    out: dict[str, Path] = {"allow": allow}
    for name in ("server", "worker", "client", "rogue"):
        public, secret = generate(store, name)
        out[name] = secret
        out[f"{name}_public"] = public
        if name in ("worker", "client"):
            shutil.copy(public, allow / public.name)
    return out


class Workers:
    """Remote worker processes this test started (by pid), stopped and checked at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[ProcessTree] = []

    def start(self, host: Host, connect: str, keys: dict[str, Path], slots: int = 2) -> ProcessTree:
        n = len(self.procs)
        argv = host.command(
            sys.executable,
            "-m",
            "pipework",
            "worker",
            "--connect",
            connect,
            "--tasks",
            TASKS_MODULE,
            "--slots",
            str(slots),
            "--secret-key",
            str(keys["worker"]),
            "--server-key",
            str(keys["server_public"]),
        )
        with (self.base / f"worker-{n}.err").open("ab") as err:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stderr=err
            )
        self.procs.append(ProcessTree(proc, interval=0.05))
        return self.procs[-1]

    def log(self, n: int) -> str:
        """What the ``n``-th worker started has written to stderr so far."""
        return (self.base / f"worker-{n}.err").read_text(errors="replace")

    def kill_tree(self, tree: ProcessTree) -> None:
        """SIGKILL the remote worker and every process under it: the whole "host" dies."""
        tree.track()
        for pid in [tree.pid, *tree.descendants]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tree.proc.wait(10)

    def close(self) -> list[int]:
        survivors: list[int] = []
        for tree in self.procs:
            if tree.running():
                tree.track()
                tree.proc.send_signal(signal.SIGTERM)
                try:
                    tree.proc.wait(15)
                except subprocess.TimeoutExpired:
                    tree.kill()
            tree.stop_watching()
            left = tree.wait_descendants_gone(3.0)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            survivors += sorted(left)
        return survivors


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    survivors = w.close()
    assert not survivors, f"remote worker processes left behind: {survivors}"


def remote_daemon(daemon: DaemonFactory, host: Host, keys: dict[str, Path], *extra: str) -> Any:
    return daemon(
        "--workers-endpoint",
        f"tcp://{host.address}:{PORT}",
        "--curve-secret-key",
        str(keys["server"]),
        "--curve-allow-dir",
        str(keys["allow"]),
        "--heartbeat",
        str(HEARTBEAT),
        "--heartbeat-expiry",
        str(EXPIRY),
        *extra,
        workers=0,
        prefix=host.command(),
    )


def remote_slots(d: Any) -> list[dict[str, Any]]:
    return [w for w in d.workers() if w.get("remote")]


def test_remote_work_completes_across_hosts(
    hosts: tuple[Host, Host], keys: dict[str, Path], daemon: DaemonFactory, workers: Workers
) -> None:
    a, b = hosts
    d = remote_daemon(daemon, a, keys)
    workers.start(b, f"tcp://{a.address}:{PORT}", keys, slots=2)
    wait_until(lambda: len(remote_slots(d)) == 2, 20, "the remote worker's 2 slots")
    ids = [d.submit("add", i, 1)["task_id"] for i in range(20)]
    results = [d.result(t, wait=30) for t in ids]
    assert [r["state"] for r in results] == ["done"] * 20
    assert [r["result"] for r in results] == [i + 1 for i in range(20)]
    slot = remote_slots(d)[0]
    assert slot["remote"]["host"]  # the remote worker says which host it is


def test_a_task_holding_the_gil_past_the_expiry_is_not_declared_lost(
    hosts: tuple[Host, Host], keys: dict[str, Path], daemon: DaemonFactory, workers: Workers
) -> None:
    a, b = hosts
    d = remote_daemon(daemon, a, keys)
    workers.start(b, f"tcp://{a.address}:{PORT}", keys, slots=1)
    wait_until(lambda: len(remote_slots(d)) == 1, 20, "the remote worker")
    info = d.run("spin_in_c", EXPIRY + 1.5, wait=60)
    assert info["state"] == "done"
    assert info["attempts"] == 1
    assert info["history"] == []
    assert "session lost" not in d.stderr_tail(100_000)


def test_killing_a_remote_host_mid_task_retries_its_tasks(
    hosts: tuple[Host, Host], keys: dict[str, Path], daemon: DaemonFactory, workers: Workers
) -> None:
    a, b = hosts
    d = remote_daemon(daemon, a, keys)
    connect = f"tcp://{a.address}:{PORT}"
    victim = workers.start(b, connect, keys, slots=2)
    wait_until(lambda: len(remote_slots(d)) == 2, 20, "the first remote worker")
    ids = [d.submit("sleep", 0.4, retries=2)["task_id"] for _ in range(12)]
    wait_until(lambda: any(s["task_id"] for s in remote_slots(d)), 20, "tasks running remotely")
    workers.kill_tree(victim)
    workers.start(b, connect, keys, slots=2)
    results = [d.result(t, wait=60) for t in ids]
    states = [r["state"] for r in results]
    retried = sum(1 for r in results if r["attempts"] > 1)
    print(f"remote kill: sent 12, done {states.count('done')}, retried {retried}, lost 0")
    assert states == ["done"] * 12
    assert retried >= 1
    for r in results:
        for entry in r["history"]:
            assert entry["outcome"] == "worker_lost"


def test_a_partition_longer_than_the_expiry_loses_nothing(
    hosts: tuple[Host, Host], keys: dict[str, Path], daemon: DaemonFactory, workers: Workers
) -> None:
    a, b = hosts
    d = remote_daemon(daemon, a, keys)
    workers.start(b, f"tcp://{a.address}:{PORT}", keys, slots=2)
    wait_until(lambda: len(remote_slots(d)) == 2, 20, "the remote worker")
    ids = [d.submit("sleep", 0.3, retries=3)["task_id"] for _ in range(10)]
    wait_until(lambda: any(s["task_id"] for s in remote_slots(d)), 20, "tasks running remotely")
    b.link(up=False)
    try:
        wait_until(lambda: not remote_slots(d), EXPIRY + 10, "the daemon to declare it lost")
        # And the worker its daemon, so that the healed link brings a new session.
        wait_until(
            lambda: LOST_DAEMON in workers.log(0),
            EXPIRY + 10,
            "the worker to declare the daemon lost",
        )
    finally:
        b.link(up=True)
    results = [d.result(t, wait=60) for t in ids]
    states = [r["state"] for r in results]
    retried = sum(1 for r in results if r["attempts"] > 1)
    print(f"partition: sent 10, done {states.count('done')}, retried {retried}, lost 0")
    assert states == ["done"] * 10
    assert retried >= 1
    assert "session lost" in d.stderr_tail(100_000)


def _peer_script(connect: str, secret: Path | None, server: Path) -> str:
    curve = (
        "from pipework.protocol.curve import use_curve; "
        f"use_curve(s, {str(secret)!r}, {str(server)!r})"
        if secret
        else "pass"
    )
    return (
        "import json, zmq\n"
        "s = zmq.Context().socket(zmq.DEALER)\n"
        "s.linger = 0\n"
        f"{curve}\n"
        f"s.connect({connect!r})\n"
        "s.send(json.dumps({'v': 1, 'type': 'hello', 'session': 'x', 'slots': 1,"
        " 'host': 'rogue', 'pid': 1, 'tasks': ['add']}).encode())\n"
        "print('answered' if s.poll(3000) else 'refused')\n"
    )


@pytest.mark.parametrize("peer", ["null", "unknown-key"])
def test_peers_without_curve_or_with_unknown_keys_are_refused_and_logged(
    peer: str,
    hosts: tuple[Host, Host],
    keys: dict[str, Path],
    daemon: DaemonFactory,
    workers: Workers,
) -> None:
    a, b = hosts
    d = remote_daemon(daemon, a, keys)
    connect = f"tcp://{a.address}:{PORT}"
    secret = None if peer == "null" else keys["rogue"]
    out = subprocess.run(
        b.command(sys.executable, "-c", _peer_script(connect, secret, keys["server_public"])),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout.strip() == "refused", out.stderr
    wait_until(lambda: "peer refused" in d.stderr_tail(100_000), 10, "the refusal in the log")
    assert not remote_slots(d)
    workers.start(b, connect, keys, slots=1)  # the daemon still serves a legitimate worker
    wait_until(lambda: len(remote_slots(d)) == 1, 20, "the legitimate worker")
    assert d.run("add", 2, 2)["result"] == 4


def test_tcp_clients_need_curve_and_keys_can_be_limited_to_tasks(
    hosts: tuple[Host, Host], keys: dict[str, Path], daemon: DaemonFactory, tmp_path: Path
) -> None:
    a, b = hosts
    config = tmp_path / "pipework.toml"
    config.write_text('[client_tasks]\nclient = ["add"]\n')
    endpoint = f"tcp://{a.address}:{PORT + 1}"
    daemon(
        "--config",
        str(config),
        "--curve-secret-key",
        str(keys["server"]),
        "--curve-allow-dir",
        str(keys["allow"]),
        endpoint=endpoint,
        workers=1,
        prefix=a.command(),
        ready=False,
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            b.command(
                sys.executable,
                "-m",
                "pipework",
                *args,
                "--endpoint",
                endpoint,
                "--json",
            ),
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    client_keys = ("--secret-key", str(keys["client"]), "--server-key", str(keys["server_public"]))
    wait_until(lambda: cli("stats", *client_keys).returncode == 0, 30, "the daemon over tcp")
    done = cli("submit", "add", "2", "3", "--wait", "20", *client_keys)
    assert done.returncode == 0, done.stderr
    assert '"result":5' in done.stdout
    forbidden = cli("submit", "echo", "x", *client_keys)
    assert forbidden.returncode == 4
    assert "forbidden" in forbidden.stderr
    anonymous = cli("stats", "--timeout", "2")
    assert anonymous.returncode == 3  # no CURVE: the handshake never completes
