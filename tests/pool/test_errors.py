"""The error tree: what each error is, and that each survives pickling with its context."""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from typing import Any

import pytest

from pipework.service import (
    BrokenService,
    PipeworkError,
    QueueFull,
    RemoteError,
    SerializationError,
    ServiceClosed,
    TaskTimeout,
    WorkerLost,
)

# (error, attributes it must carry, before and after a pickle round trip)
CASES: list[tuple[PipeworkError, dict[str, Any]]] = [
    (
        WorkerLost(7, 4321, -9, 2),
        {"task_id": 7, "pid": 4321, "exitcode": -9, "signal": "SIGKILL", "attempt": 2},
    ),
    (
        WorkerLost(8, 4322, -11),
        {"task_id": 8, "pid": 4322, "exitcode": -11, "signal": "SIGSEGV", "attempt": 1},
    ),
    (
        WorkerLost(9, 4323, 3, 1),
        {"task_id": 9, "pid": 4323, "exitcode": 3, "signal": None, "attempt": 1},
    ),
    (
        WorkerLost(10, None, None, 1),
        {"task_id": 10, "pid": None, "exitcode": None, "signal": None, "attempt": 1},
    ),
    (TaskTimeout(11, 0.5, 4324), {"task_id": 11, "timeout": 0.5, "pid": 4324}),
    (
        RemoteError("tests.tasks.UnpicklableError", "cannot travel", "Traceback ...\n"),
        {
            "type_name": "tests.tasks.UnpicklableError",
            "message": "cannot travel",
            "traceback": "Traceback ...\n",
        },
    ),
    (QueueFull(100, 1.5), {"max_pending": 100, "waited": 1.5}),
    (ServiceClosed(), {"reason": "cannot schedule new tasks after shutdown"}),
    (
        ServiceClosed("the service was garbage-collected"),
        {"reason": "the service was garbage-collected"},
    ),
    (
        SerializationError("_thread.lock", "argument", "TypeError: cannot pickle"),
        {"type_name": "_thread.lock", "what": "argument", "reason": "TypeError: cannot pickle"},
    ),
    (
        BrokenService("the initializer raised", "Traceback ...\nRuntimeError: boom\n"),
        {"reason": "the initializer raised", "traceback": "Traceback ...\nRuntimeError: boom\n"},
    ),
]


def case_id(case: tuple[PipeworkError, dict[str, Any]]) -> str:
    error, attrs = case
    return f"{type(error).__name__}-" + "-".join(str(v) for v in list(attrs.values())[:3])


@pytest.mark.parametrize(("error", "attrs"), CASES, ids=[case_id(c) for c in CASES])
def test_error_survives_pickle(error: PipeworkError, attrs: dict[str, Any]) -> None:
    for candidate in (error, pickle.loads(pickle.dumps(error))):
        assert type(candidate) is type(error)
        assert isinstance(candidate, PipeworkError)
        assert {name: getattr(candidate, name) for name in attrs} == attrs
        assert str(candidate) == str(error)
        assert candidate.args == error.args


def test_worker_lost_message_names_the_signal() -> None:
    assert "SIGKILL(-9)" in str(WorkerLost(1, 2, -9))


def test_service_closed_is_a_runtime_error() -> None:
    assert issubclass(ServiceClosed, RuntimeError)
    with pytest.raises(RuntimeError):
        raise ServiceClosed()


def test_broken_service_is_a_broken_executor() -> None:
    assert issubclass(BrokenService, BrokenExecutor)
    with pytest.raises(BrokenExecutor):
        raise BrokenService("the initializer raised")


def test_every_error_is_a_pipework_error() -> None:
    for error_type in (
        WorkerLost,
        TaskTimeout,
        RemoteError,
        QueueFull,
        ServiceClosed,
        SerializationError,
        BrokenService,
    ):
        assert issubclass(error_type, PipeworkError)
