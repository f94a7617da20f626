"""The collector: turns outcomes into resolved futures, and runs callbacks.

```
 dispatcher ──(task, RESULT|ERROR, frame)────▶ outcomes ──▶ collector thread
            ──(task, None, exception)────────▶            ├─ unpickle
                                                           ├─ future.set_result / set_exception
                                                           │    └─ done-callbacks run here
                                                           └─ ledger.release(task)
```

Unpickling happens here, not on the dispatcher thread, so a large or broken
result delays only callbacks, never dispatch. A task's own exception keeps
its type, with the remote traceback chained as ``__cause__``; one that cannot
be rebuilt becomes ``RemoteError``.
"""

from __future__ import annotations

import pickle
import pickletools
import queue
import threading
from typing import Any

from pipework.service import pickling
from pipework.service.errors import RemoteError, SerializationError
from pipework.service.ledger import Ledger, Task
from pipework.service.logs import get_logger
from pipework.service.transports.frames import Frame, Kind, Payload

__all__ = ["Collector", "RemoteTraceback", "rebuild_exception"]

_log = get_logger("pipework.collector")
_PLAIN_MAX = 4096

Outcome = tuple[Task, Kind | None, Any]


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def rebuild_exception(payload: Payload) -> BaseException:
    """Rebuild an exception from a worker's ``ErrorInfo`` payload.

    The exception keeps its type; its ``__cause__`` is the remote traceback,
    or, when it was raised while pickling the task's result, a
    ``SerializationError`` (``what="result"``) caused by that traceback.
    """
    exc_bytes, type_name, message, tb, result_type = pickle.loads(payload)
    exc: BaseException
    if exc_bytes is None:
        exc = RemoteError(type_name, message, tb)
    else:
        try:
            loaded = pickle.loads(exc_bytes)
        except BaseException:  # the type may be missing here, or its __reduce__ broken
            loaded = None
        exc = loaded if isinstance(loaded, BaseException) else RemoteError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(tb)
    if result_type is not None:
        why = SerializationError(result_type, "result", f"{type_name}: {message}")
        why.__cause__ = exc.__cause__
        exc.__cause__ = why
    return exc


def _first_class_named(data: Payload) -> str:
    """The first class a pickle refers to: the result's type, for a result that won't load."""
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(bytes(data)):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                return arg.replace(" ", ".")
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a truncated or odd stream: say so rather than guess
        pass
    return "unknown"


class Collector:
    """Owns the collector thread and its inbox."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._inbox: queue.SimpleQueue[list[Outcome] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pipework-collector", daemon=True)
        self.ident: int | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()
        self.ident = self._thread.ident

    def put_many(self, outcomes: list[Outcome]) -> None:
        """Hand over ``(task, kind, frame)`` from workers and ``(task, None, exception)``.

        The list becomes the collector's; the dispatcher hands over one per pass.
        """
        self._inbox.put(outcomes)

    def stop(self) -> None:
        """Let the thread finish what it has, then exit."""
        self._inbox.put(None)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to exit."""
        if self._thread.is_alive() and threading.get_ident() != self.ident:
            self._thread.join(timeout)

    def resolve_plain(self, task: Task, frame: Frame) -> bool:
        """Resolve a small result of plain data on the calling (dispatcher) thread.

        A result of at most ``_PLAIN_MAX`` bytes whose pickle names no class or
        function (protocol 5 names every one with STACK_GLOBAL, byte 0x93) can
        run no user code when loaded, so loading it cannot stall the caller;
        and a future without callbacks needs no collector. Skipping the
        collector's hop is most of a one-task round trip. Returns False when
        the collector must do it.
        """
        payload = frame.payload
        future = task.future
        if (
            future is None
            or frame.buffers
            or type(payload) is not bytes
            or len(payload) > _PLAIN_MAX
            or b"\x93" in payload
            or future._callbacks
        ):
            return False
        try:
            value = pickle.loads(payload)
        except Exception:  # a garbled result: the collector reports it
            return False
        if not future._pw_resolve_plain(value):
            return False
        task.payload = None
        task.buffers = ()
        self._ledger.release(task)
        task.future = None
        return True

    def _run(self) -> None:
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            if not batch:
                continue
            for task, kind, data in batch:
                try:
                    self._resolve(task, kind, data)
                except BaseException as exc:  # a bug here must not strand every later future
                    _log.exception("collector failed to resolve a task", task_id=task.id)
                    if task.future is not None:
                        task.future._pw_resolve(exc=exc)
                    self._ledger.release(task)
            del batch, task, data  # hold no result while idle

    def _resolve(self, task: Task, kind: Kind | None, data: Any) -> None:
        value: Any = None
        exc: BaseException | None = None
        if kind is None:
            exc = data
        elif kind is Kind.RESULT:
            try:
                value = pickling.loads(data.payload, data.buffers)
            except BaseException as err:
                exc = SerializationError(
                    _first_class_named(data.payload),
                    "result",
                    f"cannot unpickle: {type(err).__name__}: {err}",
                )
                exc.__cause__ = err
        else:
            try:
                exc = rebuild_exception(data.payload)
            except BaseException as err:  # a garbled ErrorInfo is still only this task's problem
                exc = RemoteError(type(err).__name__, f"unreadable error report: {err}")
        task.payload = None
        task.buffers = ()
        future = task.future
        if future is not None:
            future._pw_resolve(value, exc)
        self._ledger.release(task)
        task.future = None
