"""The remote-worker messages against docs/protocol.md, and the decoder under fuzzing.

Whatever the bytes, ``decode_worker_message`` raises only ``ProtocolError``
with one of the codes a message can earn; the spec's examples decode to the
models they show; valid messages survive encode -> decode unchanged.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipework import protocol
from pipework.protocol import (
    WORKER_MESSAGE_TYPES,
    Bye,
    Cancel,
    ErrorCode,
    Heartbeat,
    Hello,
    ProtocolError,
    Ready,
    ResultError,
    ResultMessage,
    Stop,
    TaskMessage,
    Welcome,
    decode_worker_message,
    encode,
)
from pipework.protocol import workers as workers_module
from tests.support.strategies import json_values as any_json

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
LIMIT = 1 << 20
CODES = {
    ErrorCode.BAD_FRAME,
    ErrorCode.TOO_LARGE,
    ErrorCode.BAD_JSON,
    ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.INVALID,
}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS: dict[str, type[Any]] = {
    "hello": Hello,
    "welcome": Welcome,
    "ready": Ready,
    "task": TaskMessage,
    "result": ResultMessage,
    "cancel": Cancel,
    "heartbeat": Heartbeat,
    "stop": Stop,
    "bye": Bye,
}


def decode(obj: dict[str, Any] | bytes) -> Any:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return decode_worker_message([body], LIMIT)


def refused(obj: dict[str, Any] | bytes | list[bytes], limit: int = LIMIT) -> ProtocolError:
    frames = obj if isinstance(obj, list) else [obj if isinstance(obj, bytes) else _dumps(obj)]
    with pytest.raises(ProtocolError) as info:
        decode_worker_message(frames, limit)
    return info.value


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def _spec_examples() -> list[dict[str, Any]]:
    """The JSON objects of the spec's session exchange, in order."""
    start = DOC.index("## Session")
    block = re.search(r"```\n(.*?)```", DOC[start:], re.S)
    assert block is not None
    text, found, at = block.group(1), [], 0
    decoder = json.JSONDecoder()
    while (at := text.find("{", at)) != -1:
        obj, end = decoder.raw_decode(text, at)  # an example may wrap: JSON allows newlines
        found.append(obj)
        at = end
    return found


def test_the_spec_exchange_decodes_to_its_models() -> None:
    examples = _spec_examples()
    assert [e["type"] for e in examples] == ["hello", "welcome", "ready", "task", "result", "ready"]
    for example in examples:
        msg = decode(example)
        assert isinstance(msg, MODELS[example["type"]])
        assert msg.session == "s1"
        assert decode(encode(msg)) == msg


def test_the_spec_table_names_every_type() -> None:
    start = DOC.index("| type | direction |")
    table = DOC[start : DOC.index("\n\n", start)]
    named = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert sorted(named) == sorted(WORKER_MESSAGE_TYPES) == sorted(MODELS)


def test_building_fills_v_and_type_and_encodes_them_first() -> None:
    body = encode(Ready(session="s", credit=4))
    assert body == b'{"v":1,"type":"ready","session":"s","credit":4}'
    result = ResultMessage(
        session="s",
        task_id="t",
        attempt=2,
        state="worker_lost",
        error={"type": "WorkerLost", "message": "killed"},  # type: ignore[arg-type]
        exitcode=-9,
        signal="SIGKILL",
    )
    assert json.loads(encode(result)) == {
        "v": 1,
        "type": "result",
        "session": "s",
        "task_id": "t",
        "attempt": 2,
        "state": "worker_lost",
        "result": None,
        "error": {"type": "WorkerLost", "message": "killed", "traceback": ""},
        "exitcode": -9,
        "signal": "SIGKILL",
    }


VALID: dict[str, dict[str, Any]] = {
    "hello": {"slots": 4, "host": "w1", "pid": 812, "tasks": ["add"]},
    "welcome": {"heartbeat": 1.0, "expiry": 10},
    "ready": {"credit": 1},
    "task": {"task_id": "t1", "attempt": 1, "task": "add", "args": [1], "kwargs": {}},
    "result": {"task_id": "t1", "attempt": 1, "state": "done", "result": 3},
    "cancel": {"task_id": "t1"},
    "heartbeat": {},
    "stop": {},
    "bye": {},
}


def message(kind: str, **changes: Any) -> dict[str, Any]:
    body = {"v": 1, "type": kind, "session": "s1", **VALID[kind], **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_type_round_trips(kind: str) -> None:
    msg = decode(message(kind))
    assert type(msg) is MODELS[kind]
    assert decode(encode(msg)) == msg


# (what is wrong, body, expected code, the field the error names)
REFUSALS: list[tuple[str, Any, ErrorCode, str | None]] = [
    ("two frames", [b"{}", b"{}"], ErrorCode.BAD_FRAME, None),
    ("no frame", [], ErrorCode.BAD_FRAME, None),
    ("REQ-style delimiter", [b"", _dumps(message("bye"))], ErrorCode.BAD_FRAME, None),
    ("empty body", b"", ErrorCode.BAD_FRAME, None),
    ("not JSON", b"hello", ErrorCode.BAD_JSON, None),
    ("not UTF-8", b'{"v":1,"type":"bye","session":"\xff"}', ErrorCode.BAD_JSON, None),
    ("an array", b"[]", ErrorCode.BAD_JSON, None),
    (
        "credit NaN",
        b'{"v":1,"type":"ready","session":"s","credit":NaN}',
        ErrorCode.INVALID,
        "credit",
    ),
    ("v missing", message("bye", v=_DROP), ErrorCode.UNSUPPORTED_VERSION, None),
    ("v is 2", message("bye", v=2), ErrorCode.UNSUPPORTED_VERSION, None),
    ("v is true", message("bye", v=True), ErrorCode.UNSUPPORTED_VERSION, None),
    ("v is 1.0", message("bye", v=1.0), ErrorCode.UNSUPPORTED_VERSION, None),
    ("v is a string", message("bye", v="1"), ErrorCode.UNSUPPORTED_VERSION, None),
    ("type missing", message("bye", type=_DROP), ErrorCode.INVALID, "type"),
    ("unknown type", message("bye", type="submit"), ErrorCode.INVALID, "type"),
    ("type not a string", message("bye", type=7), ErrorCode.INVALID, "type"),
    ("unknown field", message("bye", extra=1), ErrorCode.INVALID, "extra"),
    ("session missing", message("bye", session=_DROP), ErrorCode.INVALID, "session"),
    ("session empty", message("bye", session=""), ErrorCode.INVALID, "session"),
    ("session 65 chars", message("bye", session="s" * 65), ErrorCode.INVALID, "session"),
    ("session a number", message("bye", session=1), ErrorCode.INVALID, "session"),
    ("slots 0", message("hello", slots=0), ErrorCode.INVALID, "slots"),
    ("slots 10001", message("hello", slots=10_001), ErrorCode.INVALID, "slots"),
    ("slots a string", message("hello", slots="4"), ErrorCode.INVALID, "slots"),
    ("slots a float", message("hello", slots=4.0), ErrorCode.INVALID, "slots"),
    ("slots true", message("hello", slots=True), ErrorCode.INVALID, "slots"),
    ("host empty", message("hello", host=""), ErrorCode.INVALID, "host"),
    ("host 256 chars", message("hello", host="h" * 256), ErrorCode.INVALID, "host"),
    ("pid 0", message("hello", pid=0), ErrorCode.INVALID, "pid"),
    ("task name 201 chars", message("hello", tasks=["t" * 201]), ErrorCode.INVALID, "tasks"),
    ("tasks not a list", message("hello", tasks="add"), ErrorCode.INVALID, "tasks"),
    ("heartbeat 0", message("welcome", heartbeat=0), ErrorCode.INVALID, "heartbeat"),
    ("heartbeat a string", message("welcome", heartbeat="1"), ErrorCode.INVALID, "heartbeat"),
    (
        "expiry 1e400",
        b'{"v":1,"type":"welcome","session":"s","heartbeat":1,"expiry":1e400}',
        ErrorCode.INVALID,
        "expiry",
    ),
    ("expiry below heartbeat", message("welcome", heartbeat=2, expiry=1), ErrorCode.INVALID, None),
    ("credit 0", message("ready", credit=0), ErrorCode.INVALID, "credit"),
    ("credit 10001", message("ready", credit=10_001), ErrorCode.INVALID, "credit"),
    ("credit negative", message("ready", credit=-1), ErrorCode.INVALID, "credit"),
    ("task_id empty", message("task", task_id=""), ErrorCode.INVALID, "task_id"),
    ("task_id 65 chars", message("task", task_id="t" * 65), ErrorCode.INVALID, "task_id"),
    ("attempt 0", message("task", attempt=0), ErrorCode.INVALID, "attempt"),
    ("task name empty", message("task", task=""), ErrorCode.INVALID, "task"),
    ("args an object", message("task", args={}), ErrorCode.INVALID, "args"),
    ("kwargs a list", message("task", kwargs=[]), ErrorCode.INVALID, "kwargs"),
    (
        "args 1e400",
        b'{"v":1,"type":"task","session":"s","task_id":"t","attempt":1,'
        b'"task":"add","args":[[{"x":-1e400}]]}',
        ErrorCode.INVALID,
        "args",
    ),
    ("timeout 0", message("task", timeout=0), ErrorCode.INVALID, "timeout"),
    (
        "args NaN",
        b'{"v":1,"type":"task","session":"s","task_id":"t","attempt":1,"task":"a","args":[NaN]}',
        ErrorCode.INVALID,
        "args",
    ),
    ("state cancelled", message("result", state="cancelled"), ErrorCode.INVALID, "state"),
    (
        "result 1e400",
        b'{"v":1,"type":"result","session":"s","task_id":"t","attempt":1,'
        b'"state":"done","result":1e400}',
        ErrorCode.INVALID,
        "result",
    ),
    (
        "done with an error",
        message("result", error={"type": "X", "message": ""}),
        ErrorCode.INVALID,
        None,
    ),
    ("failed without an error", message("result", state="failed"), ErrorCode.INVALID, None),
    ("timed_out without an error", message("result", state="timed_out"), ErrorCode.INVALID, None),
    (
        "failed with a result",
        message("result", state="failed", error={"type": "X", "message": ""}),
        ErrorCode.INVALID,
        None,
    ),
    ("done with an exitcode", message("result", exitcode=1), ErrorCode.INVALID, None),
    (
        "error with an unknown field",
        message("result", state="failed", result=None, error={"type": "X", "message": "", "x": 1}),
        ErrorCode.INVALID,
        "error",
    ),
    (
        "error message too long",
        message(
            "result",
            state="failed",
            result=None,
            error={"type": "X", "message": "m" * (protocol.MAX_ERROR_TEXT + 1)},
        ),
        ErrorCode.INVALID,
        "error",
    ),
]


@pytest.mark.parametrize(("what", "body", "code", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(what: str, body: Any, code: ErrorCode, field: str | None) -> None:
    err = refused(body)
    assert err.code == code, err
    assert err.request_id is None  # worker messages have no request id
    json.dumps(err.detail)
    if field is not None:
        assert [e["loc"][0] for e in err.detail["errors"]][:1] == [field], err.detail


def test_a_worker_lost_result_needs_no_error() -> None:
    msg = decode(message("result", state="worker_lost", result=None, exitcode=-9, signal="SIGKILL"))
    assert isinstance(msg, ResultMessage)
    assert (msg.error, msg.exitcode, msg.signal) == (None, -9, "SIGKILL")


def test_numbers_in_arguments_may_be_any_finite_json_number() -> None:
    body = message("task", args=[0, -1.5, 1e308, 10**30, [{"a": 2.5}]], kwargs={"k": -0.0})
    msg = decode(body)
    assert isinstance(msg, TaskMessage)
    assert msg.args == [0, -1.5, 1e308, 10**30, [{"a": 2.5}]]


def test_building_a_bad_message_raises_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        Welcome(session="s", heartbeat=1.0, expiry=1.0)
    with pytest.raises(ValidationError):
        TaskMessage(session="s", task_id="t", attempt=1, task="add", args=[math.nan])
    with pytest.raises(ValidationError):
        Ready(session="s", credit=0)
    with pytest.raises(ValidationError):
        ResultError(type="", message="")


def test_oversized_bodies_are_refused_without_parsing() -> None:
    body = _dumps(message("task", args=["x" * 2000]))
    with mock.patch.object(workers_module, "_validate", side_effect=AssertionError("parsed")):
        err = refused(body, limit=1000)
    assert err.code == ErrorCode.TOO_LARGE
    assert err.detail == {"limit": 1000, "size": len(body)}


def test_buffers_are_accepted_as_frames() -> None:
    body = encode(Heartbeat(session="s"))
    assert decode_worker_message([memoryview(body)], LIMIT) == Heartbeat(session="s")
    assert decode_worker_message([bytearray(body)], LIMIT) == Heartbeat(session="s")


# -- fuzzing ---------------------------------------------------------------------------

json_values = any_json()
sessions = st.text(min_size=1, max_size=64)
names = st.text(min_size=1, max_size=200)
task_ids = st.text(min_size=1, max_size=64)
counts = st.integers(1, 10_000)
errors = st.fixed_dictionaries(
    {"type": names, "message": st.text(max_size=50)}, optional={"traceback": st.text(max_size=50)}
)


def _env(kind: str) -> dict[str, Any]:
    return {"v": st.just(1), "type": st.just(kind), "session": sessions}


valid_messages = st.one_of(
    st.fixed_dictionaries(
        {
            **_env("hello"),
            "slots": counts,
            "host": st.text(min_size=1, max_size=255),
            "pid": st.integers(1, 2**31),
            "tasks": st.lists(names, max_size=5),
        }
    ),
    st.tuples(st.floats(0.001, 1000), st.floats(1.001, 10)).map(
        lambda hb: {
            "v": 1,
            "type": "welcome",
            "session": "s",
            "heartbeat": hb[0],
            "expiry": hb[0] * hb[1],
        }
    ),
    st.fixed_dictionaries({**_env("ready"), "credit": counts}),
    st.fixed_dictionaries(
        {**_env("task"), "task_id": task_ids, "attempt": st.integers(1, 1000), "task": names},
        optional={
            "args": st.lists(json_values, max_size=4),
            "kwargs": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
            "timeout": st.none() | st.floats(min_value=0.001, max_value=1e6),
        },
    ),
    st.fixed_dictionaries(
        {**_env("result"), "task_id": task_ids, "attempt": st.integers(1, 1000)},
        optional={"result": json_values},
    ).map(lambda d: {**d, "state": "done"}),
    st.fixed_dictionaries(
        {
            **_env("result"),
            "task_id": task_ids,
            "attempt": st.integers(1, 1000),
            "state": st.sampled_from(["failed", "timed_out"]),
            "error": errors,
        }
    ),
    st.fixed_dictionaries(
        {**_env("result"), "task_id": task_ids, "attempt": st.integers(1, 1000)},
        optional={
            "error": st.none() | errors,
            "exitcode": st.none() | st.integers(-64, 255),
            "signal": st.none() | st.sampled_from(["SIGKILL", "SIGSEGV", "SIG99"]),
        },
    ).map(lambda d: {**d, "state": "worker_lost"}),
    st.fixed_dictionaries({**_env("cancel"), "task_id": task_ids}),
    st.fixed_dictionaries(_env("heartbeat")),
    st.fixed_dictionaries(_env("stop")),
    st.fixed_dictionaries(_env("bye")),
)

FIELDS = sorted(
    {"v", "type", "session", "slots", "host", "pid", "tasks", "heartbeat", "expiry", "credit"}
    | {"task_id", "attempt", "task", "args", "kwargs", "timeout", "state", "result", "error"}
    | {"exitcode", "signal"}
)


def decodes_or_refuses(frames: list[bytes]) -> ProtocolError | None:
    """Decode; a refusal must be a ProtocolError with a message code, and JSON-safe."""
    try:
        msg = decode_worker_message(frames, LIMIT)
    except ProtocolError as exc:
        error = exc
    else:
        assert decode_worker_message([encode(msg)], LIMIT) == msg
        return None
    assert error.code in CODES, error
    json.dumps(error.detail)
    return error


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    decodes_or_refuses([body])


@FUZZ
@given(st.lists(st.binary(max_size=20), max_size=4))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    decodes_or_refuses(frames)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=6),
        json_values | st.just(1) | st.sampled_from(WORKER_MESSAGE_TYPES),
        max_size=10,
    )
)
def test_arbitrary_json_objects(obj: dict[str, Any]) -> None:
    decodes_or_refuses([_dumps(obj)])


@FUZZ
@given(valid_messages)
def test_valid_messages_round_trip(obj: dict[str, Any]) -> None:
    msg = decode(obj)
    assert type(msg) is MODELS[obj["type"]]
    assert decode(encode(msg)) == msg


@FUZZ
@given(valid_messages, st.data())
def test_valid_messages_with_corrupted_bytes(obj: dict[str, Any], data: st.DataObject) -> None:
    body = bytearray(_dumps(obj))
    at = data.draw(st.integers(0, len(body) - 1))
    edit = data.draw(st.sampled_from(["flip", "delete", "insert"]))
    if edit == "flip":
        body[at] ^= 1 << data.draw(st.integers(0, 7))
    elif edit == "delete":
        del body[at]
    else:
        body.insert(at, data.draw(st.integers(0, 255)))
    decodes_or_refuses([bytes(body)])


@FUZZ
@given(valid_messages, st.data())
def test_one_field_removed_or_added(obj: dict[str, Any], data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(obj)))
        obj = {k: v for k, v in obj.items() if k != field}
    else:
        obj = {**obj, data.draw(st.text(min_size=1, max_size=6)): data.draw(json_values)}
    decodes_or_refuses([_dumps(obj)])
