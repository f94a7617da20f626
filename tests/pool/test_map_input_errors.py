"""``map`` over an input that raises: every item read before it is delivered, then the error.

concurrent.futures (3.11's ``Executor.map``) reads the whole input inside
``map()`` (``fs = [self.submit(fn, *args) for args in zip(*iterables)]``), so
an input that raises makes ``map()`` itself raise that exception, and the tasks
already submitted still run (nothing cancels them). pipework reads the input
as results are taken, so the same error comes where it stood in the input:
after the result of every item read before it, as the built-in ``map`` does.
While ``map()`` fills its first window it raises at once, as in cf, and the
tasks it submitted still run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipework.service import WorkerService
from tests import tasks, tasks_faults
from tests.support.waiting import wait_until


class InputError(Exception):
    """What the input raises."""


def _raising_at(n: int) -> Iterator[int]:
    yield from range(n)
    raise InputError(f"item {n} cannot be read")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("chunksize", "buffersize"),
    [(None, None), (1, None), (7, None), (1000, 2)],
    ids=["auto", "chunksize=1", "chunksize=7", "chunksize=1000-buffersize=2"],
)
def test_results_before_an_input_error_are_all_delivered(
    make_pool: Callable[..., WorkerService], chunksize: int | None, buffersize: int | None
) -> None:
    # buffersize keeps item 5000 out of what map() itself reads.
    pool = make_pool(2)
    results = pool.map(
        tasks.square, _raising_at(5000), chunksize=chunksize, buffersize=buffersize, timeout=90
    )
    got: list[int] = []
    with pytest.raises(InputError, match="item 5000 cannot be read"):
        got.extend(results)
    assert got == [x * x for x in range(5000)]
    with pytest.raises(StopIteration):
        next(results)


@pytest.mark.timeout(60)
def test_an_input_error_among_several_iterables(make_pool: Callable[..., WorkerService]) -> None:
    pool = make_pool(2)
    results = pool.map(tasks.add, _raising_at(300), range(1000), chunksize=10)
    got: list[int] = []
    with pytest.raises(InputError):
        got.extend(results)
    assert got == [2 * x for x in range(300)]


@pytest.mark.timeout(60)
def test_an_input_error_while_map_starts_is_raised_by_map_and_read_items_still_run(
    make_pool: Callable[..., WorkerService], tmp_path: Path
) -> None:
    pool = make_pool(2)
    marks = [str(tmp_path / f"item{i}") for i in range(3)]

    def items() -> Iterator[str]:
        yield from marks
        raise InputError("third item was the last")

    with pytest.raises(InputError):
        pool.map(tasks_faults.touch, items(), chunksize=1)
    # As in concurrent.futures: what was submitted before the error still runs.
    wait_until(lambda: all(Path(m).exists() for m in marks))
    assert pool.submit(tasks.square, 3).result(timeout=30) == 9
