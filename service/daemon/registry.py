"""Task registration: which functions a daemon may run, by name.

A task module is an ordinary module whose daemon-runnable functions carry the
``@task`` decorator::

    from pipework.service import task

    @task
    def add(a: int, b: int) -> int:
        return a + b

    @task(name="images.resize")
    def resize(path: str, width: int) -> str: ...

``pipework serve --tasks mymodule`` imports the module and runs only those
names. The decorator returns the function itself (marked), so it stays
picklable by reference and callable as before.

``pipework serve`` and ``pipework worker`` import the module with the current
directory first on ``sys.path`` (``import_from_cwd``), as ``celery -A`` and
``rq worker`` do, so ``mytasks.py`` next to where the command runs is found, by
the daemon and by the workers it starts (forkserver and spawn children take
``sys.path`` from it).

A task is an ordinary function: ``async def`` is refused (``@task`` raises
``TaskRegistryError``), since a worker would call it, get a coroutine it never
awaits, and fail every run with "cannot pickle result of type coroutine".
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from pipework.service.errors import PipeworkError

__all__ = ["TaskRegistryError", "describe", "import_from_cwd", "load_tasks", "task"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__pipework_task__"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")


class TaskRegistryError(PipeworkError):
    """A task module cannot be loaded, or registers a bad or duplicate name."""


@overload
def task(fn: F, /) -> F: ...
@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a module-level function as a task the daemon may run.

    Args:
        fn: the function (when used as ``@task``).
        name: the name clients use (default: the function's ``__name__``).
            Letters, digits and ``_ . : -``, at most 200 characters.

    Raises:
        TaskRegistryError: the name is not a valid task name, or the function
            is a coroutine function (``async def``), which a worker cannot run yet.
    """

    def mark(f: F) -> F:
        chosen = f.__name__ if name is None else name
        if not _NAME.match(chosen):
            raise TaskRegistryError(
                f"bad task name {chosen!r}: use letters, digits and _ . : -, at most 200 chars"
            )
        _refuse_async(f, chosen)
        setattr(f, _MARK, chosen)
        return f

    return mark if fn is None else mark(fn)


def _refuse_async(f: Callable[..., Any], name: str) -> None:
    if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
        raise TaskRegistryError(
            f"task {name!r} ({getattr(f, '__qualname__', f)!r}) is an async def: pipework "
            "runs tasks as plain calls in worker processes and does not await coroutines "
            "yet; make it a def (call asyncio.run(...) inside it if it needs asyncio)"
        )


def import_from_cwd() -> None:
    """Put the current directory first on ``sys.path`` (once), as ``python -m`` does.

    ``pipework serve --tasks mytasks`` then finds ``./mytasks.py``. The absolute
    path is used, so worker processes (which take ``sys.path`` from the daemon)
    find it whatever their own working directory.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def describe(fn: Callable[..., Any]) -> tuple[str, str]:
    """A task's signature as text, ``(a: int, b: int) -> int``, and its docstring's first line."""
    try:
        sig = str(inspect.signature(fn, eval_str=True))
    except (NameError, TypeError, ValueError, SyntaxError):  # annotations it cannot evaluate
        try:
            sig = str(inspect.signature(fn))
        except (TypeError, ValueError):
            sig = "(...)"
    doc = inspect.getdoc(fn) or ""
    return sig, doc.strip().split("\n", 1)[0]


def load_tasks(module_name: str) -> Mapping[str, Callable[..., Any]]:
    """Import ``module_name`` and return its ``@task`` functions by name.

    Raises:
        TaskRegistryError: the module cannot be imported, registers no task,
            registers one name twice, or marks an ``async def``.
    """
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TaskRegistryError(
            f"cannot import task module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    found: dict[str, Callable[..., Any]] = {}
    for attr, value in vars(module).items():
        name = getattr(value, _MARK, None) if callable(value) else None
        if not isinstance(name, str):
            continue
        if name in found and found[name] is not value:
            raise TaskRegistryError(
                f"task module {module_name!r} registers {name!r} twice "
                f"({found[name].__qualname__} and {attr})"
            )
        _refuse_async(value, name)
        found[name] = value
    if not found:
        raise TaskRegistryError(
            f"task module {module_name!r} has no @task functions; "
            "mark the functions the daemon may run with service.task"
        )
    return found
