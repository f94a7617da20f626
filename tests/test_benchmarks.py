"""The submit-flood benchmark runs end to end and reports a row per contender.

A smoke test only: it checks the benchmark works, never how fast anything is
(speed lives in ``benchmarks/``, never in timed assertions).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
N = 2000


def _rows(table: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| contender"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _number(cell: str) -> float:
    assert re.fullmatch(r"[\d,]+(\.\d+)?", cell), f"not a number: {cell!r}"
    return float(cell.replace(",", ""))


@pytest.mark.timeout(150)
def test_submit_flood_smoke(tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.submit_flood",
            "--n",
            str(N),
            "--peers",
            "pipework,cf",
            "--limit-seconds",
            "60",
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
    rows = _rows(proc.stdout)
    pipework = [cells for label, cells in rows.items() if label.startswith("pipework")]
    cf = [cells for label, cells in rows.items() if label == "ProcessPoolExecutor"]
    raw = [cells for label, cells in rows.items() if label.startswith("raw Pipe floor")]
    assert len(pipework) == 2, proc.stdout
    assert len(cf) == 1, proc.stdout
    assert len(raw) == 1, proc.stdout
    for cells in [*pipework, *cf, *raw]:
        # tasks/s, ratio to best peer, ratio to raw floor, peak RSS, RSS growth, start RSS
        rate, to_peer, to_raw, peak, growth, start = cells[2:8]
        assert _number(rate) > 0
        assert _number(to_peer) > 0
        assert _number(to_raw) > 0
        assert _number(peak) > 0
        assert _number(start) > 0
        assert _number(growth) >= 0
    assert "Machine:" in proc.stdout

    report = json.loads(out.read_text())
    assert report["n"] == N
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {"pipework", "pipework-bp", "cf", "raw"}
    for record in by_name.values():
        assert record["status"] == "ok", record
        assert record["completed"] == N
        assert record["errors"] == 0
        assert record["tasks_per_s"] > 0
    assert by_name["pipework"]["start_method"] == "forkserver"
    assert by_name["cf"]["start_method"] == "forkserver"
