"""Fixtures for the store contract suite: one parametrized backend, a fresh store per test.

``backend`` is parametrized over ``BACKENDS`` (only ``postgres`` today; a SQLite
backend adds its entry and a ``Backend`` subclass, and every contract test runs
on it too). For PostgreSQL, one throw-away cluster serves the whole session
(``pg_cluster``: initdb + pg_ctl in a temp dir, unix socket only, removed after,
also on failure) and each test gets a database of its own, dropped after it.
``make_store(daemon_id=..., lease_ttl=...)`` opens stores on the test's
database, one per simulated daemon, and closes them at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pipework.service.daemon.store import Store
from pipework.service.daemon.store.postgres import PostgresStore
from tests.support.postgres import (
    PostgresCluster,
    PostgresUnavailable,
    find_bindir,
    session_cluster,
)

BACKENDS = ["postgres"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        find_bindir()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL store tests, but {exc}")
        pytest.skip(str(exc))
    with session_cluster() as cluster:
        if cluster.start_seconds:
            print(f"\nPostgreSQL test cluster started in {cluster.start_seconds:.2f} s")
        yield cluster


class Backend:
    """What the contract suite needs to know about one backend beyond the ``Store`` API."""

    name = "?"
    multi_daemon = False
    """Whether several stores (daemons) may share one target at once."""

    def open(self, **kwargs: Any) -> Store:
        raise NotImplementedError

    def sever_listeners(self) -> int:
        """Break every listener's connection from the server side; how many were cut."""
        raise NotImplementedError


class PostgresBackend(Backend):
    name = "postgres"
    multi_daemon = True

    def __init__(self, cluster: PostgresCluster, dbname: str) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self.url = cluster.url(dbname)

    def open(self, **kwargs: Any) -> Store:
        return PostgresStore(self.url, **kwargs)

    def sql(self, query: str, params: Any = None) -> list[Any]:
        """Run one statement on a connection of the test's own; its rows (or [])."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def sever_listeners(self) -> int:
        rows = self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'pipework listener'",
            (self.dbname,),
        )
        return len(rows)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        dbname = cluster.create_database()
        try:
            yield PostgresBackend(cluster, dbname)
        finally:
            cluster.drop_database(dbname)
    else:  # pragma: no cover - a backend listed without a fixture branch
        raise AssertionError(request.param)


@pytest.fixture
def make_store(backend: Backend) -> Iterator[Callable[..., Store]]:
    opened: list[Store] = []

    def make(**kwargs: Any) -> Store:
        store = backend.open(**kwargs)
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            store.close()
