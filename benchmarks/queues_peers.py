"""The task queues ``pipework bench daemon`` measures beside ``pipework serve``: a registry.

Each peer names the module holding its app, tasks and client calls
(``benchmarks.queues_<peer>``, imported only by the peer's own processes),
the distributions it needs, whether it needs the runner's Redis, and the
command that starts its consumer with a given number of worker processes.
Nothing here imports a peer library: the runner learns what is installed
from ``importlib.util.find_spec`` alone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from collections.abc import Callable

__all__ = ["PEERS", "Peer", "missing"]

REDIS_SERVER = "redis-server"
SETUP_HINT = "run benchmarks/setup-peers.sh"


@dataclasses.dataclass(frozen=True)
class Peer:
    """One task queue, as ``pipework bench daemon`` runs it."""

    name: str
    """Its key in the report (``--only``)."""
    label: str
    """Its column heading."""
    module: str
    """``benchmarks.queues_<peer>``: app, tasks, ``Client``; set up from ``env``."""
    imports: tuple[str, ...]
    """Top-level packages it needs (checked with ``find_spec``, never imported here)."""
    redis: bool
    """True if it needs the runner's Redis (``PWBENCH_REDIS_URL``)."""
    consumer: Callable[[str, int, str | None], list[str]]
    """``(python, workers, redis_url)`` → the command starting its consumer."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment for its consumer and its client."""


def _huey(python: str, workers: int, _url: str | None) -> list[str]:
    # --quiet: warning-level logging, as pipework serve gets in the benchmark.
    return [
        python,
        "-m",
        "huey.bin.huey_consumer",
        "pipework.benchmarks.queues_huey.huey",
        "--workers",
        str(workers),
        "--worker-type",
        "process",
        "--quiet",
    ]


def _dramatiq(python: str, workers: int, _url: str | None) -> list[str]:
    # Dramatiq logs no line per message at its default level; threads stay at 8.
    return [
        python,
        "-m",
        "dramatiq",
        "pipework.benchmarks.queues_dramatiq",
        "--processes",
        str(workers),
    ]


def _celery(python: str, workers: int, _url: str | None) -> list[str]:
    return [
        python,
        "-m",
        "celery",
        "-A",
        "pipework.benchmarks.queues_celery",
        "worker",
        "--concurrency",
        str(workers),
        "--loglevel",
        "WARNING",
    ]


def _rq(python: str, workers: int, url: str | None) -> list[str]:
    assert url is not None
    return [
        python,
        "-m",
        "rq.cli",
        "worker-pool",
        "--num-workers",
        str(workers),
        "--url",
        url,
        "--quiet",
    ]


PEERS: tuple[Peer, ...] = (
    Peer(
        "huey-sqlite",
        "huey (SQLite)",
        "pipework.benchmarks.queues_huey",
        ("huey",),
        False,
        _huey,
        (("PWBENCH_HUEY", "sqlite"),),
    ),
    Peer(
        "huey-redis",
        "huey (Redis)",
        "pipework.benchmarks.queues_huey",
        ("huey", "redis"),
        True,
        _huey,
        (("PWBENCH_HUEY", "redis"),),
    ),
    Peer(
        "dramatiq",
        "Dramatiq (Redis)",
        "pipework.benchmarks.queues_dramatiq",
        ("dramatiq", "redis"),
        True,
        _dramatiq,
    ),
    Peer(
        "celery",
        "Celery (Redis)",
        "pipework.benchmarks.queues_celery",
        ("celery", "kombu", "redis"),
        True,
        _celery,
    ),
    Peer("rq", "RQ (Redis)", "pipework.benchmarks.queues_rq", ("rq", "redis"), True, _rq),
)
"""Every peer, in the report's column order."""


def missing(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here (a package or redis-server missing), or None."""
    absent = [name for name in peer.imports if importlib.util.find_spec(name) is None]
    if absent:
        return f"not installed: {', '.join(absent)} ({SETUP_HINT}, or pip install -e '.[bench]')"
    if peer.redis and shutil.which(REDIS_SERVER) is None:
        return f"{REDIS_SERVER} not found on PATH ({SETUP_HINT})"
    return None
