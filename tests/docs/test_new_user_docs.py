"""The docs say what a new user needs (issue 16, part 3): each promise is checked here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = " ".join((ROOT / "README.md").read_text().split())
PROTOCOL = " ".join((ROOT / "docs" / "protocol.md").read_text().split())


def test_protocol_says_task_done_is_not_replayed_and_to_fall_back_to_result() -> None:
    assert "not replayed across a daemon restart" in PROTOCOL
    assert re.search(r"fall back to `result`", PROTOCOL)


def test_protocol_documents_the_tasks_op() -> None:
    assert "### tasks" in (ROOT / "docs" / "protocol.md").read_text()
    assert '"op": "tasks"' in PROTOCOL
    assert "`detail.registered`" in PROTOCOL


def test_readme_covers_what_a_new_user_tripped_on() -> None:
    assert "pipework tasks" in README
    assert "current directory first on `sys.path`" in README
    assert "async def" in README
    assert "130 (Ctrl-C)" in README
    assert '{"ok": false, "error":' in README
    assert "`status`, `result` and `submit --wait` alike" in README
    assert "'.[examples]'" in README
    assert "the queue depth" in README  # what the status page shows, not "the queue"
    assert "the same ones `pipework status` lists" in README
