"""pipework's machinery: ``WorkerService`` and the errors it raises.

```python
from pipework import WorkerService   # the same object as pipework.service.WorkerService

with WorkerService(max_workers=4) as pool:
    future = pool.submit(fn, 1, 2)
    for result in pool.map(fn, items, chunksize=64):
        ...
    pool.options(timeout=2.0, retries=1).submit(fn, 3)
```

Where things live (``pipework.service`` is the folder ``service/``)::

    executor.py      WorkerService: submit, map, options, shutdown
    map.py           map's lazy chunks in flight and its results in order
    futures.py       TaskFuture, the slim Future that can cancel a running task
    ledger.py        task states and the bound on outstanding tasks
    dispatcher.py    the thread that feeds workers and watches them
    supervisor.py    starting, tracking and killing worker processes
    worker.py        the worker process's main loop (all that runs in a worker)
    collector.py     outcomes -> resolved futures and callbacks
    pickling.py      calls and results, protocol 5, out-of-band buffers
    errors.py        the PipeworkError tree
    logs.py          structlog set-up
    transports/      how frames travel: base (the contract), pipe, queue, zmq,
                     frames (the frame kinds), shm (large payloads)
    daemon/          ``pipework serve``: server (socket, loop, start/stop,
                     signals), requests (op handlers, result waiters, task_done
                     events, replies out), scheduler (ready/delay heaps,
                     dispatch local/remote, settle, retry, quarantine),
                     journal, outcomes, replies, registry (@task), config,
                     security (CURVE), sessions (remote workers), store/
                     (the Store contract, postgres), task_output (a task's
                     prints as log events), example_tasks
    remote_worker.py ``pipework worker``: a local pool serving a daemon
    ops/             metrics, notify (systemd), status (snapshot + server),
                     status_page (the HTML)
    cli/             parsing (``pipework ...``), commands (the client
                     commands), overview, keys, demo_pool, demo_daemon

The pool core (the modules at the top, but remote_worker.py) imports nothing
from ``daemon/``, ``ops/`` or ``cli/``; a worker process imports only ``worker``,
``pickling``, ``transports`` and ``errors``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipework.service.errors import (
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
    from pipework.service.daemon.registry import TaskRegistryError, task
    from pipework.service.executor import (
        DEFAULT_MAX_PENDING,
        EXIT_GRACE,
        TaskOptions,
        WorkerService,
    )
    from pipework.service.futures import TaskFuture

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
    "DEFAULT_MAX_PENDING": "pipework.service.executor",
    "EXIT_GRACE": "pipework.service.executor",
    "TaskOptions": "pipework.service.executor",
    "WorkerService": "pipework.service.executor",
    "TaskFuture": "pipework.service.futures",
    "TaskRegistryError": "pipework.service.daemon.registry",
    "task": "pipework.service.daemon.registry",
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
