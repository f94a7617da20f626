"""pipework's machinery: ``WorkerService`` and the errors it raises.

```python
from service import WorkerService

with WorkerService(max_workers=4) as pool:
    future = pool.submit(fn, 1, 2)
    for result in pool.map(fn, items, chunksize=64):
        ...
    pool.options(timeout=2.0, retries=1).submit(fn, 3)
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from service.errors import (
    BrokenService,
    PipeworkError,
    QueueFull,
    RemoteError,
    SerializationError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
)

if TYPE_CHECKING:
    from service.executor import DEFAULT_MAX_PENDING, EXIT_GRACE, TaskOptions, WorkerService
    from service.futures import TaskFuture
    from service.registry import TaskRegistryError, task

__all__ = [
    "DEFAULT_MAX_PENDING",
    "EXIT_GRACE",
    "BrokenService",
    "PipeworkError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "ServiceClosed",
    "TaskFuture",
    "TaskOptions",
    "TaskRegistryError",
    "TaskTimeout",
    "WorkerLost",
    "WorkerService",
    "task",
]

# Imported on first use, so a worker process (which imports service.worker)
# does not pay for the executor, asyncio and the logging stack at start-up.
_LAZY = {
    "DEFAULT_MAX_PENDING": "service.executor",
    "EXIT_GRACE": "service.executor",
    "TaskOptions": "service.executor",
    "WorkerService": "service.executor",
    "TaskFuture": "service.futures",
    "TaskRegistryError": "service.registry",
    "task": "service.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
