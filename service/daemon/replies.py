"""What the daemon sends back: replies, ``task_done`` events, and the TaskInfo inside them.

The shapes are ``docs/protocol.md``'s (``protocol.messages`` models them for
clients). The daemon does not build them through those models or through a
dict and ``json.dumps``: the hot replies (a submit's, a result's, an event)
are spliced from pieces, and a task's result, error and history go out as
the JSON text the journal holds, never parsed and encoded again. The bytes
are those ``json.dumps(..., separators=(",", ":"))`` would make of the same
dicts, in the same key order (a test holds the two together).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from pipework.service.daemon.journal import TaskRecord

__all__ = ["Peer", "dumps", "event", "ok_reply", "submit_reply", "task_info", "task_reply"]

_Frames = list[bytes]
_dump: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes (ASCII, NaN refused): the encoding of every daemon message."""
    return _dump(obj).encode()


@dataclass(slots=True)
class Peer:
    """Where a reply or event goes: a ROUTER identity, and whether it sent a delimiter."""

    identity: bytes
    delimiter: bool
    request_id: str
    user: str | None = None  # the name of its CURVE key, on a CURVE endpoint

    def frames(self, body: bytes) -> _Frames:
        """The multipart message that carries ``body`` back to this peer."""
        return [self.identity, b"", body] if self.delimiter else [self.identity, body]


def task_info(rec: TaskRecord, *, full: bool = True) -> dict[str, Any]:
    """A journal record as the wire's TaskInfo object (docs/protocol.md)."""
    return {
        "task_id": rec.task_id,
        "task": rec.name,
        "key": rec.key,
        "state": rec.state,
        "attempts": rec.attempts,
        "priority": rec.priority,
        "created_at": rec.created_at,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "result": json.loads(rec.result_json) if full and rec.result_json is not None else None,
        "error": json.loads(rec.error_json) if full and rec.error_json is not None else None,
        "history": json.loads(rec.history_json) if full else [],
    }


def _str(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _float(value: float | None) -> str:
    # Journal times are finite floats (time.time()); json.dumps writes float.__repr__.
    return "null" if value is None else float.__repr__(float(value))


def _task_info_json(rec: TaskRecord) -> str:
    """``dumps(task_info(rec))`` as text, with result/error/history spliced in unparsed."""
    return (
        f'{{"task_id":{_str(rec.task_id)},"task":{_str(rec.name)},"key":{_str(rec.key)},'
        f'"state":{_str(rec.state)},"attempts":{int(rec.attempts)},'
        f'"priority":{int(rec.priority)},"created_at":{_float(rec.created_at)},'
        f'"started_at":{_float(rec.started_at)},"finished_at":{_float(rec.finished_at)},'
        f'"result":{rec.result_json or "null"},"error":{rec.error_json or "null"},'
        f'"history":{rec.history_json}}}'
    )


def ok_reply(request_id: str, op: str, **fields: Any) -> bytes:
    """A successful reply to ``op``: ``{"v":1,"id":...,"ok":true,"op":...,**fields}``."""
    return dumps({"v": 1, "id": request_id, "ok": True, "op": op, **fields})


def submit_reply(request_id: str, task_id: str, state: str, *, duplicate: bool) -> bytes:
    """The reply to a submit."""
    return (
        f'{{"v":1,"id":{_str(request_id)},"ok":true,"op":"submit","task_id":{_str(task_id)},'
        f'"state":{_str(state)},"duplicate":{"true" if duplicate else "false"}}}'
    ).encode()


def task_reply(request_id: str, op: str, rec: TaskRecord) -> bytes:
    """A successful reply to ``op`` (``status`` or ``result``) carrying one task."""
    return (
        f'{{"v":1,"id":{_str(request_id)},"ok":true,"op":{_str(op)},"task":{_task_info_json(rec)}}}'
    ).encode()


def event(request_id: str, rec: TaskRecord) -> bytes:
    """The ``task_done`` event for the submit ``request_id`` of the finished task ``rec``."""
    return (
        f'{{"v":1,"event":"task_done","id":{_str(request_id)},"task":{_task_info_json(rec)}}}'
    ).encode()
