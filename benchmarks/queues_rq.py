"""RQ's side of ``pipework bench daemon``: its two job functions and the client calls.

The runner's Redis at ``PWBENCH_REDIS_URL``; the workers are ``rq worker-pool
--num-workers 2`` (each forks a work horse per job, RQ's default worker
class). Every other setting is RQ's default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job


def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


_FUNCTIONS: dict[str, Callable[..., Any]] = {"echo": echo, "add": add}


class Client:
    """``queue.enqueue(fn, ...)``, then ``job.latest_result(timeout=...)`` (a blocking XREAD)."""

    def __init__(self) -> None:
        self._queue = Queue(connection=Redis.from_url(os.environ["PWBENCH_REDIS_URL"]))

    def submit(self, task: str, args: Sequence[Any]) -> Job:
        """Enqueue one job; returns once Redis holds it."""
        return self._queue.enqueue(_FUNCTIONS[task], *args)

    def result(self, handle: Job, timeout: float) -> Any:
        """Wait for one result (RQ's timeout is in whole seconds)."""
        result = handle.latest_result(timeout=max(1, round(timeout)))
        if result is None:
            raise TimeoutError(f"no result for job {handle.id} within {timeout:g} s")
        return result.return_value

    def results(self, handles: Sequence[Job], timeout: float) -> list[Any]:
        """Wait for each result in turn."""
        return [self.result(h, timeout) for h in handles]
