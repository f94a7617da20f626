"""The daemon benchmark runs end to end on real daemons and reports every row.

A smoke test only: it checks the benchmark works and reports positive numbers,
never how fast anything is (speed lives in ``benchmarks/``, never in timed
assertions).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.processes import run_bounded

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

ROOT = Path(__file__).resolve().parents[2]
CELLS = {
    "accept-off",
    "accept-full",
    "accept-normal",
    "e2e-full",
    "e2e-off",
    "latency-full",
    "latency-off",
    "remote-tcp-curve",
    "remote-ipc",
    "floor",
    "ceiling",
}
REMOTE = {"remote-tcp-curve", "remote-ipc"}


@pytest.mark.timeout(90)
def test_daemon_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "daemon.json"
    done = run_bounded(
        [sys.executable, "-m", "pipework.benchmarks.daemon", "--quick", "--out", str(out)],
        timeout=75,
    )
    assert done.returncode == 0, done.stderr + done.stdout

    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {row["cell"] for row in rows} == CELLS
    for row in rows:
        assert isinstance(row["value"], int | float), row
        assert row["value"] > 0, row
        assert row["ratio"] is None or row["ratio"] > 0, row
    # Each remote cell gives end to end, p50 and p99, each as a ratio to the local workers'.
    remote_rows = [row for row in rows if row["cell"] in REMOTE]
    assert Counter(row["cell"] for row in remote_rows) == dict.fromkeys(REMOTE, 3)
    for row in remote_rows:
        assert row["ratio"] is not None, row
        assert row["versus"].startswith("2 local workers"), row
    for cell in report["cells"]:
        assert cell["status"] == "ok", cell
        assert cell["stop"]["leftovers_killed"] == 0, cell
        assert not cell["stop"]["sigkilled"], cell
        if cell["cell"] in REMOTE:
            assert cell["cpu"]["descendants"] == 0, cell  # --workers 0: the worker ran them all
            assert cell["cpu"]["remote_pct"] > 0, cell
            worker = cell["remote_worker"]
            assert worker["stop"]["exitcode"] == 0, worker  # SIGTERM: bye, then exit 0
            assert worker["stop"]["leftovers_killed"] == 0, worker
            assert not worker["stop"]["sigkilled"], worker
    commands = {
        c["cell"]: c["remote_worker"]["command"] for c in report["cells"] if c["cell"] in REMOTE
    }
    assert "--secret-key" in commands["remote-tcp-curve"]
    assert "--secret-key" not in commands["remote-ipc"]
    assert "| what | setting | value | unit | compared with |" in done.stdout
    assert "tcp://127.0.0.1 + CURVE" in done.stdout
    assert "Machine:" in done.stdout
