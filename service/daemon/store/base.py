"""The ``Store`` contract: where a daemon's tasks live, and the only door to them.

```
 scheduler ── accept(batch) ──────────▶ one transaction ── commit ──▶ reply "accepted"
     │                                                       └──▶ hint "queued" (after commit)
     ├── claim(names, n) ──▶ due tasks, state running, lease owner = this daemon, attempt + 1
     ├── heartbeat() ─────▶ this daemon's lease row: every run it holds stays its own
     ├── finish / requeue(run) ── only if (task, attempt, owner) still match (the fence)
     ├── cancel_queued(task) ─▶ a queued task, by any daemon
     │                                                       └──▶ hint "finished" (after commit)
     ├── recover() ───────▶ runs whose owner's lease expired: queued again, or quarantined
     └── get / by_key / recent / counts / next_due / prune(batch)
 listener.wait(timeout) ◀── hints: "queued", "finished" (task id), "resync" (hints were lost)
```

A backend is one file beside this one: ``postgres.py`` (any number of daemons on
one database) and, later, ``sqlite.py`` (one daemon per file). The scheduler
talks to a ``Store`` and never sees SQL; the contract suite in
``tests/store/test_contract.py`` runs against every backend.

**Rows.** A task is a ``TaskRecord`` (``service.daemon.journal``), in one of the
states of ``pipework.protocol.TaskState``: ``queued``, ``running``, then one
terminal state (``TERMINAL``). JSON fields are text; ``args_json`` and
``kwargs_json`` are stored exactly as given (canonical JSON, so that two equal
submits compare equal as text). ``history_json`` is a JSON array with one entry
per attempt that ended without an outcome (its worker died, or its daemon's
lease expired); a backend may re-serialise it, so read it with ``json.loads``.
Times (``created_at``, ``not_before``, ``started_at``, ``finished_at``,
lease expiries) are epoch seconds **on the store's clock** (the database
server's, for PostgreSQL), so that daemons on hosts whose clocks disagree still
agree on what is due and which lease has expired. Callers pass durations
(``delay``, ``older_than``), never instants.

**accept(submits).** One transaction for the batch. A submit whose ``key`` is
free becomes a new ``queued`` task; one whose key is held (by a task not yet
pruned, or by an earlier submit of the same batch) is answered with the task
that holds it: ``duplicate`` when the name, ``args_json`` and ``kwargs_json``
are equal, ``key_conflict`` otherwise; neither writes anything. When
``accept`` returns, every ``accepted`` task is committed: the daemon replies to
its clients only then. When it raises ``StoreUnavailable`` the batch may or may
not have been committed (the connection broke during the commit): the daemon
must not acknowledge it; a client that submits again with the same key gets
either a ``duplicate`` or a new task, never two tasks.

**claim(names, limit).** Up to ``limit`` tasks that are ``queued``, due
(``not_before`` is past) and named in ``names``, highest ``priority`` first,
then in submit order (``seq``). Each becomes ``running`` with ``attempts``
increased by one, ``started_at`` set, and this daemon (``daemon_id``) as its
lease owner, in one transaction: two daemons claiming at the same instant never
get the same task, and neither waits for the other (PostgreSQL: ``FOR UPDATE
SKIP LOCKED``). A claim also renews this daemon's lease. The returned ``Run``
carries the fence: (task id, attempt, owner).

**Leases.** A daemon's lease is one row (its ``daemon_id``, host, pid, and an
expiry ``lease_ttl`` seconds after its last ``heartbeat()`` or claim). Every
run it owns is held by that one lease: the daemon renews all of them with one
write. ``heartbeat()`` returns the lease, with the runs the store still credits
to this daemon; a run missing from it was taken back by ``recover()`` and its
result will be refused, so the daemon should stop it (or at least not wait
for it). A daemon times its own lease from when it *sent* its last successful
renewal, on its own monotonic clock, and treats the lease as lost ``lease_ttl``
seconds after that, whatever ``expires_at`` says: so neither clock skew nor a
slow reply makes it believe it holds a lease another daemon may have taken.

**finish(runs) / requeue(runs).** One transaction for the batch. Each item is
recorded only if its fence still holds: the task is ``running``, its
``attempts`` equals the run's attempt and its lease owner is this daemon. A
fenced-out item changes nothing and is answered with ``None`` (``finish``) or
``False`` (``requeue``): a daemon that lost its lease cannot record a result,
so a task gets **one recorded result** even when it ran twice. (A lease that
expired but was not recovered yet still holds: nobody else could have started
the task.) ``finish`` moves a run to a terminal state with its result or
error; ``requeue`` puts it back to ``queued`` (a worker died under it with
retries left, or the daemon is draining), appending a history entry if given.
Deciding between the two after a worker death is the caller's, with
``is_quarantined`` below; ``recover()`` uses the same rule.

**cancel_queued(task_id, error_json).** A ``queued`` task becomes ``cancelled``
with that error, whichever daemon asks; a task in any other state is left as
it is and ``None`` returned (a running task is cancelled by its owner, which
then finishes its run as ``cancelled`` through the fence).

**recover(limit).** Runs whose owner holds no live lease (it expired, or the
owner row is gone) are settled as if their worker died: a history entry
``{"attempt", "outcome": "lease_expired", "daemon", "at"}`` is appended, and the
task goes back to ``queued`` while its losses stay within ``retries``, else to
``quarantined`` with a ``WorkerLost`` error (the same budget a worker death
uses: a task that keeps killing whatever runs it stops). Any daemon may call
it, any number at once: each run is recovered once. Expired lease rows that
own nothing are deleted. Returns the recovered tasks as they are now.

**Hints.** ``listen()`` opens a ``Listener``; its ``wait(timeout)`` returns the
hints received within ``timeout`` seconds: ``queued`` (tasks may be due: claim),
``finished`` with a task id (a result waiter on this daemon may read it), and
``resync`` (the listener lost its connection: hints may have been missed, so
poll). Hints are sent after the commit, outside the transaction that made
them (PostgreSQL's NOTIFY inside a transaction serialises commits), and may be
lost: a scheduler claims on a bounded poll as well, and a waiter re-reads
its task on a bounded poll. ``next_due(names)`` says when the earliest queued
task becomes due, so a scheduler can sleep until then.

**Reads and pruning.** ``get``, ``by_key``, ``recent(state, limit)`` (newest
first), ``counts()`` (every state in ``STATES``). ``prune(older_than, limit)``
deletes at most ``limit`` terminal tasks that finished more than
``older_than`` seconds ago, oldest first, and frees their keys; the caller
repeats it while it returns ``limit``, so no transaction holds many rows.

**Schema.** Opening a store migrates its schema to ``SCHEMA_VERSION``: one
opener migrates (under a lock; PostgreSQL: an advisory lock), the others wait
and then find nothing to do. A schema newer than this code is refused with
``StoreError``, never guessed at.

**Errors.** ``StoreUnavailable`` when the store cannot be reached (the call's
writes are not known to be committed; the next call reconnects), ``StoreError``
for the rest. A store object is used by one thread; ``Listener`` objects have
their own connection and may live on another thread.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from pipework.service.daemon.journal import STATES, TERMINAL, TaskRecord
from pipework.service.errors import PipeworkError

__all__ = [
    "STATES",
    "TERMINAL",
    "Accepted",
    "Event",
    "Finish",
    "Lease",
    "Listener",
    "Requeue",
    "Run",
    "RunRef",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Submit",
    "TaskRecord",
    "is_quarantined",
    "lease_lost_entry",
    "quarantine_error",
]

AcceptStatus = Literal["accepted", "duplicate", "key_conflict"]
EventKind = Literal["queued", "finished", "resync"]

DEFAULT_LEASE_TTL: Final = 30.0
"""Seconds a daemon's lease lasts after its last heartbeat or claim."""


@dataclasses.dataclass(frozen=True, slots=True)
class Submit:
    """One task to accept; ``task_id`` is chosen by the caller, ``delay`` is in seconds."""

    task_id: str
    name: str
    args_json: str = "[]"
    kwargs_json: str = "{}"
    key: str | None = None
    priority: int = 0
    delay: float = 0.0
    timeout: float | None = None
    retries: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to one submit: the new task, or the one that holds its key."""

    status: AcceptStatus
    record: TaskRecord


@dataclasses.dataclass(frozen=True, slots=True)
class RunRef:
    """The fence of one run: it may be settled only while the task still shows all three."""

    task_id: str
    attempt: int
    owner: str


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """A claimed task: its record (state ``running``, ``attempts`` = this attempt) and owner."""

    record: TaskRecord
    owner: str

    @property
    def ref(self) -> RunRef:
        """The fence to pass to ``finish`` or ``requeue``."""
        return RunRef(self.record.task_id, self.record.attempts, self.owner)


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """Settle ``run`` in terminal ``state`` with its result or error (JSON text)."""

    run: RunRef
    state: str
    result_json: str | None = None
    error_json: str | None = None
    history_entry: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Requeue:
    """Put ``run`` back to ``queued``, appending ``history_entry`` if given."""

    run: RunRef
    history_entry: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A daemon's lease as the store holds it after a renewal."""

    daemon_id: str
    expires_at: float
    """Epoch seconds on the store's clock."""
    held: frozenset[tuple[str, int]]
    """(task id, attempt) of every run the store still credits to this daemon."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A hint from the store: tasks queued, a task finished, or hints lost (``resync``)."""

    kind: EventKind
    task_id: str | None = None


class StoreError(PipeworkError):
    """The store cannot be used: foreign or newer schema, bad settings, a failed statement.

    Attributes:
        store: where the store is (a URL without its password, or a path).
        reason: what went wrong.
    """

    _fields = ("store", "reason")

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = reason
        super().__init__(f"store {store}: {reason}")


class StoreUnavailable(StoreError):
    """The store cannot be reached now; what the call wrote is not known to be committed."""


class Listener(Protocol):
    """Hints from the store, on a connection of their own."""

    def fileno(self) -> int:
        """A descriptor that becomes readable when a hint may be waiting (for ``poll``)."""
        ...

    def wait(self, timeout: float) -> list[Event]:
        """The hints received within ``timeout`` seconds (at least one, or none at the bound).

        Never raises for a lost connection: it reconnects and returns ``resync``.
        """
        ...

    def close(self) -> None:
        """Stop listening; idempotent."""
        ...


class Store(Protocol):
    """Where a daemon's tasks live; see the module docstring for the whole contract."""

    @property
    def daemon_id(self) -> str:
        """The lease owner this store claims as."""
        ...

    @property
    def migrated(self) -> list[int]:
        """The schema versions this store applied when it opened (empty if none were due)."""
        ...

    def accept(self, submits: Sequence[Submit]) -> list[Accepted]:
        """Accept a batch of submits in one transaction, idempotently by key.

        Returns:
            One ``Accepted`` per submit, in order.

        Raises:
            StoreUnavailable: the store cannot be reached; acknowledge none of them.
        """
        ...

    def claim(self, names: Collection[str], limit: int) -> list[Run]:
        """Claim up to ``limit`` due tasks named in ``names`` under this daemon's lease."""
        ...

    def heartbeat(self) -> Lease:
        """Renew this daemon's lease (creating its row if needed)."""
        ...

    def finish(self, items: Sequence[Finish]) -> list[TaskRecord | None]:
        """Record terminal states; ``None`` for an item whose fence no longer holds."""
        ...

    def requeue(self, items: Sequence[Requeue]) -> list[bool]:
        """Put runs back in the queue; ``False`` for an item whose fence no longer holds."""
        ...

    def cancel_queued(self, task_id: str, error_json: str) -> TaskRecord | None:
        """Cancel a task that is still queued; None (and no change) if it is not queued."""
        ...

    def recover(self, limit: int = 1000) -> list[TaskRecord]:
        """Settle up to ``limit`` runs whose owner's lease expired, as a worker death."""
        ...

    def get(self, task_id: str) -> TaskRecord | None:
        """The task ``task_id``, or None."""
        ...

    def by_key(self, key: str) -> TaskRecord | None:
        """The task holding idempotency key ``key``, or None."""
        ...

    def recent(self, state: str | None, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` tasks, newest first, all or only those in ``state``."""
        ...

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state (every state in ``STATES``)."""
        ...

    def next_due(self, names: Collection[str]) -> float | None:
        """When the earliest queued task named in ``names`` is due (store clock), or None."""
        ...

    def prune(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` terminal tasks finished ``older_than`` seconds ago or more."""
        ...

    def listen(self) -> Listener:
        """Open a listener for hints."""
        ...

    def close(self) -> None:
        """Close the store's connections; idempotent. The lease is left to expire."""
        ...


def is_quarantined(history_json: str, retries: int) -> bool:
    """Whether one more lost attempt exhausts a task's budget (``retries`` re-runs).

    Args:
        history_json: the task's history before this loss.
        retries: the re-runs allowed after a lost attempt.
    """
    return len(json.loads(history_json)) + 1 > retries


def lease_lost_entry(attempt: int, daemon_id: str, at: float) -> dict[str, Any]:
    """The history entry of a run whose daemon's lease expired."""
    return {"attempt": attempt, "outcome": "lease_expired", "daemon": daemon_id, "at": at}


def quarantine_error(losses: int, last: str) -> dict[str, str]:
    """The error of a task quarantined after ``losses`` lost attempts, the last as ``last``."""
    message = (
        f"its worker died on each of its {losses} attempts; last: {last}" if losses > 1 else last
    )
    return {"type": "WorkerLost", "message": message, "traceback": ""}
