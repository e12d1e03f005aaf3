"""A batch's messages that MessageIn would take as they are skip its
validation (``schemas.plainly_valid``): the shortcut must accept nothing
that MessageIn refuses, and must make the same messages of what it accepts.
The API and the publish stream answer the same either way."""

from __future__ import annotations

import itertools

import orjson
import pytest
from pydantic import ValidationError

from queues.api import schemas as s
from queues.api.frames import parse_send
from queues.api.views import new_messages
from queues.exceptions import MQError

# Values at and past each field's limits, of the right type and of wrong ones
# (as orjson reads JSON: no int subclass but bool, no str subclass).
VALUES = {
    "priority": [0, s.MAX_PRIORITY, s.MAX_PRIORITY + 1, -1, True, 1.0, "1", None],
    "delay": [None, 0, s.MAX_DELAY, s.MAX_DELAY + 1, -1, False, 2.5, "5"],
    "group": [None, "g", "é" * s.MAX_KEY_CHARS, "g" * (s.MAX_KEY_CHARS + 1), "", "a\x00b", "\n", 7, ["g"]],
    "dedup_id": [None, "d", "d" * s.MAX_KEY_CHARS, "d" * (s.MAX_KEY_CHARS + 1), "", "\x00", 1],
    "headers": [
        {},
        {"trace": "abc", "": ""},
        {"k" * s.MAX_KEY_CHARS: "v" * s.MAX_HEADER_VALUE_CHARS},
        {"k" * (s.MAX_KEY_CHARS + 1): "v"},
        {"k": "v" * (s.MAX_HEADER_VALUE_CHARS + 1)},
        {str(i): "" for i in range(s.MAX_HEADERS)},
        {str(i): "" for i in range(s.MAX_HEADERS + 1)},
        {"k": 1},
        {"k": None},
        [],
        None,
    ],
}


def _messages():
    """Each field's values alone, pairs of fields, and odd shapes."""
    for field, values in VALUES.items():
        for value in values:
            yield {"body": 1, field: value}
    for (f1, v1), (f2, v2) in itertools.combinations([(f, v) for f, vs in VALUES.items() for v in vs[:4]], 2):
        if f1 != f2:
            yield {"body": {"x": [1]}, f1: v1, f2: v2}
    yield {"body": None}
    yield {"body": {"deep": [{"a": None}]}, "priority": 3, "delay": 5, "group": "g", "dedup_id": "d", "headers": {"a": "b"}}
    yield {"priority": 1}
    yield {"body": 1, "bodyx": 1}
    yield {"body": 1, "type": "send"}
    yield "text"
    yield ["body"]
    yield None


def _validated(message):
    try:
        return s.MessageIn.model_validate(message)
    except ValidationError:
        return None


@pytest.mark.parametrize("message", list(_messages()), ids=repr)
def test_the_shortcut_takes_only_what_message_in_takes_and_makes_the_same_message(message):
    validated = _validated(message)
    if s.plainly_valid(message):
        assert validated is not None
        assert new_messages(s.Plain([message])) == new_messages([validated])
    elif validated is not None:
        # What the shortcut leaves to MessageIn is only what it cannot tell
        # cheaply; every field at its limits above is within its reach.
        pytest.fail(f"valid but not plainly valid: {message!r}")


def test_a_batch_of_plainly_valid_messages_skips_their_models():
    batch = s.BatchIn.model_validate({"messages": [{"body": i, "priority": 1} for i in range(1000)]})
    assert isinstance(batch.messages, s.Plain) and len(batch.messages) == 1000


@pytest.mark.parametrize("count", [0, 1001])
def test_a_batch_outside_its_size_limits_is_refused_by_the_shortcut_too(count):
    with pytest.raises(ValidationError) as refused:
        s.BatchIn.model_validate({"messages": [{"body": 1}] * count})
    assert refused.value.errors()[0]["type"] in {"too_short", "too_long"}


def test_one_bad_message_sends_the_batch_through_message_in_which_says_where():
    with pytest.raises(ValidationError) as refused:
        s.BatchIn.model_validate({"messages": [{"body": 1}] * 57 + [{"body": 2, "priority": True}]})
    assert refused.value.errors()[0]["loc"] == ("messages", 57, "priority")


def test_a_send_of_plainly_valid_messages_delivers_every_field(api):
    api.make_queue("jobs")
    sent = [
        {"body": {"n": 1}, "priority": 9, "headers": {"trace": "t1"}, "group": "g", "delay": None},
        {"body": [2], "priority": 0, "dedup_id": "d2"},
        {"body": "three"},
    ]
    r = api.post("queues/jobs/messages", {"messages": sent})
    assert r.status_code == 201 and [m["duplicate"] for m in r.data["messages"]] == [False] * 3
    got = {m["id"]: m for m in api.receive("jobs", max=10)}
    for answer, message in zip(r.data["messages"], sent, strict=True):
        m = got[answer["id"]]
        assert (m["body"], m["priority"], m["headers"], m["group"]) == (
            message["body"],
            message.get("priority", 0),
            message.get("headers", {}),
            message.get("group"),
        )
    again = api.post("queues/jobs/messages", {"messages": [{"body": 1, "dedup_id": "d2"}]})
    assert again.data["messages"][0]["duplicate"] is True


@pytest.mark.parametrize(
    "message, status, where",
    [
        ({"body": 1, "priority": 10}, 422, "messages.1.priority"),
        ({"body": 1, "priority": True}, 400, "messages.1.priority"),
        ({"body": 1, "group": "a\x00"}, 422, "messages.1.group"),
        ({"body": 1, "headers": {"k": 1}}, 400, "messages.1.headers.k"),
        ({"body": 1, "color": "red"}, 422, "messages.1.color"),
        ({"priority": 1}, 422, "messages.1"),  # "body" is left out of where, as the request body's name
    ],
)
def test_a_batch_with_one_bad_message_is_refused_as_message_in_refuses_it(api, message, status, where):
    api.make_queue("jobs")
    r = api.post("queues/jobs/messages", {"messages": [{"body": 0}, message]})
    assert r.status_code == status and r.data["error"]["message"].startswith(where + ":")
    assert api.receive("jobs") == []
    # The publish stream's frame is the same batch, refused the same way.
    with pytest.raises(MQError) as refused:
        parse_send(orjson.dumps({"type": "send", "id": 1, "messages": [{"body": 0}, message]}))
    assert refused.value.status == status and refused.value.message.startswith(where + ":")


def test_a_send_frame_of_plainly_valid_messages_skips_their_models():
    frame = parse_send(orjson.dumps({"type": "send", "id": "f1", "messages": [{"body": 1}, {"body": 2, "priority": 3}]}))
    assert frame.id == "f1" and isinstance(frame.messages, s.Plain)
    assert [m.priority for m in new_messages(frame.messages)] == [0, 3]
