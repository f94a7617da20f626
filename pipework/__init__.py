"""pipework: a process pool and a task daemon that do not break, hang or lose work.

The names most programs need, from one place::

    from pipework import WorkerService          # the pool, a concurrent.futures.Executor
    from pipework import task                   # mark a function a daemon may run
    from pipework import Client, AsyncClient    # talk to ``pipework serve``

The machinery lives in ``pipework.service`` and the wire (message models,
codec, clients) in ``pipework.protocol``; both list their full API in
``__all__``. Every name here is imported on first use, so importing
``pipework`` (which every worker process does) costs nothing.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipework.protocol import AsyncClient, Client, ProtocolError, TaskFailed, Unavailable
    from pipework.service import (
        BrokenService,
        PipeworkError,
        QueueFull,
        RemoteError,
        SerializationError,
        ServiceClosed,
        TaskFuture,
        TaskRegistryError,
        TaskTimeout,
        WorkerLost,
        WorkerService,
        task,
    )

try:
    __version__ = _metadata.version("pipework")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncClient",
    "BrokenService",
    "Client",
    "PipeworkError",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "ServiceClosed",
    "TaskFailed",
    "TaskFuture",
    "TaskRegistryError",
    "TaskTimeout",
    "Unavailable",
    "WorkerLost",
    "WorkerService",
    "task",
]

_PROTOCOL = {"AsyncClient", "Client", "ProtocolError", "TaskFailed", "Unavailable"}


def __getattr__(name: str) -> Any:
    """Import a public name from ``pipework.service`` or ``pipework.protocol`` on first use."""
    if name not in __all__:
        raise AttributeError(f"module 'pipework' has no attribute {name!r}")
    home = "pipework.protocol" if name in _PROTOCOL else "pipework.service"
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted(set(globals()) | set(__all__))
