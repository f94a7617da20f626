"""Celery's side of ``pipework bench daemon``: the app, its two tasks, and the client calls.

Redis is both the broker and the result backend (the runner's Redis, at
``PWBENCH_REDIS_URL``); the worker is ``celery -A benchmarks.queues_celery
worker --concurrency 2`` (the prefork pool, its default). Every other setting
is Celery's default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult, ResultSet

# kombu and Celery name a Redis unix socket redis+socket:///path.
_URL = os.environ["PWBENCH_REDIS_URL"].replace("unix://", "redis+socket://", 1)
app = Celery("pw_bench", broker=_URL, backend=_URL)


@app.task  # type: ignore[untyped-decorator]
def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


@app.task  # type: ignore[untyped-decorator]
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


_TASKS = {"echo": echo, "add": add}


class Client:
    """``task.delay(...)``, then ``AsyncResult.get()``; many at once through a ``ResultSet``."""

    def submit(self, task: str, args: Sequence[Any]) -> AsyncResult:
        """Publish one task; returns once Redis holds it."""
        return _TASKS[task].delay(*args)

    def result(self, handle: AsyncResult, timeout: float) -> Any:
        """Wait for one result (the Redis backend subscribes to it: no polling)."""
        return handle.get(timeout=timeout)

    def results(self, handles: Sequence[AsyncResult], timeout: float) -> list[Any]:
        """Wait for all, as Celery recommends for many results (a native join on Redis).

        Its timeout bounds the whole join: ``timeout`` for each result, summed.
        """
        return list(ResultSet(list(handles)).get(timeout=timeout * max(1, len(handles))))
