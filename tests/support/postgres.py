"""A throw-away PostgreSQL cluster for tests: initdb + pg_ctl in a private temp directory.

```
 /tmp/pipework-pg-XXXX/        0700, owned by the server's user
     data/                     initdb --no-sync, trust auth, fsync off
     sock/.s.PGSQL.5432        the only way in: a unix socket, no TCP listener
     log                       the server's log (its tail is shown when start fails)
```

``PostgresCluster.start()`` finds the binaries under /usr/lib/postgresql/*/bin
(Debian's ``postgresql`` package; ``.ci/run`` installs it), or on PATH. initdb
refuses to run as root, so under root (CI) the server runs as the system user
``pipework-test``, created with ``useradd`` when missing, through
``subprocess``'s ``user=``; otherwise it runs as the current user.
``stop()`` is ``pg_ctl stop -m immediate`` then the directory is removed; it is
idempotent and also runs from ``atexit``, so a failing session leaves nothing.
``create_database()`` gives each test a fresh database of its own.

``session_cluster()`` is what the fixtures use: under pytest-xdist, the
workers of one run share one cluster (named after the run's id, started by the
first worker to get ``init.lock``, stopped by the last to leave: each worker
holds a shared ``flock`` on ``users.lock`` while it uses the cluster), so a
run pays for one initdb, not one per worker. Without xdist, a private one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg

SERVER_USER = "pipework-test"
SUPERUSER = "pipework"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are not installed here."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (newest Debian version first)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for cand in candidates:
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): "
        "apt-get install -y postgresql, as .ci/run does"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: ``pipework-test`` under root (made if missing), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam(SERVER_USER)


class PostgresCluster:
    """One PostgreSQL server in a temp directory, reachable only by its unix socket."""

    def __init__(self, root: Path | None = None) -> None:
        self.bindir = find_bindir()
        self._private = root is None
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="pipework-pg-"))
        else:
            root.mkdir(mode=0o700, exist_ok=True)
        self.root = root
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "log"
        self._user = _server_user()
        self._running = False
        self.start_seconds = 0.0
        """How long initdb + start took (reported, never asserted); 0 if it was running."""
        if self._private:
            atexit.register(self.stop)

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        user = None if self._user is None else self._user.pw_uid
        group = None if self._user is None else self._user.pw_gid
        return subprocess.run(
            list(args),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            group=group,
            extra_groups=[] if self._user is not None else None,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )

    def is_running(self) -> bool:
        """Whether a server is running on this cluster's data directory."""
        if not (self.data / "postmaster.pid").exists():
            return False
        try:
            self._run(str(self.bindir / "pg_ctl"), "status", "--pgdata", str(self.data))
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self) -> PostgresCluster:
        """initdb and start the server (or use the one running); return self once it is up."""
        if self.is_running():
            self._running = True
            return self
        began = time.monotonic()
        shutil.rmtree(self.data, ignore_errors=True)  # a server that died left it half used
        self.sock.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            for path in (self.root, self.sock):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        # No TCP listener; fsync off because a test cluster dies with its data.
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.sock}'"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200 -c shared_buffers=32MB"
        )
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--wait",
                "--timeout",
                "60",
                "-o",
                options,
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr}\n{tail}") from exc
        self._running = True
        self.start_seconds = time.monotonic() - began
        return self

    def url(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname`` over the unix socket."""
        return f"host={self.sock} dbname={dbname} user={SUPERUSER}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once and remove its directory; idempotent."""
        if self._running:
            self._running = False
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "--pgdata",
                    str(self.data),
                    "-m",
                    "immediate",
                    "--wait",
                    "--timeout",
                    "30",
                    timeout=60,
                )
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


_LOCK_FILES: list[IO[str]] = []


def _drop_inherited_locks() -> None:
    # A forked child (a pool worker) would otherwise keep the run's cluster "in use".
    for f in _LOCK_FILES:
        with contextlib.suppress(OSError):
            f.close()
    _LOCK_FILES.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def session_cluster() -> Iterator[PostgresCluster]:
    """A cluster for this test session, shared by the xdist workers of one run."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        cluster = PostgresCluster()
        try:
            yield cluster.start()
        finally:
            cluster.stop()
        return
    root = Path(tempfile.gettempdir()) / f"pipework-pg-{run_id[:16]}"
    root.mkdir(mode=0o700, exist_ok=True)
    init = open(root / "init.lock", "a+")  # noqa: SIM115 - held for the whole session
    users = open(root / "users.lock", "a+")  # noqa: SIM115
    _LOCK_FILES.extend((init, users))
    try:
        fcntl.flock(init, fcntl.LOCK_EX)
        try:
            cluster = PostgresCluster(root).start()
            fcntl.flock(users, fcntl.LOCK_SH)
        finally:
            fcntl.flock(init, fcntl.LOCK_UN)
        try:
            yield cluster
        finally:
            fcntl.flock(init, fcntl.LOCK_EX)
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another worker still uses it: the last one stops it
            else:
                cluster.stop()
    finally:
        for f in (init, users):
            if f in _LOCK_FILES:
                _LOCK_FILES.remove(f)
            f.close()
