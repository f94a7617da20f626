"""Dramatiq's side of ``pipework bench daemon``: the broker, its two actors, the client calls.

A Redis broker and the Redis results backend, both on the runner's Redis at
``PWBENCH_REDIS_URL``; the worker is ``dramatiq benchmarks.queues_dramatiq
--processes 2`` with its default 8 threads each. Every other setting is
Dramatiq's default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

_URL = os.environ["PWBENCH_REDIS_URL"]
broker = RedisBroker(url=_URL)
broker.add_middleware(Results(backend=RedisBackend(url=_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


@dramatiq.actor(store_results=True)
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


_ACTORS: dict[str, dramatiq.Actor[..., Any]] = {"echo": echo, "add": add}


class Client:
    """``actor.send(...)``, then ``message.get_result(block=True)`` (a blocking Redis pop)."""

    def submit(self, task: str, args: Sequence[Any]) -> Message[Any]:
        """Enqueue one message; returns once Redis holds it."""
        return _ACTORS[task].send(*args)

    def result(self, handle: Message[Any], timeout: float) -> Any:
        """Wait for one result (the backend's timeout is in whole seconds, as milliseconds)."""
        return handle.get_result(block=True, timeout=int(max(timeout, 1) * 1000))

    def results(self, handles: Sequence[Message[Any]], timeout: float) -> list[Any]:
        """Wait for each result in turn."""
        return [self.result(h, timeout) for h in handles]
