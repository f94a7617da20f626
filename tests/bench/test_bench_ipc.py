"""``pipework bench ipc``: a quick run prints the table, and --write-docs rewrites only the blocks.

A smoke test only: it checks the benchmark runs and reports numbers, never
how fast anything is (speed lives in ``benchmarks/``).
"""

# ruff: noqa: RUF001  (the Chinese text's full-width punctuation; the tables' multiplication sign)

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipework.benchmarks import ipc
from pipework.service.cli.parsing import main
from tests.support.processes import REPO, run_pipework

pytestmark = pytest.mark.slow  # `pytest -m slow`: CI runs this group too

ROOT = REPO
RUN_TIMEOUT = 50.0
"""Below the per-test pytest-timeout, so a hang fails here with the output so far."""
NUMBER = r"[\d,]+(\.\d)?"


def _rows(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("mechanism", "机制"):
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_run_prints_the_table_with_progress() -> None:
    docs_before = {name: (ROOT / "docs" / name).read_bytes() for name in ipc.DOCS.values()}
    done = run_pipework("bench", "ipc", "--quick", timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    rows = _rows(done.stdout)
    assert list(rows) == [m.label for m in ipc.MECHANISMS.values()], done.stdout
    for label, (p50, p99, one_mib, big) in rows.items():
        for cell in (p50, p99, one_mib):
            assert re.fullmatch(NUMBER, cell), f"{label}: {cell!r}"
        assert big == "—", f"{label}: --quick measures 1 MiB only"
    assert re.search(r"^Machine: \d+ CPUs", done.stdout, re.M)
    assert "Quick run" in done.stdout
    total = len(ipc.MECHANISMS)
    assert f"[{total}/{total}] " in done.stderr  # the progress display (lines when not a tty)
    for name, before in docs_before.items():
        assert (ROOT / "docs" / name).read_bytes() == before, f"{name} changed without --write-docs"


def test_write_docs_refuses_a_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ipc", "--quick", "--write-docs"]) == 2
    assert "full run" in capsys.readouterr().err


def test_write_docs_needs_the_docs_before_measuring(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As from an installed copy: no docs/ next to the package, none in the current directory.
    monkeypatch.setattr(ipc, "project_root", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ipc, "_measure", lambda *args: pytest.fail("measured without docs"))
    assert main(["bench", "ipc", "--write-docs"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_bench_takes_a_known_kind_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "threads"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def _fake_records() -> dict[str, dict]:
    records = {}
    for i, key in enumerate(ipc.MECHANISMS):
        records[key] = {
            "key": key,
            "status": "ok",
            "error": None,
            "latency": {"p50_us": 10.0 + i, "p99_us": 20.5 + i},
            "bandwidth": {str(size): {"mib_per_s": 1000.0 * (i + 1)} for size in ipc.SIZES},
        }
    records["manager"] = {**records["manager"], "status": "timeout", "error": "too slow"}
    records["manager"]["latency"] = {}
    records["manager"]["bandwidth"] = {}
    return records


MACHINE = {
    "cpu_count": 2,
    "cpu_model": "Test CPU",
    "memory_total_mib": 1024,
    "kernel": "Linux 6.0",
    "python": "CPython 3.11.7",
    "versions": {"pyzmq": "27.0", "numpy": "2.0"},
    "libzmq": "4.3.5",
    "date": "2025-01-31T12:00:00+00:00",
    "loadavg_1m_at_start": 0.5,
    "loadavg_1m_at_end": 0.7,
}


def test_write_docs_rewrites_both_chapters_and_nothing_else(tmp_path: Path) -> None:
    for name in ipc.DOCS.values():
        shutil.copy(ROOT / "docs" / name, tmp_path / name)
    originals = {name: (tmp_path / name).read_text(encoding="utf-8") for name in ipc.DOCS.values()}
    written = ipc.write_docs(_fake_records(), MACHINE, False, docs=tmp_path)
    assert sorted(p.name for p in written) == sorted(ipc.DOCS.values())

    en = (tmp_path / ipc.DOCS["en"]).read_text(encoding="utf-8")
    zh = (tmp_path / ipc.DOCS["zh"]).read_text(encoding="utf-8")
    assert "on 2025-01-31 12:00 UTC" in en
    assert "于 2025-01-31 12:00 UTC 生成" in zh
    assert "Machine: 2 CPUs (Test CPU)" in en
    assert "测量环境：2 个 CPU（Test CPU）" in zh
    assert "| `Pipe()` | 11.0 | 21.5 | 2,000 | 2,000 |" in en
    assert "| `Pipe()` | 11.0 | 21.5 | 2,000 | 2,000 |" in zh
    assert "| `Manager().Queue()` ×2 | — | — | — | — |" in en
    assert "Not measured: `Manager().Queue()` ×2: timeout (too slow)." in en
    assert "未测得：`Manager().Queue()` ×2：timeout（too slow）。" in zh

    # Outside the marked blocks, nothing changed; a second write changes nothing at all.
    strip = re.compile(r"(<!-- BEGIN pipework-bench-ipc:[\w-]+ -->\n).*?(^<!-- END)", re.S | re.M)
    for name, text in ((ipc.DOCS["en"], en), (ipc.DOCS["zh"], zh)):
        assert strip.sub(r"\1\2", text) == strip.sub(r"\1\2", originals[name])
    ipc.write_docs(_fake_records(), MACHINE, False, docs=tmp_path)
    assert (tmp_path / ipc.DOCS["en"]).read_text(encoding="utf-8") == en


def test_rewrite_blocks_refuses_missing_or_unknown_markers() -> None:
    text = "a\n<!-- BEGIN pipework-bench-ipc:x -->\nold\n<!-- END pipework-bench-ipc:x -->\nb\n"
    assert ipc.rewrite_blocks(text, {"x": "new"}) == text.replace("old", "new")
    empty = "<!-- BEGIN pipework-bench-ipc:x -->\n<!-- END pipework-bench-ipc:x -->\n"
    assert ipc.rewrite_blocks(empty, {"x": "new"}) == empty.replace("-->\n<", "-->\nnew\n<")
    with pytest.raises(ValueError, match="missing"):
        ipc.rewrite_blocks(text, {"x": "new", "y": "other"})
    with pytest.raises(ValueError, match="unknown"):
        ipc.rewrite_blocks(text, {})
