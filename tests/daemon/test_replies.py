"""The daemon's spliced replies: the bytes json.dumps makes of the same dicts, valid models."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipework.protocol.codec import decode_reply
from pipework.protocol.messages import ResultReply, StatusReply, SubmitReply, TaskDoneEvent
from pipework.service.daemon.journal import TaskRecord
from pipework.service.daemon.outcomes import canonical_json
from pipework.service.daemon.replies import event, submit_reply, task_info, task_reply


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


_text = st.text(max_size=20)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_time = st.floats(min_value=0, max_value=4e9, allow_nan=False)
_attempt = st.fixed_dictionaries(
    {
        "attempt": st.integers(1, 5),
        "worker_pid": st.integers(1, 1 << 22),
        "outcome": st.just("worker_lost"),
        "exitcode": st.integers(-64, 255) | st.none(),
        "signal": st.none() | st.just("SIGKILL"),
        "at": _time,
    }
)


@st.composite
def _records(draw: st.DrawFn) -> TaskRecord:
    state = draw(st.sampled_from(["queued", "running", "done", "failed", "quarantined"]))
    result = draw(_json) if state == "done" else None
    error = (
        {"type": draw(_text), "message": draw(_text), "traceback": draw(_text)}
        if state in ("failed", "quarantined")
        else None
    )
    return TaskRecord(
        task_id=draw(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)),
        name=draw(st.text(min_size=1, max_size=30)),
        key=draw(st.none() | st.text(min_size=1, max_size=30)),
        args_json="[]",
        kwargs_json="{}",
        state=state,
        priority=draw(st.integers(-1000, 1000)),
        not_before=0.0,
        timeout=None,
        retries=0,
        attempts=draw(st.integers(0, 5)),
        created_at=draw(_time),
        started_at=draw(st.none() | _time),
        finished_at=draw(st.none() | _time),
        result_json=None if result is None else canonical_json(result),
        error_json=None if error is None else canonical_json(error),
        history_json=json.dumps(draw(st.lists(_attempt, max_size=2)), separators=(",", ":")),
        seq=1,
    )


@settings(max_examples=200, deadline=None)
@given(rec=_records(), request_id=st.text(min_size=1, max_size=64))
def test_task_replies_are_what_json_dumps_makes(rec: TaskRecord, request_id: str) -> None:
    info = task_info(rec)
    assert event(request_id, rec) == _dumps(
        {"v": 1, "event": "task_done", "id": request_id, "task": info}
    )
    for op in ("status", "result"):
        assert task_reply(request_id, op, rec) == _dumps(
            {"v": 1, "id": request_id, "ok": True, "op": op, "task": info}
        )
    assert isinstance(decode_reply(event(request_id, rec)), TaskDoneEvent)
    assert isinstance(decode_reply(task_reply(request_id, "status", rec)), StatusReply)
    if rec.state in ("done", "failed", "quarantined"):
        assert isinstance(decode_reply(task_reply(request_id, "result", rec)), ResultReply)


@given(
    request_id=st.text(min_size=1, max_size=64),
    task_id=st.text(min_size=1, max_size=40),
    state=st.sampled_from(["queued", "running", "done"]),
    duplicate=st.booleans(),
)
def test_submit_reply_is_what_json_dumps_makes(
    request_id: str, task_id: str, state: str, duplicate: bool
) -> None:
    body = submit_reply(request_id, task_id, state, duplicate=duplicate)
    expected = {
        "v": 1,
        "id": request_id,
        "ok": True,
        "op": "submit",
        "task_id": task_id,
        "state": state,
        "duplicate": duplicate,
    }
    assert body == _dumps(expected)
    assert isinstance(decode_reply(body), SubmitReply)
