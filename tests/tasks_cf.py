"""Task functions for tests/test_cf_contract.py (importable in a fresh process)."""

from __future__ import annotations

import importlib
import pickle
from typing import Any


class Plain:
    """An object a weak reference can watch."""


def make_plain(_: object = None) -> Plain:
    return Plain()


class FailsToPickle:
    """A result whose pickling raises ``error`` (a PicklingError, a SystemExit...)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error


def return_failing_to_pickle(kind: str) -> FailsToPickle:
    errors: dict[str, BaseException] = {
        "PicklingError": pickle.PicklingError("no pickling for you"),
        "SystemExit": SystemExit(3),
        "TypeError": TypeError("cannot pickle this one"),
    }
    return FailsToPickle(errors[kind])


def import_and_read(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


def announce(queue: Any) -> None:
    """An initializer that tells the parent, through a multiprocessing Queue, it ran."""
    import os  # noqa: PLC0415

    queue.put(os.getpid())
