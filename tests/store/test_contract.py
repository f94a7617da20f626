"""The ``Store`` contract (service/daemon/store/base.py), run against every backend.

Each test opens real stores on a real server (one per simulated daemon, each
with its own connections); concurrency uses threads with their own stores and
a barrier, so the racing statements really run at the same time. Lease expiry
uses short real leases and waits for them with a bound, never a clock mock.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipework.service.daemon.store import (
    STATES,
    Finish,
    Requeue,
    RunRef,
    Store,
    StoreError,
    Submit,
)
from tests.store.conftest import Backend

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

MakeStore = Callable[..., Store]


def sub(task_id: str, name: str = "add", **kw) -> Submit:
    return Submit(task_id=task_id, name=name, **kw)


def wait_until(condition: Callable[[], object], timeout: float = 20.0):
    """Poll ``condition`` until it returns something true, and return that; fail at the bound."""
    end = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def need_multi(backend: Backend) -> None:
    if not backend.multi_daemon:
        pytest.skip(f"the {backend.name} store serves one daemon")


# -- accept ---------------------------------------------------------------------------------------


def test_accept_new_duplicate_and_key_conflict(make_store: MakeStore) -> None:
    store = make_store()
    first = store.accept(
        [
            sub("t1", args_json="[1,2]", key="k"),
            sub("t2", args_json="[1,2]", key="k"),  # same key, same task: the first one
            sub("t3", args_json="[1,3]", key="k"),  # same key, other args: a conflict
            sub("t4", name="mul", args_json="[1,2]", key="k"),  # other name: a conflict
            sub("t5"),
        ]
    )
    assert [a.status for a in first] == [
        "accepted",
        "duplicate",
        "key_conflict",
        "key_conflict",
        "accepted",
    ]
    assert {a.record.task_id for a in first[:4]} == {"t1"}
    rec = first[0].record
    assert (rec.state, rec.key, rec.args_json, rec.attempts) == ("queued", "k", "[1,2]", 0)
    # Across calls, against the stored task; nothing new is written for either.
    again = store.accept([sub("t6", args_json="[1,2]", key="k"), sub("t7", key="k")])
    assert [(a.status, a.record.task_id) for a in again] == [
        ("duplicate", "t1"),
        ("key_conflict", "t1"),
    ]
    assert store.counts()["queued"] == 2
    for missing in ("t2", "t3", "t4", "t6", "t7"):
        assert store.get(missing) is None
    assert store.by_key("k") == store.get("t1")


def test_a_batch_commits_whole_or_not_at_all(make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub("t1")])
    with pytest.raises(StoreError):
        store.accept([sub("t2", key="a"), sub("t1")])  # t1 is taken: the batch fails
    assert store.get("t2") is None
    assert store.by_key("a") is None
    assert store.counts()["queued"] == 1


def test_concurrent_accepts_of_one_key_make_one_task(
    backend: Backend, make_store: MakeStore
) -> None:
    need_multi(backend)
    stores = [make_store(daemon_id=f"d{i}") for i in range(4)]
    barrier = threading.Barrier(len(stores))

    def submit(i: int):
        barrier.wait(timeout=10)
        return stores[i].accept([sub(f"t{i}", args_json="[7]", key="shared")])[0]

    with ThreadPoolExecutor(len(stores)) as ex:
        answers = list(ex.map(submit, range(len(stores))))
    assert sorted(a.status for a in answers) == ["accepted"] + ["duplicate"] * 3
    holder = {a.record.task_id for a in answers}
    assert len(holder) == 1
    assert stores[0].counts()["queued"] == 1


def test_batches_holding_keys_in_opposite_orders_both_settle(
    backend: Backend, make_store: MakeStore
) -> None:
    need_multi(backend)
    keys = [f"k{i:02}" for i in range(40)]
    one, two = make_store(daemon_id="one"), make_store(daemon_id="two")
    for rnd in range(3):
        barrier = threading.Barrier(2)

        def submit(
            store: Store, order: list[str], tag: str, rnd: int = rnd, barrier=barrier
        ) -> list:
            barrier.wait(timeout=10)
            return store.accept([sub(f"{tag}{rnd}-{k}", key=f"{rnd}{k}") for k in order])

        with ThreadPoolExecutor(2) as ex:
            a = ex.submit(submit, one, keys, "a")
            b = ex.submit(submit, two, keys[::-1], "b")
            answers = a.result(timeout=60) + b.result(timeout=60)
        assert sorted(x.status for x in answers) == ["accepted"] * 40 + ["duplicate"] * 40
    assert one.counts()["queued"] == 120


# -- claim ----------------------------------------------------------------------------------------


def test_claim_order_priority_then_submit_order_and_names(make_store: MakeStore) -> None:
    store = make_store()
    store.accept(
        [
            sub("low1", priority=0),
            sub("high1", priority=5),
            sub("other", name="mul", priority=9),
            sub("low2", priority=0),
            sub("high2", priority=5),
            sub("neg", priority=-1),
        ]
    )
    runs = store.claim(["add"], 3)
    assert [r.record.task_id for r in runs] == ["high1", "high2", "low1"]
    for r in runs:
        assert (r.record.state, r.record.attempts, r.owner) == ("running", 1, store.daemon_id)
        assert r.record.started_at is not None
        assert r.ref == RunRef(r.record.task_id, 1, store.daemon_id)
    assert [r.record.task_id for r in store.claim(["add"], 10)] == ["low2", "neg"]
    assert store.claim(["add"], 10) == []
    assert [r.record.task_id for r in store.claim(["mul", "add"], 10)] == ["other"]
    assert store.claim([], 10) == []
    assert store.counts()["running"] == 6


def test_delayed_task_waits_until_due(make_store: MakeStore) -> None:
    store = make_store()
    [later] = store.accept([sub("later", delay=3600.0)])
    [soon] = store.accept([sub("soon", delay=0.5)])
    assert later.record.not_before >= later.record.created_at + 3600.0
    assert store.next_due(["add"]) == pytest.approx(soon.record.not_before)
    assert store.next_due(["mul"]) is None
    runs = wait_until(lambda: store.claim(["add"], 10))
    assert [r.record.task_id for r in runs] == ["soon"]
    assert store.claim(["add"], 10) == []
    assert store.get("later").state == "queued"  # type: ignore[union-attr]
    assert store.next_due(["add"]) == pytest.approx(later.record.not_before)


def test_concurrent_claimers_never_share_a_task(backend: Backend, make_store: MakeStore) -> None:
    need_multi(backend)
    total = 300
    make_store().accept([sub(f"t{i:03}") for i in range(total)])
    claimers = [make_store(daemon_id=f"d{i}") for i in range(4)]
    barrier = threading.Barrier(len(claimers))

    def drain(store: Store) -> list[str]:
        barrier.wait(timeout=10)
        got: list[str] = []
        while True:
            runs = store.claim(["add"], 7)
            if not runs:
                return got
            got.extend(r.record.task_id for r in runs)
            assert all(r.owner == store.daemon_id for r in runs)

    with ThreadPoolExecutor(len(claimers)) as ex:
        per = list(ex.map(drain, claimers))
    every = [t for got in per for t in got]
    assert len(every) == total
    assert len(set(every)) == total
    assert claimers[0].counts()["running"] == total
    # Each claimer's lease holds exactly the runs it got.
    for store, got in zip(claimers, per, strict=True):
        assert store.heartbeat().held == {(t, 1) for t in got}


# -- finish, requeue, fencing ------------------------------------------------------------------


def test_finish_and_requeue_record_only_a_current_run(make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub("a", retries=2), sub("b")])
    run_a, run_b = store.claim(["add"], 2)
    stale = RunRef("a", run_a.ref.attempt + 1, store.daemon_id)
    assert store.finish([Finish(stale, "done", result_json="1")]) == [None]
    assert store.requeue([Requeue(stale)]) == [False]
    assert store.get("a") == run_a.record  # unchanged by the fenced-out calls

    entry = {"attempt": 1, "outcome": "worker_lost", "signal": "SIGKILL"}
    assert store.requeue([Requeue(run_a.ref, entry)]) == [True]
    queued = store.get("a")
    assert queued is not None
    assert (queued.state, queued.attempts) == ("queued", 1)
    assert json.loads(queued.history_json) == [entry]
    # The old run is gone: neither finish nor requeue may touch the task again.
    assert store.finish([Finish(run_a.ref, "done", result_json="1")]) == [None]

    [run_a2] = store.claim(["add"], 1)
    assert run_a2.ref.attempt == 2
    done = store.finish(
        [
            Finish(run_a2.ref, "done", result_json='{"x":1}'),
            Finish(run_b.ref, "failed", error_json='{"type":"E","message":"m","traceback":""}'),
        ]
    )
    assert [d.state if d else None for d in done] == ["done", "failed"]
    assert done[0] is not None
    assert done[0].result_json == '{"x":1}'
    assert done[0].finished_at is not None
    assert store.finish([Finish(run_a2.ref, "failed")]) == [None]  # one result per task
    assert store.get("a").result_json == '{"x":1}'  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="terminal"):
        store.finish([Finish(run_a2.ref, "queued")])


def test_another_daemon_cannot_settle_a_run_it_does_not_own(
    backend: Backend, make_store: MakeStore
) -> None:
    need_multi(backend)
    a, b = make_store(daemon_id="A"), make_store(daemon_id="B")
    a.accept([sub("t")])
    [run] = a.claim(["add"], 1)
    forged = RunRef("t", run.ref.attempt, "B")
    assert b.finish([Finish(forged, "done", result_json="2")]) == [None]
    assert b.requeue([Requeue(forged)]) == [False]
    with pytest.raises(ValueError, match="daemon"):
        b.finish([Finish(run.ref, "done", result_json="2")])
    assert a.get("t") == run.record


def test_expired_lease_is_recovered_and_its_owner_is_fenced_out(
    backend: Backend, make_store: MakeStore
) -> None:
    need_multi(backend)
    slow = make_store(daemon_id="slow", lease_ttl=0.5)
    other = make_store(daemon_id="other", lease_ttl=30.0)
    slow.accept([sub("t", key="k", retries=3)])
    [run] = slow.claim(["add"], 1)
    assert other.recover() == []  # the lease is live: nothing to take
    recovered = wait_until(other.recover)
    assert [(r.task_id, r.state, r.attempts) for r in recovered] == [("t", "queued", 1)]
    [entry] = json.loads(recovered[0].history_json)
    assert (entry["attempt"], entry["outcome"], entry["daemon"]) == (1, "lease_expired", "slow")
    # The slow daemon's renewal shows it lost the run, and its result is refused.
    assert slow.heartbeat().held == frozenset()
    assert slow.finish([Finish(run.ref, "done", result_json="late")]) == [None]
    [run2] = other.claim(["add"], 1)
    assert run2.ref == RunRef("t", 2, "other")
    assert slow.finish([Finish(run.ref, "done", result_json="late")]) == [None]
    [rec] = other.finish([Finish(run2.ref, "done", result_json="ok")])
    assert rec is not None
    assert (rec.state, rec.result_json, rec.attempts) == ("done", "ok", 2)
    assert other.by_key("k") == rec
    assert other.counts() == {**dict.fromkeys(STATES, 0), "done": 1}


def test_expired_lease_not_yet_recovered_still_holds(make_store: MakeStore) -> None:
    store = make_store(lease_ttl=0.3)
    store.accept([sub("t")])
    [run] = store.claim(["add"], 1)
    time.sleep(0.6)  # past the lease; nobody recovered it, so nobody else could run it
    [rec] = store.finish([Finish(run.ref, "done", result_json="1")])
    assert rec is not None
    assert rec.state == "done"


def test_lost_leases_count_against_retries_then_quarantine(
    backend: Backend, make_store: MakeStore
) -> None:
    need_multi(backend)
    doomed = make_store(daemon_id="doomed", lease_ttl=0.3)
    rescuer = make_store(daemon_id="rescuer")
    doomed.accept([sub("t", retries=1)])
    doomed.claim(["add"], 1)
    [back] = wait_until(rescuer.recover)
    assert (back.state, len(json.loads(back.history_json))) == ("queued", 1)
    doomed.claim(["add"], 1)  # the same daemon, alive again, claims attempt 2 ...
    [rec] = wait_until(rescuer.recover)  # ... and loses its lease again: budget spent
    assert (rec.state, rec.attempts) == ("quarantined", 2)
    assert rec.finished_at is not None
    assert [e["attempt"] for e in json.loads(rec.history_json)] == [1, 2]
    error = json.loads(rec.error_json or "")
    assert error["type"] == "WorkerLost"
    assert "2 attempts" in error["message"]
    assert rescuer.claim(["add"], 1) == []
    assert rescuer.recover() == []


def test_each_expired_run_is_recovered_once(backend: Backend, make_store: MakeStore) -> None:
    need_multi(backend)
    dead = make_store(daemon_id="dead", lease_ttl=0.3)
    dead.accept([sub(f"t{i}", retries=5) for i in range(60)])
    assert len(dead.claim(["add"], 60)) == 60
    time.sleep(0.5)
    rescuers = [make_store(daemon_id=f"r{i}") for i in range(3)]
    barrier = threading.Barrier(len(rescuers))

    def rescue(store: Store) -> list[str]:
        barrier.wait(timeout=10)
        got: list[str] = []
        while batch := store.recover(limit=7):
            got.extend(r.task_id for r in batch)
        return got

    with ThreadPoolExecutor(len(rescuers)) as ex:
        per = list(ex.map(rescue, rescuers))
    every = [t for got in per for t in got]
    assert sorted(every) == sorted(f"t{i}" for i in range(60))
    for rec in rescuers[0].recent("queued", 100):
        assert len(json.loads(rec.history_json)) == 1


def test_cancel_queued_only_touches_a_queued_task(make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub("running"), sub("finished"), sub("waiting")])
    running, finished = store.claim(["add"], 2)
    store.finish([Finish(finished.ref, "done", result_json="1")])
    error = '{"message":"cancelled by a client","traceback":"","type":"Cancelled"}'
    rec = store.cancel_queued("waiting", error)
    assert rec is not None
    assert (rec.state, rec.error_json) == ("cancelled", error)
    assert rec.finished_at is not None
    before = [store.get("running"), store.get("finished")]
    assert store.cancel_queued("running", error) is None  # its owner cancels it
    assert store.cancel_queued("finished", error) is None
    assert store.cancel_queued("waiting", error) is None  # cancelled already
    assert store.cancel_queued("nope", error) is None
    assert [store.get("running"), store.get("finished")] == before
    assert store.claim(["add"], 10) == []
    assert store.finish([Finish(running.ref, "cancelled", error_json=error)])[0] is not None


# -- hints ----------------------------------------------------------------------------------------


def test_listener_hears_queued_and_finished(backend: Backend, make_store: MakeStore) -> None:
    need_multi(backend)
    waiter, worker = make_store(daemon_id="waiter"), make_store(daemon_id="worker")
    listener = waiter.listen()
    try:
        assert listener.fileno() >= 0
        worker.accept([sub("t")])
        # The descriptor wakes a poll loop (the daemon's) before wait() is called.
        readable, _, _ = select.select([listener.fileno()], [], [], 10.0)
        assert readable == [listener.fileno()]
        events = wait_until(lambda: listener.wait(5.0))
        assert [e.kind for e in events] == ["queued"]
        [run] = worker.claim(["add"], 1)
        worker.finish([Finish(run.ref, "done", result_json="3")])
        events = wait_until(lambda: listener.wait(5.0))
        assert [(e.kind, e.task_id) for e in events] == [("finished", "t")]
        assert waiter.get("t").result_json == "3"  # type: ignore[union-attr]
    finally:
        listener.close()
        listener.close()


def test_a_lost_hint_is_caught_by_the_poll(backend: Backend, make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub("t")])  # nobody listens: this hint is lost
    listener = store.listen()
    try:
        assert listener.wait(0.3) == []  # the wait is bounded, with nothing to say
        assert [r.record.task_id for r in store.claim(["add"], 1)] == ["t"]
    finally:
        listener.close()


def test_listener_resyncs_after_losing_its_connection(
    backend: Backend, make_store: MakeStore
) -> None:
    store = make_store()
    listener = store.listen()
    try:
        assert backend.sever_listeners() == 1
        events = wait_until(lambda: listener.wait(1.0))
        assert [e.kind for e in events] == ["resync"]
        store.accept([sub("t")])  # heard again once it has reconnected
        events = wait_until(lambda: listener.wait(1.0))
        assert [e.kind for e in events] == ["queued"]
    finally:
        listener.close()


# -- reads and pruning ----------------------------------------------------------------------------


def test_reads(make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub(f"t{i}", key=f"k{i}") for i in range(5)])
    [run] = store.claim(["add"], 1)
    store.finish([Finish(run.ref, "done", result_json="0")])
    assert [r.task_id for r in store.recent(None, 3)] == ["t4", "t3", "t2"]
    assert [r.task_id for r in store.recent("done", 10)] == ["t0"]
    assert store.counts() == {**dict.fromkeys(STATES, 0), "queued": 4, "done": 1}
    assert store.get("nope") is None
    assert store.by_key("nope") is None
    assert store.by_key("k3") == store.get("t3")


def test_prune_deletes_old_terminal_tasks_in_batches(make_store: MakeStore) -> None:
    store = make_store()
    store.accept([sub(f"d{i:02}", key=f"k{i}") for i in range(25)])
    runs = store.claim(["add"], 25)
    store.finish([Finish(r.ref, "done", result_json="1") for r in runs])
    store.accept([sub("q1"), sub("q2")])
    store.claim(["add"], 1)  # one running, one queued: never pruned
    assert store.prune(3600.0, 10) == 0  # too young
    assert [store.prune(0.0, 10) for _ in range(4)] == [10, 10, 5, 0]
    assert store.counts() == {**dict.fromkeys(STATES, 0), "queued": 1, "running": 1}
    # A pruned task's key is free again.
    [again] = store.accept([sub("new", key="k3", args_json="[9]")])
    assert (again.status, again.record.task_id) == ("accepted", "new")


# -- schema ---------------------------------------------------------------------------------------


def test_concurrent_starters_migrate_once(backend: Backend) -> None:
    need_multi(backend)
    barrier = threading.Barrier(4)

    def start(i: int):
        barrier.wait(timeout=10)
        return backend.open(daemon_id=f"d{i}")

    with ThreadPoolExecutor(4) as ex:
        stores = list(ex.map(start, range(4)))
    try:
        applied = [v for s in stores for v in s.migrated]
        assert applied == [1]
        stores[0].accept([sub("t")])
        assert [r.record.task_id for r in stores[3].claim(["add"], 1)] == ["t"]
    finally:
        for s in stores:
            s.close()
    reopened = backend.open()
    try:
        assert reopened.migrated == []
    finally:
        reopened.close()
