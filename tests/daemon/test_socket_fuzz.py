"""Hostile input on the daemon's socket: hypothesis against one real daemon.

Each case sends raw frames from a DEALER: arbitrary bytes, arbitrary JSON,
valid requests with one field corrupted, oversized bodies (the daemon runs
with ``--max-message-bytes 4096``), extra frames, a REQ-style delimiter. Every
case must get exactly one reply: an error reply whose code the spec names,
the one the spec gives for that input where it gives one, or an ok reply for
input that is genuinely valid. After each case a ``stats`` probe must be the
next reply, and the task count must have moved only by accepted submits; at
module teardown ``list`` must hold exactly the tasks those submits created.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.daemons import ERROR_CODES, Conn, Daemon, DaemonFactory, next_id
from tests.support.strategies import json_values as any_json

MAX = 4096
OK = "ok"  # an expected outcome: an ok reply
OPS = ("submit", "status", "result", "cancel", "list", "stats", "workers")
STATES = ("queued", "running", "done", "failed", "cancelled", "timed_out", "quarantined")
REGISTERED = frozenset(
    {
        "add",
        "echo",
        "sleep",
        "fail",
        "crash",
        "pid",
        "record",
        "gate",
        "hold_gil",
        "not_json",
        "big",
    }
)
FUZZ = settings(
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the daemon under fuzz and the state it must keep ---------------------------


@dataclass
class Target:
    """One daemon, one DEALER, and what the fuzz cases may have changed."""

    d: Daemon
    conn: Conn
    base_total: int
    base_accepted: int
    base_ids: set[str]
    accepted: set[str] = field(default_factory=set)
    cases: int = 0
    by_code: dict[str, int] = field(default_factory=dict)

    def exchange(
        self, frames: list[bytes], expected: set[str] | None, req_id: str | None
    ) -> dict[str, Any]:
        """Send one case; check its one reply against ``expected`` (None: any spec code)."""
        self.cases += 1
        self.conn.send_frames(frames)
        reply_frames = self._next_reply()
        req_style = len(frames) == 2 and frames[0] == b"" and frames[1] != b""
        if req_style:
            assert len(reply_frames) == 2, f"{frames!r} -> {reply_frames!r}: delimiter not echoed"
            assert reply_frames[0] == b""
        elif len(frames) == 1:
            assert len(reply_frames) == 1, f"{frames!r} -> {reply_frames!r}"
        else:
            assert len(reply_frames) in (1, 2), reply_frames
            assert len(reply_frames) == 1 or reply_frames[0] == b"", reply_frames
        reply = json.loads(reply_frames[-1])
        assert isinstance(reply, dict), reply
        assert reply.get("v") == 1, reply
        assert reply.get("id") == req_id, f"{frames!r}: reply id {reply.get('id')!r} != {req_id!r}"
        if reply.get("ok") is True:
            outcome = OK
            if reply.get("op") == "submit" and not reply["duplicate"]:
                self.accepted.add(reply["task_id"])
        else:
            assert reply.get("ok") is False, reply
            assert "event" not in reply
            error = reply["error"]
            outcome = error["code"]
            assert outcome in ERROR_CODES, reply
            assert isinstance(error["message"], str), reply
            assert isinstance(error.get("detail", {}), dict), reply
            assert outcome != "internal", f"{frames!r} -> {reply}"
            if outcome == "too_large":
                assert error["detail"]["limit"] == MAX, reply
        self.by_code[outcome] = self.by_code.get(outcome, 0) + 1
        if expected is not None:
            assert outcome in expected, f"{frames[-1][:300]!r} -> {reply}, expected {expected}"
        self._probe()
        return reply

    def _next_reply(self) -> list[bytes]:
        while True:
            frames = self.conn.recv_frames(timeout=10)
            if len(frames) == 1 and b'"event"' in frames[0]:
                msg = json.loads(frames[0])
                if isinstance(msg, dict) and "event" in msg:
                    continue  # a notify=true submit's task finished: legitimate
            return frames

    def _probe(self) -> None:
        """The next reply is the probe's (no second reply to the case); counts moved rightly."""
        rid = self.conn.send({"op": "stats"})
        frames = self._next_reply()
        reply = json.loads(frames[-1])
        assert reply.get("id") == rid, f"a second reply to the last case: {reply}"
        stats = reply["stats"]
        total = stats["queued"] + stats["running"] + sum(stats["states"].values())
        assert stats["accepted"] == self.base_accepted + len(self.accepted), stats
        assert total == self.base_total + len(self.accepted), stats


@pytest.fixture(scope="module")
def target(module_daemons: DaemonFactory) -> Iterator[Target]:
    d = module_daemons("--max-message-bytes", str(MAX))
    d.run("echo", "before the fuzz")
    stats = d.stats()
    total = stats["queued"] + stats["running"] + sum(stats["states"].values())
    ids = {t["task_id"] for t in d.ok({"op": "list", "limit": 1000})["tasks"]}
    with d.connect() as conn:
        t = Target(d, conn, total, stats["accepted"], ids)
        yield t
    listed = {t["task_id"] for t in d.ok({"op": "list", "limit": 1000})["tasks"]}
    assert listed == t.base_ids | t.accepted, "the fuzz changed the task list"
    assert d.stats()["accepted"] == t.base_accepted + len(t.accepted)
    print(
        f"socket fuzz: {t.cases} cases, {len(t.accepted)} valid submits accepted, "
        f"outcomes {dict(sorted(t.by_code.items()))}"
    )


# -- strategies ------------------------------------------------------------------

json_values = any_json(st.integers(min_value=-(2**70), max_value=2**70), max_leaves=10)
_not_int = (
    st.booleans()
    | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_not_number = (
    st.booleans()
    | st.text(max_size=5)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_not_str = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(st.text(max_size=3), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_hex_id = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


def _ranged(lo: float, hi: float, *, integer: bool) -> st.SearchStrategy[Any]:
    """Values that break a field of range [lo, hi]: out of range, or the wrong type."""
    if integer:
        return st.integers(max_value=int(lo) - 1) | st.integers(min_value=int(hi) + 1) | _not_int
    return (
        st.integers(max_value=int(lo) - 1)
        | st.integers(min_value=int(hi) + 1)
        # filter: -0.0 sits just below 0.0 for hypothesis, but is in range
        | st.floats(max_value=lo, exclude_max=True).filter(lambda x: x < lo)
        | st.floats(min_value=hi, exclude_min=True, allow_infinity=False)
        | _not_number
    )


# op -> {field: (valid strategy, invalid strategy)}
FIELDS: dict[str, dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]] = {
    "submit": {
        "args": (
            st.lists(json_values, max_size=1),
            st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=3)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
        "kwargs": (
            st.just({}) | st.fixed_dictionaries({"value": json_values}),
            st.lists(st.integers(), max_size=2)
            | st.text(max_size=3)
            | st.integers()
            | st.booleans(),
        ),
        "timeout": (
            st.floats(min_value=0.001, max_value=604800) | st.integers(1, 604800) | st.none(),
            _ranged(0, 604800, integer=False) | st.sampled_from([0, 0.0, -0.0]),
        ),
        "retries": (st.integers(0, 100), _ranged(0, 100, integer=True)),
        "priority": (st.integers(-1000, 1000), _ranged(-1000, 1000, integer=True)),
        "delay": (
            st.floats(min_value=0, max_value=31536000) | st.integers(0, 31536000),
            _ranged(0, 31536000, integer=False),
        ),
        "notify": (st.booleans(), st.integers() | st.text(max_size=5) | st.just([])),
        "key": (
            st.text(min_size=1, max_size=200) | st.none(),
            _not_str | st.just("") | st.text(min_size=201, max_size=260),
        ),
    },
    "status": {},
    "result": {
        "wait": (
            st.floats(min_value=0, max_value=3600) | st.integers(0, 3600),
            _ranged(0, 3600, integer=False),
        ),
    },
    "cancel": {},
    "list": {
        "state": (st.sampled_from(STATES) | st.none(), _not_str | st.text(max_size=12)),
        "limit": (st.integers(1, 1000), _ranged(1, 1000, integer=True)),
    },
    "stats": {},
    "workers": {},
}


@st.composite
def valid_requests(draw: st.DrawFn, op: str | None = None) -> tuple[dict[str, Any], set[str]]:
    """A valid request and its expected outcome (ok, or not_found for an unknown task_id)."""
    op = op or draw(st.sampled_from(OPS))
    req: dict[str, Any] = {"v": 1, "id": draw(st.text(min_size=1, max_size=64)), "op": op}
    expected = {OK}
    if op == "submit":
        req["task"] = "echo"
        req["args"] = draw(st.lists(json_values, max_size=1))
    if op in ("status", "result", "cancel"):
        req["task_id"] = draw(_hex_id)
        expected = {"not_found"}
    for name, (valid, _) in FIELDS[op].items():
        if draw(st.booleans()):
            req[name] = draw(valid)
    if req.get("key") is not None:
        expected = {OK, "key_conflict"}  # hypothesis reuses keys with other arguments
    return req, expected


_INVALID_TASK_NAMES = _not_str | st.just("") | st.text(min_size=201, max_size=230)


@st.composite
def corrupted_requests(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A valid request with exactly one thing wrong, and the code the spec gives for it."""
    req, _ = draw(valid_requests())
    op = req["op"]
    kinds = ["drop_v", "bad_v", "drop_op", "bad_op", "drop_id", "bad_id", "unknown_field"]
    if FIELDS[op]:
        kinds.append("bad_field")
    if op == "submit":
        kinds += ["drop_task", "bad_task_type", "unknown_task"]
    if op in ("status", "result", "cancel"):
        kinds += ["drop_task_id", "bad_task_id_type", "odd_task_id"]
    kind = draw(st.sampled_from(kinds))
    if kind == "drop_v":
        del req["v"]
        return req, {"unsupported_version"}
    if kind == "bad_v":
        # Not 1, nor true or 1.0, which a reader may take for 1 either way.
        req["v"] = draw(json_values.filter(lambda v: v != 1))
        return req, {"unsupported_version"}
    if kind == "drop_op":
        del req["op"]
        return req, {"unknown_op"}
    if kind == "bad_op":
        req["op"] = draw(json_values.filter(lambda v: v not in OPS))
        return req, {"unknown_op"}
    if kind == "drop_id":
        del req["id"]
        return req, {"invalid"}
    if kind == "bad_id":
        req["id"] = draw(_not_str | st.none() | st.just("") | st.text(min_size=65, max_size=80))
        return req, {"invalid"}
    if kind == "unknown_field":
        known = {"v", "id", "op", "task", "task_id", *FIELDS[op]}
        name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in known))
        req[name] = draw(json_values)
        return req, {"invalid"}
    if kind == "bad_field":
        name = draw(st.sampled_from(sorted(FIELDS[op])))
        req[name] = draw(FIELDS[op][name][1])
        return req, {"invalid"}
    if kind == "drop_task":
        del req["task"]
        return req, {"invalid"}
    if kind == "bad_task_type":
        req["task"] = draw(_INVALID_TASK_NAMES)
        return req, {"invalid"}
    if kind == "unknown_task":
        req["task"] = draw(st.text(min_size=1, max_size=200).filter(lambda n: n not in REGISTERED))
        if req.get("key") is not None:  # which of the two the daemon checks first is open
            return req, {"unknown_task", "key_conflict"}
        return req, {"unknown_task"}
    if kind == "drop_task_id":
        del req["task_id"]
        return req, {"invalid"}
    if kind == "bad_task_id_type":
        req["task_id"] = draw(_not_str | st.none())
        return req, {"invalid"}
    # odd_task_id: a string, just not one the daemon ever made
    req["task_id"] = draw(st.text(max_size=70))
    return req, {"not_found", "invalid"}


def _readable_id(obj: object) -> str | None:
    """The id an error reply must echo: the request's, when it is a 1-64 char string."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and 1 <= len(rid) <= 64:
            return rid
    return None


def _encode(req: dict[str, Any]) -> bytes:
    return json.dumps(req).encode()


def _body_expectation(body: bytes) -> tuple[set[str] | None, str | None]:
    """What the spec says about one body frame that is not a known-shaped request."""
    if not body:
        return {"bad_frame"}, None
    if len(body) > MAX:
        return {"too_large"}, None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"bad_json"}, None
    if not isinstance(obj, dict):
        return {"bad_json"}, None
    return None, _readable_id(obj)  # an object: any spec code (or ok, if it is valid)


# -- the cases -------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=200) | st.binary(min_size=MAX - 8, max_size=MAX + 64))
def test_arbitrary_bytes(target: Target, body: bytes) -> None:
    expected, rid = _body_expectation(body)
    target.exchange([body], expected, rid)


@FUZZ
@given(value=json_values)
def test_arbitrary_json_values(target: Target, value: object) -> None:
    body = json.dumps(value).encode()
    expected, rid = _body_expectation(body)
    if expected is None:  # a JSON object, but not a request
        assert isinstance(value, dict)
        expected = {"unsupported_version"} if value.get("v") != 1 else None
    target.exchange([body], expected, rid)


@settings(FUZZ, max_examples=130)
@given(case=corrupted_requests())
def test_valid_requests_with_one_field_corrupted(
    target: Target, case: tuple[dict[str, Any], set[str]]
) -> None:
    req, expected = case
    body = _encode(req)
    if len(body) > MAX:
        expected = {"too_large"}
    target.exchange([body], expected, _readable_id(req) if len(body) <= MAX else None)


@FUZZ
@given(case=valid_requests())
def test_valid_requests(target: Target, case: tuple[dict[str, Any], set[str]]) -> None:
    req, expected = case
    body = _encode(req)
    if len(body) > MAX:
        expected = {"too_large"}
    reply = target.exchange([body], expected, req["id"] if len(body) <= MAX else None)
    if reply["ok"]:
        assert reply["op"] == req["op"]


@settings(FUZZ, max_examples=15)
@given(
    size=st.integers(min_value=MAX + 1, max_value=4 * MAX),
    fill=st.sampled_from(string.ascii_letters),
)
def test_oversized_valid_submits(target: Target, size: int, fill: str) -> None:
    req = {"v": 1, "id": next_id(), "op": "submit", "task": "echo", "args": [""]}
    pad = size - len(_encode(req))
    req["args"] = [fill * pad]
    body = _encode(req)
    assert len(body) == size
    target.exchange([body], {"too_large"}, None)


_frames_bodies = (
    valid_requests().map(lambda case: _encode(case[0])) | st.binary(max_size=50) | st.just(b"")
)


@FUZZ
@given(frames=st.lists(_frames_bodies, min_size=2, max_size=4))
def test_extra_frames(target: Target, frames: list[bytes]) -> None:
    if frames[0] == b"" and len(frames) == 2 and frames[1] != b"":
        # REQ style: a delimiter and one body; judged by the body alone.
        expected, rid = _body_expectation(frames[1])
        target.exchange(frames, expected, rid)
        return
    expected = {"bad_frame"}
    if any(len(f) > MAX for f in frames):
        expected.add("too_large")
    target.exchange(frames, expected, None)


def test_delimiter_then_valid_request_gets_a_delimited_reply(target: Target) -> None:
    rid = next_id()
    reply = target.exchange([b"", _encode({"v": 1, "id": rid, "op": "stats"})], {OK}, rid)
    assert reply["op"] == "stats"


def test_body_exactly_at_the_limit_is_parsed(target: Target) -> None:
    rid = next_id()
    req: dict[str, Any] = {"v": 1, "id": rid, "op": "submit", "task": "echo", "args": [""]}
    req["args"] = ["y" * (MAX - len(_encode(req)))]
    body = _encode(req)
    assert len(body) == MAX
    reply = target.exchange([body], {OK}, rid)
    # Parsed and run; its echo would make a reply over max_message_bytes, so
    # the result is refused (issue 15: every reply fits the limit).
    info = target.d.result(reply["task_id"])
    assert info["error"]["type"] == "ResultTooLarge", info["error"]
    req["id"] = rid = next_id()
    req["args"] = ["y" * (MAX + 1 - len(_encode({**req, "args": [""]})))]
    assert len(_encode(req)) == MAX + 1
    error = target.exchange([_encode(req)], {"too_large"}, None)["error"]
    assert error["detail"]["limit"] == MAX


def test_empty_and_delimiter_only_frames(target: Target) -> None:
    target.exchange([b""], {"bad_frame"}, None)
    target.exchange([b"", b""], {"bad_frame"}, None)
    target.exchange([b"", b"", b""], {"bad_frame"}, None)
