"""Hypothesis against the codec: whatever the bytes, only a ProtocolError with a spec code.

Every refused body also yields an error reply that a client can read back,
with the same code and request id. Valid requests survive encode -> decode
unchanged; a valid request with one field of the wrong JSON type earns the
code the spec's order of checks gives it.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipework.protocol import ErrorCode, ErrorReply, ProtocolError, TaskState, codec
from pipework.protocol.messages import REQUEST_ADAPTER
from tests.support.strategies import json_scalars
from tests.support.strategies import json_values as any_json

LIMIT = 1 << 20
# The codes decode_request may raise; everything else is the daemon's.
REQUEST_CODES = {
    ErrorCode.BAD_FRAME,
    ErrorCode.TOO_LARGE,
    ErrorCode.BAD_JSON,
    ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.UNKNOWN_OP,
    ErrorCode.INVALID,
}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = json_scalars()
json_values = any_json()
ids = st.text(min_size=1, max_size=64)
names = st.text(min_size=1, max_size=200)
task_ids = st.text(max_size=40)


def _envelope(op: str) -> dict[str, Any]:
    return {"v": st.just(1), "id": ids, "op": st.just(op)}


valid_requests = st.one_of(
    st.fixed_dictionaries(
        {**_envelope("submit"), "task": names},
        optional={
            "args": st.lists(json_values, max_size=4),
            "kwargs": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
            "key": st.none() | names,
            "timeout": st.none()
            | st.floats(min_value=0, max_value=604800, exclude_min=True)
            | st.integers(1, 604800),
            "retries": st.none() | st.integers(0, 100),
            "priority": st.integers(-1000, 1000),
            "delay": st.floats(min_value=0, max_value=31536000) | st.integers(0, 31536000),
            "notify": st.booleans(),
        },
    ),
    st.fixed_dictionaries({**_envelope("status"), "task_id": task_ids}),
    st.fixed_dictionaries(
        {**_envelope("result"), "task_id": task_ids},
        optional={"wait": st.floats(min_value=0, max_value=3600) | st.integers(0, 3600)},
    ),
    st.fixed_dictionaries({**_envelope("cancel"), "task_id": task_ids}),
    st.fixed_dictionaries(
        _envelope("list"),
        optional={
            "state": st.none() | st.sampled_from([s.value for s in TaskState]),
            "limit": st.integers(1, 1000),
        },
    ),
    st.fixed_dictionaries(_envelope("stats")),
    st.fixed_dictionaries(_envelope("workers")),
)

# The JSON types each field accepts; a value of any other type is a wrong type.
FIELD_TYPES = {
    "v": {"int"},
    "id": {"str"},
    "op": {"str"},
    "task": {"str"},
    "args": {"list"},
    "kwargs": {"obj"},
    "key": {"str", "null"},
    "timeout": {"int", "float", "null"},
    "retries": {"int", "null"},
    "priority": {"int"},
    "delay": {"int", "float"},
    "notify": {"bool"},
    "task_id": {"str"},
    "wait": {"int", "float"},
    "state": {"str", "null"},
    "limit": {"int"},
}
VALUES_OF_TYPE = {
    "bool": st.booleans(),
    "int": st.integers(),
    "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    "str": st.text(max_size=5),
    "list": st.lists(scalars, max_size=2),
    "obj": st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    "null": st.none(),
}
FIELD_NAMES = sorted(FIELD_TYPES)


def assert_refused_well(body: bytes | list[bytes]) -> ProtocolError | None:
    """Decode; if refused, check the code and that the error reply reads back."""
    frames = body if isinstance(body, list) else [body]
    error: ProtocolError | None = None
    try:
        request, _ = codec.decode_request(frames, LIMIT)
    except ProtocolError as exc:
        error = exc
    if error is None:
        assert codec.decode_request([codec.encode(request)], LIMIT)[0] == request
        return None
    assert error.code in REQUEST_CODES
    assert error.request_id is None or 1 <= len(error.request_id) <= 64
    json.dumps(error.detail)  # JSON-safe
    reply = codec.decode_reply(
        codec.error_reply(error.request_id, error.code, error.message, error.detail)
    )
    assert isinstance(reply, ErrorReply)
    assert reply.error.code == error.code
    assert reply.id == error.request_id
    return error


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    assert_refused_well(body)


@FUZZ
@given(st.lists(st.binary(max_size=20), max_size=4))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    assert_refused_well(frames)


@FUZZ
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    err = assert_refused_well(json.dumps(value).encode())
    assert err is not None
    if not isinstance(value, dict):
        assert err.code == ErrorCode.BAD_JSON


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.text(max_size=6),
        json_values | st.just(1) | st.sampled_from(["submit", "status", "list", "stats"]),
        max_size=8,
    )
)
def test_arbitrary_json_objects(obj: dict[str, Any]) -> None:
    assert_refused_well(json.dumps(obj).encode())


@FUZZ
@given(valid_requests, st.data())
def test_valid_requests_with_corrupted_bytes(obj: dict[str, Any], data: st.DataObject) -> None:
    body = bytearray(json.dumps(obj).encode())
    at = data.draw(st.integers(0, len(body) - 1))
    edit = data.draw(st.sampled_from(["flip", "delete", "insert"]))
    if edit == "flip":
        body[at] ^= 1 << data.draw(st.integers(0, 7))
    elif edit == "delete":
        del body[at]
    else:
        body.insert(at, data.draw(st.integers(0, 255)))
    assert_refused_well(bytes(body))


@FUZZ
@given(valid_requests)
def test_valid_requests_round_trip(obj: dict[str, Any]) -> None:
    model = REQUEST_ADAPTER.validate_python(obj)
    assert codec.decode_request([json.dumps(obj).encode()], LIMIT)[0] == model
    assert codec.decode_request([codec.encode(model)], LIMIT)[0] == model
    assert codec.decode_request([b"", codec.encode(model)], LIMIT) == (model, True)


@FUZZ
@given(valid_requests, st.data())
def test_one_field_of_the_wrong_type(obj: dict[str, Any], data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(obj)))
    wrong_type = data.draw(st.sampled_from(sorted(set(VALUES_OF_TYPE) - FIELD_TYPES[field])))
    obj = {**obj, field: data.draw(VALUES_OF_TYPE[wrong_type])}
    err = assert_refused_well(json.dumps(obj).encode())
    assert err is not None
    expected = {"v": ErrorCode.UNSUPPORTED_VERSION, "op": ErrorCode.UNKNOWN_OP}
    assert err.code == expected.get(field, ErrorCode.INVALID)
    assert err.request_id == (None if field == "id" else obj["id"])
    if err.code == ErrorCode.INVALID:
        assert [e["loc"][0] for e in err.detail["errors"]] == [field]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 5000), st.binary(max_size=64))
def test_oversized_bodies_are_refused_without_parsing(limit: int, tail: bytes) -> None:
    body = b"{" * (limit + 1) + tail
    with (
        mock.patch.object(codec, "_validate_request", side_effect=AssertionError("parsed")),
        mock.patch.object(codec, "_classify_request", side_effect=AssertionError("parsed")),
        pytest.raises(ProtocolError) as info,
    ):
        codec.decode_request([body], limit)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert info.value.detail["limit"] == limit
    assert info.value.request_id is None
