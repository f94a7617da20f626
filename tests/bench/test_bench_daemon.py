"""``pipework bench daemon``: a small run against huey (SQLite) reports every row, cleanly.

A smoke test only: it checks the runner's structure (every row, every
contender, ratios, goals, a clean stop of every process tree), never how
fast anything is (speed lives in ``benchmarks/``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipework.benchmarks import queues
from tests.support.processes import run_bounded

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 50.0
"""Below the per-test pytest-timeout, so a hang fails here with the output so far."""
ROWS = {"accept", "accept_one_in_flight", "e2e", "p50", "p99", "idle", "idle_per_worker"}
CONTENDERS = ["pipework", "huey-sqlite"]


@pytest.mark.timeout(60)
def test_quick_run_against_huey_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "daemon.json"
    done = run_bounded(
        [
            sys.executable,
            "-m",
            "pipework.benchmarks.queues",
            "--quick",
            "--only",
            ",".join(CONTENDERS),
            "--n",
            "100",
            "--trips",
            "5",
            "--warm",
            "3",
            "--json",
            str(out),
        ],
        RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr + done.stdout

    report = json.loads(out.read_text())
    assert report["available"] == CONTENDERS
    assert report["unavailable"] == {}
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == ROWS
    for row in rows.values():
        for name in CONTENDERS:
            value = row["values"][name]
            assert value is not None, row
            assert value["median"] > 0, row
            assert len(value["runs"]) == 1, row
        assert row["best_peer"] == "huey-sqlite", row
        assert row["ratio"] > 0, row
        assert row["met"] in (True, False, None), row
    assert rows["idle"]["met"] is None  # no goal for the total, only per worker
    assert rows["accept_one_in_flight"]["met"] is None
    assert rows["p50"]["met"] in (True, False)

    assert {(c["contender"], c["kind"]) for c in report["cells"]} == {
        (name, cell) for name in CONTENDERS for cell in queues.CELLS
    }
    for cell in report["cells"]:
        assert cell["status"] == "ok", cell
        assert not cell["stop"]["sigkilled"], cell
        assert cell["stop"]["leftovers_killed"] == 0, cell
        if cell["kind"] == "latency":
            assert cell["tree_mib"] > 0, cell
            assert len(cell["processes"]) >= 3, cell  # the server and its 2 workers at least

    assert "| workload | unit | pipework serve | huey (SQLite) |" in done.stdout
    assert "Machine:" in done.stdout
    assert "Commit:" in done.stdout
    assert "run 1/1: huey-sqlite e2e: ok" in done.stderr  # progress


def test_write_docs_replaces_only_the_daemon_block(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    pool = (
        "<!-- BEGIN pipework-bench-pool:table -->\npool rows\n"
        "<!-- END pipework-bench-pool:table -->"
    )
    daemon = (
        "<!-- BEGIN pipework-bench-daemon:table -->\nold\n<!-- END pipework-bench-daemon:table -->"
    )
    page.write_text(f"# Performance\n\n{pool}\n\nprose\n\n{daemon}\n\nmore prose\n")

    queues.write_docs("| new | table |", page)

    text = page.read_text()
    assert "| new | table |\n<!-- END pipework-bench-daemon:table -->" in text
    assert "\nold\n" not in text
    assert pool in text
    assert text.endswith("\n\nmore prose\n")

    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="pipework-bench-daemon"):
        queues.write_docs("| new |", page)
