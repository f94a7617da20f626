"""The daemon's journal: every task it accepted, in an embedded SQLite database.

```
 daemon loop ── insert / started / requeue / finish / prune ──▶ open transaction (BEGIN IMMEDIATE)
      │                                                           (nothing durable yet)
      └── flush() ── COMMIT: one WAL append + one fsync for every write since the last flush
                     (group commit), then the daemon replies "accepted" to those clients
 restart ── Journal(path) ── recover(): queued + running tasks, running ones set back to queued
```

One table, one row per task (its arguments, state, attempts, result or error,
and the history of attempts its worker died under), in WAL mode. Writes go
into one open transaction that ``flush()`` commits, so that a burst of
submits costs one fsync, not one each; the daemon acknowledges a submit only
after the flush that covers it returns. Reads see this connection's own
unflushed writes.

**Threads.** Only the daemon's single loop thread uses a ``Journal``. The
connection keeps ``sqlite3``'s default ``check_same_thread=True``, so another
thread touching it fails loudly instead of racing.

**Durability**, by ``sync`` mode (``PRAGMA synchronous`` in WAL mode). A
write not yet flushed is never durable: it is rolled back by ``close()``, by
a crash, by anything. A flushed write:

| sync       | ``kill -9`` of the daemon | OS crash or power loss                      |
|------------|---------------------------|---------------------------------------------|
| ``full``   | survives                  | survives: the WAL is fsynced by ``flush()`` |
| ``normal`` | survives                  | the flushes since the last checkpoint       |
|            |                           | (about every 4 MiB of WAL) may be rolled    |
|            |                           | back; the file is never corrupted           |
| ``off``    | survives                  | recent flushes may be lost, and the file    |
|            |                           | may be corrupted                            |
| in memory  | lost                      | lost                                        |

``kill -9`` loses nothing flushed in any file mode because a commit has
written the WAL into the OS page cache before ``flush()`` returns; only the
kernel's own death can lose what it has not written to the disk yet. ``full``
is the default: the daemon promises that an acknowledged task survives.
(All of this assumes a disk that honours fsync, and a local file system:
SQLite's locking is unreliable over NFS.)

**One process per journal.** ``Journal(path)`` takes an exclusive ``flock``
on ``<path>.lock`` and raises ``JournalLocked`` if another process holds it.
The kernel drops the lock when its holder dies, so a ``kill -9`` never leaves
a stale lock behind; a child forked from the holder closes its inherited copy
of the lock at once, so a forked worker outliving a killed daemon does not
keep the journal locked either.

**Size.** ``prune()`` deletes finished tasks past their TTL; SQLite reuses
the freed pages, and the database is created with ``auto_vacuum=INCREMENTAL``
so that after a large backlog drains, ``prune()`` hands most of the free
pages back to the file system. The WAL is truncated back to
``WAL_SIZE_LIMIT`` after each checkpoint.

**A full disk** (or any write error) never loses what was acknowledged: the
open transaction is rolled back, ``flush()`` raises ``JournalUnavailable``
naming the inserted tasks that are not durable (the caller must refuse those
submits), and every other write since the last commit (``started``,
``requeue``, ``finish``) is kept in memory and replayed into the next
transaction, so reads still see it and the next successful ``flush()`` makes
it durable. ``failure`` says why the last commit failed, until one succeeds.

**Damage.** Every commit also counts itself in the ``meta`` table, and the
count of the last commit is written into the lock file (a ``pwrite``, no
fsync). At open, before anything is written, a read-only connection runs
``PRAGMA quick_check`` (``integrity_check`` for files up to
``FULL_CHECK_BYTES``) and compares the two counts: a journal whose check
fails, or that holds fewer commits than the lock file says were made (its
``-wal`` file was deleted, truncated, corrupted or replaced after an unclean
stop), is refused with ``JournalDamaged`` and left untouched. ``salvage()``
keeps the damaged files aside and builds a new journal from every row still
readable. A clean ``close()`` checkpoints the WAL into the main file
(``wal_checkpoint(TRUNCATE)``), so a stopped journal is one file.

**Schema versions.** ``PRAGMA user_version`` holds the schema version and
``PRAGMA application_id`` marks the file as a pipework journal; a journal
written by a newer pipework, or an SQLite file that is not a journal, is
refused with ``JournalError`` rather than guessed at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import operator
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar, final

from pipework.protocol.messages import TERMINAL_STATES, TaskState
from pipework.service.errors import PipeworkError

__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "TERMINAL",
    "Journal",
    "JournalDamaged",
    "JournalError",
    "JournalLocked",
    "JournalSync",
    "JournalUnavailable",
    "TaskRecord",
    "salvage",
]

JournalSync = Literal["full", "normal", "off"]

TERMINAL: Final[frozenset[str]] = frozenset(s.value for s in TERMINAL_STATES)
"""The states a task never leaves (``pipework.protocol.TERMINAL_STATES``)."""

STATES: Final[tuple[str, ...]] = tuple(s.value for s in TaskState)
"""Every state a task can be in, in life order (the keys of ``Journal.counts()``)."""

SCHEMA_VERSION: Final = 2
"""The schema this module writes (``PRAGMA user_version``)."""

APPLICATION_ID: Final = 0x70697065
"""``PRAGMA application_id`` of a pipework journal: ASCII "pipe"."""

WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""Bytes the WAL file is truncated back to after a checkpoint (``journal_size_limit``)."""

FULL_CHECK_BYTES: Final = 16 * 1024 * 1024
"""Journals up to this size get ``PRAGMA integrity_check`` at open; larger ones ``quick_check``."""

_SALVAGE: Final = (
    "It is left untouched; `pipework serve --journal-recover` keeps the damaged files "
    "aside and starts on a new journal holding every task still readable"
)
_CACHE_KIB: Final = 16 * 1024
_BUSY_TIMEOUT: Final = 5.0
# Free pages kept for reuse after a prune; beyond this, prune vacuums the excess away.
_KEEP_FREE_PAGES: Final = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as the journal holds it; JSON fields are text, stored as given."""

    task_id: str
    name: str
    key: str | None
    args_json: str
    kwargs_json: str
    state: str
    """``queued``, ``running`` or one of ``TERMINAL``."""
    priority: int
    not_before: float
    """Epoch seconds before which the task may not start; 0.0 for no delay."""
    timeout: float | None
    retries: int
    """Re-runs allowed after the task's worker dies under it."""
    attempts: int
    """How many times the task has been started."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_json: str | None
    error_json: str | None
    history_json: str
    """A JSON array with one entry per attempt that ended without an outcome; ``"[]"``."""
    seq: int
    """Insertion order, assigned by ``Journal.add`` (FIFO among equal priorities)."""


class JournalError(PipeworkError):
    """The journal cannot be opened or used: unreadable, corrupt, foreign or too new.

    Attributes:
        path: the database file (``":memory:"`` for an in-memory journal).
        reason: what went wrong.
    """

    _fields: tuple[str, ...] = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"journal {path}: {reason}")


class JournalLocked(JournalError):
    """Another live process holds this journal."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        super().__init__(
            path,
            reason
            or f"another live process holds its lock ({path}.lock); "
            "is another pipework daemon running on this journal?",
        )


class JournalUnavailable(JournalError):
    """The journal cannot take writes now (disk full, I/O error): nothing since the last
    successful ``flush()`` is durable.

    Attributes:
        lost: the ids of the tasks inserted since the last successful flush: they are
            not in the journal; whoever accepted them must refuse them.
    """

    _fields = ("path", "reason", "lost")

    def __init__(self, path: str, reason: str, lost: tuple[str, ...] = ()) -> None:
        self.lost = lost
        super().__init__(path, reason)


class JournalDamaged(JournalError):
    """The journal failed its check at open, or is missing commits: refused, left untouched.

    ``salvage(path)`` keeps the damaged files aside and rebuilds from what is readable.
    """


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(TaskRecord))
_COLUMNS: Final = ", ".join(_FIELDS)
_insert_values: Final = operator.attrgetter(*_FIELDS[:-1])  # every field but seq, as a tuple
_TERMINAL_SQL: Final = ", ".join(f"'{s}'" for s in sorted(TERMINAL))

_SCHEMA: Final = f"""
CREATE TABLE tasks (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      TEXT    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    key          TEXT,
    args_json    TEXT    NOT NULL,
    kwargs_json  TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    not_before   REAL    NOT NULL,
    timeout      REAL,
    retries      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   REAL    NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    result_json  TEXT,
    error_json   TEXT,
    history_json TEXT    NOT NULL
);
CREATE UNIQUE INDEX tasks_key ON tasks (key) WHERE key IS NOT NULL;
CREATE INDEX tasks_state ON tasks (state);
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    commits INTEGER NOT NULL
);
INSERT INTO meta (id, commits) VALUES (1, 0);
PRAGMA user_version = {SCHEMA_VERSION};
PRAGMA application_id = {APPLICATION_ID};
"""
# Version 1 had no meta table: it counted no commits.
_MIGRATE_1_TO_2: Final = """
CREATE TABLE meta (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    commits INTEGER NOT NULL
);
INSERT INTO meta (id, commits) VALUES (1, 0);
PRAGMA user_version = 2;
"""
_BUMP: Final = "UPDATE meta SET commits = ? WHERE id = 1"
_SIDECAR_SIZE: Final = 64

# One SQL string per statement: sqlite3 caches the prepared statement by its text.
_INSERT: Final = (
    f"INSERT INTO tasks ({', '.join(_FIELDS[:-1])}) VALUES ({', '.join('?' * (len(_FIELDS) - 1))})"
)
_STARTED: Final = (
    "UPDATE tasks SET state = 'running', attempts = ?, started_at = ? WHERE task_id = ?"
)
_REQUEUE: Final = "UPDATE tasks SET state = 'queued' WHERE task_id = ?"
_REQUEUE_H: Final = "UPDATE tasks SET state = 'queued', history_json = ? WHERE task_id = ?"
_FINISH: Final = (
    "UPDATE tasks SET state = ?, finished_at = ?, result_json = ?, error_json = ? WHERE task_id = ?"
)
_FINISH_H: Final = (
    "UPDATE tasks SET state = ?, finished_at = ?, result_json = ?, error_json = ?,"
    " history_json = ? WHERE task_id = ?"
)
_HISTORY: Final = "SELECT history_json FROM tasks WHERE task_id = ?"
_RECOVER: Final = "UPDATE tasks SET state = 'queued' WHERE state = 'running'"
_GET: Final = f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?"
_BY_KEY: Final = f"SELECT {_COLUMNS} FROM tasks WHERE key = ?"
_UNFINISHED: Final = (
    f"SELECT {_COLUMNS} FROM tasks WHERE state IN ('queued', 'running')"
    " ORDER BY priority DESC, seq ASC"
)
_COUNTS: Final = "SELECT state, count(*) FROM tasks GROUP BY state"
_RECENT: Final = f"SELECT {_COLUMNS} FROM tasks ORDER BY seq DESC LIMIT ?"
_RECENT_IN: Final = f"SELECT {_COLUMNS} FROM tasks WHERE state = ? ORDER BY seq DESC LIMIT ?"
# "+state": keep the planner on tasks_finished (a range scan), not on tasks_state
# (every done task, then a sort); the state test is only a guard.
_PRUNE: Final = (
    "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks"
    f" WHERE finished_at < ? AND +state IN ({_TERMINAL_SQL}) ORDER BY finished_at LIMIT ?)"
)

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Lock descriptors this process holds; a forked child closes its copies (see _drop_inherited).
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    # flock belongs to the open file description, which fork shares: a forked worker
    # keeping its copy would hold the journal locked after the daemon died.
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _sql_errors(
    method: Callable[Concatenate[Journal, _P], _R],
) -> Callable[Concatenate[Journal, _P], _R]:
    """Turn SQLite's errors (other than constraint violations) into ``JournalError``."""

    @functools.wraps(method)
    def wrapper(self: Journal, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            self._after_error(exc)
            raise JournalError(self._name, f"{method.__name__}() failed: {exc}") from exc

    return wrapper


def _make_dirs(directory: str) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@final
class Journal:
    """The daemon's task journal: an SQLite database in WAL mode, written by group commit.

    Writes (``add``/``insert``, ``started``, ``requeue``, ``finish``, ``prune``) go into one
    open transaction and are durable only once ``flush()`` commits it. Reads
    see every write so far, flushed or not. Use from one thread only.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, sync: JournalSync = "full") -> None:
        """Open (creating if needed) the journal at ``path`` and lock it for this process.

        Args:
            path: the database file; its parent directories are created with mode
                0700 and the file with mode 0600. ``None`` keeps the journal in
                memory: the same API with nothing on disk (the daemon's "journal off").
            sync: how hard ``flush()`` pushes a commit to the disk; see the module
                docstring for what each mode survives.

        Raises:
            JournalLocked: another live process holds ``<path>.lock``.
            JournalError: the file is not a readable SQLite database, is an SQLite
                database that is not a journal, or was written by a newer schema.
            ValueError: ``sync`` is not one of ``full``, ``normal``, ``off``.
        """
        if sync not in ("full", "normal", "off"):
            raise ValueError(f"sync must be 'full', 'normal' or 'off', not {sync!r}")
        self._path = None if path is None else os.fspath(path)
        self._name = ":memory:" if self._path is None else self._path
        self._sync: JournalSync = sync
        self._pid = os.getpid()
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._writes = 0
        # Since the last successful commit: tasks inserted, and the other writes, as
        # calls that redo them (replayed into a new transaction after a rollback).
        self._inserted: list[str] = []
        self._redo: list[Callable[[sqlite3.Connection], int]] = []
        self._replay = False  # the redo list is not in the open transaction: replay it
        self._lost: list[str] = []  # inserted tasks an error rolled back; flush() raises
        self._failure: str | None = None
        self._commits = 0
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalError(self._name, f"cannot open: {exc}") from exc
        except OSError as exc:  # a read-only or foreign-owned directory, lock or file
            self.close()
            where = f" {exc.filename}" if exc.filename else ""
            raise JournalError(self._name, f"cannot open:{where}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> str | None:
        """The database file, or None for an in-memory journal."""
        return self._path

    @property
    def sync(self) -> JournalSync:
        """The ``sync`` mode this journal was opened with."""
        return self._sync

    @property
    def failure(self) -> str | None:
        """Why the last commit failed (disk full...), until one succeeds; None when writable."""
        return self._failure

    @property
    def commits(self) -> int:
        """Commits made to this journal since it was created (the ``meta`` count)."""
        return self._commits

    def _open(self) -> None:
        if self._path is None:
            self._conn = sqlite3.connect(":memory:", isolation_level=None)
        else:
            path = self._path
            directory = os.path.dirname(os.path.abspath(path))
            _make_dirs(directory)
            self._lock(path + ".lock")
            made = self._read_sidecar()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass
            else:
                # A new, empty file is a valid empty database; SQLite gives its -wal and
                # -shm files the same mode. Sync the directory so the file's name is durable.
                os.close(fd)
                if self._sync != "off":
                    _fsync_dir(directory)
            self._check_damage(path, made)
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == 0 and app_id == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise JournalError(self._name, "is an SQLite database but not a pipework journal")
            # auto_vacuum can only be chosen before the first table exists.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._set_wal()
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        elif app_id != APPLICATION_ID:
            raise JournalError(
                self._name,
                f"is an SQLite database but not a pipework journal (application_id {app_id:#x})",
            )
        elif version > SCHEMA_VERSION:
            raise JournalError(
                self._name,
                f"has schema version {version}, newer than this pipework reads "
                f"({SCHEMA_VERSION}); upgrade pipework or give the daemon another journal",
            )
        elif version < 1:
            raise JournalError(self._name, f"has an unknown schema version {version}")
        else:
            self._set_wal()
            if version == 1:
                conn.executescript(f"BEGIN IMMEDIATE; {_MIGRATE_1_TO_2} COMMIT;")
        self._commits = conn.execute("SELECT commits FROM meta WHERE id = 1").fetchone()[0]
        self._write_sidecar()
        conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")

    def _set_wal(self) -> None:
        assert self._conn is not None
        if self._path is None:
            return
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(self._name, f"cannot switch to WAL mode (got {mode!r})")

    def _read_sidecar(self) -> int | None:
        """The commit count the lock file holds, or None (a new or older journal)."""
        assert self._lock_fd is not None
        text = os.pread(self._lock_fd, _SIDECAR_SIZE, 0).decode("ascii", "replace")
        match = re.match(r"pipework journal: (\d+) commits\n", text)
        return int(match.group(1)) if match else None

    def _write_sidecar(self) -> None:
        if self._lock_fd is None:
            return
        line = f"pipework journal: {self._commits} commits\n".encode()
        # Best effort: a count that is behind (disk full) only weakens the check.
        with contextlib.suppress(OSError):
            os.pwrite(self._lock_fd, line.ljust(_SIDECAR_SIZE - 1) + b"\n", 0)

    def _check_damage(self, path: str, made: int | None) -> None:
        """Refuse a journal that fails SQLite's check or lost commits; read only, writes nothing.

        Read-only, so that a refused journal is left exactly as it was found (a
        read-write connection would checkpoint and delete the -wal file on close).
        """
        size = os.path.getsize(path)
        wal = path + "-wal"
        if size == 0 and not os.path.exists(wal):
            if made:
                raise JournalDamaged(
                    self._name,
                    f"is empty, but its lock file records {made} commits made to it: the "
                    f"-wal file that held them ({wal}) is gone. {_SALVAGE}",
                )
            return
        had_wal = os.path.exists(wal)
        uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
        ro = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT)
        try:
            self._check_with(ro, size, made, wal)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_CORRUPT:
                raise
            raise JournalDamaged(self._name, f"is corrupt: {exc}. {_SALVAGE}") from exc
        finally:
            ro.close()
            # Opening a WAL database makes an empty -wal file: leave none where none was.
            if not had_wal and os.path.exists(wal) and os.path.getsize(wal) == 0:
                with contextlib.suppress(OSError):
                    os.unlink(wal)

    def _check_with(self, ro: sqlite3.Connection, size: int, made: int | None, wal: str) -> None:
        app_id = ro.execute("PRAGMA application_id").fetchone()[0]
        version = ro.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID or not 1 <= version <= SCHEMA_VERSION:
            if made and app_id == 0 and version == 0:
                raise JournalDamaged(
                    self._name,
                    f"holds no journal, but its lock file records {made} commits made "
                    f"to it: the -wal file that held them ({wal}) was deleted or "
                    f"replaced. {_SALVAGE}",
                )
            return  # not a journal, or a newer one: _open says which
        check = "integrity_check" if size <= FULL_CHECK_BYTES else "quick_check"
        problems = [row[0] for row in ro.execute(f"PRAGMA {check}(20)")]
        if problems != ["ok"]:
            raise JournalDamaged(
                self._name,
                f"fails SQLite's {check}: {'; '.join(problems[:5])}. {_SALVAGE}",
            )
        if version < 2 or not made:
            return
        have = ro.execute("SELECT commits FROM meta WHERE id = 1").fetchone()[0]
        if have < made:
            raise JournalDamaged(
                self._name,
                f"holds {have} commits but its lock file records {made}: the last "
                f"{made - have} commits are missing (its -wal file was deleted, "
                f"truncated, corrupted or replaced after an unclean stop). {_SALVAGE}",
            )

    def _lock(self, lock_path: str) -> None:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalLocked(self._name) from None
        except OSError as exc:
            os.close(fd)
            raise JournalError(self._name, f"cannot lock {lock_path}: {exc}") from exc
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)

    def close(self) -> None:
        """Roll back any unflushed writes, close the database and release the lock.

        Idempotent. In a process forked from the one that opened the journal,
        it only forgets the journal (the connection and lock are the parent's).
        """
        conn, self._conn = self._conn, None
        fd, self._lock_fd = self._lock_fd, None
        self._writes = 0
        if os.getpid() != self._pid:
            return
        if conn is not None:
            try:
                # Closing discards the transaction anyway; a failed ROLLBACK changes nothing.
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if self._path is not None and self._failure is None:
                    # A clean stop leaves one file: everything the WAL held is in it.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        if fd is not None:
            _HELD_LOCKS.discard(fd)
            os.close(fd)  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self._writes} unflushed writes"
        return f"<Journal {self._name} sync={self._sync} {state}>"

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(self._name, "is closed")
        return self._conn

    def _after_error(self, exc: sqlite3.Error) -> None:
        conn = self._conn
        if conn is not None and (self._inserted or self._redo) and not conn.in_transaction:
            # SQLite rolled the whole transaction back (disk full, I/O error), and the
            # next write would silently open a new one: flush() must not report success.
            self._fail(exc)

    def _fail(self, exc: BaseException | None) -> None:
        """A write or commit failed: roll back, note the lost inserts, replay the rest."""
        if exc is not None or self._failure is None:
            self._failure = str(exc or "rolled back")
        conn = self._conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        self._lost.extend(self._inserted)
        self._inserted.clear()
        self._writes = 0
        self._replay = bool(self._redo)
        if self._replay:
            # Now, so that reads see what the daemon did (a task finished...) while the
            # disk is full; on a second failure the next write or flush tries again.
            with contextlib.suppress(sqlite3.DatabaseError):
                self._begin()

    def _begin(self) -> sqlite3.Connection:
        conn = self._db
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            if self._replay:
                try:
                    for redo in self._redo:
                        redo(conn)
                except sqlite3.DatabaseError:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                self._replay = False
                self._writes = len(self._redo)
        return conn

    def _write(self, apply: Callable[[sqlite3.Connection], int], task_id: str) -> None:
        """Run one write (not an insert) and keep it for replay; KeyError if no such task.

        A write the disk refuses is not an error here: it is kept, replayed, and made
        durable by a later ``flush()``; that ``flush()`` reports the failure.
        """
        try:
            conn = self._begin()
            done = apply(conn)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            self._redo.append(apply)
            self._fail(exc)
            return
        if done == 0:
            raise KeyError(task_id)
        self._redo.append(apply)
        self._writes += 1

    def _insert_failed(self, exc: sqlite3.DatabaseError, task_id: str) -> JournalUnavailable:
        self._fail(exc)
        return JournalUnavailable(self._name, f"cannot insert task {task_id}: {exc}")

    def _history_with(
        self, conn: sqlite3.Connection, task_id: str, entry: Mapping[str, Any]
    ) -> str | None:
        row = conn.execute(_HISTORY, (task_id,)).fetchone()
        if row is None:
            return None
        history = json.loads(row[0])
        history.append(dict(entry))
        return json.dumps(history, separators=(",", ":"))

    # -- writes ---------------------------------------------------------------------------------

    @_sql_errors
    def add(self, rec: TaskRecord) -> TaskRecord:
        """Insert a new queued task (unflushed until ``flush()``).

        Args:
            rec: the task; its ``state`` must be ``"queued"``; its ``seq`` is ignored.

        Returns:
            ``rec`` with ``seq`` set to its insertion order.

        Raises:
            ValueError: ``rec.state`` is not ``"queued"``, or the journal already
                holds a task with this ``task_id`` or this ``key``.
        """
        if rec.state != "queued":
            raise ValueError(f"add() takes a queued task, not one in state {rec.state!r}")
        values: tuple[Any, ...] = _insert_values(rec)
        try:
            conn = self._begin()
            cur = conn.execute(_INSERT, values)
        except sqlite3.IntegrityError as exc:
            # Only this statement is undone: the transaction and earlier writes stay.
            held = None if rec.key is None else self.by_key(rec.key)
            if held is not None:
                what = f"key {rec.key!r} is held by task {held.task_id}"
            elif self.get(rec.task_id) is not None:
                what = f"task_id {rec.task_id!r} is already in the journal"
            else:
                what = str(exc)
            raise ValueError(f"cannot add task {rec.task_id}: {what}") from exc
        except sqlite3.DatabaseError as exc:
            raise self._insert_failed(exc, rec.task_id) from exc
        self._inserted.append(rec.task_id)
        self._writes += 1
        # Not dataclasses.replace: twice the cost of a plain construction.
        seq = cur.lastrowid
        assert seq is not None
        return TaskRecord(*(*values, seq))

    @_sql_errors
    def insert(self, rec: TaskRecord) -> int | None:
        """Insert a new queued task unless its key is held: the hot path of a submit.

        One statement where ``by_key`` then ``add`` would take two: the key's
        unique index does the lookup, and a conflict undoes only this statement.

        Args:
            rec: the task; its ``state`` must be ``"queued"``; its ``seq`` is ignored
                (the record is not rebuilt with the new one: that costs more than the insert's
                Python side, and the caller can pair the two).

        Returns:
            Its ``seq`` (insertion order), or None if another task holds ``rec.key``
            (nothing was written; ``by_key`` finds that task).

        Raises:
            ValueError: ``rec.state`` is not ``"queued"``, or the journal already
                holds a task with this ``task_id``.
        """
        if rec.state != "queued":
            raise ValueError(f"insert() takes a queued task, not one in state {rec.state!r}")
        try:
            conn = self._begin()
            cur = conn.execute(_INSERT, _insert_values(rec))
        except sqlite3.IntegrityError as exc:
            if rec.key is not None and self.by_key(rec.key) is not None:
                return None
            raise ValueError(f"cannot add task {rec.task_id}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise self._insert_failed(exc, rec.task_id) from exc
        self._inserted.append(rec.task_id)
        self._writes += 1
        seq = cur.lastrowid
        assert seq is not None
        return seq

    @_sql_errors
    def started(self, task_id: str, attempt: int, at: float) -> None:
        """Record that a task started: ``running``, ``attempts = attempt``, ``started_at = at``.

        Raises:
            KeyError: no task ``task_id``.
        """
        params = (attempt, at, task_id)
        self._write(lambda conn: conn.execute(_STARTED, params).rowcount, task_id)

    @_sql_errors
    def requeue(self, task_id: str, history_entry: Mapping[str, Any] | None) -> None:
        """Put a task back to ``queued``, appending ``history_entry`` to its history if given.

        Args:
            task_id: the task.
            history_entry: why its last attempt ended without an outcome (a JSON
                object, e.g. ``{"attempt": 1, "outcome": "worker_lost", ...}``), or None.

        Raises:
            KeyError: no task ``task_id``.
        """
        entry = None if history_entry is None else dict(history_entry)

        def apply(conn: sqlite3.Connection) -> int:
            if entry is None:
                return conn.execute(_REQUEUE, (task_id,)).rowcount
            history = self._history_with(conn, task_id, entry)
            if history is None:
                return 0
            return conn.execute(_REQUEUE_H, (history, task_id)).rowcount

        self._write(apply, task_id)

    @_sql_errors
    def finish(
        self,
        task_id: str,
        state: str,
        at: float,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        history_entry: Mapping[str, Any] | None = None,
    ) -> None:
        """Move a task to a terminal state, with its result or error.

        Args:
            task_id: the task.
            state: one of ``TERMINAL``.
            at: when it finished (epoch seconds); ``prune`` goes by it.
            result_json: the return value as JSON text (``done``).
            error_json: the error as JSON text (the other terminal states).
            history_entry: appended to the task's history if given (e.g. the
                last worker death of a ``quarantined`` task).

        Raises:
            ValueError: ``state`` is not terminal.
            KeyError: no task ``task_id``.
        """
        if state not in TERMINAL:
            raise ValueError(f"finish() needs a terminal state {sorted(TERMINAL)}, not {state!r}")
        entry = None if history_entry is None else dict(history_entry)

        def apply(conn: sqlite3.Connection) -> int:
            if entry is None:
                params = (state, at, result_json, error_json, task_id)
                return conn.execute(_FINISH, params).rowcount
            history = self._history_with(conn, task_id, entry)
            if history is None:
                return 0
            params_h = (state, at, result_json, error_json, history, task_id)
            return conn.execute(_FINISH_H, params_h).rowcount

        self._write(apply, task_id)

    @_sql_errors
    def prune(self, finished_before: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` terminal tasks that finished before ``finished_before``.

        Their keys become free for new tasks. Oldest finished go first. When the
        deletions leave much of the file free, most of the free pages are handed
        back to the file system (``PRAGMA incremental_vacuum``); the rest are
        reused by later writes. Unflushed like any write.

        Returns:
            How many tasks were deleted.
        """
        conn = self._db
        if self._failure is not None:
            return 0  # the disk is full: deleting would only add to the transaction to replay
        opened = not conn.in_transaction
        try:
            if opened:
                conn.execute("BEGIN IMMEDIATE")
            deleted = conn.execute(_PRUNE, (finished_before, max(limit, 0))).rowcount
            if deleted == 0:
                if opened:
                    conn.execute("ROLLBACK")  # nothing to commit: leave no transaction open
                return 0
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            keep = max(_KEEP_FREE_PAGES, (pages - free) // 2)
            # sqlite3 steps a statement that has no result columns only once, and each step
            # of incremental_vacuum frees one page: hence one execute per page.
            for _ in range(free - keep):
                conn.execute("PRAGMA incremental_vacuum")
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            self._fail(exc)  # the next flush reports it; pruning waits for space
            return 0
        self._writes += 1
        return deleted

    @_sql_errors
    def flush(self) -> int:
        """Commit every write since the last flush: one fsync for all (with ``sync="full"``).

        Returns:
            How many writes it committed; 0, without touching the database,
            when no transaction is open.

        Raises:
            JournalUnavailable: the commit failed (disk full, I/O error), or an
                earlier error rolled the open transaction back. The tasks inserted
                since the last successful flush (``lost``) are not in the journal:
                the caller must not acknowledge them. The other writes are kept and
                replayed: a later successful flush makes them durable.
        """
        conn = self._db
        if self._lost:
            # Inserts made after the rollback are lost with the earlier ones: the
            # caller refuses every submit since its last successful flush.
            self._fail(None)
            lost, self._lost = tuple(self._lost), []
            raise JournalUnavailable(
                self._name,
                f"{len(lost)} tasks inserted since the last flush were rolled back by an "
                f"error ({self._failure}); nothing inserted since the last flush is durable",
                lost,
            )
        try:
            if self._replay:
                self._begin()
            if not conn.in_transaction:
                return 0
            writes = self._writes
            conn.execute(_BUMP, (self._commits + 1,))
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._fail(exc)
            lost, self._lost = tuple(self._lost), []
            raise JournalUnavailable(self._name, f"commit failed: {exc}", lost) from exc
        self._commits += 1
        self._write_sidecar()
        self._writes = 0
        self._inserted.clear()
        self._redo.clear()
        self._failure = None
        return writes

    # -- reads ----------------------------------------------------------------------------------

    @_sql_errors
    def get(self, task_id: str) -> TaskRecord | None:
        """The task ``task_id``, or None if the journal holds none."""
        row = self._db.execute(_GET, (task_id,)).fetchone()
        return None if row is None else TaskRecord(*row)

    @_sql_errors
    def by_key(self, key: str) -> TaskRecord | None:
        """The task holding idempotency key ``key``, or None."""
        row = self._db.execute(_BY_KEY, (key,)).fetchone()
        return None if row is None else TaskRecord(*row)

    @_sql_errors
    def recover(self) -> list[TaskRecord]:
        """Make the journal ready after a restart, and return the tasks to run again.

        Every ``running`` task is set back to ``queued`` with its ``attempts``
        kept and no history entry (a daemon crash is not the task's fault),
        and the result is flushed together with any earlier unflushed writes.

        Returns:
            Every queued task, highest priority first, then in submit order.
        """
        self._write(lambda conn: conn.execute(_RECOVER).rowcount or -1, "")
        tasks = [TaskRecord(*row) for row in self._db.execute(_UNFINISHED)]
        # A full disk at start: the update waits in the open transaction (reads see
        # it) and ``failure`` says why; the next flush that succeeds makes it durable.
        with contextlib.suppress(JournalUnavailable):
            self.flush()
        return tasks

    @_sql_errors
    def counts(self) -> dict[str, int]:
        """How many tasks the journal holds in each state (every state in ``STATES``)."""
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._db.execute(_COUNTS).fetchall())
        return counts

    @_sql_errors
    def recent(self, state: str | None, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` tasks, newest first, all or only those in ``state``."""
        limit = max(limit, 0)
        if state is None:
            cur = self._db.execute(_RECENT, (limit,))
        else:
            cur = self._db.execute(_RECENT_IN, (state, limit))
        return [TaskRecord(*row) for row in cur]


def salvage(path: str | os.PathLike[str]) -> str:
    """Keep a damaged journal's files aside and build a new journal from every readable row.

    The files (``path`` and its ``-wal`` and ``-shm``) are renamed to
    ``<path>.damaged-<UTC time>``, untouched; the tasks SQLite can still read
    from them go, as they are (states, results, keys), into a new journal at
    ``path``. Tasks whose commits are gone cannot be found: they are lost.

    Returns:
        What was done, for the log.

    Raises:
        JournalLocked: a live process holds the journal.
        JournalError: the files cannot be moved or the new journal written.
    """
    path = os.fspath(path)
    name = path
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise JournalError(name, f"cannot open its lock file: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalLocked(name) from None
        aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        try:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.rename(path + suffix, aside + suffix)
            os.ftruncate(fd, 0)  # the new journal starts its commit count again
        except OSError as exc:
            raise JournalError(name, f"cannot move the damaged files aside: {exc}") from exc
        rows, unreadable = _readable_rows(aside) if os.path.exists(aside) else ([], 0)
    finally:
        os.close(fd)
    with Journal(path) as journal:
        conn = journal._begin()
        insert = (
            f"INSERT OR IGNORE INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})"
        )
        for row in rows:
            try:
                conn.execute(insert, row)
            except sqlite3.DatabaseError:
                unreadable += 1
        journal._writes += 1
        journal.flush()
        counts = journal.counts()
    unfinished = counts["queued"] + counts["running"]
    return (
        f"damaged journal kept as {aside}; new journal {path} holds the {len(rows)} tasks "
        f"still readable ({unfinished} unfinished, which run again); {unreadable} "
        "unreadable rows skipped; tasks whose commits were lost cannot be found"
    )


def _readable_rows(path: str) -> tuple[list[tuple[Any, ...]], int]:
    """Every task row SQLite can read from the (damaged) database at ``path``, and misses."""
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    rows: list[tuple[Any, ...]] = []
    unreadable = 0
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.DatabaseError:
        return rows, unreadable
    try:
        try:
            top = db.execute("SELECT max(seq) FROM tasks").fetchone()[0] or 0
        except sqlite3.DatabaseError:
            try:
                top = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'").fetchone()[
                    0
                ]
            except (sqlite3.DatabaseError, TypeError):
                return rows, unreadable
        after = 0
        batch_sql = f"SELECT {_COLUMNS} FROM tasks WHERE seq > ? ORDER BY seq LIMIT 500"
        one_sql = f"SELECT {_COLUMNS} FROM tasks WHERE seq = ?"
        while after < top:
            try:
                batch = db.execute(batch_sql, (after,)).fetchall()
            except sqlite3.DatabaseError:
                # A damaged page: step over it one row at a time.
                after += 1
                try:
                    row = db.execute(one_sql, (after,)).fetchone()
                except sqlite3.DatabaseError:
                    unreadable += 1
                    continue
                if row is not None:
                    rows.append(row)
                continue
            if not batch:
                break
            rows.extend(batch)
            after = batch[-1][-1]
    finally:
        db.close()
    return rows, unreadable
