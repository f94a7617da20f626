"""The live status page of a real ``pipework serve --status-port``: its data, its HTTP, a browser.

One daemon per test module (two workers) is brought into a known state:
twenty ``add`` tasks done, a task failed with an HTML-looking message, a
crash quarantined, both workers held by ``gate`` tasks and three ``add``
tasks queued behind them. Then ``/status.json`` must say so, the server must
refuse what it does not serve, and headless Chromium (Debian's ``chromium``,
driven by its command line: ``--dump-dom`` and ``--screenshot``) must render
the page with the workers, the queue and the failure as text. The screenshot
is kept in ``tmp_path`` and at ``.ci/artifacts/status-page.png`` for CI.

Without Chromium the browser test is skipped with the reason, except in CI
(``CI`` set), where it fails: ``.ci/run`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipework.service.daemon.config import ConfigError, load_settings
from pipework.service.ops.status import BUCKETS, RECENT_FAILURES, StatusBoard
from tests.conftest import STATUS_PAGE_SHOT
from tests.daemon.web import fetch
from tests.support.daemons import Daemon, DaemonFactory
from tests.support.net import free_port
from tests.support.waiting import wait_until

XSS = "<img src=x onerror=alert(1)>"
QUEUED = 3
ARTIFACT = STATUS_PAGE_SHOT
CHROMIUM_TIMEOUT = 45.0
SNAPSHOT_KEYS = {
    "version",
    "pid",
    "generated_at",
    "uptime",
    "draining",
    "journal",
    "journal_error",
    "queued",
    "running",
    "accepted",
    "finished",
    "states",
    "workers",
    "throughput",
    "failures",
}


@dataclass
class Busy:
    """The module's daemon, its status port, and the ids of what it holds."""

    daemon: Daemon
    port: int
    holders: list[str]
    queued: list[str]
    failed: str
    quarantined: str


def _status(port: int) -> dict[str, Any]:
    reply = fetch(port, "/status.json")
    assert reply.status == 200, reply
    data = json.loads(reply.body)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def busy(module_daemons: DaemonFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    tmp = tmp_path_factory.mktemp("status")
    port = free_port()
    d = module_daemons("--status-port", str(port))
    for i in range(20):
        d.submit("add", i, i)
    failed = d.run("fail", XSS)
    assert failed["state"] == "failed", failed
    crashed = d.run("crash", retries=0)
    assert crashed["state"] == "quarantined", crashed
    wait_until(lambda: len(d.workers()) == 2, 20, "both workers up after the crash")
    gate = tmp / "open"
    holders = []
    for n in range(2):
        mark = tmp / f"started-{n}"
        holders.append(d.submit("gate", str(gate), 60, str(mark))["task_id"])
        wait_until(mark.exists, 20, f"gate task {n} started")
    queued = [d.submit("add", 100 + i, 1)["task_id"] for i in range(QUEUED)]
    wait_until(
        lambda: _status(port)["queued"] == QUEUED and _status(port)["running"] == 2,
        10,
        "the snapshot shows the held workers and the queue",
    )
    yield Busy(d, port, holders, queued, failed["task_id"], crashed["task_id"])
    gate.touch()  # let the daemon drain at once at teardown


# -- /status.json ---------------------------------------------------------------------


def test_status_json_shows_workers_queue_throughput_and_failures(busy: Busy) -> None:
    s = _status(busy.port)
    assert set(s) == SNAPSHOT_KEYS
    assert s["pid"] == busy.daemon.pid
    assert s["queued"] == QUEUED
    assert s["running"] == 2
    assert s["journal"] is True
    assert s["draining"] is False
    assert s["accepted"] >= 20 + 2 + 2 + QUEUED
    assert s["states"]["done"] >= 20
    assert s["states"]["failed"] == 1
    assert s["states"]["quarantined"] == 1
    workers = s["workers"]
    assert len(workers) == 2
    assert {w["task_id"] for w in workers} == set(busy.holders)
    assert {w["task"] for w in workers} == {"gate"}
    assert all(w["remote"] is None and w["since"] <= s["generated_at"] for w in workers)
    assert s["throughput"]["bucket_seconds"] == 5
    assert len(s["throughput"]["finished"]) == BUCKETS
    failures = s["failures"]
    assert [f["task_id"] for f in failures] == [busy.quarantined, busy.failed]  # newest first
    quarantined, failed = failures
    assert quarantined["state"] == "quarantined"
    assert quarantined["error"]["type"] == "WorkerLost"
    assert failed["state"] == "failed"
    assert failed["task"] == "fail"
    # JSON carries the text as it is; making it harmless is the page's job.
    assert failed["error"]["type"] == "TaskFailure"
    assert failed["error"]["message"] == XSS
    assert f"TaskFailure: {XSS}" in failed["error"]["traceback"]


def test_page_is_one_self_contained_document_under_a_strict_policy(busy: Busy) -> None:
    page = fetch(busy.port, "/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'sha256-" in csp
    assert "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = page.body.decode()
    assert html.startswith("<!doctype html>")
    for outside in ("http://", "https://", "//cdn", "<link", "src="):
        assert outside not in html.replace("http://www.w3.org/2000/svg", ""), outside
    assert "innerHTML" not in html
    assert "status.json" in html
    head = fetch(busy.port, "/", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(page.body))


@pytest.mark.parametrize(
    "path",
    ["/nope", "/status.json/x", "/index.html", "/../etc/passwd", "/metrics"],
)
def test_other_paths_are_404(busy: Busy, path: str) -> None:
    assert fetch(busy.port, path).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_405(busy: Busy, method: str) -> None:
    reply = fetch(busy.port, "/status.json", method=method, body=b'{"op": "cancel"}')
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


def test_a_foreign_host_name_is_refused(busy: Busy) -> None:
    # A page on evil.example that rebinds its name to 127.0.0.1 sends Host: evil.example.
    assert fetch(busy.port, "/status.json", headers={"Host": "evil.example"}).status == 403
    assert fetch(busy.port, "/status.json", headers={"Host": "localhost:1"}).status == 200


def test_status_host_must_be_loopback_unless_public() -> None:
    with pytest.raises(ConfigError, match="tracebacks"):
        load_settings(None, status_port=8080, status_host="0.0.0.0")
    assert load_settings(None, status_port=8080, status_host="::1").status_host == "::1"
    public = load_settings(None, status_port=8080, status_host="0.0.0.0", status_public=True)
    assert public.status_public


def test_board_keeps_the_newest_failures_clipped() -> None:
    board = StatusBoard("0", journal=False)
    big = json.dumps({"type": "E", "message": "m" * 10_000, "traceback": "t" * 50_000 + "END"})
    for n in range(RECENT_FAILURES + 5):
        board.finished(f"id{n}", "fail", "failed", attempts=1, finished_at=0.0, error_json=big)
    board.finished("ok", "add", "done", attempts=1, finished_at=0.0, error_json=None)
    board.publish(queued=0, running=0, accepted=0, finished=0, draining=False, workers=[])
    snap = board.snapshot
    assert len(snap["failures"]) == RECENT_FAILURES
    assert snap["failures"][0]["task_id"] == f"id{RECENT_FAILURES + 4}"
    error = snap["failures"][0]["error"]
    assert len(error["message"]) < 2_100
    assert len(error["traceback"]) < 8_100
    assert error["traceback"].endswith("END")
    assert snap["states"]["failed"] == RECENT_FAILURES + 5
    assert snap["states"]["done"] == 1


# -- the page in a browser --------------------------------------------------------------


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    parts: list[str | _Node] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[_Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(
        self, *, id: str | None = None, cls: str | None = None, tag: str | None = None
    ) -> list[_Node]:
        return [
            n
            for n in self.walk()
            if (id is None or n.attrs.get("id") == id)
            and (cls is None or cls in n.classes)
            and (tag is None or n.tag == tag)
        ]

    def one(self, **how: str) -> _Node:
        found = self.find(**how)
        assert len(found) == 1, f"{how}: {len(found)} elements"
        return found[0]


class _Dom(HTMLParser):
    """The rendered DOM as Chromium serialised it, as a tree of _Node (text unescaped)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs})
        parent = self._stack[-1]
        parent.children.append(node)
        parent.parts.append(node)
        if tag not in self.VOID:
            self._stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, 0, -1):
            if self._stack[i].tag == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].parts.append(data)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_browser(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run Chromium; kill it and every process it made (by pid) if it overstays or leaves any."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: dict[int, psutil.Process] = {}
    parent = psutil.Process(proc.pid)

    def watch() -> None:
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in parent.children(recursive=True):
                    seen.setdefault(child.pid, child)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s\n{err[-3000:]}")
    finally:
        watcher.join(5)
        end = time.monotonic() + 3
        for child in seen.values():
            with contextlib.suppress(psutil.Error):
                child.wait(max(0.0, end - time.monotonic()))
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks it is still the process it saw
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_browser_renders_workers_queue_and_escaped_failure(busy: Busy, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        reason = "no chromium on PATH (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    shot = tmp_path / "status-page.png"
    url = f"http://127.0.0.1:{busy.port}/"
    argv = [
        chromium,
        "--headless=new",
        "--no-sandbox",  # root in a container: the sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Loopback only: no background requests, no name resolution at all.
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--metrics-recording-only",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1200,900",
        "--hide-scrollbars",
        # Virtual time runs the page's timers (it polls every second) without waiting.
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        "--dump-dom",
        url,
    ]
    ran = _run_browser(argv, CHROMIUM_TIMEOUT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert shot.exists(), ran.stderr[-3000:]
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    print(f"\nstatus page screenshot: {ARTIFACT} (and {shot})")

    parser = _Dom()
    parser.feed(ran.stdout)
    dom = parser.root
    assert "up" in dom.one(id="live").classes, dom.one(id="live").text
    assert dom.one(id="queued").text == str(QUEUED)
    assert dom.one(id="in-flight").text == "2"
    assert dom.one(id="workers-count").text == "2 / 2"
    rows = dom.one(id="workers").find(tag="tr", cls="worker")
    assert len(rows) == 2
    assert {r.one(cls="w-task").text for r in rows} == {"gate"}
    assert {r.one(cls="w-id").text for r in rows} == set(busy.holders)
    assert {r.one(cls="w-where").text for r in rows} == {"local"}
    items = dom.one(id="failures").find(tag="li", cls="failure")
    assert [i.attrs["data-task-id"] for i in items] == [busy.quarantined, busy.failed]
    failed = items[1]
    assert failed.one(cls="f-type").text == "TaskFailure"
    assert failed.one(cls="f-message").text == XSS  # shown as text...
    assert not dom.find(tag="img"), "a task's message became markup"  # ...never as an element
    assert f"TaskFailure: {XSS}" in failed.one(cls="f-traceback").text
    assert items[0].one(cls="f-state").text == "quarantined"
    assert dom.one(id="spark").find(tag="path", cls="line")


def test_board_counts_finished_tasks_per_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]  # a bucket boundary: 1000 // 5 == 200
    monkeypatch.setattr("pipework.service.ops.status.time.monotonic", lambda: now[0])
    board = StatusBoard("0", journal=False)

    def finish(n: int) -> None:
        for _ in range(n):
            board.finished("t", "add", "done", attempts=1, finished_at=0.0, error_json=None)

    def series() -> list[int]:
        board.publish(queued=0, running=0, accepted=0, finished=0, draining=False, workers=[])
        finished = board.snapshot["throughput"]["finished"]
        assert len(finished) == BUCKETS
        return list(finished)

    finish(3)
    assert series()[-3:] == [0, 0, 3]  # the last bucket is the one filling now
    now[0] += 5
    finish(1)
    assert series()[-3:] == [0, 3, 1]
    now[0] += 12  # two buckets later, nothing finished meanwhile
    assert series()[-4:] == [3, 1, 0, 0]
    now[0] += 3600  # an hour idle: all zero, no backlog of empty buckets built
    assert series() == [0] * BUCKETS
