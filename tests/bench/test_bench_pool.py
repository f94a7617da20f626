"""``pipework bench pool``: a quick run measures every cell and its Markdown and JSON agree.

A smoke test of the runner only: it checks that every row and every contender
gives a record (or says why not), never how fast anything is (speed lives in
``benchmarks/``, never in timed assertions).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipework.benchmarks import pool
from pipework.benchmarks.common import rewrite_blocks
from pipework.benchmarks.pool_plan import QUICK, ROWS, TRANSPORTS, Cell, plan
from pipework.benchmarks.pool_report import NUMBER_FORMAT, aggregate, summarize
from pipework.benchmarks.pool_subjects import PEERS
from tests.support.processes import REPO, run_pipework

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

ROOT = REPO
RUN_TIMEOUT = 200.0
"""Below the test's own bound, so a hang fails here with the output so far."""
EXPLAINED = {"not installed", "skipped"}


def _table(markdown: str, header: str) -> list[list[str]]:
    """The data rows of the Markdown table whose header line starts with ``header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.timeout(240)
def test_quick_run_measures_every_cell(tmp_path: Path) -> None:
    docs_before = (ROOT / "docs" / pool.DOCS).read_bytes()
    out = tmp_path / "pool.json"
    done = run_pipework("bench", "pool", "--quick", "--json", str(out), timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["quick"] is True

    # Every planned cell has a record: measured, or an explicit reason why not.
    planned = [cell.id for cell in plan()]
    assert report["plan"] == planned
    assert set(report["cells"]) == set(planned)
    assert {r["cell"] for r in report["records"]} == set(planned)
    for entry in report["cells"].values():
        if entry["status"] == "ok":
            assert entry["median"] is not None, entry
            assert entry["median"] > 0, entry
        else:
            assert entry["status"] in EXPLAINED, entry
            assert entry["error"], entry
    # pipework itself is always measured.
    for cell_id, entry in report["cells"].items():
        if "/pipework" in cell_id:
            assert entry["status"] == "ok", entry
    # Every row has each peer and a pipework cell; the IPC rows every transport.
    for row in ROWS:
        subjects = {c.subject for c in plan() if c.row == row}
        assert set(PEERS) <= subjects or row == "construct", row
        assert any(s.startswith("pipework") for s in subjects), row
    for row in ("submit", "map", "latency", "echo"):
        assert {f"pipework:{t}" for t in TRANSPORTS} <= {c.subject for c in plan() if c.row == row}

    # The Markdown goal table is the JSON summary, line for line.
    markdown = done.stdout
    assert report["markdown"] in markdown
    goal_rows = _table(markdown, "| row | pipework |")
    assert len(goal_rows) == len(report["summary"])
    for cells, line in zip(goal_rows, report["summary"], strict=True):
        row, what, value, _peer, peer_value, to_peer, _floor, floor_value, to_floor = cells[:9]
        spec = NUMBER_FORMAT[line["row"]]
        assert row.startswith(f"{line['row']}: ")
        assert what == line["what"]
        assert value == format(line["value"], spec)
        for cell, number, fmt in (
            (peer_value, line["best_peer_value"], spec),
            (to_peer, line["ratio_to_peer"], ".2f"),
            (floor_value, line["floor_value"], spec),
            (to_floor, line["ratio_to_floor"], ".2f"),
        ):
            assert cell == ("—" if number is None else format(number, fmt)), (cells, line)
        assert cells[10] in ({"yes", "not yet"} if line["met"] is not None else {"—"})
    # Each row's detail table lists every cell of the row.
    for key, info in ROWS.items():
        detail = _table(markdown.split(f"**{key}: {info.title}**", 1)[1], "| contender |")
        assert len(detail) == sum(1 for c in plan() if c.row == key)
    assert re.search(r"^Machine: \d+ CPUs", markdown, re.M)
    assert "at commit" in markdown
    children = len({c.group for c in plan()})
    assert f"[{children}/{children}] " in done.stderr  # progress lines (stderr is not a tty)
    assert (ROOT / "docs" / pool.DOCS).read_bytes() == docs_before


def test_write_docs_refuses_a_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert pool.run(quick=True, docs=True) == 2
    assert "full run" in capsys.readouterr().err


def test_write_docs_rewrites_the_pool_block_only(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text((ROOT / "docs" / pool.DOCS).read_text(encoding="utf-8"), encoding="utf-8")
    pool.write_docs("| a | table |", page)
    text = page.read_text(encoding="utf-8")
    assert "<!-- BEGIN pipework-bench-pool:table -->\n| a | table |\n<!-- END" in text
    daemon = re.search(r"BEGIN pipework-bench-daemon:table -->\n(.*?)<!-- END", text, re.S)
    original = (ROOT / "docs" / pool.DOCS).read_text(encoding="utf-8")
    assert daemon is not None
    assert daemon.group(1) in original
    pool.write_docs("| a | table |", page)
    assert page.read_text(encoding="utf-8") == text


def test_rewrite_blocks_refuses_missing_or_unknown_markers() -> None:
    text = "<!-- BEGIN p:x -->\nold\n<!-- END p:x -->\n<!-- BEGIN q:y -->\nq\n<!-- END q:y -->\n"
    assert rewrite_blocks(text, {"x": "new"}, "p") == text.replace("old", "new")
    with pytest.raises(ValueError, match="missing"):
        rewrite_blocks(text, {"x": "new", "z": "other"}, "p")
    with pytest.raises(ValueError, match="unknown"):
        rewrite_blocks(text, {}, "p")


def _record(cell: Cell, value: float | None, status: str = "ok") -> dict:
    extra: dict = {}
    if cell.row == "latency":
        extra = {"p99_us": 3 * (value or 1)}
    if cell.variant == "backpressure":
        extra = {"flat": True, "second_half_mib": 0.1}
    return {
        "cell": cell.id,
        "status": status,
        "error": None if status == "ok" else "why",
        "start_method": "fork",
        "value": value,
        "extra": extra,
    }


def test_ratios_and_goals_from_fake_records() -> None:
    cells = plan()
    records = [_record(c, 10.0) for c in cells for _ in range(3)]
    records += [_record(Cell("submit", "pipework:pipe"), 30.0)] * 4  # median becomes 30
    records = [r for r in records if r["cell"] != "submit/mpire/"]
    records.append(_record(Cell("submit", "mpire"), None, "not installed"))
    folded = aggregate(cells, records)
    assert folded["submit/mpire/"]["status"] == "not installed"
    assert folded["submit/pipework:pipe/"]["median"] == 30.0
    summary = {(s["row"], s["what"]): s for s in summarize(folded, QUICK)}
    pipe = summary["submit", "pipework (pipe)"]
    assert pipe["ratio_to_peer"] == 3.0
    assert pipe["met"] is True
    assert summary["submit", "pipework (queue)"]["met"] is False
    latency = summary["latency", "pipework (pipe)"]
    assert latency["ratio_to_floor"] == 1.0
    assert latency["met"] is True  # p50 = the floor, p99 = 3 p50: both within the goal
    assert summary["construct", "pipework, spawn"]["best_peer"] == "cf"
