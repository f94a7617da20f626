"""kill -9 of the daemon: nothing acknowledged is lost, one key completes once.

The test pipelines 200 ``record`` submits (idempotency keys k0..k199) into a
daemon with its journal on, SIGKILLs the daemon by pid while tasks are
queued and running, checks that its workers die with it, restarts it on the
same journal and resends every submit. Then, once every task is terminal:

- every key has exactly one task, and it is ``done`` (lost = 0);
- a submit acknowledged before the kill comes back ``duplicate`` with the
  same task id;
- a key's side effect (a line in the record file) ran more than once only
  for tasks the daemon started again after the crash (at-least-once for the
  tasks running at the kill, never for the others).

It runs twice, killing at two points: while submits are still being
accepted, and after all were accepted with part of the work done. Each round
prints a summary line (``pytest -s -n0`` shows it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import TERMINAL, Daemon, DaemonFactory
from tests.support.waiting import wait_until

N = 200
WORKERS = 2


def _submit(record: Path, i: int) -> dict[str, Any]:
    key = f"k{i}"
    return {
        "op": "submit",
        "task": "record",
        "args": [str(record), key, 0.01 + (i % 5) * 0.005],  # 10-30 ms each
        "key": key,
    }


def _lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def _round(daemon: DaemonFactory, tmp_path: Path, kill_point: str) -> str:
    journal = tmp_path / f"{kill_point}.sqlite"
    record = tmp_path / f"{kill_point}.record"
    d = daemon(journal=journal)
    wait_until(lambda: len(d.worker_pids()) == WORKERS, 20, "workers up")

    # Pipeline the submits (in bursts of 20), collecting the replies; kill at the chosen point.
    acked: dict[str, str] = {}  # key -> task_id, acknowledged before the kill
    with d.connect() as conn:
        key_of: dict[str, str] = {}
        for start in range(0, N, 20):
            key_of.update(
                {conn.send(_submit(record, i)): f"k{i}" for i in range(start, start + 20)}
            )
            if kill_point == "accepting" and start >= N // 2:
                break  # the kill lands among these: some may be journalled, some not
            while len(acked) < len(key_of):
                reply = conn.recv(timeout=30)
                assert reply.get("ok") is True, reply
                assert reply["duplicate"] is False, reply
                acked[key_of[reply["id"]]] = reply["task_id"]
        if kill_point == "running":
            wait_until(lambda: len(_lines(record)) >= N // 3, 30, "a third of the work done")
        done_before = len(_lines(record))
        pids = d.track()
        d.kill9()

    survivors = d.wait_descendants_gone(2.0)
    assert survivors == [], f"processes {survivors} of the SIGKILLed daemon {d.pid} outlived it"
    assert pids, "the daemon had no workers to check"

    # Restart on the same journal and endpoint; resend everything.
    d2: Daemon = daemon(journal=journal, endpoint=d.endpoint)
    task_of: dict[str, str] = {}
    resent_dup = committed_unacked = new_after = 0
    with d2.connect() as conn:
        key_of = {conn.send(_submit(record, i)): f"k{i}" for i in range(N)}
        for _ in range(N):
            reply = conn.recv(timeout=30)
            assert reply.get("ok") is True, reply
            key = key_of[reply["id"]]
            task_of[key] = reply["task_id"]
            if key in acked:
                assert reply["duplicate"] is True, f"{key} was acknowledged before: {reply}"
                assert reply["task_id"] == acked[key], f"{key} changed task id: {reply}"
                resent_dup += 1
            elif reply["duplicate"]:
                committed_unacked += 1  # journalled, but the reply died with the daemon
            else:
                new_after += 1

        # Wait for every task to be terminal: pipelined result waits.
        infos: dict[str, dict[str, Any]] = {}
        wants = {
            conn.send({"op": "result", "task_id": t, "wait": 60}): k for k, t in task_of.items()
        }
        for _ in range(N):
            reply = conn.recv(timeout=90)
            assert reply.get("ok") is True, reply
            infos[wants[reply["id"]]] = reply["task"]

    listed = d2.ok({"op": "list", "limit": 1000})["tasks"]
    per_key = Counter(t["key"] for t in listed)
    assert set(per_key) == set(task_of), "the journal holds tasks for other keys, or misses some"
    extra = {k: n for k, n in per_key.items() if n != 1}
    assert not extra, f"keys with more than one task: {extra}"
    assert {t["task_id"] for t in listed} == set(task_of.values())

    not_done = {k: i["state"] for k, i in infos.items() if i["state"] != "done"}
    assert not not_done, f"tasks not done after the restart: {not_done}"
    assert all(i["state"] in TERMINAL for i in infos.values())
    assert all(i["result"] == k for k, i in infos.items())

    runs = Counter(line.split()[0] for line in _lines(record))
    lost = sorted(k for k in task_of if runs[k] == 0)
    assert not lost, f"done but their side effect never ran: {lost}"
    rerun = {k for k, i in infos.items() if i["attempts"] > 1}
    twice = {k for k, n in runs.items() if n > 1}
    assert twice <= rerun, (
        f"side effects repeated for tasks the daemon did not re-run: {sorted(twice - rerun)}"
    )

    summary = (
        f"kill -9 ({kill_point}): {N} submitted, {len(acked)} acknowledged before the kill, "
        f"{done_before} side effects done before it; after restart {resent_dup} resends "
        f"deduplicated, {committed_unacked} committed-but-unacknowledged found, {new_after} "
        f"accepted anew; {len(infos)} done, {len(rerun)} re-run after the crash, "
        f"{len(twice)} side effects ran twice, lost 0"
    )
    print(summary)
    return summary


@pytest.mark.timeout(150)
def test_kill9_loses_nothing_and_runs_each_key_to_done_once(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    _round(daemon, tmp_path, "accepting")
    _round(daemon, tmp_path, "running")
