"""What a local stranger can do to a pool on the zmq transport: nothing.

A worker's ROUTER endpoint (``tcp://127.0.0.1:<port>``, or an ``ipc://``
socket) can be reached by other local processes. Their messages must be
dropped and counted, never break the pool, never be unpickled; and a stranger
that connects first with the routing id a worker would take must not be able
to stand in for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import zmq

from pipework.service import WorkerService
from pipework.service.transports.frames import Frame, Kind
from pipework.service.transports.zmq import ZmqTransport
from tests import tasks, tasks_hostile
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _endpoints(where: str) -> set[str]:
    """The ZeroMQ endpoints this process listens on, as a stranger would find them (ss, lsof)."""
    me = psutil.Process()
    if where == "tcp":
        return {
            f"tcp://{c.laddr.ip}:{c.laddr.port}"
            for c in me.net_connections(kind="tcp4")
            if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"
        }
    return {
        f"ipc://{c.laddr}"
        for c in me.net_connections(kind="unix")
        if isinstance(c.laddr, str) and c.laddr.endswith(".sock") and "pipework-" in c.laddr
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["tcp", "ipc"])
def test_strangers_messages_are_dropped_and_counted(where: str, tmp_path: Path) -> None:
    before = _endpoints(where)
    transport = ZmqTransport(where)  # type: ignore[arg-type]
    marker = tmp_path / "unpickled"
    with WorkerService(2, transport=transport) as pool:
        assert list(pool.map(tasks.square, range(10))) == [x * x for x in range(10)]
        wait_until(lambda: len(pool.worker_pids()) == 2)
        pids = sorted(pool.worker_pids())
        addresses = sorted(_endpoints(where) - before)
        assert len(addresses) == 2, addresses
        attacker = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tests.tasks_hostile import pester; "
                "pester(sys.argv[2:], sys.argv[1])",
                str(marker),
                *addresses,
            ],
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            capture_output=True,
            text=True,
        )
        assert attacker.returncode == 0, attacker.stderr
        # 2 endpoints x 9 strangers x (4 malformed or READY + 20 forged results).
        wait_until(lambda: transport.dropped == 2 * 9 * 24, timeout=30)
        futures = [pool.submit(tasks.square, x) for x in range(50)]
        assert [f.result(timeout=30) for f in futures] == [x * x for x in range(50)]
        assert sorted(pool.worker_pids()) == pids  # nobody was killed or replaced
    assert not marker.exists(), "a stranger's bytes were unpickled"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["tcp", "ipc"])
def test_a_stranger_first_on_the_endpoint_cannot_take_the_workers_place(
    where: str, tmp_path: Path
) -> None:
    # The race a routing id that can be guessed would open: the stranger
    # connects before the worker does, under the worker's id (w1 is what the
    # first worker of a transport was called), so the ROUTER would hand it
    # the worker's tasks and take its forged results.
    transport = ZmqTransport(where)  # type: ignore[arg-type]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    channel, endpoint = transport.pair()
    worker = None
    strangers: list[zmq.Socket[bytes]] = []
    try:
        for identity in (b"w1", b"w0", b"1"):
            stranger = ctx.socket(zmq.DEALER)
            stranger.setsockopt(zmq.ROUTING_ID, identity)
            stranger.setsockopt(zmq.LINGER, 0)
            stranger.connect(endpoint.address)
            stranger.send(tasks_hostile.result_frame(1, str(tmp_path / "x")))
            strangers.append(stranger)
        received: list[Frame] = []

        def receive() -> bool:
            received.extend(channel.recv())
            return bool(received)

        wait_until(lambda: receive() or transport.dropped == 3, timeout=10)
        assert received == []
        worker = endpoint.open()
        worker.send(Kind.READY, 0, b"")
        wait_until(receive, timeout=10)
        assert [(f.kind, f.task_id) for f in received] == [(Kind.READY, 0)]
        channel.send(Kind.TASK, 7, b"secret arguments")
        wait_until(channel.flush, timeout=10)
        frame = worker.recv()
        assert (frame.kind, frame.task_id, bytes(frame.payload)) == (
            Kind.TASK,
            7,
            b"secret arguments",
        )
        for stranger in strangers:
            assert stranger.poll(200, zmq.POLLIN) == 0, "a stranger got the worker's task"
    finally:
        for stranger in strangers:
            stranger.close()
        if worker is not None:
            worker.close()
        channel.close()
        transport.close()
        ctx.term()
