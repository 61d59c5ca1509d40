"""Support requests in the webhook (docs/support.md, ADR 0009): `POST /api/v1/requests`, the Mini App page
under `/app/`, and its API (`GET /app/api/requests/{id}`, `POST /app/api/replies`).

Requests and replies are notifications: the admin post of an api request is a notification on the
telegram channel (to the support chat), a reply one on the channel's `replyEmailChannel` (api requests)
or on the telegram channel (to the user of a DM). Each is stored in one transaction with the thread's
row and an audit row, then put on its lane's stream; the channel's worker sends it (retries, dead
letters, status events), and the bot edits the admin post from the status event.

The Mini App's API authenticates with `Authorization: tma <initData>`: the thread names its channel,
whose row holds the key derived from the bot token (`channels.webapp_secret`); the webhook never holds
the token. Refusals, in order: 401 (no or bad initData, an unknown thread, stale data: one answer, so a
caller cannot tell a thread that does not exist from one of another bot), 403 (not one of the channel's
`adminChatIds`), 422 (the body), 409 (the thread is not answerable). Nothing is stored on a refusal.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from clarion.db import notifications as q
from clarion.db import support
from clarion.db.channels import ChannelRecord
from clarion.i18n import CATALOG, Translator, pick_language
from clarion.keys import channel_key, split_channel_key
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models import Button
from clarion.models.channel import BOT_LANGUAGES
from clarion.models.notification import TELEGRAM_TEXT_MAX, Content, ErrorAnswer
from clarion.models.support import (
    MiniAppRequest,
    ReplyBody,
    ReplyView,
    SupportRequestBody,
    SupportRequestView,
)
from clarion.telegram.webapp import InitData, InitDataRefused, check_init_data
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from clarion_webhook.api import (
    DEFAULT_MAX_ATTEMPTS,
    BodyGuard,
    BodyRule,
    Caller,
    _replayed,
    _request_digest,
    _state,
    _trace_id,
    channel_for,
    http_error,
    invalid_request,
)
from clarion_webhook.channels import ChannelCache
from clarion_webhook.errors import DATABASE_ERRORS, Refused, refused_handler
from clarion_webhook.inbox import enqueue

log = get_logger("clarion.webhook.support")

REQUESTS = counter("clarion_support_requests_total", "POST /api/v1/requests answered, by result.", ["result"])
REPLIES = counter("clarion_support_replies_total", "Mini App replies answered, by result.", ["result"])

#: Where the Mini App is served; `/app/` is its page.
MINIAPP_PREFIX = "/app"
#: The Mini App's Authorization scheme: `tma <initData>` (as the Telegram Mini Apps libraries send it).
AUTH_SCHEME = "tma"
#: The page, its script and its style sheet (package data of clarion_webhook).
_STATIC = Path(str(resources.files("clarion_webhook") / "miniapp"))


def _unavailable(exc: BaseException) -> Refused:
    return Refused(503, "unavailable", "the request cannot be stored right now; try again",
                   headers={"Retry-After": "1"})


# --- the admin post of an api request ------------------------------------------------------------------

def reply_button(channel: ChannelRecord, thread_id: int, label: str) -> Button | None:
    """The Reply button of a thread's admin post (`MiniApp.reply_link`, as the bot builds it for DMs)."""
    app, chat = channel.support.mini_app, channel.support_chat_id
    if app is None or chat is None:
        return None
    link = app.reply_link(chat, thread_id, channel.bot_username)
    if link is None:
        return None
    kind, url = link
    return Button(text=label, web_app_url=url) if kind == "web_app" else Button(text=label, url=url)


def post_text(header: str, body: str) -> str:
    """The admin post: the header, a blank line, the request (cut to fit one Telegram message)."""
    room = TELEGRAM_TEXT_MAX - len(header) - 2
    return f"{header}\n\n{body if len(body) <= room else body[:room - 1] + '…'}"


@dataclass(frozen=True)
class _RequestPlan:
    channel: ChannelRecord
    support_chat_id: int


async def _request_plan(channels: ChannelCache, channel: ChannelRecord, name: str) -> _RequestPlan:
    """The channel can take api requests: a telegram channel with a support chat and a ready email
    channel of its namespace to answer by; else 422 naming `channel`."""
    def refuse(why: str) -> Refused:
        return Refused(422, "unsupported_channel", f"channel {name} {why}", field="channel")

    if channel.type != "telegram":
        raise refuse("is not a telegram channel")
    if channel.support_chat_id is None:
        raise refuse("has no supportChatId")
    email_name = channel.support.reply_email_channel
    if email_name is None:
        raise refuse("has no support.replyEmailChannel")
    namespace = (split_channel_key(channel.key) or ("", ""))[0]
    try:
        email = await channels.get(channel_key(namespace, email_name))
    except Exception as exc:
        raise _unavailable(exc) from exc
    if email is None or email.type != "email" or not email.ready:
        raise refuse(f"answers by email channel {namespace}/{email_name}, which is not a ready email channel")
    return _RequestPlan(channel, channel.support_chat_id)


router = APIRouter()


@router.post("/requests", status_code=202, response_model=SupportRequestView,
             responses={202: {"description": "Accepted: the request and its admin post are stored, and "
                                             "the post is queued."},
                        400: {"model": ErrorAnswer, "description": "The body is not UTF-8 JSON."},
                        403: {"model": ErrorAnswer}, 413: {"model": ErrorAnswer}, 415: {"model": ErrorAnswer},
                        422: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
async def create_request(
    request: Request, body: SupportRequestBody, caller: Caller,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                  max_length=255)] = None,
    traceparent: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    """A support request (e.g. a website's contact form) for a telegram channel's support chat: posted
    there with a Reply button that opens the Mini App; the admin's answer is emailed to `email`."""
    state = _state(request)
    try:
        channel = await channel_for(state, caller, body)
        plan = await _request_plan(state.channels, channel, body.channel)
    except Refused as refusal:
        REQUESTS.labels(refusal.code).inc()
        raise
    language = body.language or channel.default_language
    t = Translator(channel.default_language)
    name = body.name or body.email
    idempotency = None
    if idempotency_key is not None:
        idempotency = q.Idempotency(idempotency_key, _request_digest(request.url.path, await request.body()))
    notification_id = uuid.uuid4()
    try:
        async with state.db.acquire() as conn, conn.transaction():
            if idempotency is not None:
                existing = await q.take_idempotency_key(conn, caller.key_id, idempotency)
                if existing is not None:
                    return _replayed(existing, idempotency)
            thread_id = await support.reserve_thread_id(conn)
            text = post_text(t("request.incoming", name=name, email=body.email), body.text)
            button = reply_button(channel, thread_id, t("support.reply_button"))
            content = Content(text=text, buttons=[[button]] if button else [])
            await support.record_api_request(
                conn, thread_id, channel.id, email=body.email, name=body.name, language=language,
                body=body.text, admin_chat_id=plan.support_chat_id, post_text=text,
                post_notification_id=notification_id)
            row, _ = await q.accept(conn, q.NewNotification(
                id=notification_id, channel_id=channel.id, lane="instant",
                recipient=str(plan.support_chat_id), content=content.to_k8s(),
                reference=support.reference("post", thread_id), api_key_id=caller.key_id,
                trace_id=_trace_id(traceparent), scheduled_for=None,
                max_attempts=DEFAULT_MAX_ATTEMPTS, support_thread_id=thread_id))
            assert row is not None
            view = SupportRequestView(id=thread_id, status="open").model_dump(mode="json", by_alias=True)
            if idempotency is not None:
                await q.remember_answer(conn, caller.key_id, idempotency.key, 202, view, None)
            await q.audit(conn, f"api-key:{caller.key_id}", "support.request_created", str(thread_id),
                          {"channel": channel.key, "notification_id": str(notification_id),
                           "language": language})
    except DATABASE_ERRORS as exc:
        REQUESTS.labels("unavailable").inc()
        raise _unavailable(exc) from exc
    await enqueue(state.redis, row)
    REQUESTS.labels("accepted").inc()
    log.info("support_request_accepted", thread_id=thread_id, channel=channel.key,
             notification_id=str(notification_id), api_key=caller.key_id, trace_id=row.trace_id)
    return JSONResponse(view, status_code=202)


def add_support_api(api: FastAPI) -> None:
    """`POST /requests` on the `/api/v1` app."""
    api.include_router(router)


# --- the Mini App ----------------------------------------------------------------------------------

@dataclass
class MiniAppState:
    """What the Mini App's handlers use; the webhook's lifespan puts it in `app.state.clarion`."""

    db: asyncpg.Pool
    redis: aioredis.Redis
    channels: ChannelCache
    max_age: float


@dataclass(frozen=True)
class _Admin:
    """An authenticated admin of the thread's channel."""

    user: InitData
    thread: support.SupportRequest
    channel: ChannelRecord


_NOT_ACCEPTED = "initData is missing, not signed by this thread's bot, or too old"


def _init_data(request: Request) -> str:
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != AUTH_SCHEME or not raw.strip():
        raise Refused(401, "unauthorized", f"send Authorization: {AUTH_SCHEME} <initData>",
                      headers={"WWW-Authenticate": AUTH_SCHEME})
    return raw.strip()


async def _admin(request: Request, thread_id: int) -> _Admin:
    """The caller, checked against the thread's channel (401, 403); see the module doc."""
    state: MiniAppState = request.app.state.clarion
    raw = _init_data(request)
    try:
        async with state.db.acquire() as conn:
            thread = await support.get_request(conn, thread_id)
        channel = None if thread is None else await state.channels.get_by_id(thread.channel_id)
    except Exception as exc:
        raise _unavailable(exc) from exc
    if thread is None or channel is None or channel.webapp_secret is None:
        raise Refused(401, "unauthorized", _NOT_ACCEPTED, headers={"WWW-Authenticate": AUTH_SCHEME})
    try:
        user = check_init_data(raw, channel.webapp_secret, max_age=state.max_age, now=datetime.now(UTC))
    except InitDataRefused as refusal:
        log.info("miniapp_refused", thread_id=thread_id, channel=channel.key, reason=refusal.reason)
        raise Refused(401, "unauthorized", _NOT_ACCEPTED, headers={"WWW-Authenticate": AUTH_SCHEME}) from None
    if user.user_id not in channel.admin_chat_ids:
        log.info("miniapp_not_admin", thread_id=thread_id, channel=channel.key, user_id=user.user_id)
        raise Refused(403, "not_admin", "only the channel's admins may answer its requests")
    return _Admin(user, thread, channel)


def _view(thread: support.SupportRequest) -> MiniAppRequest:
    return MiniAppRequest(
        id=thread.id, origin=thread.origin, name=thread.user_name, email=thread.requester_email,
        text=thread.body, language=thread.user_language, status=thread.status,
        replied_by_name=thread.replied_by_name, reply_text=thread.reply_text, last_error=thread.last_error,
        created_at=thread.created_at)


async def _reply_notification(state: MiniAppState, admin: _Admin, text: str) -> q.NewNotification:
    """The notification that carries the answer: an email to an api request's requester through the
    channel's replyEmailChannel, a Telegram message to a DM's user (as the bot's in-chat answer)."""
    thread, channel = admin.thread, admin.channel
    t = Translator(pick_language(thread.user_language, default=channel.default_language))
    common: dict[str, Any] = {
        "id": uuid.uuid4(), "lane": "instant", "reference": support.reference("reply", thread.id),
        "api_key_id": None, "trace_id": _trace_id(None), "scheduled_for": None,
        "max_attempts": DEFAULT_MAX_ATTEMPTS, "support_thread_id": thread.id}
    if thread.origin == "telegram":
        assert thread.user_chat_id is not None
        content = Content(text=t("support.answer", text=text))
        return q.NewNotification(channel_id=channel.id, recipient=str(thread.user_chat_id),
                                 content=content.to_k8s(), **common)
    email_name = channel.support.reply_email_channel
    namespace = (split_channel_key(channel.key) or ("", ""))[0]
    try:
        email = None if email_name is None else await state.channels.get(channel_key(namespace, email_name))
    except Exception as exc:
        raise _unavailable(exc) from exc
    if email is None or email.type != "email" or not email.ready:
        raise Refused(409, "no_email_channel", f"the channel answers requests by email channel {namespace}/"
                                               f"{email_name}, which is not a ready email channel")
    assert thread.requester_email is not None
    content = Content(subject=t("request.reply_subject"), text=text)
    return q.NewNotification(channel_id=email.id, recipient=thread.requester_email, content=content.to_k8s(),
                             **common)


def _not_answerable(thread: support.SupportRequest) -> Refused:
    return Refused(409, "not_answerable", f"request {thread.id} is {thread.status}: it was answered, or an "
                                          "answer is on its way")


def _page(script_url: str) -> str:
    """The page with its script tag (when the WebApp script is configured) and the catalog's texts."""
    texts = {lang: {key.removeprefix("miniapp."): CATALOG[key].get(lang, CATALOG[key]["en"])
                    for key in CATALOG if key.startswith("miniapp.")} for lang in BOT_LANGUAGES}
    tag = f'<script src="{script_url}"></script>' if script_url else ""
    data = json.dumps(texts, ensure_ascii=False).replace("<", "\\u003c")
    return ((_STATIC / "index.html").read_text().replace("<!--telegram-script-->", tag)
            .replace("/*texts*/{}", data))


def create_miniapp(script_url: str) -> FastAPI:
    """The `/app` application: the page and its API; `state.clarion` (a `MiniAppState`) is set by the
    webhook's lifespan."""
    app = FastAPI(title="Clarion Mini App", openapi_url="/api/openapi.json", docs_url=None, redoc_url=None)
    app.add_exception_handler(Refused, refused_handler)
    app.add_exception_handler(HTTPException, http_error)
    page = _page(script_url)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(script_url)) if script_url else ""
    policy = (f"default-src 'self'; script-src 'self' {origin}; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'")

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        """The Mini App page."""
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"})

    @app.get("/app.js", include_in_schema=False)
    async def script() -> FileResponse:
        return FileResponse(_STATIC / "app.js", media_type="text/javascript")

    @app.get("/app.css", include_in_schema=False)
    async def style() -> FileResponse:
        return FileResponse(_STATIC / "app.css", media_type="text/css")

    @app.get("/api/requests/{thread_id}", response_model=MiniAppRequest,
             responses={401: {"model": ErrorAnswer}, 403: {"model": ErrorAnswer}})
    async def get_request(request: Request, thread_id: int) -> MiniAppRequest:
        """The request, for one of its channel's admins."""
        return _view((await _admin(request, thread_id)).thread)

    @app.post("/api/replies", status_code=202, response_model=ReplyView,
              responses={code: {"model": ErrorAnswer} for code in (401, 403, 409, 422, 503)})
    async def reply(request: Request) -> JSONResponse:
        """Queue an admin's answer: 202 once it is stored and on its stream."""
        try:
            return await _reply(request)
        except Refused as refusal:
            REPLIES.labels(refusal.code).inc()
            raise

    async def _reply(request: Request) -> JSONResponse:
        state: MiniAppState = request.app.state.clarion
        try:
            document = json.loads(await request.body())
        except ValueError:
            raise Refused(422, "invalid_request", "the body is not JSON") from None
        thread_id = document.get("thread") if isinstance(document, dict) else None
        if not isinstance(thread_id, int) or isinstance(thread_id, bool) or not 1 <= thread_id < 2**63:
            raise Refused(422, "invalid_request", "thread: the request's id (a positive integer)",
                          field="thread")
        admin = await _admin(request, thread_id)
        try:
            body = ReplyBody.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise Refused(422, "invalid_request", f"{field}: {first['msg']}", field=field) from None
        if admin.thread.status not in support.ANSWERABLE:
            raise _not_answerable(admin.thread)
        new = await _reply_notification(state, admin, body.text)
        user = admin.user
        try:
            async with state.db.acquire() as conn, conn.transaction():
                started = await support.start_reply(conn, thread_id, admin_id=user.user_id,
                                                    admin_name=user.display_name, text=body.text,
                                                    notification_id=new.id)
                if started is None:
                    raise _not_answerable(admin.thread)
                row, _ = await q.accept(conn, new)
                assert row is not None
                await q.audit(conn, f"telegram:{user.user_id}", "support.reply_queued", str(thread_id),
                              {"channel": admin.channel.key, "notification_id": str(new.id),
                               "origin": admin.thread.origin, "admin_name": user.display_name})
        except DATABASE_ERRORS as exc:
            raise _unavailable(exc) from exc
        await enqueue(state.redis, row)
        REPLIES.labels("accepted").inc()
        log.info("support_reply_queued", thread_id=thread_id, channel=admin.channel.key,
                 notification_id=str(new.id), admin_id=user.user_id, origin=admin.thread.origin)
        view = ReplyView(thread=thread_id, status="replying", notification_id=str(new.id))
        return JSONResponse(view.model_dump(mode="json", by_alias=True), status_code=202)

    return app


def mount_miniapp(app: FastAPI, miniapp: FastAPI) -> None:
    """The Mini App under `/app` (POST bodies: JSON of at most 64 KiB)."""
    app.mount(MINIAPP_PREFIX, BodyGuard(miniapp, default=BodyRule(limit=64 * 1024)))
