"""Bytes <-> messages: framing, size limit, JSON, and the error each failure earns.

This module is the only place where wire bytes become models and back, and
the only error it raises is ``ProtocolError``, whatever the bytes. A daemon
serves a request like this (the ROUTER identity frame already split off)::

    try:
        request, delimited = decode_request(frames, max_bytes)
    except ProtocolError as e:
        body = error_reply(e.request_id, e.code, e.message, e.detail)
    ...
    socket.send_multipart([identity, *([b""] if delimited else []), body])

``decode_request`` validates a well-formed body in one pydantic-core pass
(parse and validate together). Only when that fails does it parse again, to
say which rule the body broke, in the spec's order: ``bad_json``, then
``unsupported_version``, ``unknown_op``, ``invalid``. Error details never
echo the body's values; they may be large or hostile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from pipework.protocol.errors import ErrorCode, ProtocolError
from pipework.protocol.messages import (
    OPERATIONS,
    PROTOCOL_VERSION,
    REPLY_ADAPTER,
    REQUEST_ADAPTER,
    Reply,
    Request,
    TaskDoneEvent,
    _message_tag,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "decode_reply",
    "decode_request",
    "encode",
    "error_reply",
    "invalid_error",
]

MAX_MESSAGE_BYTES = 1 << 20
"""The default bound on one message body (1 MiB): the daemon's ``max_message_bytes``."""

_MAX_ID = 64
# detail.errors stays small whatever the body: at most this many entries,
# and location keys (which come from the body) are clipped.
_MAX_ERRORS = 10
_MAX_TEXT = 120
# What pydantic-core raises besides ValidationError: ValueError (a number
# Python cannot hold, a value it cannot encode), RecursionError (deep nesting).
_PARSE_ERRORS = (ValueError, TypeError, RecursionError)
# The start of every reply a daemon sends (events start {"v":1,"event":...}):
# enough to tell which request an unparsable reply answers.
_REPLY_ID = re.compile(rb'\A\{"v":1,"id":"([A-Za-z0-9_.:\-]{1,64})"')
_validate_request = REQUEST_ADAPTER.validate_json
_validate_incoming = REPLY_ADAPTER.validate_json


def decode_request(
    frames: Sequence[bytes | bytearray | memoryview], max_bytes: int
) -> tuple[Request, bool]:
    """Turn the frames of one request into a validated request model.

    Args:
        frames: the message's frames after the ROUTER identity: ``[body]``
            from a DEALER, ``[b"", body]`` from a REQ (bytes, or any buffer
            such as a ``zmq.Frame``, copied once).
        max_bytes: the largest body accepted (``max_message_bytes``).

    Returns:
        The request, and whether an empty delimiter frame preceded the body
        (REQ-style), which the reply must echo.

    Raises:
        ProtocolError: ``bad_frame``, ``too_large``, ``bad_json``,
            ``unsupported_version``, ``unknown_op`` or ``invalid``; its
            ``request_id`` is set whenever the body had a readable ``id``.
    """
    count = len(frames)
    if count == 1:
        body, delimited = frames[0], False
    elif count == 2 and len(frames[0]) == 0:
        body, delimited = frames[1], True
    else:
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"expected one body frame after an optional empty delimiter, got {count} frames",
        )
    size = len(body)
    if size == 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, "the body frame is empty")
    if size > max_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"the body is {size} bytes, over the limit of {max_bytes}",
            {"limit": max_bytes, "size": size},
        )
    data = _as_bytes(body)
    try:
        return _validate_request(data), delimited
    except ValidationError as exc:
        raise _classify_request(data, exc) from None
    except _PARSE_ERRORS as exc:
        raise _bad_json(exc) from None


def decode_reply(body: bytes | bytearray | memoryview) -> Reply | TaskDoneEvent:
    """Turn one frame from the daemon into a reply or an event.

    An error reply is returned as an ``ErrorReply``, not raised: the caller
    decides whether it answers a pending request.

    Args:
        body: the frame's bytes.

    Returns:
        A reply model (``ErrorReply`` included) or a ``TaskDoneEvent``.

    Raises:
        ProtocolError: ``bad_json`` if the frame is not a JSON object (or
            nests deeper than the parser's limit), ``invalid`` if it is not
            a message this version knows; its ``request_id`` is set if the
            frame was a reply with a readable id (for a reply that cannot be
            parsed, from the ``{"v":1,"id":"..."`` every reply starts with).
    """
    data = _as_bytes(body)
    try:
        return _validate_incoming(data)
    except ValidationError as exc:
        error = _classify_reply(data, exc)
    except _PARSE_ERRORS as exc:
        error = _bad_json(exc)
    if error.request_id is None and error.code == ErrorCode.BAD_JSON:
        match = _REPLY_ID.match(data)
        if match is not None:
            error.request_id = match.group(1).decode()
    raise error


def encode(model: BaseModel) -> bytes:
    """Serialize a message as compact UTF-8 JSON, every field included (nulls too).

    Args:
        model: any message model.

    Returns:
        The JSON bytes.

    Raises:
        ProtocolError: ``invalid`` if a value is not JSON (an object in
            ``args``, a lone surrogate in a string, a reference cycle).
    """
    try:
        return model.__pydantic_serializer__.to_json(model)
    except _PARSE_ERRORS as exc:
        raise ProtocolError(
            ErrorCode.INVALID, f"{type(model).__name__} cannot be encoded as JSON: {exc}"
        ) from None


def error_reply(
    request_id: str | None,
    code: ErrorCode | str,
    message: str,
    detail: dict[str, Any] | None = None,
) -> bytes:
    """Build the bytes of an error reply; never fails.

    Args:
        request_id: the failed request's id, or None if it was unreadable.
        code: the error code.
        message: human-readable text.
        detail: JSON-safe context; None means ``{}``.

    Returns:
        The JSON bytes. If ``detail`` cannot be encoded it is replaced by
        ``{}``, and an id or message that is not valid Unicode is dropped or
        repaired, so the client still gets its one reply with the code.
    """
    payload: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": str(code), "message": message, "detail": detail or {}},
    }
    try:
        return pydantic_core.to_json(payload, inf_nan_mode="null")
    except _PARSE_ERRORS:
        pass
    payload["id"] = request_id if _encodable(request_id) else None
    payload["error"] = {"code": _repair(str(code)), "message": _repair(message), "detail": {}}
    return pydantic_core.to_json(payload)


def invalid_error(
    exc: ValidationError, request_id: str | None = None, tag: str | None = None
) -> ProtocolError:
    """Turn a pydantic ``ValidationError`` into ``ProtocolError(invalid)``.

    ``detail.errors`` lists ``{"loc": [...], "msg": str}`` for at most ten
    errors, without the offending values.

    Args:
        exc: the validation error.
        request_id: the id of the request that failed, if readable.
        tag: a union tag to strip from the front of each location (the op).

    Returns:
        The error, ready to raise or to send with ``error_reply``.
    """
    errors: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        if len(errors) == _MAX_ERRORS:
            break
        loc = list(err["loc"])
        if tag is not None and loc and loc[0] == tag:
            del loc[0]
        errors.append(
            {
                "loc": [part if isinstance(part, int) else _clip(str(part)) for part in loc],
                "msg": _clip(err["msg"]),
            }
        )
    count = exc.error_count()
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    where = ".".join(str(p) for p in first["loc"]) or "the message"
    message = f"{where}: {first['msg']}"
    if count > 1:
        message += f" (and {count - 1} more)"
    return ProtocolError(ErrorCode.INVALID, message, {"errors": errors}, request_id)


def _classify_request(body: bytes | bytearray, exc: ValidationError) -> ProtocolError:
    """Which rule a body that failed validation broke first, in the spec's order."""
    raw = _parse_object(body, exc)
    if isinstance(raw, ProtocolError):
        return raw
    request_id = _readable_id(raw.get("id"))
    version = raw.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        reason = "missing" if version is None else "not a supported version"
        return ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"'v' is {reason}; this daemon speaks version {PROTOCOL_VERSION}",
            {"supported": [PROTOCOL_VERSION]},
            request_id,
        )
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPERATIONS:
        reason = "missing" if op is None else "not an operation"
        return ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f"'op' is {reason}; expected one of {', '.join(OPERATIONS)}",
            {"supported": list(OPERATIONS)},
            request_id,
        )
    return invalid_error(exc, request_id, tag=op)


def _classify_reply(body: bytes | bytearray, exc: ValidationError) -> ProtocolError:
    """Why a frame from the daemon is not a message this version knows."""
    raw = _parse_object(body, exc)
    if isinstance(raw, ProtocolError):
        return raw
    # An unknown event must not fail the request whose id it happens to carry.
    request_id = None if "event" in raw else _readable_id(raw.get("id"))
    return invalid_error(exc, request_id, tag=_message_tag(raw))


def _parse_object(body: bytes | bytearray, exc: ValidationError) -> dict[str, Any] | ProtocolError:
    """The body as a JSON object, or the bad_json error it deserves."""
    if exc.error_count() == 1:  # a parse failure is always the only error
        err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        if err["type"] == "json_invalid":
            why = err["msg"].removeprefix("Invalid JSON: ")
            if why.startswith("recursion limit exceeded"):
                return ProtocolError(ErrorCode.BAD_JSON, f"the body is nested too deeply ({why})")
            return ProtocolError(ErrorCode.BAD_JSON, f"the body is not UTF-8 JSON: {why}")
    try:
        raw = pydantic_core.from_json(body)
    except _PARSE_ERRORS as parse_exc:
        return _bad_json(parse_exc)
    if not isinstance(raw, dict):
        return ProtocolError(
            ErrorCode.BAD_JSON, f"the body is a JSON {_json_type(raw)}, not an object"
        )
    return raw


def _bad_json(exc: BaseException) -> ProtocolError:
    if isinstance(exc, RecursionError) or "recursion limit exceeded" in str(exc):
        return ProtocolError(ErrorCode.BAD_JSON, "the body is nested too deeply")
    return ProtocolError(ErrorCode.BAD_JSON, f"the body is not UTF-8 JSON: {_clip(str(exc))}")


def _as_bytes(body: Any) -> bytes | bytearray:
    # pydantic parses only these; a zmq.Frame or memoryview is copied once.
    if isinstance(body, bytes | bytearray):
        return body
    return bytes(body)


def _readable_id(value: object) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= _MAX_ID:
        return value
    return None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _encodable(text: str | None) -> bool:
    if text is None:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repair(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
