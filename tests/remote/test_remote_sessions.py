"""The daemon's side of remote-worker sessions, driven by a hand-written worker (raw DEALER).

The real worker is tested in tests/test_remote_worker.py and across network
namespaces in test_remote.py; here a test plays the worker so it can do what
a real one only does under faults: reconnect mid-task, say hello twice, send
a result for a task it was never given.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import zmq

from tests.support.daemons import DaemonFactory
from tests.support.waiting import wait_until

TIMEOUT_MS = 10_000


class FakeWorker:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        """A new connection, hence a new ROUTER identity, for the same session."""
        self.sock.close()
        self.sock = self._open()

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.send(json.dumps({"v": 1, "type": kind, **fields}).encode())

    def recv(self, kind: str) -> dict[str, Any]:
        while True:
            assert self.sock.poll(TIMEOUT_MS), f"no {kind} from the daemon"
            msg = json.loads(self.sock.recv())
            if msg["type"] == kind:
                return msg  # heartbeats are skipped

    def hello(self, session: str, slots: int = 1) -> dict[str, Any]:
        self.send("hello", session=session, slots=slots, host="fake", pid=1, tasks=["add"])
        return self.recv("welcome")

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def remote_only(daemon: DaemonFactory):
    endpoint = daemon.endpoint("workers")
    d = daemon("--workers-endpoint", endpoint, "--heartbeat-expiry", "30", workers=0)
    worker = FakeWorker(endpoint)
    yield d, worker
    worker.close()


def test_a_result_sent_over_a_new_connection_still_counts(remote_only) -> None:
    d, w = remote_only
    w.hello("s1")
    w.send("ready", session="s1", credit=1)
    task_id = d.submit("add", 2, 3)["task_id"]
    task = w.recv("task")
    assert (task["task_id"], task["args"]) == (task_id, [2, 3])
    w.reconnect()  # as libzmq does after a TCP reset: a new identity on the daemon's side
    w.send(
        "result",
        session="s1",
        task_id=task_id,
        attempt=task["attempt"],
        state="done",
        result=5,
        error=None,
    )
    info = d.result(task_id, wait=20)
    assert (info["state"], info["result"], info["attempts"]) == ("done", 5, 1)


def test_hello_again_ends_the_old_session_and_retries_its_task(remote_only) -> None:
    d, w = remote_only
    w.hello("s1")
    w.send("ready", session="s1", credit=1)
    task_id = d.submit("add", 1, 1, retries=1)["task_id"]
    first = w.recv("task")
    w.hello("s2")  # the worker restarted: s1's task is lost and runs again
    w.send("ready", session="s2", credit=1)
    second = w.recv("task")
    assert (second["task_id"], second["attempt"]) == (task_id, first["attempt"] + 1)
    # A late result for the old attempt changes nothing.
    w.send(
        "result",
        session="s1",
        task_id=task_id,
        attempt=first["attempt"],
        state="done",
        result=99,
        error=None,
    )
    w.send(
        "result",
        session="s2",
        task_id=task_id,
        attempt=second["attempt"],
        state="done",
        result=2,
        error=None,
    )
    info = d.result(task_id, wait=20)
    assert (info["state"], info["result"]) == ("done", 2)
    assert [e["outcome"] for e in info["history"]] == ["worker_lost"]


def test_no_task_is_sent_beyond_the_credit_given(remote_only) -> None:
    d, w = remote_only
    w.hello("s1", slots=4)
    w.send("ready", session="s1", credit=2)
    ids = [d.submit("add", i, 0)["task_id"] for i in range(5)]
    got = [w.recv("task")["task_id"] for _ in range(2)]
    assert not w.sock.poll(500), "a third task arrived with credit for two"
    assert got == ids[:2]
    wait_until(lambda: d.stats()["queued"] == 3, 10, "three tasks still queued")


def test_a_result_for_a_task_never_given_is_ignored(remote_only) -> None:
    d, w = remote_only
    w.hello("s1")
    task_id = d.submit("add", 1, 2)["task_id"]
    w.send("result", session="s1", task_id=task_id, attempt=1, state="done", result=42, error=None)
    w.send("ready", session="s1", credit=1)
    task = w.recv("task")
    w.send(
        "result",
        session="s1",
        task_id=task_id,
        attempt=task["attempt"],
        state="done",
        result=3,
        error=None,
    )
    assert d.result(task_id, wait=20)["result"] == 3
