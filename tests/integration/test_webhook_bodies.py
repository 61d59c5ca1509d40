"""No body makes the webhook fail: any bytes posted get 2xx or 4xx, and only 2xx bodies are stored.

Property-based (hypothesis) over raw bodies sent to the real webhook on uvicorn over loopback, with
real Postgres and Redis. A generated well-formed update must be accepted, a body that is not an update
refused; whatever is stored reads back the way the bot reads it (`UpdateEnvelope.from_fields`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from clarion.streams import DEFAULT_PARTITIONS, UpdateEnvelope, updates_stream
from clarion_dev.testing.servers import serve_asgi
from clarion_webhook.app import create_app
from clarion_webhook.settings import WebhookSettings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.integration.test_webhook_ingress import CHANNEL, HEADERS, insert_channel

pytestmark = pytest.mark.integration

URL = f"/tg/webhook/{CHANNEL}"

# JSON values that json.dumps writes and every JSON reader reads back alike.
_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(exclude_categories=["Cs"]), max_size=20))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
_update_ids = st.integers(0, 2**31 - 1)


@st.composite
def well_formed_updates(draw: st.DrawFn) -> bytes:
    """An object with a valid update_id and any (shallow) JSON beside it, written in any JSON spacing."""
    update: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "update_id"),
                                                  _json, max_size=4))
    update["update_id"] = draw(_update_ids)
    ascii_only = draw(st.booleans())
    indent = draw(st.none() | st.integers(0, 2))
    return json.dumps(update, ensure_ascii=ascii_only, indent=indent).encode()


def _nested(depth: int, brackets: tuple[bytes, bytes]) -> bytes:
    opener, closer = brackets
    return b'{"update_id": 1, "message": ' + opener * depth + closer * depth + b"}"


#: Deeper than the webhook's limit (64) up to far past Python's recursion limit.
_deep = st.builds(_nested, st.integers(64, 20_000), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))

_big_numbers = st.sampled_from([b"1e999", b"-1e999", b"1e-999", b"1E+400", b"-0", b"0.0e0"]) | st.builds(
    lambda digits, sign: sign + b"9" * digits, st.integers(1, 10_000), st.sampled_from([b"", b"-"]))


@st.composite
def odd_numbers(draw: st.DrawFn) -> bytes:
    number = draw(_big_numbers)
    if draw(st.booleans()):
        return b'{"update_id": ' + number + b"}"
    return b'{"update_id": ' + str(draw(_update_ids)).encode() + b', "x": ' + number + b"}"


@st.composite
def odd_encodings(draw: st.DrawFn) -> bytes:
    text = json.dumps({"update_id": draw(_update_ids), "message": {"text": draw(st.text(max_size=10))}},
                      ensure_ascii=False)
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1",
                                     "cp1251", "utf-7"]))
    return text.encode(encoding, errors="replace")


_surrogates = st.sampled_from([b'"\\ud800"', b'"\\udfff"', b'"\\ud83d"', b'"a\\ud800b"',
                               b'"\\ud800\\ud800"', b'"\xed\xa0\x80"', b'"\xed\xbf\xbf"',
                               b'"\xc0\x80"', b'"\xff"', b'"\xf8\x88\x80"',
                               b'"\x00"', b'"\\u0000"', b'"\\ud83d\\ude00"'])
_wrong_ids = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=5), st.lists(st.integers()),
                       st.integers(max_value=-1), st.integers(min_value=2**63),
                       st.dictionaries(st.text(), st.none()))


@st.composite
def odd_strings(draw: st.DrawFn) -> bytes:
    return b'{"update_id": ' + str(draw(_update_ids)).encode() + b', "text": ' + draw(_surrogates) + b"}"


@st.composite
def wrong_update_ids(draw: st.DrawFn) -> bytes:
    return json.dumps({"update_id": draw(_wrong_ids), "message": {}}).encode()


def _not_objects(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def mutated_updates(draw: st.DrawFn) -> bytes:
    """A well-formed update with bytes inserted, deleted or replaced somewhere."""
    body = bytearray(draw(well_formed_updates()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.binary(min_size=1, max_size=4))
        if how == "insert":
            body[at:at] = chunk
        elif how == "delete":
            del body[at:at + len(chunk)]
        else:
            body[at:at + len(chunk)] = chunk
    return bytes(body)


#: Each strategy with what the webhook must answer: "2xx", "4xx" or "any" (either, never 5xx).
BODIES = st.one_of(
    st.tuples(well_formed_updates(), st.just("2xx")),
    st.tuples(_deep, st.just("4xx")),
    st.tuples(odd_numbers(), st.just("any")),
    st.tuples(odd_encodings(), st.just("any")),
    st.tuples(odd_strings(), st.just("any")),
    st.tuples(wrong_update_ids(), st.just("4xx")),
    st.tuples(st.builds(_not_objects, _json.filter(lambda v: not isinstance(v, dict))), st.just("4xx")),
    st.tuples(mutated_updates(), st.just("any")),
    st.tuples(st.binary(max_size=2048), st.just("any")),
)


@dataclass
class Ledger:
    """Across the examples of one run: the first accepted body of each update_id."""

    first_accepted: dict[int, bytes] = field(default_factory=dict)


@pytest.fixture
async def webhook_url(database_url: str, redis_url: str, db: Any) -> AsyncIterator[str]:
    await insert_channel(db)
    app = create_app(WebhookSettings(database_url=database_url, redis_url=redis_url))
    async with serve_asgi(app) as url:
        yield url


async def stream_entries(redis: Any) -> list[bytes]:
    entries = []
    for partition in range(DEFAULT_PARTITIONS):
        entries += [fields[b"e"] for _, fields in await redis.xrange(updates_stream(CHANNEL, partition))]
    return entries


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=BODIES)
async def test_no_body_gets_a_5xx_and_only_accepted_bodies_are_stored(
        webhook_url: str, redis: Any, case: tuple[bytes, str], ledger: Ledger) -> None:
    body, expected = case
    async with httpx.AsyncClient(base_url=webhook_url) as client:
        response = await client.post(URL, content=body, headers=HEADERS)
    status = response.status_code
    event(f"{expected}: {status}")
    assert 200 <= status < 300 or 400 <= status < 500, (status, body[:200])
    if expected == "2xx":
        assert status == 200, (response.text, body[:200])
    elif expected == "4xx":
        assert 400 <= status < 500, (status, body[:200])

    if status == 200:  # stored now, or a duplicate of an update_id stored before
        ledger.first_accepted.setdefault(json.loads(body)["update_id"], body)
    entries = await stream_entries(redis)
    assert len(entries) == len(ledger.first_accepted), "a refused body was stored, or an accepted one was not"
    for raw in entries:  # each entry is the bot-readable envelope of the first body accepted for its id
        envelope = UpdateEnvelope.from_fields({b"e": raw})
        assert raw.endswith(b'"update":' + ledger.first_accepted[envelope.update_id] + b"}")


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()
