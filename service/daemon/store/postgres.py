"""The PostgreSQL store: any number of daemons, on any hosts, serving one queue.

```
 daemon A ─┐                      schema "pipework"
 daemon B ─┼── psycopg 3 ──▶  tasks    one row per task; lease_owner = daemon id while running
 daemon C ─┘   (1 conn each    daemons  one lease row per daemon: lease_until, renewed by heartbeat
               + 1 listener)   schema_migrations  applied versions (advisory lock while migrating)
                                NOTIFY pipework_queued / pipework_finished  (after commit)
```

How it meets the contract of ``service.daemon.store.base``:

- **accept**: one ``INSERT … SELECT FROM unnest(…) ON CONFLICT (key) DO NOTHING``
  per batch; a key held by a transaction still in flight makes PostgreSQL wait
  for it, so two daemons accepting one key at once make one task.
- **claim**: ``SELECT … ORDER BY priority DESC, seq FOR UPDATE SKIP LOCKED`` in
  the same statement as the ``UPDATE`` that marks the rows running, with an
  upsert of the daemon's lease row: a claim is a heartbeat.
- **fence**: ``UPDATE … WHERE state = 'running' AND attempts = %s AND
  lease_owner = %s``; a row ``recover()`` has locked makes the owner's update
  wait, then fail the test. Claims, finishes, requeues, cancels and prunes are
  each one statement, run as its own transaction (no BEGIN/COMMIT round trips).
- **wake-ups**: ``pg_notify`` in its own autocommit statement after the
  commit (a NOTIFY inside the accepting transaction takes a global lock at
  commit and serialises every accepting daemon). A notification that cannot be
  sent is dropped: it is a hint, and the poll catches it.
- **migrations**: one transaction under ``pg_advisory_xact_lock``; DDL is
  transactional in PostgreSQL, so a migration that fails leaves nothing behind.
- **prune**: ``DELETE … WHERE seq IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)``:
  short transactions, so vacuum can reclaim the dead rows as they go.

Times are ``extract(epoch from now())`` on the server. Connections are
autocommit; every write is an explicit transaction. The SQL of the store lives
in this file and nowhere else.

Limits today: no PgBouncer in transaction mode (LISTEN needs a session, and
psycopg prepares statements); one schema name (``pipework``) per database.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, final

import psycopg
import psycopg.errors
from psycopg import conninfo as _conninfo

from pipework.service.daemon.store.base import (
    DEFAULT_LEASE_TTL,
    STATES,
    TERMINAL,
    Accepted,
    Event,
    Finish,
    Lease,
    Requeue,
    Run,
    StoreError,
    StoreUnavailable,
    Submit,
    TaskRecord,
    lease_lost_entry,
    quarantine_error,
)
from pipework.service.logs import get_logger

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresListener", "PostgresStore"]

_log = get_logger("pipework.store")

QUEUED_CHANNEL: Final = "pipework_queued"
FINISHED_CHANNEL: Final = "pipework_finished"

# pg_advisory_xact_lock key of the migrations: ASCII "pipework" as a bigint.
_MIGRATION_LOCK: Final = int.from_bytes(b"pipework", "big") & 0x7FFF_FFFF_FFFF_FFFF

_TERMINAL_SQL: Final = ", ".join(f"'{s}'" for s in sorted(TERMINAL))
_STATES_SQL: Final = ", ".join(f"'{s}'" for s in STATES)

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        f"""
        CREATE TABLE pipework.tasks (
            seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            task_id      text NOT NULL UNIQUE,
            name         text NOT NULL,
            key          text,
            args_json    text NOT NULL,
            kwargs_json  text NOT NULL,
            state        text NOT NULL CHECK (state IN ({_STATES_SQL})),
            priority     integer NOT NULL,
            not_before   double precision NOT NULL,
            timeout      double precision,
            retries      integer NOT NULL,
            attempts     integer NOT NULL DEFAULT 0,
            created_at   double precision NOT NULL,
            started_at   double precision,
            finished_at  double precision,
            result_json  text,
            error_json   text,
            history      jsonb NOT NULL DEFAULT '[]',
            lease_owner  text
        );
        CREATE UNIQUE INDEX tasks_key ON pipework.tasks (key) WHERE key IS NOT NULL;
        CREATE INDEX tasks_ready ON pipework.tasks (priority DESC, seq) WHERE state = 'queued';
        CREATE INDEX tasks_finished ON pipework.tasks (finished_at)
            WHERE finished_at IS NOT NULL;
        CREATE INDEX tasks_state ON pipework.tasks (state, seq);
        -- Every task is inserted, updated twice and deleted: vacuum and analyze it
        -- after 1% of its rows changed rather than the default 20% and 10%.
        ALTER TABLE pipework.tasks SET (
            autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01);
        CREATE TABLE pipework.daemons (
            daemon_id    text PRIMARY KEY,
            host         text NOT NULL,
            pid          integer NOT NULL,
            started_at   double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            lease_until  double precision NOT NULL
        );
        """,
    ),
)
"""(version, SQL) in order; a new version appends, never edits an applied one."""

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

_NOW: Final = "extract(epoch from now())::double precision"
_COLS: Final = (
    "task_id, name, key, args_json, kwargs_json, state, priority, not_before, timeout,"
    " retries, attempts, created_at, started_at, finished_at, result_json, error_json,"
    " history::text, seq"
)
_TCOLS: Final = ", ".join(f"t.{c.strip()}" for c in _COLS.split(","))

_INSERT: Final = f"""
INSERT INTO pipework.tasks (task_id, name, key, args_json, kwargs_json, state, priority,
                            not_before, timeout, retries, created_at)
SELECT u.task_id, u.name, u.key, u.args_json, u.kwargs_json, 'queued', u.priority,
       CASE WHEN u.delay > 0 THEN {_NOW} + u.delay ELSE 0.0 END, u.timeout, u.retries, {_NOW}
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[],
            %s::float8[], %s::float8[], %s::int[])
     AS u(task_id, name, key, args_json, kwargs_json, priority, delay, timeout, retries)
ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING
RETURNING {_COLS}
"""
_HOLDERS: Final = f"SELECT {_COLS} FROM pipework.tasks WHERE key = ANY(%s) FOR SHARE"

_LEASE_UPSERT: Final = f"""
INSERT INTO pipework.daemons AS d (daemon_id, host, pid, started_at, heartbeat_at, lease_until)
VALUES (%(owner)s, %(host)s, %(pid)s, {_NOW}, {_NOW}, {_NOW} + %(ttl)s)
ON CONFLICT (daemon_id) DO UPDATE
SET heartbeat_at = EXCLUDED.heartbeat_at, lease_until = EXCLUDED.lease_until,
    host = EXCLUDED.host, pid = EXCLUDED.pid
RETURNING lease_until
"""
_CLAIM: Final = f"""
WITH lease AS ({_LEASE_UPSERT.strip()}),
picked AS (
    SELECT seq FROM pipework.tasks
    WHERE state = 'queued' AND name = ANY(%(names)s) AND not_before <= {_NOW}
    ORDER BY priority DESC, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pipework.tasks t
SET state = 'running', attempts = t.attempts + 1, started_at = {_NOW},
    lease_owner = (SELECT %(owner)s::text FROM lease)
FROM picked WHERE t.seq = picked.seq
RETURNING {_TCOLS}
"""
_HEARTBEAT: Final = f"""
WITH lease AS ({_LEASE_UPSERT.strip()}),
held AS (
    SELECT task_id, attempts FROM pipework.tasks
    WHERE state = 'running' AND lease_owner = %(owner)s)
SELECT (SELECT lease_until FROM lease),
       (SELECT array_agg(task_id) FROM held), (SELECT array_agg(attempts) FROM held)
"""
_FINISH: Final = f"""
UPDATE pipework.tasks t
SET state = u.state, finished_at = {_NOW}, result_json = u.result_json,
    error_json = u.error_json,
    history = CASE WHEN u.entry IS NULL THEN t.history
                   ELSE t.history || jsonb_build_array(u.entry::jsonb) END
FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[])
     AS u(task_id, attempt, state, result_json, error_json, entry)
WHERE t.task_id = u.task_id AND t.state = 'running' AND t.attempts = u.attempt
  AND t.lease_owner = %s
RETURNING {_TCOLS}
"""
_REQUEUE: Final = """
UPDATE pipework.tasks t
SET state = 'queued', lease_owner = NULL,
    history = CASE WHEN u.entry IS NULL THEN t.history
                   ELSE t.history || jsonb_build_array(u.entry::jsonb) END
FROM unnest(%s::text[], %s::int[], %s::text[]) AS u(task_id, attempt, entry)
WHERE t.task_id = u.task_id AND t.state = 'running' AND t.attempts = u.attempt
  AND t.lease_owner = %s
RETURNING t.task_id
"""
_CANCEL: Final = f"""
UPDATE pipework.tasks SET state = 'cancelled', finished_at = {_NOW}, error_json = %s
WHERE task_id = %s AND state = 'queued'
RETURNING {_COLS}
"""
_ORPHANS: Final = f"""
SELECT t.task_id, t.attempts, t.retries, t.history::text, t.lease_owner, {_NOW}
FROM pipework.tasks t
WHERE t.state = 'running' AND NOT EXISTS (
    SELECT 1 FROM pipework.daemons d
    WHERE d.daemon_id = t.lease_owner AND d.lease_until > {_NOW})
ORDER BY t.seq
LIMIT %s
FOR UPDATE OF t SKIP LOCKED
"""
_RECOVER: Final = f"""
UPDATE pipework.tasks t
SET state = u.state, lease_owner = CASE WHEN u.state = 'queued' THEN NULL ELSE t.lease_owner END,
    finished_at = CASE WHEN u.state = 'queued' THEN NULL ELSE {_NOW} END,
    error_json = u.error_json,
    history = t.history || jsonb_build_array(u.entry::jsonb)
FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[])
     AS u(task_id, attempt, owner, state, error_json, entry)
WHERE t.task_id = u.task_id AND t.state = 'running' AND t.attempts = u.attempt
  AND t.lease_owner = u.owner
RETURNING {_TCOLS}
"""
_DROP_EXPIRED: Final = f"""
DELETE FROM pipework.daemons d
WHERE d.lease_until <= {_NOW} AND NOT EXISTS (
    SELECT 1 FROM pipework.tasks t WHERE t.state = 'running' AND t.lease_owner = d.daemon_id)
"""
_GET: Final = f"SELECT {_COLS} FROM pipework.tasks WHERE task_id = %s"
_BY_KEY: Final = f"SELECT {_COLS} FROM pipework.tasks WHERE key = %s"
_RECENT: Final = f"SELECT {_COLS} FROM pipework.tasks ORDER BY seq DESC LIMIT %s"
_RECENT_IN: Final = (
    f"SELECT {_COLS} FROM pipework.tasks WHERE state = %s ORDER BY seq DESC LIMIT %s"
)
_COUNTS: Final = "SELECT state, count(*) FROM pipework.tasks GROUP BY state"
_NEXT_DUE: Final = (
    "SELECT min(not_before) FROM pipework.tasks WHERE state = 'queued' AND name = ANY(%s)"
)
_PRUNE: Final = f"""
DELETE FROM pipework.tasks WHERE seq IN (
    SELECT seq FROM pipework.tasks
    WHERE finished_at <= {_NOW} - %s AND state IN ({_TERMINAL_SQL})
    ORDER BY finished_at
    LIMIT %s
    FOR UPDATE SKIP LOCKED)
"""
_NOTIFY: Final = "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p"

# libpq keepalives: a daemon cut off from the database learns it within seconds,
# not after the kernel's two-hour default (libpq ignores them on unix sockets).
_CONNECT_DEFAULTS: Final = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}

_DEADLOCK_RETRIES: Final = 5

_P = ParamSpec("_P")
_R = TypeVar("_R")


def redact(url: str) -> str:
    """``url`` with its password left out, for messages and logs."""
    try:
        params = _conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable PostgreSQL URL>"
    params.pop("password", None)
    return _conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def _connect(url: str, application_name: str, *, work: bool = True) -> psycopg.Connection[Any]:
    params: dict[str, Any] = dict(_CONNECT_DEFAULTS)
    params.update(_conninfo.conninfo_to_dict(url))
    params.setdefault("application_name", application_name[:63])
    if work:
        # A queue table's statistics are always stale (it churns faster than
        # autovacuum analyzes it): estimating a handful of queued rows, the planner
        # picks a bitmap scan of every queued row and a sort over the first rows of
        # the ordered index, 10x slower per claim at 5,000 queued. None of this
        # store's statements needs a bitmap scan.
        params["options"] = f"{params.get('options', '')} -c enable_bitmapscan=off".strip()
    return psycopg.connect(autocommit=True, **params)


def _db_errors(
    method: Callable[Concatenate[PostgresStore, _P], _R],
) -> Callable[Concatenate[PostgresStore, _P], _R]:
    """Turn psycopg's errors into ``StoreUnavailable`` (connection) or ``StoreError``."""

    @functools.wraps(method)
    def wrapper(self: PostgresStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            conn = self._conn
            # A deadlock or a cancelled statement is an OperationalError too, on a
            # connection that still works: only a lost connection means "unavailable".
            if conn is None or conn.closed or conn.broken:
                self._drop_connection()
                raise StoreUnavailable(self.name, f"{method.__name__}() failed: {exc}") from exc
            raise StoreError(self.name, f"{method.__name__}() failed: {exc}") from exc

    return wrapper


def _record(row: Sequence[Any]) -> TaskRecord:
    return TaskRecord(*row)


def _entry_text(entry: Any) -> str | None:
    return None if entry is None else json.dumps(dict(entry), separators=(",", ":"))


@final
class PostgresStore:
    """A ``Store`` on a PostgreSQL database; one per daemon, used from one thread.

    Args:
        url: a libpq connection string or ``postgresql://`` URL.
        daemon_id: this daemon's lease owner id; a new random one by default.
        lease_ttl: seconds a lease lasts after its last renewal.
        migrate: migrate the schema at open (the default); False only checks it.

    Raises:
        StoreUnavailable: the database cannot be reached.
        StoreError: the schema is newer than this code, or is missing with
            ``migrate=False``.
    """

    def __init__(
        self,
        url: str,
        *,
        daemon_id: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        migrate: bool = True,
    ) -> None:
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl!r}")
        self._url = url
        self.name = redact(url)
        self._daemon_id = daemon_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._lease_ttl = float(lease_ttl)
        self._host = socket.gethostname()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated: list[int] = []
        try:
            self._open(migrate)
        except BaseException:
            self.close()
            raise

    @property
    def daemon_id(self) -> str:
        """The lease owner this store claims as."""
        return self._daemon_id

    @property
    def migrated(self) -> list[int]:
        """The schema versions this store applied when it opened (empty if none were due)."""
        return list(self._migrated)

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lasts after its last renewal."""
        return self._lease_ttl

    def __repr__(self) -> str:
        return f"<PostgresStore {self.name} daemon={self._daemon_id}>"

    # -- connection -------------------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self._url, f"pipework {self._daemon_id}")
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        conn = self._db()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _hint(self, channel: str, payloads: Collection[str]) -> None:
        """Send notifications after a commit; a failure only costs a wake-up (the poll covers)."""
        if not payloads:
            return
        try:
            self._db().execute(_NOTIFY, (channel, list(payloads)))
        except psycopg.Error as exc:
            _log.warning("cannot send store hints", channel=channel, error=str(exc))
            self._drop_connection()

    @_db_errors
    def _open(self, migrate: bool) -> None:
        with self._transaction() as cur:
            if migrate:
                # Every opener takes the lock: the first migrates, the others wait, then
                # find every version applied. CREATE ... IF NOT EXISTS alone races.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                cur.execute("CREATE SCHEMA IF NOT EXISTS pipework")
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS pipework.schema_migrations ("
                    " version integer PRIMARY KEY, applied_at double precision NOT NULL,"
                    " applied_by text NOT NULL)"
                )
            cur.execute("SELECT to_regclass('pipework.schema_migrations') IS NOT NULL")
            row = cur.fetchone()
            if not (row and row[0]):
                raise StoreError(self.name, "has no pipework schema (open it with migrate=True)")
            cur.execute("SELECT coalesce(max(version), 0) FROM pipework.schema_migrations")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    self.name,
                    f"has schema version {current}, newer than this pipework reads "
                    f"({SCHEMA_VERSION}); upgrade pipework on every daemon of this database",
                )
            if current < SCHEMA_VERSION and not migrate:
                raise StoreError(
                    self.name, f"has schema version {current}; {SCHEMA_VERSION} is needed"
                )
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO pipework.schema_migrations (version, applied_at, applied_by)"
                    f" VALUES (%s, {_NOW}, %s)",
                    (version, self._daemon_id),
                )
                self._migrated.append(version)
        if self._migrated:
            _log.info("store schema migrated", store=self.name, versions=self._migrated)

    def close(self) -> None:
        """Close the connection; idempotent. The lease is left to expire."""
        self._drop_connection()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -----------------------------------------------------------------------------------

    @_db_errors
    def accept(self, submits: Sequence[Submit]) -> list[Accepted]:
        """Accept a batch of submits in one transaction, idempotently by key.

        Returns:
            One ``Accepted`` per submit, in order.

        Raises:
            StoreUnavailable: the database cannot be reached; acknowledge none of them.
            StoreError: a ``task_id`` is already in the store.
        """
        first: dict[str, int] = {}  # key -> index of its first submit in this batch
        for i, s in enumerate(submits):
            if s.key is not None:
                first.setdefault(s.key, i)
        fresh = [s for i, s in enumerate(submits) if s.key is None or first[s.key] == i]
        # Two batches inserting the same keys in opposite orders wait for each other
        # (each waits to see whether the other's row commits): PostgreSQL aborts one
        # with a deadlock, and that one runs again and finds the keys held.
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                mine, holders = self._insert_batch(fresh)
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                _log.info("accept deadlocked with another batch; trying again", attempt=attempt + 1)
        out: list[Accepted] = []
        for s in submits:
            new = mine.get(s.task_id)
            if new is not None:
                out.append(Accepted("accepted", new))
                continue
            assert s.key is not None
            held = holders.get(s.key)
            if held is None:  # a later submit of this batch with a key an earlier one took
                held = mine[submits[first[s.key]].task_id]
            same = (held.name, held.args_json, held.kwargs_json) == (
                s.name,
                s.args_json,
                s.kwargs_json,
            )
            out.append(Accepted("duplicate" if same else "key_conflict", held))
        if mine:
            self._hint(QUEUED_CHANNEL, sorted({r.name for r in mine.values()}))
        return out

    def _insert_batch(
        self, fresh: Sequence[Submit]
    ) -> tuple[dict[str, TaskRecord], dict[str, TaskRecord]]:
        """Insert ``fresh`` in one transaction: (task_id -> new record, key -> holder)."""
        mine: dict[str, TaskRecord] = {}
        holders: dict[str, TaskRecord] = {}
        with self._transaction() as cur:
            todo = fresh
            # A held key whose holder is pruned before we read it is free again: try again.
            for _ in range(3):
                if not todo:
                    break
                cur.execute(
                    _INSERT,
                    (
                        [s.task_id for s in todo],
                        [s.name for s in todo],
                        [s.key for s in todo],
                        [s.args_json for s in todo],
                        [s.kwargs_json for s in todo],
                        [s.priority for s in todo],
                        [float(s.delay) for s in todo],
                        [s.timeout for s in todo],
                        [s.retries for s in todo],
                    ),
                )
                for row in cur.fetchall():
                    mine[row[0]] = _record(row)
                lost = [s for s in todo if s.task_id not in mine]
                for s in lost:
                    if s.key is None:
                        raise StoreError(self.name, f"task_id {s.task_id!r} is already stored")
                todo = []
                if not lost:
                    break
                cur.execute(_HOLDERS, ([s.key for s in lost],))
                for row in cur.fetchall():
                    rec = _record(row)
                    assert rec.key is not None
                    holders[rec.key] = rec
                todo = [s for s in lost if s.key not in holders]
            if todo:
                raise StoreError(self.name, f"cannot settle keys {[s.key for s in todo]!r}")
        return mine, holders

    @_db_errors
    def claim(self, names: Collection[str], limit: int) -> list[Run]:
        """Claim up to ``limit`` due tasks named in ``names`` under this daemon's lease.

        Returns:
            The runs, highest priority first, then in submit order.
        """
        if limit <= 0 or not names:
            return []
        # One statement, so one implicit transaction: no BEGIN/COMMIT round trips.
        rows = (
            self._db()
            .execute(
                _CLAIM,
                {
                    "owner": self._daemon_id,
                    "host": self._host,
                    "pid": os.getpid(),
                    "ttl": self._lease_ttl,
                    "names": list(names),
                    "limit": limit,
                },
            )
            .fetchall()
        )
        runs = [Run(_record(row), self._daemon_id) for row in rows]
        runs.sort(key=lambda r: (-r.record.priority, r.record.seq))
        return runs

    @_db_errors
    def heartbeat(self) -> Lease:
        """Renew this daemon's lease (creating its row if needed).

        Returns:
            The lease: its expiry on the database's clock, and the runs it holds.
        """
        row = (
            self._db()
            .execute(
                _HEARTBEAT,
                {
                    "owner": self._daemon_id,
                    "host": self._host,
                    "pid": os.getpid(),
                    "ttl": self._lease_ttl,
                },
            )
            .fetchone()
        )
        assert row is not None
        held = frozenset(zip(row[1] or [], row[2] or [], strict=True))
        return Lease(self._daemon_id, float(row[0]), held)

    @_db_errors
    def finish(self, items: Sequence[Finish]) -> list[TaskRecord | None]:
        """Record terminal states; ``None`` for an item whose fence no longer holds.

        Raises:
            ValueError: an item's state is not terminal, or its run is not this daemon's.
        """
        for item in items:
            if item.state not in TERMINAL:
                raise ValueError(
                    f"finish needs a terminal state {sorted(TERMINAL)}, not {item.state!r}"
                )
            self._check_owner(item.run.owner)
        if not items:
            return []
        rows = (
            self._db()
            .execute(
                _FINISH,
                (
                    [i.run.task_id for i in items],
                    [i.run.attempt for i in items],
                    [i.state for i in items],
                    [i.result_json for i in items],
                    [i.error_json for i in items],
                    [_entry_text(i.history_entry) for i in items],
                    self._daemon_id,
                ),
            )
            .fetchall()
        )
        done = {row[0]: _record(row) for row in rows}
        self._hint(FINISHED_CHANNEL, list(done))
        out: list[TaskRecord | None] = []
        for item in items:
            rec = done.get(item.run.task_id)
            out.append(rec if rec is not None and rec.attempts == item.run.attempt else None)
        return out

    @_db_errors
    def requeue(self, items: Sequence[Requeue]) -> list[bool]:
        """Put runs back in the queue; ``False`` for an item whose fence no longer holds.

        Raises:
            ValueError: an item's run is not this daemon's.
        """
        for item in items:
            self._check_owner(item.run.owner)
        if not items:
            return []
        rows = (
            self._db()
            .execute(
                _REQUEUE,
                (
                    [i.run.task_id for i in items],
                    [i.run.attempt for i in items],
                    [_entry_text(i.history_entry) for i in items],
                    self._daemon_id,
                ),
            )
            .fetchall()
        )
        back = {row[0] for row in rows}
        if back:
            self._hint(QUEUED_CHANNEL, ["requeued"])
        return [item.run.task_id in back for item in items]

    def _check_owner(self, owner: str) -> None:
        if owner != self._daemon_id:
            raise ValueError(f"run of daemon {owner!r} settled through daemon {self._daemon_id!r}")

    @_db_errors
    def cancel_queued(self, task_id: str, error_json: str) -> TaskRecord | None:
        """Cancel a task that is still queued; None (and no change) if it is not queued."""
        row = self._db().execute(_CANCEL, (error_json, task_id)).fetchone()
        if row is None:
            return None
        self._hint(FINISHED_CHANNEL, [task_id])
        return _record(row)

    @_db_errors
    def recover(self, limit: int = 1000) -> list[TaskRecord]:
        """Settle up to ``limit`` runs whose owner's lease expired, as a worker death.

        Returns:
            The recovered tasks as they are now: ``queued`` again, or ``quarantined``.
        """
        if limit <= 0:
            return []
        with self._transaction() as cur:
            cur.execute(_ORPHANS, (limit,))
            orphans = cur.fetchall()
            ids: list[str] = []
            attempts: list[int] = []
            owners: list[str] = []
            states: list[str] = []
            errors: list[str | None] = []
            entries: list[str] = []
            for task_id, attempt, retries, history_json, owner, now in orphans:
                entry = lease_lost_entry(int(attempt), str(owner), float(now))
                losses = len(json.loads(history_json)) + 1
                ids.append(task_id)
                attempts.append(int(attempt))
                owners.append(str(owner))
                entries.append(json.dumps(entry, separators=(",", ":")))
                if losses <= retries:
                    states.append("queued")
                    errors.append(None)
                else:
                    states.append("quarantined")
                    last = f"the lease of daemon {owner} expired while it ran attempt {attempt}"
                    errors.append(
                        json.dumps(
                            quarantine_error(losses, last), sort_keys=True, separators=(",", ":")
                        )
                    )
            recovered: list[TaskRecord] = []
            if ids:
                cur.execute(_RECOVER, (ids, attempts, owners, states, errors, entries))
                recovered = [_record(row) for row in cur.fetchall()]
            cur.execute(_DROP_EXPIRED)
        if any(r.state == "queued" for r in recovered):
            self._hint(QUEUED_CHANNEL, ["recovered"])
        finished = [r.task_id for r in recovered if r.state != "queued"]
        self._hint(FINISHED_CHANNEL, finished)
        recovered.sort(key=lambda r: r.seq)
        return recovered

    @_db_errors
    def prune(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` terminal tasks finished ``older_than`` seconds ago or more.

        Returns:
            How many were deleted; call again while it returns ``limit``.
        """
        if limit <= 0:
            return 0
        return int(self._db().execute(_PRUNE, (float(older_than), limit)).rowcount)

    # -- reads ------------------------------------------------------------------------------------

    @_db_errors
    def get(self, task_id: str) -> TaskRecord | None:
        """The task ``task_id``, or None."""
        row = self._db().execute(_GET, (task_id,)).fetchone()
        return None if row is None else _record(row)

    @_db_errors
    def by_key(self, key: str) -> TaskRecord | None:
        """The task holding idempotency key ``key``, or None."""
        row = self._db().execute(_BY_KEY, (key,)).fetchone()
        return None if row is None else _record(row)

    @_db_errors
    def recent(self, state: str | None, limit: int) -> list[TaskRecord]:
        """Up to ``limit`` tasks, newest first, all or only those in ``state``."""
        limit = max(limit, 0)
        if state is None:
            rows = self._db().execute(_RECENT, (limit,)).fetchall()
        else:
            rows = self._db().execute(_RECENT_IN, (state, limit)).fetchall()
        return [_record(row) for row in rows]

    @_db_errors
    def counts(self) -> dict[str, int]:
        """How many tasks are in each state (every state in ``STATES``)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._db().execute(_COUNTS).fetchall():
            counts[str(state)] = int(n)
        return counts

    @_db_errors
    def next_due(self, names: Collection[str]) -> float | None:
        """When the earliest queued task named in ``names`` is due (database clock), or None."""
        if not names:
            return None
        row = self._db().execute(_NEXT_DUE, (list(names),)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def listen(self) -> PostgresListener:
        """Open a listener for hints, on a connection of its own."""
        return PostgresListener(self._url, self.name)


@final
class PostgresListener:
    """LISTEN on a connection of its own; ``wait`` returns the hints that arrived.

    Raises:
        StoreUnavailable: at open only, when the database cannot be reached.
    """

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self.name = name
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._connect()
        except psycopg.Error as exc:
            raise StoreUnavailable(name, f"cannot listen: {exc}") from exc

    def _connect(self) -> psycopg.Connection[Any]:
        conn = _connect(self._url, "pipework listener", work=False)
        try:
            conn.execute(f"LISTEN {QUEUED_CHANNEL}")
            conn.execute(f"LISTEN {FINISHED_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def fileno(self) -> int:
        """The connection's socket (it changes after a ``resync``); -1 when disconnected."""
        conn = self._conn
        return -1 if conn is None or conn.closed else conn.fileno()

    def wait(self, timeout: float) -> list[Event]:
        """The hints received within ``timeout`` seconds; ``resync`` after a reconnect."""
        conn = self._conn
        if conn is None or conn.closed:
            try:
                self._connect()
            except psycopg.Error as exc:
                _log.warning("store listener cannot reconnect", store=self.name, error=str(exc))
                return [Event("resync")]
            return [Event("resync")]
        try:
            notes = list(conn.notifies(timeout=max(timeout, 0.0), stop_after=1))
            if notes:  # whatever else already arrived, without waiting
                notes.extend(conn.notifies(timeout=0.0))
        except psycopg.Error as exc:
            _log.warning("store listener lost its connection", store=self.name, error=str(exc))
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._conn = None
            with contextlib.suppress(psycopg.Error):
                self._connect()
            return [Event("resync")]
        events: list[Event] = []
        queued = False
        for note in notes:
            if note.channel == FINISHED_CHANNEL:
                events.append(Event("finished", note.payload))
            elif not queued:
                queued = True
                events.append(Event("queued"))
        return events

    def close(self) -> None:
        """Stop listening; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
