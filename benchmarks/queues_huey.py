"""huey's side of ``pipework bench daemon``: the app, its two tasks, and the client calls.

The consumer (``huey_consumer benchmarks.queues_huey.huey -w 2 -k process``)
and the client process both import this module; the environment set by
``benchmarks.queues`` picks the storage: ``PWBENCH_HUEY=sqlite`` (a file in
``PWBENCH_DIR``) or ``redis`` (the runner's Redis at ``PWBENCH_REDIS_URL``).
Every other setting is huey's default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import Result


def _make() -> Huey:
    if os.environ.get("PWBENCH_HUEY") == "redis":
        return RedisHuey("pw-bench", url=os.environ["PWBENCH_REDIS_URL"])
    return SqliteHuey("pw-bench", filename=str(Path(os.environ["PWBENCH_DIR"]) / "huey.db"))


huey = _make()


@huey.task()  # type: ignore[untyped-decorator]
def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


@huey.task()  # type: ignore[untyped-decorator]
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


_TASKS = {"echo": echo, "add": add}


class Client:
    """Enqueue and wait the way a huey user does: ``task(...)`` then ``result.get(blocking=True)``.

    huey's blocking get polls its storage, backing off from 0.1 s (its defaults).
    """

    def submit(self, task: str, args: Sequence[Any]) -> Result:
        """Enqueue one task; returns once the storage holds it."""
        return _TASKS[task](*args)

    def result(self, handle: Result, timeout: float) -> Any:
        """Wait for one result."""
        return handle.get(blocking=True, timeout=timeout)

    def results(self, handles: Sequence[Result], timeout: float) -> list[Any]:
        """Wait for each result in turn."""
        return [self.result(h, timeout) for h in handles]
