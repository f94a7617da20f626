"""Kill storms: workers SIGKILLed at random instants while a mixed load runs.

A killer thread SIGKILLs one of the pool's current workers (``worker_pids()``,
only those, each at most once) every 5-60 ms, sometimes aiming at a worker
that is pickling or writing a 64 MiB result. Meanwhile the test submits
rounds of tasks of every size: tiny results, ~1 MiB results, a few ms of
sleep, and one or two 64 MiB results. Every task's value is unique to it
(``pattern(seed, size)`` with its own seed, or its own number), so a wrong,
truncated, shifted or swapped result is caught, as is a result for another
task.

Every future must resolve within a bound, either to its value or to
``WorkerLost`` naming a worker the test killed (one task per dead worker at
most), and nothing else. Each task records its worker's pid when it runs
(``record_pid_then``; a 64 MiB one once its value is built), so the test also
checks how often each one ran: once without retries, and again only after
the worker that ran it was killed.
Afterwards the pool is back at full strength with none of the killed pids,
and a final batch, 64 MiB round trip included, succeeds.

The random choices come from ``random.Random(SEED + k)``; SEED is printed in
every failure and can be set with ``PIPEWORK_STORM_SEED``. The instants
themselves depend on scheduling, so a failure is reproduced by running the
test again, not replayed.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipework.service import TaskFuture, WorkerLost, WorkerService
from tests import tasks
from tests import tasks_faults as faults
from tests.support.processes import alive, wait_gone
from tests.support.waiting import poll_until

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

SEED = int(os.environ.get("PIPEWORK_STORM_SEED", "20240917"))
MiB = 1024 * 1024
BIG = 64 * MiB
WORKERS = 3
KILLS = 30
RESULT_TIMEOUT = 30.0
"""Bound for every future to resolve once its round is submitted: a hang fails."""
STORM_TIME = 30.0
"""Bound on the whole storm: rounds stop being submitted after this (it takes ~3 s)."""
MIN_ROUNDS = 3
TARGETED = 0.4
"""Share of kills aimed at a worker that is returning a 64 MiB result."""
MAX_AIMED_PER_JOB = 2
"""Aimed kills per 64 MiB job, so that with retries most of them end by succeeding."""
TINY_OFFSET = 10**9


# -- jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One task of the storm, with the value only it may return."""

    key: int
    kind: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    pid_file: Path
    expect: Callable[[], Any]


def make_job(key: int, kind: str, rng: random.Random, tmp_path: Path) -> Job:
    pid_file = tmp_path / f"job-{key}"
    path = str(pid_file)
    if kind == "tiny":
        args: tuple[Any, ...] = (path, tasks.add, key, TINY_OFFSET)
        return Job(key, kind, faults.record_pid_then, args, pid_file, lambda: key + TINY_OFFSET)
    if kind == "sleep":
        args = (path, tasks.sleep_then, rng.uniform(0.002, 0.008), -key)
        return Job(key, kind, faults.record_pid_then, args, pid_file, lambda: -key)
    if kind == "mib":
        size = MiB + rng.randrange(4096)
        args = (path, faults.pattern, key, size)
        return Job(
            key, kind, faults.record_pid_then, args, pid_file, lambda: faults.pattern(key, size)
        )
    assert kind == "big"
    # Records its pid once the value is built: from then on it pickles and writes 64 MiB.
    args = (path, key, BIG)
    return Job(
        key, kind, faults.big_result_after_pid, args, pid_file, lambda: faults.pattern(key, BIG)
    )


def make_round(first_key: int, rng: random.Random, tmp_path: Path) -> list[Job]:
    kinds = ["tiny"] * 24 + ["sleep"] * 10 + ["mib"] * 6 + ["big"] * rng.choice((1, 2))
    rng.shuffle(kinds)
    return [make_job(first_key + i, kind, rng, tmp_path) for i, kind in enumerate(kinds)]


# -- the killer ---------------------------------------------------------------------


class Killer:
    """A thread that SIGKILLs the pool's workers at random instants, each pid at most once.

    With probability ``TARGETED`` it aims at a worker that has just built a
    64 MiB result (its job recorded the pid): after a random delay (so while it
    pickles or writes), or as soon as it is seen writing.
    """

    def __init__(self, pool: WorkerService, rng: random.Random, budget: int) -> None:
        self.pool = pool
        self.rng = rng
        self.budget = budget
        self.killed: list[int] = []
        self.log: list[str] = []
        self.states: Counter[str] = Counter()
        """What each victim's main thread was blocked on just before its kill."""
        self.watch: list[Path] = []
        """Pid files of the 64 MiB jobs submitted so far (the test appends)."""
        self.error: BaseException | None = None
        self._seen: dict[Path, int] = {}
        self._aimed: Counter[Path] = Counter()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="storm-killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the killer thread did not stop"

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _candidates(self) -> list[int]:
        killed = set(self.killed)
        return sorted(pid for pid in self.pool.worker_pids() if pid not in killed)

    def _run(self) -> None:
        try:
            while len(self.killed) < self.budget:
                if self._stop.wait(self.rng.uniform(0.005, 0.060)):
                    return
                if self.rng.random() < TARGETED:
                    self._targeted()
                else:
                    candidates = self._candidates()
                    if candidates:
                        self._kill(self.rng.choice(candidates), "random")
        except BaseException as exc:  # reported by the test, never lost in the thread
            self.error = exc

    def _fresh_big_runs(self) -> list[tuple[Path, int]]:
        """Runs of 64 MiB jobs recorded since the last look, on workers that are still ours."""
        runs = []
        for path in list(self.watch):
            pids = faults.read_pids(path)
            runs += [(path, pid) for pid in pids[self._seen.get(path, 0) :]]
            self._seen[path] = len(pids)
        candidates = set(self._candidates())
        return [
            (path, pid)
            for path, pid in runs
            if pid in candidates and self._aimed[path] < MAX_AIMED_PER_JOB
        ]

    def _targeted(self) -> None:
        end = time.monotonic() + 0.3
        runs = self._fresh_big_runs()
        while not runs and time.monotonic() < end and not self._stop.is_set():
            time.sleep(0.001)
            runs = self._fresh_big_runs()
        if not runs:
            return
        path, pid = self.rng.choice(runs)
        self._aimed[path] += 1
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0.0, 0.1))
            self._kill(pid, "big-after-pid")
        else:
            poll_until(lambda: writing(pid), 0.5, 0.0005)
            time.sleep(self.rng.uniform(0.0, 0.005))
            self._kill(pid, "big-mid-write")

    def _kill(self, pid: int, how: str) -> None:
        # Only a current worker of this pool that we have not killed yet: such a
        # process cannot have died (nothing else kills it), so its pid is not reused.
        if pid in self.killed or pid not in self.pool.worker_pids():
            return
        state = victim_state(pid)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
        self.states[state] += 1
        self.log.append(f"{time.monotonic() - self._start:.3f}s {how} {pid} ({state})")


def victim_state(pid: int) -> str:
    """What the worker is blocked on: its main thread's pipe read or write or poll
    (``thread_waits_on``), else "thread-write" if another of its threads is
    writing to a pipe (a Queue's feeder thread), else "other"."""
    state = faults.thread_waits_on(pid)
    if state == "write":
        return state
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    except OSError:
        tids = []
    if any(faults.thread_waits_on(pid, tid) == "write" for tid in tids):
        return "thread-write"
    return state or "other"


def writing(pid: int) -> bool:
    """Whether the worker is seen sending a frame: a thread of it blocked writing
    to a pipe, or its main thread polling while libzmq's I/O thread writes."""
    return victim_state(pid) in ("write", "thread-write", "poll")


# -- checking outcomes --------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    lost: int = 0
    reruns: int = 0
    """Runs beyond the first, as recorded by the tasks themselves."""
    by_kind: Counter[str] = field(default_factory=Counter)
    lost_pids: list[int] = field(default_factory=list)


def settle(
    batch: list[tuple[Job, TaskFuture[Any]]],
    killer: Killer,
    tally: Tally,
    retries: int,
    ctx: str,
) -> None:
    """Wait (bounded) for a round and check every outcome; see the module docstring."""
    _, not_done = cf.wait([future for _, future in batch], timeout=RESULT_TIMEOUT)
    if not_done:
        stuck = sorted(repr(f) for f in not_done)  # a TaskFuture's repr names its task
        pytest.fail(
            f"{ctx}: {len(not_done)} futures unresolved after {RESULT_TIMEOUT} s: {stuck[:10]}; "
            f"workers {killer.pool.worker_pids()}; kills {killer.log}"
        )
    killed = set(killer.killed)
    for job, future in batch:
        where = f"{ctx}: job {job.key} ({job.kind}, task {future.task_id})"
        runs = faults.read_pids(job.pid_file)
        assert len(runs) <= retries + 1, f"{where} ran {len(runs)} times: {runs}"
        exc = future.exception(timeout=0)
        if exc is None:
            value = future.result(timeout=0)
            expected = job.expect()
            if value != expected:
                pytest.fail(
                    f"{where}: wrong value {_describe(value)}, expected {_describe(expected)}"
                )
            assert runs, f"{where} succeeded but never recorded a run"
            # Every run but the last was cut short by a kill of ours.
            assert set(runs[:-1]) <= killed, f"{where}: runs {runs}, killed {killer.killed}"
            tally.completed += 1
            tally.reruns += len(runs) - 1
            tally.by_kind[job.kind] += 1
            continue
        if not isinstance(exc, WorkerLost):
            raise AssertionError(f"{where}: unexpected {exc!r}") from exc
        assert (exc.task_id, exc.exitcode, exc.signal, exc.attempt) == (
            future.task_id,
            -9,
            "SIGKILL",
            retries + 1,
        ), f"{where}: {exc!r} attempt={exc.attempt}"
        assert exc.pid in killed, f"{where}: {exc!r} names a worker we did not kill {killer.log}"
        assert set(runs) <= killed, f"{where}: runs {runs}, killed {killer.killed}"
        if len(runs) == retries + 1:  # the last attempt recorded its pid before the kill
            assert runs[-1] == exc.pid, f"{where}: runs {runs}, {exc!r}"
        tally.lost += 1
        tally.reruns += max(len(runs) - 1, 0)
        tally.lost_pids.append(exc.pid)
        tally.by_kind[f"lost-{job.kind}"] += 1
    batch.clear()  # drop 64 MiB results as soon as they are checked


def _describe(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes, starting {bytes(value[:8])!r}>"
    return repr(value)


def full_strength(pool: WorkerService, killed: list[int]) -> bool:
    """The pool has max_workers live workers, none of them one we killed."""
    pids = pool.worker_pids()
    return (
        len(pids) == pool.max_workers
        and not set(pids) & set(killed)
        and all(alive(pid) for pid in pids)
    )


def unkilled(future: TaskFuture[Any], ctx: str) -> Any:
    """The result of a task that ran while the test killed nothing."""
    try:
        return future.result(timeout=RESULT_TIMEOUT)
    except WorkerLost as exc:
        pytest.fail(
            f"{ctx}: {exc!r}, but the test killed no worker meanwhile: the service "
            "killed it or it died by itself (see the captured log)"
        )


def check_recovered(pool: WorkerService, killed: list[int], ctx: str) -> None:
    """Back at full strength, the dead really gone, and a final batch all right."""
    assert poll_until(lambda: full_strength(pool, killed), 10.0), (
        f"{ctx}: not back at full strength: workers {pool.worker_pids()}, killed {killed}"
    )
    assert not wait_gone(killed, 5.0), f"{ctx}: killed workers still alive"
    big = faults.pattern(SEED % 1000 + 7, BIG)
    round_trip = pool.submit(tasks.identity, big)
    small = [pool.submit(tasks.square, i) for i in range(30)]
    medium = [pool.submit(faults.pattern, 5000 + i, MiB + i) for i in range(4)]
    assert [unkilled(f, ctx) for f in small] == [i * i for i in range(30)], ctx
    for i, future in enumerate(medium):
        assert unkilled(future, ctx) == faults.pattern(5000 + i, MiB + i), ctx
    assert unkilled(round_trip, ctx) == big, ctx
    assert full_strength(pool, killed), f"{ctx}: workers {pool.worker_pids()}"


# -- the storms ---------------------------------------------------------------------


def run_storm(pool: WorkerService, tmp_path: Path, retries: int, ctx: str) -> Tally:
    rng = random.Random(SEED)
    killer = Killer(pool, random.Random(SEED + 1), KILLS)
    tally = Tally()
    outstanding: list[list[tuple[Job, TaskFuture[Any]]]] = []
    key = 1
    rounds = 0
    start = time.monotonic()
    killer.start()
    try:
        # Two rounds in flight: the next one is queued while the last one drains.
        while rounds < MIN_ROUNDS or (not killer.done and time.monotonic() - start < STORM_TIME):
            jobs = make_round(key, rng, tmp_path)
            key += len(jobs)
            batch = []
            for job in jobs:
                if job.kind == "big":
                    killer.watch.append(job.pid_file)
                batch.append((job, pool.submit(job.fn, *job.args)))
            tally.sent += len(batch)
            outstanding.append(batch)
            rounds += 1
            if len(outstanding) > 1:
                settle(outstanding.pop(0), killer, tally, retries, f"{ctx} round {rounds - 1}")
        killer.stop()
        while outstanding:
            settle(outstanding.pop(0), killer, tally, retries, f"{ctx} last rounds")
    finally:
        killer.stop()
    assert killer.error is None, f"{ctx}: killer thread failed: {killer.error!r}"
    ctx = f"{ctx} ({rounds} rounds, kills {killer.log})"

    kills = len(killer.killed)
    assert kills == KILLS, f"{ctx}: the killer made only {kills} kills in {STORM_TIME} s"
    assert tally.completed + tally.lost == tally.sent, f"{ctx}: {tally}"
    assert tally.lost <= kills, f"{ctx}: {tally}"
    assert len(set(tally.lost_pids)) == len(tally.lost_pids), f"{ctx}: a death cost two tasks"
    check_recovered(pool, killer.killed, ctx)
    print(
        f"\n{ctx.split(' (')[0]}: rounds={rounds} sent={tally.sent} completed={tally.completed} "
        f"lost={tally.lost} reruns={tally.reruns} kills={kills} "
        f"victim-states={dict(killer.states)} kinds={dict(tally.by_kind)} "
        f"time={time.monotonic() - start:.1f}s"
    )
    return tally


def test_kill_storm(
    make_pool: Callable[..., WorkerService], transport: str, tmp_path: Path
) -> None:
    pool = make_pool(WORKERS)
    ctx = f"kill storm, transport={transport}, seed={SEED}"
    tally = run_storm(pool, tmp_path, retries=0, ctx=ctx)
    assert tally.reruns == 0, f"{ctx}: a task ran twice without retries: {tally}"


def test_kill_storm_with_retries(
    make_pool: Callable[..., WorkerService], transport: str, tmp_path: Path
) -> None:
    # A task is lost only once its fourth run was killed too (settle checks the attempt).
    pool = make_pool(WORKERS, retries=3)
    run_storm(
        pool,
        tmp_path,
        retries=3,
        ctx=f"kill storm with retries=3, transport={transport}, seed={SEED}",
    )


# -- killed while reading a 64 MiB argument -----------------------------------------

READ_ROUNDS = 12
MID_READ_WANTED = 3
"""Rounds stop early once this many kills landed before a task could start."""


def test_kill_while_reading_big_argument(
    make_pool: Callable[..., WorkerService], transport: str, tmp_path: Path
) -> None:
    # Each round hands each of the three workers a 64 MiB argument at once and
    # SIGKILLs one of them at a random instant within the time the arguments
    # take to arrive (measured in two first rounds without a kill). The task
    # records its pid only once its argument is read and unpickled, so a lost
    # task with no pid recorded was killed while its argument was in transit.
    pool = make_pool(WORKERS)
    ctx = f"kill while reading, transport={transport}, seed={SEED}"
    rng = random.Random(SEED + 3)
    args = [faults.pattern(300 + i, BIG) for i in range(WORKERS)]
    digests = [faults.digest(a) for a in args]
    killed: list[int] = []
    outcomes: Counter[str] = Counter()
    start = time.monotonic()

    def submit_round(name: str) -> list[tuple[int, Path, TaskFuture[Any]]]:
        order = rng.sample(range(WORKERS), WORKERS)
        batch = []
        for i in order:
            pid_file = tmp_path / f"{name}-{i}"
            future = pool.submit(faults.record_pid_then, str(pid_file), faults.digest, args[i])
            batch.append((i, pid_file, future))
        return batch

    # Warm-up: every worker started and idle, then how long three arguments take to arrive.
    # (A barrier: each task waits for the gate, opened once all of them run.)
    gate, started = tmp_path / "gate", tmp_path / "started"
    warm = [
        pool.submit(faults.record_pid_then, str(started), faults.wait_for_file, str(gate))
        for _ in range(WORKERS)
    ]
    faults.wait_for_pids(started, WORKERS, RESULT_TIMEOUT)
    gate.touch()
    assert len({unkilled(f, ctx) for f in warm}) == WORKERS, ctx
    window = RESULT_TIMEOUT
    for warm_round in range(2):  # the shorter of two: a load spike must not stretch it
        t0 = time.monotonic()
        batch = submit_round(f"warm{warm_round}")
        for _, pid_file, _ in batch:
            faults.wait_for_pids(pid_file, 1, RESULT_TIMEOUT)
        window = min(window, time.monotonic() - t0)
        for i, _, future in batch:
            assert unkilled(future, ctx) == digests[i], ctx

    rounds = 0
    while rounds < READ_ROUNDS and outcomes["mid-read"] < MID_READ_WANTED:
        rounds += 1
        where = f"{ctx}, round {rounds}, window {window:.3f}s"
        assert poll_until(lambda: full_strength(pool, killed), 10.0), (
            f"{where}: workers {pool.worker_pids()}, killed {killed}"
        )
        pids = pool.worker_pids()
        victim = rng.choice(sorted(pids))
        delay = rng.uniform(0.0, window)
        t0 = time.monotonic()
        batch = submit_round(f"r{rounds}")
        time.sleep(max(0.0, delay - (time.monotonic() - t0)))
        assert victim in pool.worker_pids(), where  # ours, alive, never killed before
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

        _, not_done = cf.wait([f for _, _, f in batch], timeout=RESULT_TIMEOUT)
        assert not not_done, f"{where}: {len(not_done)} futures unresolved (victim {victim})"
        lost = 0
        for i, pid_file, future in batch:
            runs = faults.read_pids(pid_file)
            exc = future.exception(timeout=0)
            if exc is None:
                assert future.result(timeout=0) == digests[i], f"{where}: wrong digest for arg {i}"
                assert len(runs) == 1, f"{where}: arg {i} ran {runs}"
                continue
            if not isinstance(exc, WorkerLost):
                raise AssertionError(f"{where}: unexpected {exc!r}") from exc
            assert (exc.task_id, exc.pid, exc.exitcode, exc.signal, exc.attempt) == (
                future.task_id,
                victim,
                -9,
                "SIGKILL",
                1,
            ), f"{where}: {exc!r}"
            assert runs in ([], [victim]), f"{where}: arg {i} ran {runs}"
            lost += 1
            outcomes["mid-read" if not runs else "mid-task"] += 1
        assert lost <= 1, f"{where}: one kill cost {lost} tasks"
        if not lost:
            outcomes["harmless"] += 1

    check_recovered(pool, killed, f"{ctx} after {rounds} rounds")
    print(
        f"\n{ctx}: rounds={rounds} sent={WORKERS * (rounds + 2)} window={window:.3f}s "
        f"kills={len(killed)} {dict(outcomes)} time={time.monotonic() - start:.1f}s"
    )
    assert outcomes["mid-read"] >= 1, f"{ctx}: no kill landed while an argument was read {outcomes}"
