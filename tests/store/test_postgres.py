"""What only the PostgreSQL store has: its advisory-locked migrations, schema checks,
reconnection after a lost connection, and the test cluster's own isolation."""

from __future__ import annotations

import os
import stat
import threading

import psycopg
import pytest

from pipework.service.daemon.store import StoreError, StoreUnavailable, Submit
from pipework.service.daemon.store.postgres import _MIGRATION_LOCK, SCHEMA_VERSION
from tests.store.conftest import PostgresBackend
from tests.store.test_contract import wait_until

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too


@pytest.fixture
def pg(backend) -> PostgresBackend:
    if not isinstance(backend, PostgresBackend):
        pytest.skip("PostgreSQL only")
    return backend


def test_starters_wait_for_the_migrating_one(pg: PostgresBackend) -> None:
    holder = psycopg.connect(pg.url, autocommit=True)
    stores: list = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            stores.append(pg.open(daemon_id=f"d{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        for t in threads:
            t.start()

        def waiting() -> bool:
            rows = pg.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                (pg.dbname,),
            )
            return rows[0][0] == 2

        wait_until(waiting)  # both openers block on the lock, nothing is created yet
        assert pg.sql("SELECT to_regnamespace('pipework')") == [(None,)]
        holder.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        assert sorted(len(s.migrated) for s in stores) == [0, 1]
        assert pg.sql("SELECT version FROM pipework.schema_migrations") == [(SCHEMA_VERSION,)]
    finally:
        holder.close()
        for s in stores:
            s.close()


def test_a_newer_or_missing_schema_is_refused(pg: PostgresBackend) -> None:
    with pytest.raises(StoreError, match="no pipework schema"):
        pg.open(migrate=False)
    pg.open().close()
    pg.open(migrate=False).close()
    pg.sql("INSERT INTO pipework.schema_migrations VALUES (999, 0, 'future')")
    with pytest.raises(StoreError, match="schema version 999") as info:
        pg.open()
    assert "password" not in str(info.value)


def test_a_lost_connection_is_unavailable_then_reconnects(pg: PostgresBackend) -> None:
    store = pg.open(daemon_id="cut")
    try:
        store.accept([Submit("t1", "add")])
        killed = pg.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'pipework cut'",
            (pg.dbname,),
        )
        assert len(killed) == 1
        with pytest.raises(StoreUnavailable):
            store.accept([Submit("t2", "add", key="k")])
        # Not committed: the same key is free, and the store has reconnected.
        [again] = store.accept([Submit("t3", "add", key="k")])
        assert (again.status, again.record.task_id) == ("accepted", "t3")
        assert store.get("t2") is None
    finally:
        store.close()


def test_the_cluster_listens_on_a_private_socket_only(pg: PostgresBackend) -> None:
    assert pg.sql("SHOW listen_addresses") == [("",)]
    mode = os.stat(pg.cluster.sock).st_mode
    assert stat.S_IMODE(mode) == 0o700
    assert stat.S_IMODE(os.stat(pg.cluster.root).st_mode) == 0o700
