"""The models and the codec against docs/protocol.md: examples, defaults, ranges, codes."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from pipework.protocol import (
    PROTOCOL_VERSION,
    TERMINAL_STATES,
    CancelReply,
    ErrorCode,
    ErrorReply,
    ListRequest,
    ProtocolError,
    ResultRequest,
    StatsReply,
    StatusReply,
    SubmitReply,
    SubmitRequest,
    TaskDoneEvent,
    TaskFailed,
    TaskInfo,
    TaskState,
    Unavailable,
    WorkersReply,
    decode_reply,
    decode_request,
    encode,
    error_reply,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
LIMIT = 1 << 20
CLIENT_ONLY = {ErrorCode.UNAVAILABLE, ErrorCode.TASK_FAILED}


def _section(start: str, end: str) -> str:
    return DOC[DOC.index(start) : DOC.index(end, DOC.index(start))]


def _json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", DOC, re.S)


TASKINFO_EXAMPLE = next(b for b in _json_blocks() if b.lstrip().startswith('{"task_id"'))


def _fill(text: str) -> str:
    """Replace the spec's placeholders by the TaskInfo example."""
    return text.replace("{TaskInfo}", TASKINFO_EXAMPLE.strip()).replace(", ...]", "]")


def _doc_examples() -> list[Any]:
    examples = []
    for block in _json_blocks():
        if re.search(r",\s*\.\.\.\}", block):
            continue  # the envelope sketches ({"v": 1, ..., ...}) are not messages
        examples.append(pytest.param(json.loads(_fill(block)), id=block.split("\n")[0][:40]))
    for inline in re.findall(r'`(\{"v": 1,[^`]*\})`', DOC):
        examples.append(pytest.param(json.loads(inline), id=inline[:40]))
    for inline in re.findall(r'`(\{"ok": true[^`]*\})`', DOC):
        filled = _fill(inline)
        if " or null" in filled:
            continue  # the workers reply, written with alternatives: copied below
        examples.append(pytest.param({"v": 1, "id": "x", **json.loads(filled)}, id=inline[:40]))
    return examples


DOC_EXAMPLES = _doc_examples()


def request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def submit(**fields: Any) -> bytes:
    return request(**{"v": 1, "id": "r1", "op": "submit", "task": "add", **fields})


def decode(body: bytes) -> Any:
    return decode_request([body], LIMIT)[0]


def refused(body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request([body], LIMIT)
    return info.value


# --- the spec's own examples --------------------------------------------------


@pytest.mark.parametrize("message", DOC_EXAMPLES)
def test_every_example_in_the_spec_parses(message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    if "task_id" in message and "state" in message and "v" not in message:
        parsed: Any = TaskInfo.model_validate_json(body)
    elif "op" in message and "ok" not in message:
        parsed = decode(body)
        assert json.loads(encode(parsed)) == {**parsed.model_dump(mode="json")}
    else:
        parsed = decode_reply(body)
    dumped = parsed.model_dump(mode="json")
    for field, value in message.items():
        assert dumped[field] == value


def test_the_examples_cover_every_kind_of_message() -> None:
    kinds = set()
    for param in DOC_EXAMPLES:
        message = param.values[0]
        if "event" in message:
            kinds.add("event")
        elif message.get("ok") is False:
            kinds.add("error")
        elif "ok" in message:
            kinds.add(f"reply:{message['op']}")
        elif "op" in message:
            kinds.add(f"request:{message['op']}")
        else:
            kinds.add("taskinfo")
    ops = {"submit", "status", "result", "cancel", "list", "stats", "workers"}
    assert {f"request:{op}" for op in ops} <= kinds
    assert {"event", "error", "taskinfo", "reply:submit", "reply:stats"} <= kinds


def test_the_workers_reply_example() -> None:
    # The spec writes it with "or null" alternatives; both forms, by hand.
    body = b'{"v": 1, "id": "7", "ok": true, "op": "workers", "workers": [{"pid": 4242, '
    body += b'"task_id": "6f1c", "task": "add", "since": 1795622400.13}, {"pid": 4243, '
    body += b'"task_id": null, "task": null, "since": null}]}'
    reply = decode_reply(body)
    assert isinstance(reply, WorkersReply)
    assert [w.pid for w in reply.workers] == [4242, 4243]
    assert reply.workers[1].task_id is None


def test_the_exchange_parses() -> None:
    exchange = _section("## An exchange", "# Remote workers")
    parsed = 0
    for text in re.findall(r"\{.*\}", exchange):
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            assert "…}" in text, f"not JSON and not elided: {text}"
            continue
        if "ok" in message:
            decode_reply(text.encode())
        else:
            decode(text.encode())
        parsed += 1
    assert parsed == 3


def test_error_codes_are_the_spec_table() -> None:
    table = _section("## Error codes", "## Limits")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert documented == {code.value for code in ErrorCode} - CLIENT_ONLY


def test_task_states_are_the_spec_table() -> None:
    table = _section("| state | meaning |", "A task whose worker dies")
    terminal = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert terminal == {s.value for s in TERMINAL_STATES}
    assert {s.value for s in TaskState} == terminal | {"queued", "running"}


# --- defaults -----------------------------------------------------------------


def test_submit_defaults() -> None:
    req = decode(submit())
    assert isinstance(req, SubmitRequest)
    assert req.args == []
    assert req.kwargs == {}
    assert (req.key, req.timeout, req.retries) == (None, None, None)
    assert (req.priority, req.delay, req.notify) == (0, 0.0, False)


@pytest.mark.parametrize("field", ["key", "timeout", "retries"])
def test_optional_submit_fields_accept_null(field: str) -> None:
    assert getattr(decode(submit(**{field: None})), field) is None


def test_result_and_list_defaults() -> None:
    result = decode(request(v=1, id="a", op="result", task_id="t"))
    assert isinstance(result, ResultRequest)
    assert result.wait == 0.0
    listing = decode(request(v=1, id="a", op="list"))
    assert isinstance(listing, ListRequest)
    assert (listing.state, listing.limit) == (None, 100)
    assert decode(request(v=1, id="a", op="list", state=None)).state is None


def test_reply_defaults_make_the_daemons_job_short() -> None:
    reply = SubmitReply(id="a", task_id="t", state=TaskState.QUEUED)
    assert json.loads(encode(reply)) == {
        "v": 1,
        "id": "a",
        "ok": True,
        "op": "submit",
        "task_id": "t",
        "state": "queued",
        "duplicate": False,
    }


# --- ranges -------------------------------------------------------------------

SUBMIT_BOUNDS = [
    ("task", "x" * 200, True),
    ("task", "x" * 201, False),
    ("task", "", False),
    ("key", "k", True),
    ("key", "k" * 200, True),
    ("key", "k" * 201, False),
    ("key", "", False),
    ("timeout", 1e-9, True),
    ("timeout", 604800, True),
    ("timeout", 604800.001, False),
    ("timeout", 0, False),
    ("timeout", -1, False),
    ("retries", 0, True),
    ("retries", 100, True),
    ("retries", 101, False),
    ("retries", -1, False),
    ("priority", -1000, True),
    ("priority", 1000, True),
    ("priority", -1001, False),
    ("priority", 1001, False),
    ("delay", 0, True),
    ("delay", 31536000, True),
    ("delay", 31536000.5, False),
    ("delay", -0.001, False),
    ("args", [1, [2, {"a": None}]], True),
    ("args", {"a": 1}, False),
    ("kwargs", {"a": [1]}, True),
    ("kwargs", [1], False),
    ("notify", True, True),
    ("notify", 1, False),
    ("notify", "true", False),
]


@pytest.mark.parametrize(("field", "value", "ok"), SUBMIT_BOUNDS)
def test_submit_ranges(field: str, value: Any, ok: bool) -> None:
    body = submit(**{field: value})
    if ok:
        assert getattr(decode(body), field) == value
    else:
        err = refused(body)
        assert err.code == ErrorCode.INVALID
        assert err.detail["errors"][0]["loc"] == [field]
        assert err.request_id == "r1"


@pytest.mark.parametrize(
    ("op", "field", "value", "ok"),
    [
        ("result", "wait", 0, True),
        ("result", "wait", 3600, True),
        ("result", "wait", 3600.1, False),
        ("result", "wait", -0.1, False),
        ("list", "limit", 1, True),
        ("list", "limit", 1000, True),
        ("list", "limit", 0, False),
        ("list", "limit", 1001, False),
        ("list", "state", "quarantined", True),
        ("list", "state", "QUEUED", False),
        ("list", "state", "nope", False),
        ("status", "task_id", 5, False),
    ],
)
def test_other_ranges(op: str, field: str, value: Any, ok: bool) -> None:
    fields = {"v": 1, "id": "r1", "op": op, "task_id": "t", field: value}
    if op == "list":
        del fields["task_id"]
    body = request(**fields)
    if ok:
        assert getattr(decode(body), field) == value
    else:
        assert refused(body).code == ErrorCode.INVALID


@pytest.mark.parametrize(
    ("id_", "readable"), [("x", True), ("x" * 64, True), ("x" * 65, False), ("", False)]
)
def test_id_is_one_to_64_chars(id_: str, readable: bool) -> None:
    body = request(v=1, id=id_, op="stats")
    if readable:
        assert decode(body).id == id_
    else:
        err = refused(body)
        assert err.code == ErrorCode.INVALID
        assert err.request_id is None


# --- JSON types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", True),
        ("retries", False),
        ("priority", "1"),
        ("priority", 1.0),
        ("retries", 2.5),
        ("timeout", "30"),
        ("timeout", True),
        ("delay", None),
        ("task", 5),
        ("key", ["k"]),
    ],
)
def test_wrong_json_types_are_invalid(field: str, value: Any) -> None:
    err = refused(submit(**{field: value}))
    assert err.code == ErrorCode.INVALID
    assert err.detail["errors"][0]["loc"] == [field]


def test_bool_is_not_an_int_for_list_limit() -> None:
    assert refused(request(v=1, id="a", op="list", limit=True)).code == ErrorCode.INVALID


def test_numbers_accept_integers() -> None:
    req = decode(submit(timeout=30, delay=2))
    assert req.timeout == 30.0
    assert isinstance(req.timeout, float)
    assert isinstance(req.delay, float)


def test_non_finite_numbers_are_invalid() -> None:
    assert refused(submit().replace(b"}", b', "timeout": NaN}')).code == ErrorCode.INVALID
    assert refused(submit().replace(b"}", b', "delay": Infinity}')).code == ErrorCode.INVALID


@pytest.mark.parametrize("op", ["submit", "status", "stats"])
def test_unknown_fields_are_invalid(op: str) -> None:
    fields = {"v": 1, "id": "a", "op": op, "task": "add", "task_id": "t", "prio": 5}
    if op == "stats":
        fields = {"v": 1, "id": "a", "op": op, "prio": 5}
    elif op == "submit":
        del fields["task_id"]
    else:
        del fields["task"]
    err = refused(request(**fields))
    assert err.code == ErrorCode.INVALID
    assert err.detail["errors"] == [{"loc": ["prio"], "msg": "Extra inputs are not permitted"}]
    assert err.request_id == "a"


def test_missing_required_field_is_invalid() -> None:
    err = refused(request(v=1, id="a", op="status"))
    assert err.code == ErrorCode.INVALID
    assert err.detail["errors"][0]["loc"] == ["task_id"]


# --- version, op, and the order of checks --------------------------------------

NO_VERSION = object()


@pytest.mark.parametrize("version", [NO_VERSION, 2, 0, "1", True, 1.0, None, [1]])
def test_wrong_version(version: Any) -> None:
    fields: dict[str, Any] = {"id": "a", "op": "stats"}
    if version is not NO_VERSION:
        fields["v"] = version
    err = refused(request(**fields))
    assert err.code == ErrorCode.UNSUPPORTED_VERSION
    assert err.detail == {"supported": [PROTOCOL_VERSION]}
    assert err.request_id == "a"


@pytest.mark.parametrize("op", [NO_VERSION, "nope", "", 5, None, "SUBMIT"])
def test_unknown_op(op: Any) -> None:
    fields: dict[str, Any] = {"v": 1, "id": "a"}
    if op is not NO_VERSION:
        fields["op"] = op
    err = refused(request(**fields))
    assert err.code == ErrorCode.UNKNOWN_OP
    assert err.request_id == "a"


def test_version_is_checked_before_op_and_fields() -> None:
    assert refused(request(v=2, id="a", op="nope", x=1)).code == ErrorCode.UNSUPPORTED_VERSION
    assert refused(request(v=1, id="a", op="nope", x=1)).code == ErrorCode.UNKNOWN_OP


@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (b'{"v": 1, "id": "a", "op": "status"}', "a"),
        (b'{"v": 9, "id": "b"}', "b"),
        (b'{"v": 1, "id": 7, "op": "stats"}', None),
        (b'{"v": 1, "op": "stats"}', None),
        (b'{"v": 1, "id": "c", "op": "stats"', None),
        (b"[1, 2]", None),
    ],
)
def test_error_replies_carry_the_request_id_when_readable(
    body: bytes, request_id: str | None
) -> None:
    err = refused(body)
    assert err.request_id == request_id
    reply = decode_reply(error_reply(err.request_id, err.code, err.message, err.detail))
    assert isinstance(reply, ErrorReply)
    assert reply.id == request_id
    assert reply.error.code == err.code


# --- bytes and frames ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b"not json", b'{"v": 1', b"1", b'"s"', b"null", b"[]", b"\x00"],
)
def test_bad_json(body: bytes) -> None:
    err = refused(body)
    assert err.code == ErrorCode.BAD_JSON
    assert err.request_id is None


def test_deep_nesting_is_bad_json() -> None:
    body = b'{"v": 1, "id": "a", "op": "submit", "task": "t", "args": ' + b"[" * 100_000
    body += b"]" * 100_000 + b"}"
    assert refused(body).code == ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "frames",
    [[], [b"", b"x", b"{}"], [b"x", b"{}"], [b""], [b"", b""], [b"{}", b"{}"]],
    ids=["none", "three", "bad-delimiter", "empty", "delimiter-then-empty", "two-bodies"],
)
def test_bad_frames(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(frames, LIMIT)
    assert info.value.code == ErrorCode.BAD_FRAME


def test_req_delimiter_is_reported() -> None:
    body = request(v=1, id="a", op="stats")
    assert decode_request([body], LIMIT)[1] is False
    assert decode_request([b"", body], LIMIT)[1] is True
    assert decode_request([memoryview(body)], LIMIT)[0].id == "a"


def test_too_large_reports_the_limit() -> None:
    body = request(v=1, id="a", op="stats")
    assert decode_request([body], len(body))[0].id == "a"
    with pytest.raises(ProtocolError) as info:
        decode_request([body], len(body) - 1)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert info.value.detail["limit"] == len(body) - 1


def test_details_never_echo_hostile_values() -> None:
    huge = "A" * 10_000
    fields = {f"{huge}{i}": 1 for i in range(50)}
    err = refused(submit(priority=huge, **fields))
    assert err.code == ErrorCode.INVALID
    assert len(err.detail["errors"]) == 10
    encoded = error_reply(err.request_id, err.code, err.message, err.detail)
    assert len(encoded) < 4000
    assert "A" * 200 not in json.dumps(err.detail)


# --- encoding, replies, error replies -------------------------------------------


def test_encode_is_compact_and_keeps_nulls() -> None:
    body = encode(decode(submit()))
    assert b" " not in body
    assert json.loads(body)["key"] is None


def test_encode_refuses_what_is_not_json() -> None:
    req = SubmitRequest(v=1, id="a", op="submit", task="t", args=[object()])
    with pytest.raises(ProtocolError) as info:
        encode(req)
    assert info.value.code == ErrorCode.INVALID


def test_error_reply_survives_unencodable_detail_and_id() -> None:
    body = error_reply("a\ud800", ErrorCode.INTERNAL, "bad \ud800", {"x": object()})
    reply = decode_reply(body)
    assert isinstance(reply, ErrorReply)
    assert reply.id is None
    assert reply.error.code is ErrorCode.INTERNAL
    assert reply.error.detail == {}


def test_replies_ignore_unknown_fields_and_keep_unknown_codes() -> None:
    reply = decode_reply(
        b'{"v":1,"id":"a","ok":true,"op":"stats","new":1,"stats":{"version":'
        b'"0.2","uptime":1,"draining":false,"journal":true,"workers":1,"queued":0,"running":0,'
        b'"accepted":0,"finished":0,"gpu":3}}'
    )
    assert isinstance(reply, StatsReply)
    error = decode_reply(
        b'{"v":1,"id":"a","ok":false,"error":{"code":"rate_limited","message":"slow down"}}'
    )
    assert isinstance(error, ErrorReply)
    assert error.error.code == "rate_limited"
    assert not isinstance(error.error.code, ErrorCode)


def test_reply_kinds_are_told_apart() -> None:
    info = json.loads(TASKINFO_EXAMPLE)
    body = {"v": 1, "id": "a", "ok": True, "op": "status", "task": info}
    status = decode_reply(json.dumps(body).encode())
    assert isinstance(status, StatusReply)
    cancel = decode_reply(
        json.dumps(
            {"v": 1, "id": "a", "ok": True, "op": "cancel", "cancelled": False, "task": info}
        ).encode()
    )
    assert isinstance(cancel, CancelReply)
    event = decode_reply(
        json.dumps({"v": 1, "event": "task_done", "id": "a", "task": info}).encode()
    )
    assert isinstance(event, TaskDoneEvent)
    assert event.task.result == 3


@pytest.mark.parametrize(
    ("body", "code", "request_id"),
    [
        (b"garbage", ErrorCode.BAD_JSON, None),
        (b"[]", ErrorCode.BAD_JSON, None),
        (b'{"v":1,"id":"a","ok":true,"op":"teleport"}', ErrorCode.INVALID, "a"),
        (b'{"v":1,"id":"a","ok":true,"op":"status"}', ErrorCode.INVALID, "a"),
        (b'{"v":1,"id":"a","event":"task_started"}', ErrorCode.INVALID, None),
    ],
)
def test_decode_reply_refuses_garbage(body: bytes, code: ErrorCode, request_id: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_reply(body)
    assert info.value.code == code
    assert info.value.request_id == request_id


# --- errors cross processes -------------------------------------------------------


def _roundtrip(err: ProtocolError) -> ProtocolError:
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert (copy.code, copy.message, copy.detail, copy.request_id) == (
        err.code,
        err.message,
        err.detail,
        err.request_id,
    )
    assert str(copy) == str(err)
    return copy


def test_protocol_error_pickles() -> None:
    _roundtrip(ProtocolError(ErrorCode.NOT_FOUND, "no such task", {"task_id": "t"}, "r1"))
    _roundtrip(ProtocolError("some_future_code", "newer daemon"))


def test_unavailable_pickles() -> None:
    copy = _roundtrip(Unavailable("ipc:///tmp/x.sock", 15.0, "r2"))
    assert isinstance(copy, Unavailable)
    assert (copy.endpoint, copy.waited, copy.code) == ("ipc:///tmp/x.sock", 15.0, "unavailable")


def test_task_failed_pickles() -> None:
    task = TaskInfo.model_validate_json(TASKINFO_EXAMPLE).model_copy(
        update={"state": TaskState.FAILED, "result": None}
    )
    err = TaskFailed(task, "r3")
    assert err.code == ErrorCode.TASK_FAILED
    copy = _roundtrip(err)
    assert isinstance(copy, TaskFailed)
    assert copy.task == task
