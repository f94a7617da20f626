"""The transports benchmark runs end to end: a table per measure, each transport beside its floor.

A smoke test only: it checks the benchmark works and reports positive numbers,
never how fast anything is (speed lives in ``benchmarks/``, never in timed
assertions).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = {"pipe": "mp.Pipe", "zmq": "zmq ipc://"}
"""The transports the smoke run asks for, and the label of each one's floor."""
FLOORS = {"pipe": "floor:pipe", "zmq": "floor:zmq-ipc"}
TABLES = ("Tiny-task throughput", "Round-trip latency", "Payload bandwidth")


def _tables(report: str) -> dict[str, list[list[str]]]:
    """Data rows (as cell lists) of each ``### <title>`` section's markdown table."""
    tables: dict[str, list[list[str]]] = {}
    for section in report.split("\n### ")[1:]:
        title, _, body = section.partition("\n")
        rows = [
            [cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| transport")
        ]
        for name in TABLES:
            if title.startswith(name):
                tables[name] = rows
    return tables


def _positive(cell: str) -> float:
    assert re.fullmatch(r"[\d,]+(\.\d+)?", cell), f"not a number: {cell!r}"
    value = float(cell.replace(",", ""))
    assert value > 0, cell
    return value


def _check_rows(rows: list[list[str]], floor_column: int, numbers: list[int], per: int) -> None:
    """Each transport has ``per`` rows, names its floor, and has positive ``numbers`` columns."""
    for transport, floor_label in TRANSPORTS.items():
        mine = [cells for cells in rows if cells[0] == transport]
        assert len(mine) == per, rows
        for cells in mine:
            assert cells[floor_column] == floor_label, cells
            for column in numbers:
                _positive(cells[column])


@pytest.mark.timeout(150)
def test_transports_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "transports.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.transports",
            "--quick",
            "--transports",
            ",".join(TRANSPORTS),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    tables = _tables(proc.stdout)
    assert set(tables) == set(TABLES), proc.stdout

    # transport | pipework tasks/s | floor | floor tasks/s | ratio
    _check_rows(tables["Tiny-task throughput"], 2, [1, 3, 4], per=1)
    # transport | p50 | p99 | floor | floor p50 | floor p99 | p50 ratio | p99 ratio
    _check_rows(tables["Round-trip latency"], 3, [1, 2, 4, 5, 6, 7], per=1)
    # transport | payload | pipework MiB/s | floor | floor MiB/s | ratio; one row per size
    _check_rows(tables["Payload bandwidth"], 3, [2, 4, 5], per=2)
    assert "Machine:" in proc.stdout
    assert "Load average" in proc.stdout

    report = json.loads(out.read_text())
    assert report["quick"] is True
    records = {(r["subject"], r["measure"]): r for r in report["results"]}
    subjects = {f"pipework:{t}" for t in TRANSPORTS} | set(FLOORS.values())
    assert set(records) == {(s, m) for s in subjects for m in report["measures"]}
    for record in records.values():
        assert record["status"] == "ok", record
    for subject in subjects:
        assert records[subject, "throughput"]["results"]["tasks_per_s"] > 0
        assert records[subject, "throughput"]["results"]["errors"] == 0
        assert records[subject, "latency"]["results"]["p99_us"] > 0
        sizes = records[subject, "bandwidth"]["results"]["sizes"]
        assert len(sizes) == 2
        assert all(size["mib_per_s"] > 0 for size in sizes.values())
