"""A push-service stand-in: an HTTP server on loopback that behaves like a Web Push service (RFC 8030
message delivery, RFC 8291 message encryption, RFC 8292 VAPID) for tests and local runs (docs/emulator.md,
"Push service").

    service = PushService()
    await service.start()
    browser = service.subscribe()            # a browser-like subscription: endpoint, p256dh, auth
    browser.answer(410)                      # what the next sends to it get (default 201)
    ...                                      # send to browser.endpoint
    service.received(browser)                # the decrypted messages it took

For each `POST /push/<token>` it checks, in order, as a push service does: the subscription exists
(else the `unknown_status`, 404 or 410); the `Authorization: vapid t=<JWT>,k=<key>` header (the ES256
signature against `k`, `aud` = this server's origin, `exp` in the future and at most 24 hours ahead,
a `sub`; else 401/403); a `TTL` header (else 400); `Content-Encoding: aes128gcm` (else 415); a body of
at most 4096 bytes (else 413). Then it answers what the test configured for that subscription (201
with a Location by default; 404, 410, 413, 429 with Retry-After, 5xx), and records the message,
decrypted with the subscription's private key and auth secret, only when it answers 201.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from clarion import webpush
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from clarion_dev.net import free_port


@dataclass(frozen=True)
class PushMessage:
    """A message the stand-in accepted: the decrypted payload and the headers that came with it."""

    subscription: str
    payload: bytes
    ttl: int
    urgency: str | None
    vapid_subject: str
    vapid_key: str

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers a send to a subscription: a status, and Retry-After for a 429."""

    status: int
    retry_after: int | None = None


@dataclass
class Browser:
    """A subscription as a browser holds it: the private key and auth secret stay here, the endpoint
    and public keys are what the browser hands to the application (`to_json`)."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    answers: deque[Answer] = field(default_factory=deque)
    default: Answer = field(default_factory=lambda: Answer(201))

    @property
    def p256dh(self) -> str:
        return webpush.b64url_encode(webpush.public_point(self.private_key.public_key()))

    @property
    def auth_secret(self) -> str:
        return webpush.b64url_encode(self.auth)

    def to_json(self) -> dict[str, Any]:
        """PushSubscription.toJSON(): what `POST /api/v1/push-subscriptions` takes as `subscription`."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": self.p256dh, "auth": self.auth_secret}}

    def answer(self, status: int, *, retry_after: int | None = None, times: int | None = None) -> None:
        """Answer the next `times` sends with `status` (every send from now on when `times` is None)."""
        if times is None:
            self.answers.clear()
            self.default = Answer(status, retry_after)
        else:
            self.answers.extend(Answer(status, retry_after) for _ in range(times))

    def next_answer(self) -> Answer:
        return self.answers.popleft() if self.answers else self.default


class PushService:
    """The stand-in server (see the module docstring). `unknown_status`: the answer for an endpoint it
    does not know (a real service says 404 or 410)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 unknown_status: int = 410, tls: tuple[Path, Path] | None = None) -> None:
        self.host, self.port = host, port or free_port()
        self.unknown_status = unknown_status
        self.tls = tls  # (certificate, key): serve https, as real push services (and our API) require
        self.browsers: dict[str, Browser] = {}
        self.messages: list[PushMessage] = []
        self.refusals: list[tuple[str, int, str]] = []  # (token, status, why) of every non-201 answer
        self.attempts: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def subscribe(self) -> Browser:
        """A new subscription, as pushManager.subscribe() makes one."""
        token = secrets.token_urlsafe(24)
        browser = Browser(token, f"{self.origin}/push/{token}", ec.generate_private_key(ec.SECP256R1()),
                          secrets.token_bytes(16))
        self.browsers[token] = browser
        return browser

    def unsubscribe(self, browser: Browser) -> None:
        """The browser dropped the subscription: sends to it now get `unknown_status`."""
        self.browsers.pop(browser.token, None)

    def received(self, browser: Browser | None = None) -> list[PushMessage]:
        return [m for m in self.messages if browser is None or m.subscription == browser.token]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{token}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _refuse(self, token: str, status: int, why: str, **headers: str) -> web.Response:
        self.refusals.append((token, status, why))
        return web.json_response({"code": status, "error": why}, status=status, headers=headers)

    async def _push(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.attempts[token] = self.attempts.get(token, 0) + 1
        browser = self.browsers.get(token)
        if browser is None:
            return self._refuse(token, self.unknown_status, "no such subscription")
        claims = self._vapid(token, request.headers.get("Authorization", ""))
        if isinstance(claims, web.Response):
            return claims
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return self._refuse(token, 400, "a TTL header (seconds) is required")
        if request.headers.get("Content-Encoding", "").lower() != webpush.CONTENT_ENCODING:
            return self._refuse(token, 415, "Content-Encoding must be aes128gcm")
        body = await request.read()
        if len(body) > webpush.MAX_ENCRYPTED_BYTES:
            return self._refuse(token, 413, f"{len(body)} bytes: more than {webpush.MAX_ENCRYPTED_BYTES}")
        try:
            payload = webpush.decrypt(body, browser.private_key, browser.auth)
        except Exception as exc:  # http_ece raises several kinds; any of them: undecryptable
            return self._refuse(token, 400, f"the payload does not decrypt: {exc!r}")
        answer = browser.next_answer()
        if answer.status != 201:
            headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
            return self._refuse(token, answer.status, "configured by the test", **headers)
        subject, key = claims
        urgency = request.headers.get("Urgency")
        self.messages.append(PushMessage(token, payload, int(ttl), urgency, subject, key))
        location = f"{self.origin}/message/{secrets.token_urlsafe(8)}"
        return web.Response(status=201, headers={"Location": location})

    def _vapid(self, token: str, header: str) -> tuple[str, str] | web.Response:
        """(sub, k) of a valid VAPID Authorization header, else the refusal (401 malformed or unsigned,
        403 wrong audience or expiry)."""
        scheme, _, rest = header.partition(" ")
        parts = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
        if scheme.lower() != "vapid" or "t" not in parts or "k" not in parts:
            return self._refuse(token, 401, "Authorization must be: vapid t=<JWT>,k=<public key>")
        try:
            webpush.p256_public_key(parts["k"])
            signed = Vapid02.verify(header)
            body = json.loads(webpush.b64url_decode(parts["t"].split(".")[1]))
        except (webpush.KeyProblem, ValueError, IndexError, AssertionError) as exc:
            return self._refuse(token, 401, f"the VAPID token cannot be read: {exc!r}")
        if not signed:
            return self._refuse(token, 401, "the VAPID token's signature does not verify against k")
        if body.get("aud") != self.origin:
            return self._refuse(token, 403, f"aud {body.get('aud')!r} is not {self.origin}")
        exp, now = body.get("exp"), time.time()
        if not isinstance(exp, int) or exp <= now or exp > now + webpush.MAX_VAPID_SECONDS:
            return self._refuse(token, 403, f"exp {exp!r} is not in the next 24 hours")
        if not isinstance(body.get("sub"), str):
            return self._refuse(token, 403, "the VAPID token has no sub")
        return str(body["sub"]), parts["k"]
