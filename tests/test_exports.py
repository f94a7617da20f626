"""The public surface is exactly what ``__all__`` lists, and ``protocol`` stands alone."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
import typing

import pytest

import pipework
from pipework import protocol, service

# Names a module gets from ``from typing import Any`` or ``from __future__ import
# annotations`` are there for type hints, not for users; they are not API.
_ANNOTATION_MODULES = (typing, importlib.import_module("__future__"))
_MISSING = object()


def _is_annotation_helper(name: str, value: object) -> bool:
    return any(getattr(m, name, _MISSING) is value for m in _ANNOTATION_MODULES)


def public_names(module: types.ModuleType) -> set[str]:
    """What a user sees in ``module``: ``dir()`` (so lazy attributes count), minus
    private names, submodules and imported annotation helpers."""
    names = set()
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType) or _is_annotation_helper(name, value):
            continue
        names.add(name)
    return names


@pytest.mark.parametrize("module", [pipework, service, protocol], ids=lambda m: m.__name__)
def test_all_lists_every_public_name(module: types.ModuleType) -> None:
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"in __all__ but not defined: {missing}"
    assert set(exported) == public_names(module)


def test_protocol_never_imports_service() -> None:
    code = (
        "import pipework.protocol, sys; "
        "print(any(m.startswith('pipework.service') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_facade_names_are_the_modules_own() -> None:
    """``pipework.X`` is the very object ``pipework.service.X`` or ``pipework.protocol.X`` is."""
    for name in pipework.__all__:
        home = protocol if name in protocol.__all__ else service
        assert getattr(pipework, name) is getattr(home, name), name


# Not errors a user catches: the text of a task's traceback, carried as __cause__.
_NOT_RAISED = {"RemoteTraceback"}


def test_every_service_exception_derives_from_pipework_error() -> None:
    """One ``except PipeworkError`` catches whatever pipework itself raises."""
    import pkgutil  # noqa: PLC0415

    strays = []
    for info in pkgutil.walk_packages(service.__path__, "pipework.service."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
                and name not in _NOT_RAISED
                and not issubclass(value, service.PipeworkError)
            ):
                strays.append(f"{module.__name__}.{name}")
    assert not strays
