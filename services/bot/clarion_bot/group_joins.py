"""Managed groups' join requests and welcomes: deciding, telling Telegram, the card, the sweep.

The handlers (`handlers/join_requests.py`) and the sweep call these; the queries are `clarion.db.groups`.
A decision is stored first (compare-and-set: the first decider wins), then applied: Telegram approves or
declines, then `mark_applied` writes `applied_at`, the audit row and the member row together. Applying
again is harmless (Telegram's "request missing" / "already a participant" count as done), so a handler
cut short, or the sweep after it, finishes the job. The welcome follows an approval; its deletion is a row
the sweep acts on when due.

The sweep runs in every replica beside the update consumer; every `sweep_seconds` one replica (a Redis
key held for the period, `clarion.streams.groups_sweep_key`) declines the questions past their deadline,
applies decisions left unapplied, and deletes the welcomes due. "Due" is Postgres's `now()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiogram.utils.text_decorations import markdown_decoration
from clarion.db import groups
from clarion.db.channels import ChannelRecord
from clarion.db.groups import Decision, GroupRecord, JoinRequest
from clarion.i18n import Translator, pick_language
from clarion.logging import get_logger
from clarion.metrics import counter
from clarion.models.group import JoinRequests
from clarion.streams import groups_sweep_key

from clarion_bot.context import ChannelHolder

log = get_logger("clarion.bot")

JOIN_DECISIONS = counter(
    "clarion_bot_join_requests_total",
    "Join requests of managed groups by policy and outcome (approved, declined, asked: the question "
    "sent, carded: the card posted for admins).", ["policy", "outcome"])
WELCOMES = counter("clarion_bot_group_welcomes_total",
                   "Welcome messages by result (sent, deleted, gone: already deleted, failed).", ["result"])

#: Telegram's answers that mean the request is no longer there to decide: decided already (by us before a
#: restart, or by an admin in Telegram's own interface), or withdrawn.
_DONE_ALREADY = ("HIDE_REQUESTER_MISSING", "USER_ALREADY_PARTICIPANT")
#: A decision older than this that Telegram was not told of is the sweep's to apply.
UNAPPLIED_AFTER_SECONDS = 30.0


class JoinCard(CallbackData, prefix="jr"):
    """A manual card's button: the group row, the user, approve or not."""

    group: int
    user: int
    approve: bool


class GroupCache:
    """Managed groups by (channel, chat), each remembered `ttl` seconds (absences too)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[int, int], tuple[float, GroupRecord | None]] = {}

    async def get(self, db: Any, channel_id: int, chat_id: int) -> GroupRecord | None:
        key = (channel_id, chat_id)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        group = await groups.get_group(db, channel_id, chat_id)
        self._entries[key] = (now + self.ttl, group)
        return group


@dataclass(frozen=True)
class Requester:
    """Who asked to join, as the update tells."""

    user_id: int
    user_chat_id: int
    first_name: str
    username: str | None
    language: str | None


def card_keyboard(group: GroupRecord, user_id: int, staff: Translator) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text=staff("groups.approve_button"),
                             callback_data=JoinCard(group=group.id, user=user_id, approve=True).pack()),
        InlineKeyboardButton(text=staff("groups.decline_button"),
                             callback_data=JoinCard(group=group.id, user=user_id, approve=False).pack()),
    ]])


def join_policy(group: GroupRecord) -> JoinRequests:
    """The join handling of the group's current phase (Monitoring's stricter one when the spec sets it)."""
    return group.spec.join_requests_in(group.phase)


def card_chat(group: GroupRecord, channel: ChannelRecord) -> int | None:
    """Where policy manual's cards go: the group's adminChatId, else the channel's supportChatId."""
    return join_policy(group).admin_chat_id or channel.support_chat_id


def rules_verdict(group: GroupRecord, requester: Requester) -> str | None:
    """The reason policy rules declines the requester for, or None when the checks pass."""
    rules = join_policy(group).rules
    if rules is None:
        return None
    if rules.require_username and not requester.username:
        return "no username"
    if rules.allowed_languages:
        code = (requester.language or "").lower()
        allowed = {language.lower() for language in rules.allowed_languages}
        if code not in allowed and code.split("-")[0] not in allowed:
            return f"language {requester.language or 'unknown'} not allowed"
    return None


def welcome_text(group: GroupRecord, first_name: str, language: str | None) -> tuple[str, str | None] | None:
    """The welcome (text, parse mode) for a member, {name} filled in (escaped for the parse mode)."""
    welcome = group.spec.welcome_message
    if welcome is None:
        return None
    mode = None if welcome.parse_mode == "None" else welcome.parse_mode
    name = first_name
    if mode == "HTML":
        name = html.escape(first_name)
    elif mode == "MarkdownV2":
        name = markdown_decoration.quote(first_name)
    return welcome.text_for(language).replace("{name}", name), mode


async def send_welcome(bot: Bot, db: Any, group: GroupRecord, first_name: str, language: str | None) -> None:
    """Post the group's welcome (if it has one) and record when to delete it."""
    made = welcome_text(group, first_name, language)
    if made is None:
        return
    text, mode = made
    try:
        sent = await bot.send_message(group.chat_id, text, parse_mode=mode)
    except TelegramBadRequest as exc:  # the text does not parse, the bot may not post: nothing to retry
        WELCOMES.labels("failed").inc()
        log.warning("group_welcome_failed", group=group.id, error=exc.message)
        return
    WELCOMES.labels("sent").inc()
    seconds = group.spec.welcome_message.delete_after_seconds if group.spec.welcome_message else None
    if seconds is not None:
        await groups.record_welcome(db, group.id, group.chat_id, sent.message_id, seconds)


async def decide(bot: Bot, db: Any, channel: ChannelRecord, group: GroupRecord, user_id: int,
                 decision: Decision, *, actor: str | None = None, actor_name: str | None = None,
                 reason: str) -> JoinRequest | None:
    """Decide the request (if nobody did yet) and apply it; the request as decided, or None if it was
    decided already (by someone else)."""
    request = await groups.decide(db, group.id, user_id, decision, actor=actor or f"bot:{channel.key}",
                                  actor_name=actor_name, reason=reason)
    if request is None:
        return None
    await apply(bot, db, channel, group, request)
    return request


async def apply(bot: Bot, db: Any, channel: ChannelRecord, group: GroupRecord, request: JoinRequest) -> None:
    """Tell Telegram a stored decision, record it (audit, member), welcome or tell the user, edit the card.

    Telegram unreachable raises: the decision stays unapplied, for the handler's retry or the sweep.
    """
    approved = request.status == "approved"
    try:
        if approved:
            await bot.approve_chat_join_request(group.chat_id, request.user_id)
        else:
            await bot.decline_chat_join_request(group.chat_id, request.user_id)
    except TelegramBadRequest as exc:
        if not any(marker in exc.message for marker in _DONE_ALREADY):
            raise
        log.info("join_request_gone", group=group.id, error=exc.message)
    policy = join_policy(group).policy
    if not await groups.mark_applied(db, request, channel_key=channel.key, policy=policy):
        return  # another handler applied it first
    JOIN_DECISIONS.labels(policy, request.status).inc()
    log.info("join_request_decided", group=group.id, decision=request.status, reason=request.reason,
             by=request.decided_by)
    if approved:
        await send_welcome(bot, db, group, request.first_name, request.language)
    else:
        rules = join_policy(group).rules
        if rules is not None and rules.decline_message and policy == "rules":
            with contextlib.suppress(TelegramForbiddenError, TelegramBadRequest):  # the DM window closed
                await bot.send_message(request.user_chat_id, rules.decline_message)
    await show_on_card(bot, channel, request)


async def show_on_card(bot: Bot, channel: ChannelRecord, request: JoinRequest) -> None:
    """Edit the manual card (if any) with the decision and who made it; no buttons left."""
    if request.card_chat_id is None or request.card_message_id is None or request.card_text is None:
        return
    staff = Translator(channel.default_language)
    who = request.decided_by_name or request.decided_by or ""
    line = staff("groups.approved_by" if request.status == "approved" else "groups.declined_by", admin=who)
    with contextlib.suppress(TelegramBadRequest, TelegramForbiddenError):  # the card was deleted meanwhile
        await bot.edit_message_text(text=f"{line}\n\n{request.card_text}", chat_id=request.card_chat_id,
                                    message_id=request.card_message_id, reply_markup=None)


def question_key(bot: Bot, user_chat_id: int, user_id: int) -> StorageKey:
    """The FSM key of the requester's private chat (the state routes their answer to the join handler)."""
    return StorageKey(bot_id=bot.id, chat_id=user_chat_id, user_id=user_id)


def user_translator(channel: ChannelRecord, request: JoinRequest) -> Translator:
    return Translator(pick_language(request.language, default=channel.default_language))


class GroupSweep:
    """Deadlines, unapplied decisions and welcome deletions, from Postgres, by one replica per period."""

    def __init__(self, *, redis: aioredis.Redis, db: Any, bot: Bot, holder: ChannelHolder,
                 storage: BaseStorage, replica_id: str, sweep_seconds: float = 5.0) -> None:
        self.redis = redis
        self.db = db
        self.bot = bot
        self.holder = holder
        self.storage = storage
        self.replica_id = replica_id
        self.sweep_seconds = sweep_seconds

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self.sweep()
                failures = 0
                wait = self.sweep_seconds
            except Exception as exc:  # Postgres, Redis or Telegram away: the rows wait for the next round
                failures += 1
                log.warning("group_sweep_failed", error=repr(exc))
                wait = min(self.sweep_seconds * 2 ** failures, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _hold_period(self) -> bool:
        key = groups_sweep_key(self.holder.current.key)
        period_ms = max(1, int(self.sweep_seconds * 900))
        if await self.redis.set(key, self.replica_id, nx=True, px=period_ms):
            return True
        if await self.redis.get(key) != self.replica_id.encode():
            return False  # another replica's period
        await self.redis.pexpire(key, period_ms)
        return True

    async def sweep(self) -> None:
        if not await self._hold_period():
            return
        channel = self.holder.current
        for request in await groups.expired_questions(self.db, channel.id):
            group = await groups.get_group_by_id(self.db, request.group_id)
            if group is None:
                continue
            await self.storage.set_state(question_key(self.bot, request.user_chat_id, request.user_id), None)
            await decide(self.bot, self.db, channel, group, request.user_id, "declined",
                         reason="no answer in time")
        for request in await groups.decisions_unapplied(self.db, channel.id, UNAPPLIED_AFTER_SECONDS):
            group = await groups.get_group_by_id(self.db, request.group_id)
            if group is not None:
                await apply(self.bot, self.db, channel, group, request)
        for chat_id, message_id in await groups.welcomes_due(self.db, channel.id):
            try:
                await self.bot.delete_message(chat_id, message_id)
                WELCOMES.labels("deleted").inc()
            except (TelegramBadRequest, TelegramForbiddenError) as exc:  # gone already, or no right to
                WELCOMES.labels("gone").inc()
                log.info("group_welcome_not_deleted", chat_id=chat_id, error=exc.message)
            await groups.forget_welcome(self.db, chat_id, message_id)
