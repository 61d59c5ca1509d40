"""The push-service stand-in (`clarion_dev.push_service`) refuses what a real push service refuses: a
VAPID token that does not verify, is for another origin or is expired or too long-lived, a missing TTL,
another content coding, an unknown subscription; and decrypts what it accepts."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from clarion import webpush
from clarion_dev.push_service import Browser, PushService

pytestmark = pytest.mark.integration

SUBJECT = "mailto:ops@shop.example"
KEY = webpush.vapid_key("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")


def _request(browser: Browser, payload: dict[str, Any], **override: Any) -> tuple[bytes, dict[str, str]]:
    keys = webpush.subscription_keys(browser.p256dh, browser.auth_secret)
    body = webpush.encrypt(json.dumps(payload).encode(), keys)
    headers = {"TTL": "60", "Content-Encoding": "aes128gcm", "Urgency": "low",
               "Authorization": KEY.authorization(browser.endpoint, SUBJECT)}
    headers.update(override)
    return body, {k: v for k, v in headers.items() if v is not None}


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_a_well_formed_message_is_accepted_and_decrypted(push_service: PushService) -> None:
    browser = push_service.subscribe()
    status, headers = await _post(browser.endpoint, *_request(browser, {"title": "hi"}))
    assert status == 201 and headers["Location"].startswith(push_service.origin)
    [message] = push_service.received(browser)
    assert (message.json(), message.ttl, message.urgency) == ({"title": "hi"}, 60, "low")
    assert (message.vapid_subject, message.vapid_key) == (SUBJECT, KEY.public_key)


async def test_bad_requests_are_refused_like_a_push_service_and_nothing_is_recorded(
    push_service: PushService,
) -> None:
    browser = push_service.subscribe()
    other = webpush.vapid_key("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
    token = KEY.authorization(browser.endpoint, SUBJECT)
    expired = KEY.authorization(browser.endpoint, SUBJECT, now=time.time() - 13 * 3600)
    cases: dict[str, tuple[dict[str, Any], int]] = {
        "no Authorization": ({"Authorization": None}, 401),
        "k of another key": ({"Authorization": token.rsplit("k=", 1)[0] + "k=" + other.public_key}, 401),
        "aud of another origin": (
            {"Authorization": KEY.authorization("https://elsewhere.example/x", SUBJECT)}, 403),
        "expired": ({"Authorization": expired}, 403),
        "no TTL": ({"TTL": None}, 400),
        "aesgcm": ({"Content-Encoding": "aesgcm"}, 415),
    }
    for why, (override, wanted) in cases.items():
        status, _ = await _post(browser.endpoint, *_request(browser, {"title": why}, **override))
        assert status == wanted, why
    body, headers = _request(push_service.subscribe(), {"title": "encrypted for another browser"})
    assert (await _post(browser.endpoint, body, headers))[0] == 400  # it does not decrypt
    assert push_service.received() == []


async def test_a_token_valid_longer_than_24_hours_is_refused(push_service: PushService) -> None:
    browser = push_service.subscribe()
    claims = {"aud": push_service.origin, "exp": int(time.time()) + 25 * 3600, "sub": SUBJECT}
    header = KEY.vapid.sign(claims)
    status, _ = await _post(browser.endpoint, *_request(browser, {}, Authorization=header["Authorization"]))
    assert status == 403


@pytest.mark.push_service(unknown_status=404)
async def test_configured_answers_and_unknown_subscriptions(push_service: PushService) -> None:
    browser = push_service.subscribe()
    browser.answer(429, retry_after=7, times=1)
    browser.answer(503, times=1)
    first = await _post(browser.endpoint, *_request(browser, {"n": 1}))
    second = await _post(browser.endpoint, *_request(browser, {"n": 2}))
    third = await _post(browser.endpoint, *_request(browser, {"n": 3}))
    assert (first[0], first[1]["Retry-After"]) == (429, "7")
    assert (second[0], third[0]) == (503, 201)
    assert [m.json() for m in push_service.received(browser)] == [{"n": 3}]
    push_service.unsubscribe(browser)
    assert (await _post(browser.endpoint, *_request(browser, {"n": 4})))[0] == 404
