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
from service.executor import DEFAULT_MAX_PENDING, TaskOptions, WorkerService
from service.futures import TaskFuture

__all__ = [
    "DEFAULT_MAX_PENDING",
    "BrokenService",
    "PipeworkError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "ServiceClosed",
    "TaskFuture",
    "TaskOptions",
    "TaskTimeout",
    "WorkerLost",
    "WorkerService",
]
