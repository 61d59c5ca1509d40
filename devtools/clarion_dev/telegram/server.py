"""The Telegram Bot API emulator: an aiohttp server plus the world it serves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import random
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal
from urllib.parse import parse_qsl

import aiohttp

from clarion_dev.telegram import http, methods
from clarion_dev.telegram.control import routes
from clarion_dev.telegram.faults import STATUS_TEXT, FaultConfig, Faults, LatencyModel
from clarion_dev.telegram.limits import BotLimiter, RateLimits
from clarion_dev.telegram.markup import command_entities
from clarion_dev.telegram.webhook import WebhookRetry, deliver_loop
from clarion_dev.telegram.world import (
    ADMIN_RIGHTS,
    ApiError,
    BotInfo,
    BotState,
    Group,
    InviteLink,
    MethodStats,
    RetryAfterEvent,
    SentMessage,
    StoredMessage,
    User,
)

LimitsMode = Literal["off", "scaled", "real"]
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_UNAUTHORIZED = json.dumps({"ok": False, "error_code": 401, "description": "Unauthorized"}).encode()
_NOT_FOUND = json.dumps({"ok": False, "error_code": 404, "description": "Not Found"}).encode()
_SECRET_ALPHABET = string.ascii_letters + string.digits + "_-"


def quiet_gc() -> None:
    """Stop automatic full garbage collections in this process.

    With hundreds of thousands of recorded messages a full pass stalls the event loop for hundreds
    of milliseconds; requests queued meanwhile then reach the limiter together and draw 429s that
    Telegram would not send. The emulator's records hold no reference cycles, so young-generation
    collections suffice. The CLI calls this; in-process benchmarks should too.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 10, 1_000_000_000)


class Emulator:
    """A strict stand-in for api.telegram.org serving several bots at once.

    limits: "real" applies Telegram's documented budgets, "scaled" multiplies every rate by
    `scale` (fast tests), "off" applies none (capacity benchmarks). `clock` stamps accepted
    messages and drives the limiter; tests may inject a manual clock.
    """

    def __init__(
        self,
        limits: LimitsMode = "real",
        scale: float = 1.0,
        latency: LatencyModel | None = None,
        *,
        rate_limits: RateLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        webhook_retry: WebhookRetry | None = None,
        seed: int | None = None,
    ) -> None:
        self.clock = clock
        self.latency = latency
        self.faults = Faults(seed)
        self.webhook_retry = webhook_retry or WebhookRetry()
        self._rng = random.Random(seed)
        self.users: dict[int, User] = {}
        self.groups: dict[int, Group] = {}
        self.groups_by_username: dict[str, Group] = {}
        self.file_ids: set[str] = set()
        self._bots: dict[str, BotState] = {}
        self._base_limits = rate_limits or RateLimits()
        self._limits: RateLimits | None = None
        self.set_limits(limits, scale)
        self._private_chats: dict[int, dict[str, Any]] = {}
        self._group_chats: dict[int, dict[str, Any]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._delivery: dict[str, asyncio.Task[None]] = {}
        self._query_ids = itertools.count(4_000_000_000_000_000_001)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control = routes(self)
        self._session: aiohttp.ClientSession | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port; see `base_url`).

        /bot<token>/<method> goes to the Bot API and /_emulator/... to the control API. A call
        without latency or faults is answered synchronously, without creating a task.
        """
        self._server, self._tasks = await http.serve(self._dispatch, host, port)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    def _dispatch(self, request: http.Request) -> http.Reply | Awaitable[http.Reply]:
        path = request.path
        if path.startswith("/bot"):
            token, sep, method = path[4:].partition("/")
            if sep and "/" not in method:
                return self._serve(request, token, method)
            return 404, _NOT_FOUND
        handler = self._control.get((request.method, path))
        if handler is None:
            return 404, _NOT_FOUND
        return handler(request)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        for task in self._delivery.values():
            task.cancel()
        for task in self._delivery.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._delivery.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()
            self._server = None

    def set_limits(self, limits: LimitsMode, scale: float = 1.0) -> None:
        """Switch limit mode; every bot starts again with full budgets."""
        if limits == "off":
            self._limits = None
        elif limits == "real":
            self._limits = self._base_limits
        elif limits == "scaled":
            self._limits = self._base_limits.scaled(scale)
        else:
            raise ValueError(f"limits must be off, scaled or real, not {limits!r}")
        self.limits_mode: LimitsMode = limits
        self.scale = scale if limits == "scaled" else 1.0
        for bot in self._bots.values():
            bot.limiter = BotLimiter(self._limits) if self._limits else None

    # --- the Bot API ---------------------------------------------------------------------------

    def _serve(self, request: http.Request, token: str, method: str) -> http.Reply | Awaitable[http.Reply]:
        bot = self._bots.get(token)
        if bot is None:
            return 401, _UNAUTHORIZED
        name = method.lower()
        handler = methods.METHODS.get(name)
        if handler is None:
            return 404, _NOT_FOUND
        stats = bot.method_stats(methods.CANONICAL[name])
        fault = self.faults.get(name)
        latency = fault.latency if fault is not None and fault.latency is not None else self.latency
        if fault is None and latency is None and name not in methods.ASYNC_METHODS:
            try:
                result = handler(self, bot, self._params(request))
            except ApiError as exc:
                return self._error(stats, exc)
            stats.accepted += 1
            return 200, json.dumps({"ok": True, "result": result}).encode()
        return self._serve_slowly(request, bot, name, stats, fault, latency)

    async def _serve_slowly(self, request: http.Request, bot: BotState, name: str, stats: MethodStats,
                            fault: FaultConfig | None, latency: LatencyModel | None) -> http.Reply:
        """The same call with latency, injected faults or a waiting method (getUpdates)."""
        delay = latency.sample(self._rng) if latency is not None else 0.0
        if delay:
            await asyncio.sleep(delay / 2)
        lose_response = False
        if fault is not None:
            roll = self._rng.random()
            if roll < fault.error_rate_5xx:
                stats.server_errors += 1
                text = STATUS_TEXT[fault.error_status]
                body = {"ok": False, "error_code": fault.error_status, "description": text}
                return fault.error_status, json.dumps(body).encode()
            roll -= fault.error_rate_5xx
            if roll < fault.timeout_rate:
                stats.timeouts += 1
                await asyncio.sleep(fault.timeout_hold_s)
                return http.DROP
            roll -= fault.timeout_rate
            if roll < fault.drop_rate:
                stats.dropped += 1
                return http.DROP
            roll -= fault.drop_rate
            lose_response = roll < fault.lost_response_rate
        reply: http.Reply
        try:
            result = methods.METHODS[name](self, bot, self._params(request))
            if name in methods.ASYNC_METHODS:
                result = await result
            stats.accepted += 1
            reply = 200, json.dumps({"ok": True, "result": result}).encode()
        except ApiError as exc:
            reply = self._error(stats, exc)
        if lose_response:
            stats.dropped += 1
            return http.DROP
        if delay:
            await asyncio.sleep(delay / 2)
        return reply

    @staticmethod
    def _error(stats: MethodStats, exc: ApiError) -> http.Reply:
        if exc.code == 429:
            stats.too_many_requests += 1
        elif exc.code >= 500:
            stats.server_errors += 1
        else:
            stats.client_errors += 1
        return exc.code, json.dumps(exc.body()).encode()

    @staticmethod
    def _params(request: http.Request) -> dict[str, Any]:
        """Parameters from the query string and a form, JSON or multipart body."""
        params: dict[str, Any] = request.query
        if not request.body:
            return params
        content_type = request.content_type
        if content_type == _FORM:
            params.update(parse_qsl(request.body.decode(), keep_blank_values=True))
        elif content_type == _JSON:
            try:
                data = request.json()
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(data, dict):
                raise ApiError(400, "Bad Request: JSON object expected")
            params.update(data)
        elif content_type == "multipart/form-data":
            params.update(request.multipart())
        return params

    # --- bots and world ------------------------------------------------------------------------

    def add_bot(self, token: str | None = None, username: str | None = None,
                first_name: str | None = None) -> BotInfo:
        """Register a bot; a token is generated when none is given ("<id>:<35 characters>")."""
        if token is None:
            bot_id = 7_000_000_000 + len(self._bots) + self._rng.randrange(1, 1_000_000) * 1000
            token = f"{bot_id}:" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(35))
        head, sep, tail = token.partition(":")
        if not sep or not head.isdigit() or not tail:
            raise ValueError("a bot token looks like <digits>:<secret>")
        if token in self._bots:
            raise ValueError("this bot token is already registered")
        bot_id = int(head)
        info = BotInfo(bot_id, token, username or f"clarion_test_{bot_id}_bot")
        bot = BotState(info, first_name or "Clarion Test Bot",
                       BotLimiter(self._limits) if self._limits else None)
        bot.user_dict = {"id": bot_id, "is_bot": True, "first_name": bot.first_name,
                         "username": info.username}
        self._bots[token] = bot
        return info

    def bots(self) -> list[BotInfo]:
        return [bot.info for bot in self._bots.values()]

    def bot_states(self) -> list[BotState]:
        return list(self._bots.values())

    def bot(self, token: str) -> BotState:
        bot = self._bots.get(token)
        if bot is None:
            raise ValueError("unknown bot token")
        return bot

    def add_user(self, user_id: int, first_name: str = "Test", username: str | None = None,
                 language_code: str | None = "en", *, started: bool = True) -> User:
        """A Telegram user. started=False: no bot may write first until the user sends it a message."""
        if user_id <= 0:
            raise ValueError("user ids are positive")
        user = User(user_id, first_name, username, language_code, started_all=started)
        self.users[user_id] = user
        self._private_chats.pop(user_id, None)
        return user

    def add_users(self, count: int, start_id: int = 100_000, *, blocked_share: float = 0.0,
                  deactivated_share: float = 0.0, token: str | None = None, seed: int = 0,
                  language_code: str = "en") -> dict[str, list[int]]:
        """Add `count` users with consecutive ids; a seeded random share blocked (for `token`, or
        for every bot) and another deactivated. Returns the blocked and deactivated ids."""
        if count < 0 or not 0 <= blocked_share <= 1 or not 0 <= deactivated_share <= 1:
            raise ValueError("count must be >= 0 and shares within 0..1")
        bots = [self.bot(token)] if token is not None else list(self._bots.values())
        rng = random.Random(seed)
        blocked: list[int] = []
        deactivated: list[int] = []
        for uid in range(start_id, start_id + count):
            user = self.add_user(uid, f"User{uid}", None, language_code)
            roll = rng.random()
            if roll < blocked_share:
                blocked.append(uid)
                for bot in bots:
                    bot.blocked.add(uid)
            elif roll < blocked_share + deactivated_share:
                user.deactivated = True
                deactivated.append(uid)
        return {"blocked": blocked, "deactivated": deactivated}

    def _user(self, user_id: int) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise ValueError(f"unknown user {user_id}")
        return user

    def set_blocked(self, token: str, user_id: int, blocked: bool) -> None:
        """Mark the user as having blocked (or unblocked) the bot, without sending an update."""
        bot = self.bot(token)
        self._user(user_id)
        if blocked:
            bot.blocked.add(user_id)
        else:
            bot.blocked.discard(user_id)

    def deactivate_user(self, user_id: int) -> None:
        self._user(user_id).deactivated = True

    def add_group(self, chat_id: int, title: str, type: Literal["supergroup", "group"] = "supergroup",
                  members: Iterable[int] = (), admins: Iterable[int] = (), bot_is_admin: bool = True,
                  username: str | None = None) -> Group:
        """A group every bot is in. The first admin is the owner ("creator")."""
        if chat_id >= 0:
            raise ValueError("group chat ids are negative")
        if type not in ("supergroup", "group"):
            raise ValueError("type must be supergroup or group")
        admin_list = list(admins)
        for uid in [*members, *admin_list]:
            self._user(uid)
        group = Group(chat_id, title, type, set(members) | set(admin_list), admin_list, bot_is_admin,
                      username)
        self.groups[chat_id] = group
        self._group_chats.pop(chat_id, None)
        if username:
            self.groups_by_username[username.lower()] = group
        return group

    def set_bot_rights(self, token: str, chat_id: int, rights: Iterable[str] | None) -> None:
        """Make the bot an administrator of the group with exactly `rights` (ChatMemberAdministrator
        field names, e.g. "can_invite_users"), or a plain member with None; changeable at any time."""
        bot = self.bot(token)
        group = self._live_group(chat_id)
        if rights is None:
            group.bot_rights[bot.info.id] = None
            return
        chosen = frozenset(rights)
        unknown = sorted(chosen - set(ADMIN_RIGHTS))
        if unknown:
            raise ValueError(f"unknown administrator rights {unknown}; known: {list(ADMIN_RIGHTS)}")
        group.bot_rights[bot.info.id] = chosen

    def _live_group(self, chat_id: int) -> Group:
        group = self.groups.get(chat_id)
        if group is None or group.migrated_to is not None:
            raise ValueError(f"unknown or migrated group {chat_id}")
        return group

    def new_link_hash(self) -> str:
        return "".join(self._rng.choice(_SECRET_ALPHABET) for _ in range(16))

    def member_changed(self, group: Group, user_id: int, old: str, new: str, *, actor: dict[str, Any],
                       invite_link: InviteLink | None = None,
                       via_join_request: bool = False) -> dict[int, dict[str, Any]]:
        """Move the user from `old` to `new` ("member", "left", "kicked") and send `chat_member` to every
        bot that is an administrator of the group (queued if it asked for chat_member in allowed_updates).
        Returns each such bot's update by bot id."""
        group.member_changes.append((user_id, old, new))
        if new == "member":
            group.members.add(user_id)
            group.banned.discard(user_id)
        else:
            group.members.discard(user_id)
            for link in group.invite_links.values():
                link.joined.discard(user_id)
            if new == "kicked":
                group.banned.add(user_id)
            else:
                group.banned.discard(user_id)
        user = self._user(user_id).as_dict()

        def state(status: str) -> dict[str, Any]:
            return {"status": status, "user": user, **({"until_date": 0} if status == "kicked" else {})}

        payload: dict[str, Any] = {"chat": self.group_chat(group), "from": actor, "date": int(time.time()),
                                   "old_chat_member": state(old), "new_chat_member": state(new)}
        if invite_link is not None:
            payload["invite_link"] = methods.link_dict(self, group, invite_link)
        if via_join_request:
            payload["via_join_request"] = True
        return {bot.info.id: self._enqueue(bot, "chat_member", payload) for bot in self._bots.values()
                if group.rights_of(bot.info.id) is not None}

    async def join_by_link(self, invite_link: str, user_id: int) -> dict[str, Any] | None:
        """The user opens an invite link: joins at once, or (creates_join_request) asks to join. Returns
        the update the link's creator got (chat_member or chat_join_request), None if it got none."""
        user = self._user(user_id)
        group = next((g for g in self.groups.values() if invite_link in g.invite_links), None)
        if group is None or group.migrated_to is not None:
            raise ValueError("INVITE_HASH_INVALID: no such invite link")
        link = group.invite_links[invite_link]
        if link.revoked or (link.expire_date is not None and link.expire_date <= time.time()):
            raise ValueError("INVITE_HASH_EXPIRED: the link was revoked or has expired")
        if user_id in group.members or user_id in group.banned:
            raise ValueError(f"user {user_id} is already a member of, or banned from, {group.id}")
        if link.member_limit is not None and len(link.joined & group.members) >= link.member_limit:
            raise ValueError("USERS_TOO_MUCH: the link's member limit is reached")
        if link.creates_join_request:
            now = int(time.time())
            group.join_requests[user_id] = now
            group.join_request_links[user_id] = link.link
            payload = {"chat": self.group_chat(group), "from": user.as_dict(), "user_chat_id": user_id,
                       "date": now, "invite_link": methods.link_dict(self, group, link)}
            sent = {b.info.id: self._enqueue(b, "chat_join_request", payload) for b in self._bots.values()
                    if "can_invite_users" in (group.rights_of(b.info.id) or ())}
            return sent.get(link.creator_id)
        link.joined.add(user_id)
        joined = self.member_changed(group, user_id, "left", "member", actor=user.as_dict(),
                                     invite_link=link)
        return joined.get(link.creator_id)

    async def leave_group(self, chat_id: int, user_id: int) -> dict[int, dict[str, Any]]:
        """The user leaves the group: `chat_member` member -> left to the administrator bots (their
        updates by bot id)."""
        group = self._live_group(chat_id)
        user = self._user(user_id)
        if user_id not in group.members:
            raise ValueError(f"user {user_id} is not a member of {chat_id}")
        if group.admins and user_id == group.admins[0]:
            raise ValueError("the owner cannot leave in the emulator")
        return self.member_changed(group, user_id, "member", "left", actor=user.as_dict())

    def migrate_group(self, chat_id: int, new_chat_id: int) -> Group:
        """Upgrade a basic group to a supergroup with a new id; the old id then answers 400."""
        old = self.groups.get(chat_id)
        if old is None or old.type != "group" or old.migrated_to is not None:
            raise ValueError("only an existing, not yet migrated basic group can be upgraded")
        new = self.add_group(new_chat_id, old.title, "supergroup", old.members, old.admins,
                             old.bot_is_admin, old.username)
        old.migrated_to = new_chat_id
        return new

    def private_chat(self, user: User) -> dict[str, Any]:
        chat = self._private_chats.get(user.id)
        if chat is None:
            chat = self._private_chats[user.id] = user.private_chat()
        return chat

    def group_chat(self, group: Group) -> dict[str, Any]:
        chat = self._group_chats.get(group.id)
        if chat is None:
            chat = self._group_chats[group.id] = group.chat()
        return chat

    # --- updates toward the bot ----------------------------------------------------------------

    def _enqueue(self, bot: BotState, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": bot.next_update_id, kind: payload}
        bot.next_update_id += 1
        if bot.wants(kind):
            bot.updates.append(update)
            self._wake_for(bot).set()
        return update

    def _wake_for(self, bot: BotState) -> asyncio.Event:
        event = self._wake.get(bot.info.token)
        if event is None:
            event = self._wake[bot.info.token] = asyncio.Event()
        return event

    async def wait_for_update(self, bot: BotState, seconds: float) -> None:
        event = self._wake_for(bot)
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def start_delivery(self, bot: BotState) -> None:
        token = bot.info.token
        task = self._delivery.get(token)
        if task is not None and not task.done():
            self._wake_for(bot).set()
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._delivery[token] = asyncio.get_running_loop().create_task(
            deliver_loop(bot, self._session, self.webhook_retry, self._wake_for(bot)))

    def drop_webhook(self, bot: BotState, *, drop_pending: bool) -> None:
        bot.webhook = None
        task = self._delivery.pop(bot.info.token, None)
        if task is not None:
            task.cancel()
        if drop_pending:
            bot.updates.clear()

    def _message_payload(self, bot: BotState, chat: dict[str, Any], log_owner: Any, user: User,
                         text: str) -> dict[str, Any]:
        mid = log_owner.allocate()
        now = int(time.time())
        log_owner.messages[mid] = StoredMessage(mid, now, text, False, user.id)
        message: dict[str, Any] = {"message_id": mid, "from": user.as_dict(), "chat": chat, "date": now,
                                   "text": text}
        entities = command_entities(text)
        if entities:
            message["entities"] = entities
        return message

    async def user_sends(self, token: str, user_id: int, text: str) -> dict[str, Any]:
        """The user writes to the bot in private (like the Start button when they blocked it)."""
        bot = self.bot(token)
        user = self._user(user_id)
        if not text:
            raise ValueError("text must not be empty")
        if user.deactivated:
            raise ValueError("a deactivated user cannot send messages")
        if user_id in bot.blocked:
            await self.unblock(token, user_id)
        bot.started.add(user_id)
        log = methods.private_log(bot, user_id)
        payload = self._message_payload(bot, self.private_chat(user), log, user, text)
        return self._enqueue(bot, "message", payload)

    async def user_sends_in_group(self, token: str, chat_id: int, user_id: int, text: str,
                                  reply_to: int | None = None) -> dict[str, Any]:
        """A member writes in the group (`reply_to`: as a reply to that message of the group)."""
        bot = self.bot(token)
        user = self._user(user_id)
        group = self.groups.get(chat_id)
        if group is None or group.migrated_to is not None:
            raise ValueError(f"unknown or migrated group {chat_id}")
        if user_id not in group.members:
            raise ValueError(f"user {user_id} is not a member of {chat_id}")
        chat = self.group_chat(group)
        replied = None
        if reply_to is not None:
            replied = group.log.messages.get(reply_to)
            if replied is None:
                raise ValueError(f"no message {reply_to} in {chat_id}")
        payload = self._message_payload(bot, chat, group.log, user, text)
        if replied is not None:
            author = ({"id": replied.sender_id, "is_bot": True, "first_name": "bot"} if replied.from_bot
                      else self._user(replied.sender_id).as_dict())
            payload["reply_to_message"] = {"message_id": replied.message_id, "from": author, "chat": chat,
                                           "date": replied.date, "text": replied.text or ""}
        return self._enqueue(bot, "message", payload)

    async def press_button(self, token: str, user_id: int, message_id: int, data: str,
                           chat_id: int | None = None) -> dict[str, Any]:
        """The user presses an inline button of a bot message (in their private chat by default)."""
        bot = self.bot(token)
        user = self._user(user_id)
        if chat_id is None or chat_id == user_id:
            log, chat = methods.private_log(bot, user_id), self.private_chat(user)
        else:
            group = self.groups.get(chat_id)
            if group is None:
                raise ValueError(f"unknown group {chat_id}")
            log, chat = group.log, self.group_chat(group)
        message = log.messages.get(message_id)
        if message is None or not message.from_bot or message.sender_id != bot.info.id:
            raise ValueError(f"no message {message_id} from this bot in chat {chat['id']}")
        query_id = str(next(self._query_ids))
        bot.callback_queries[query_id] = (self.clock(), False)
        payload = {"id": query_id, "from": user.as_dict(),
                   "message": methods.message_dict(bot, chat, message),
                   "chat_instance": str(abs(hash((bot.info.id, chat["id"])))), "data": data}
        return self._enqueue(bot, "callback_query", payload)

    async def request_join(self, token: str, chat_id: int, user_id: int) -> dict[str, Any]:
        bot = self.bot(token)
        user = self._user(user_id)
        group = self.groups.get(chat_id)
        if group is None or group.migrated_to is not None:
            raise ValueError(f"unknown or migrated group {chat_id}")
        if user_id in group.members or user_id in group.banned:
            raise ValueError(f"user {user_id} is already a member of, or banned from, {chat_id}")
        now = int(time.time())
        group.join_requests[user_id] = now
        payload = {"chat": self.group_chat(group), "from": user.as_dict(), "user_chat_id": user_id,
                   "date": now}
        return self._enqueue(bot, "chat_join_request", payload)

    async def block(self, token: str, user_id: int) -> dict[str, Any]:
        """The user blocks the bot: my_chat_member member -> kicked, and sends answer 403."""
        return self._my_chat_member(token, user_id, True)

    async def unblock(self, token: str, user_id: int) -> dict[str, Any]:
        """The user unblocks (restarts) the bot: my_chat_member kicked -> member."""
        return self._my_chat_member(token, user_id, False)

    def _my_chat_member(self, token: str, user_id: int, blocked: bool) -> dict[str, Any]:
        bot = self.bot(token)
        user = self._user(user_id)
        if (user_id in bot.blocked) == blocked:
            raise ValueError(f"user {user_id} has {'already' if blocked else 'not'} blocked the bot")
        self.set_blocked(token, user_id, blocked)
        if not blocked:
            bot.started.add(user_id)
        kicked = {"status": "kicked", "user": bot.user_dict, "until_date": 0}
        member = {"status": "member", "user": bot.user_dict}
        payload = {"chat": self.private_chat(user), "from": user.as_dict(), "date": int(time.time()),
                   "old_chat_member": member if blocked else kicked,
                   "new_chat_member": kicked if blocked else member}
        return self._enqueue(bot, "my_chat_member", payload)

    async def wait_webhook_idle(self, token: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every queued update was delivered (or given up); TimeoutError otherwise."""
        bot = self.bot(token)
        deadline = time.monotonic() + timeout
        while bot.updates:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(bot.updates)} updates still pending after {timeout}s")
            await asyncio.sleep(0.005)

    # --- inspection ----------------------------------------------------------------------------

    def sent(self, token: str, chat_id: int | None = None) -> list[SentMessage]:
        """Every message the bot had accepted, in acceptance order (optionally for one chat)."""
        sent = self.bot(token).sent
        if chat_id is None:
            return list(sent)
        return [m for m in sent if m.chat_id == chat_id]

    def message(self, token: str, chat_id: int, message_id: int) -> StoredMessage | None:
        """A message of the chat as it is now (edits applied: text, reply_markup), as the bot sees it."""
        bot = self.bot(token)
        if chat_id > 0:
            log = bot.private_logs.get(chat_id)
        else:
            group = self.groups.get(chat_id)
            log = group.log if group is not None else None
        return log.messages.get(message_id) if log is not None else None

    def retry_afters(self, token: str) -> list[RetryAfterEvent]:
        """Every 429 the bot received."""
        return list(self.bot(token).retry_after_events)

    def stats(self, token: str) -> dict[str, Any]:
        bot = self.bot(token)
        per_method = {name: vars(s).copy() for name, s in bot.stats.items()}
        return {
            "accepted": sum(s.accepted for s in bot.stats.values()),
            "too_many_requests": sum(s.too_many_requests for s in bot.stats.values()),
            "client_errors": sum(s.client_errors for s in bot.stats.values()),
            "server_errors": sum(s.server_errors for s in bot.stats.values()),
            "messages_sent": len(bot.sent),
            "methods": per_method,
            "webhook": {"delivered": bot.webhook_deliveries, "failed_attempts": bot.webhook_failures,
                        "given_up": bot.webhook_given_up, "pending": len(bot.updates)},
        }

    def webhook_info(self, bot: BotState) -> dict[str, Any]:
        hook = bot.webhook
        info: dict[str, Any] = {"url": hook.url if hook else "", "has_custom_certificate": False,
                                "pending_update_count": len(bot.updates)}
        if hook is not None:
            info["max_connections"] = hook.max_connections
            info["ip_address"] = hook.ip_address
            if bot.allowed_updates:
                info["allowed_updates"] = bot.allowed_updates
        if bot.last_error_date is not None:
            info["last_error_date"] = bot.last_error_date
            info["last_error_message"] = bot.last_error_message
        return info

    def webhook(self, token: str) -> dict[str, Any]:
        """What getWebhookInfo would answer for this bot."""
        return self.webhook_info(self.bot(token))

    def reset(self) -> None:
        """Forget users, groups, histories, updates, webhooks and faults; bots stay registered."""
        for bot in self._bots.values():
            self.drop_webhook(bot, drop_pending=True)
        tokens = [(b.info.token, b.info.username, b.first_name) for b in self._bots.values()]
        self._bots.clear()
        for token, username, first_name in tokens:
            self.add_bot(token, username, first_name)
        self.users.clear()
        self.groups.clear()
        self.groups_by_username.clear()
        self._private_chats.clear()
        self._group_chats.clear()
        self.file_ids.clear()
        self.faults.clear()
