"""The webhook's pure parts: which chat orders an update, which bodies are updates, envelope bytes."""

from __future__ import annotations

from typing import Any

import pytest
from clarion.streams import UpdateEnvelope, update_envelope_fields
from clarion_webhook.app import _Malformed, parse_update
from clarion_webhook.ingest import update_chat_id

pytestmark = pytest.mark.unit

USER = {"id": 42, "is_bot": False, "first_name": "U"}


@pytest.mark.parametrize(("update", "expected"), [
    ({"update_id": 1, "message": {"chat": {"id": -5}, "from": USER}}, -5),
    ({"update_id": 1, "edited_message": {"chat": {"id": 7}}}, 7),
    ({"update_id": 1, "channel_post": {"chat": {"id": -1001}}}, -1001),
    ({"update_id": 1, "callback_query": {"from": USER, "message": {"chat": {"id": -9}}}}, -9),
    ({"update_id": 1, "callback_query": {"from": USER, "inline_message_id": "x"}}, 42),
    ({"update_id": 1, "my_chat_member": {"chat": {"id": 42}, "from": USER}}, 42),
    ({"update_id": 1, "chat_member": {"chat": {"id": -3}, "from": USER}}, -3),
    ({"update_id": 1, "chat_join_request": {"chat": {"id": -4}, "from": USER}}, -4),
    ({"update_id": 1, "inline_query": {"from": USER, "query": ""}}, 42),
    ({"update_id": 1, "poll_answer": {"poll_id": "p", "user": USER}}, 42),
    ({"update_id": 1, "poll": {"id": "p"}}, None),
    ({"update_id": 1, "message": {"chat": {"id": True}}}, None),
    ({"update_id": 1}, None),
])
def test_updates_are_ordered_by_their_chat_else_their_user(update: dict[str, Any],
                                                           expected: int | None) -> None:
    assert update_chat_id(update) == expected


@pytest.mark.parametrize("body", [b"", b"nope", b"[]", b"{}", b'{"update_id": "1"}', b'{"update_id": false}',
                                  b'{"update_id": -2}', b'{"update_id": Infinity}', b"\xef\xbb\xbf{}",
                                  b"\xff",
                                  b'{"update_id": 1, "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
                                  b'{"update_id": 1, "x": ' + b"[" * 64 + b"]" * 64 + b"}",
                                  b'{"update_id": 1, "x": ' + b"9" * 5000 + b"}",
                                  b'{"update_id": 1' + b"0" * 5000 + b"}",
                                  b'{"update_id": 9223372036854775808}',
                                  b'{"update_id": 1, "x": "\\ud800"}',
                                  b'{"update_id": 1, "x": "\xed\xa0\x80"}',
                                  b'\xef\xbb\xbf{"update_id": 1}',
                                  '{"update_id": 1}'.encode("utf-16"),
                                  b'{"update_id": 1}, "update": {}',
                                  b'{"update_id": 1, "x": "\x00"}'],
                         ids=["empty", "text", "array", "object", "string-id", "bool-id", "negative-id",
                              "infinity", "bom-object", "not-utf8", "nested-10000", "nested-65",
                              "5000-digits", "5000-digit-id", "id-past-int64", "lone-surrogate-escape",
                              "utf8-surrogate", "bom", "utf16", "trailing-json", "control-char"])
def test_bodies_that_are_not_updates_are_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(_Malformed) as refused:
        parse_update(body)
    assert str(refused.value)


def test_envelope_built_from_the_raw_body_reads_back_as_the_update() -> None:
    body = '{"update_id": 9, "message": {"text": "Привет \\"quoted\\"", "chat": {"id": 1}}}'.encode()
    update_id, update = parse_update(body)
    fields = update_envelope_fields("ns.bot", update_id, 1, 1_700_000_000.125, "abc", body)
    envelope = UpdateEnvelope.from_fields({k.encode(): v for k, v in fields.items()})
    assert envelope.update == update
    assert (envelope.channel, envelope.update_id, envelope.chat_id) == ("ns.bot", 9, 1)
    assert envelope.trace_id == "abc"


@pytest.mark.parametrize("body", [
    b'{"update_id": 1, "x": ' + b"[" * 63 + b"]" * 63 + b"}",
    b'{"update_id": 9223372036854775807, "x": 1e999, "y": -1e999, "z": 1e-999}',
    b'{"update_id": 1, "x": ' + b"9" * 4000 + b"}",
    b'{"update_id": 1, "x": "\\ud83d\\ude00 \xf0\x9f\x98\x80", "x": 2}',
    b' \t\r\n{"update_id": 0}\n',
], ids=["nested-64", "extreme-numbers", "4000-digits", "surrogate-pair-and-duplicate-key", "whitespace"])
def test_every_accepted_body_reads_back_from_its_envelope(body: bytes) -> None:
    update_id, update = parse_update(body)
    fields = update_envelope_fields("ns.bot", update_id, None, 1.0, "t", body)
    envelope = UpdateEnvelope.from_fields({k.encode(): v for k, v in fields.items()})
    assert envelope.update_id == update_id
    assert envelope.update == update
