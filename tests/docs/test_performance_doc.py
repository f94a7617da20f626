"""docs/performance.md reads as a page for users, and the generators keep it so."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "performance.md").read_text()


def test_no_scorecard_wording() -> None:
    assert not re.search(r"issue \d|the issue's", PAGE)
    for word in ("**short**", "**no**", "| goal | met |"):
        assert word not in PAGE, word


def test_each_table_states_its_target_and_whether_it_is_reached() -> None:
    headers = [line for line in PAGE.splitlines() if line.startswith("| ") and "target" in line]
    assert len(headers) == 2, headers
    assert all(line.endswith("| target | reached |") for line in headers)


def test_the_generators_write_the_same_columns() -> None:
    # --write-docs must not bring the old wording back.
    for source in ("benchmarks/pool_report.py", "benchmarks/queues.py"):
        text = (ROOT / source).read_text()
        assert '"reached"' in text or "| target | reached |" in text, source
        assert "**short**" not in text
        assert "**no**" not in text
