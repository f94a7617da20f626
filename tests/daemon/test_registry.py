"""Task registration: ``@task`` marks functions, ``load_tasks`` finds exactly those."""

from __future__ import annotations

import pickle
import sys
import types

import pytest

from pipework.service import TaskRegistryError, task
from pipework.service.daemon.registry import load_tasks


def _module(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


@pytest.fixture
def cleanup_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_example_tasks_register_by_function_name() -> None:
    tasks = load_tasks("pipework.service.daemon.example_tasks")
    assert sorted(tasks) == ["add", "crash", "echo", "fail", "fib", "sleep"]
    assert tasks["add"](2, 3) == 5
    assert pickle.loads(pickle.dumps(tasks["fib"]))(10) == 55  # still pickles by reference


def test_explicit_names_and_unmarked_functions(cleanup_modules) -> None:
    def plain() -> None: ...

    def resize() -> str:
        return "small"

    _module("pw_reg_a", plain=plain, resize=task(name="images.resize")(resize))
    assert list(load_tasks("pw_reg_a")) == ["images.resize"]


@pytest.mark.parametrize("bad", ["", "has space", "1starts-with-digit", "x" * 201, "semi;colon"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(TaskRegistryError, match="bad task name"):
        task(name=bad)(lambda: None)


def test_duplicate_names_are_refused(cleanup_modules) -> None:
    def one() -> None: ...

    def two() -> None: ...

    _module("pw_reg_b", one=task(name="same")(one), two=task(name="same")(two))
    with pytest.raises(TaskRegistryError, match="registers 'same' twice"):
        load_tasks("pw_reg_b")


def test_module_without_tasks_or_missing_module(cleanup_modules) -> None:
    _module("pw_reg_c", x=1)
    with pytest.raises(TaskRegistryError, match="has no @task functions"):
        load_tasks("pw_reg_c")
    with pytest.raises(TaskRegistryError, match="cannot import task module 'pw_no_such_mod'"):
        load_tasks("pw_no_such_mod")


def test_module_that_raises_on_import(cleanup_modules, tmp_path, monkeypatch) -> None:
    (tmp_path / "pw_reg_boom.py").write_text("raise RuntimeError('half-configured')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskRegistryError, match="RuntimeError: half-configured"):
        load_tasks("pw_reg_boom")
