"""Bot API methods. Each takes (emulator, bot, params) and returns the `result` or raises ApiError.

Parameters arrive as JSON values or as strings (form bodies, query strings); the helpers below
accept both, as Telegram does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from clarion_dev.telegram import markup
from clarion_dev.telegram.limits import Refused
from clarion_dev.telegram.world import (
    ADMIN_RIGHTS,
    ApiError,
    BotState,
    ChatLog,
    Group,
    InviteLink,
    RetryAfterEvent,
    SentMessage,
    StoredMessage,
    User,
    WebhookConfig,
    bad_request,
    forbidden,
)

if TYPE_CHECKING:
    from clarion_dev.telegram.server import Emulator

Params = Mapping[str, Any]
Method = Callable[["Emulator", BotState, Params], Any]

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


# --- parameter helpers -------------------------------------------------------------------------

def _present(p: Params, name: str) -> bool:
    value = p.get(name)
    return value is not None and value != ""


def p_str(p: Params, name: str) -> str | None:
    value = p.get(name)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def p_int(p: Params, name: str, *, missing: str | None = None) -> int | None:
    value = p.get(name)
    if value is None or value == "":
        if missing is not None:
            raise bad_request(missing)
        return None
    if isinstance(value, bool):
        raise bad_request(f"invalid {name} specified")
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise bad_request(f"invalid {name} specified") from None


def p_bool(p: Params, name: str) -> bool:
    value = p.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("true", "1")


def p_json(p: Params, name: str) -> Any:
    value = p.get(name)
    if isinstance(value, str):
        if value == "":
            return None
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {name} JSON object") from None
    return value


# --- chats -------------------------------------------------------------------------------------

class Target:
    """A chat a bot may write to."""

    __slots__ = ("chat", "chat_id", "group", "log", "user")

    def __init__(self, chat_id: int, chat: dict[str, Any], log: ChatLog, group: Group | None,
                 user: User | None) -> None:
        self.chat_id = chat_id
        self.chat = chat
        self.log = log
        self.group = group
        self.user = user


def _chat_id(p: Params, name: str = "chat_id") -> int | str:
    value = p.get(name)
    if value is None or value == "":
        raise bad_request(f"{name} is empty")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.startswith("@"):
        return text
    try:
        return int(text)
    except ValueError:
        raise bad_request("chat not found") from None


def find_group(emu: Emulator, key: int | str) -> Group | None:
    if isinstance(key, str):
        return emu.groups_by_username.get(key[1:].lower())
    return emu.groups.get(key)


def _group_or_migrated(emu: Emulator, key: int | str) -> Group | None:
    group = find_group(emu, key)
    if group is not None and group.migrated_to is not None:
        raise ApiError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                       {"migrate_to_chat_id": group.migrated_to})
    return group


def private_log(bot: BotState, user_id: int) -> ChatLog:
    log = bot.private_logs.get(user_id)
    if log is None:
        log = bot.private_logs[user_id] = ChatLog()
    return log


def send_target(emu: Emulator, bot: BotState, key: int | str) -> Target:
    """Where a send goes, or the 400/403 Telegram gives for that chat."""
    if isinstance(key, int) and key > 0:
        user = emu.users.get(key)
        if user is None:
            raise bad_request("chat not found")
        if user.deactivated:
            raise forbidden("user is deactivated")
        if key in bot.blocked:
            raise forbidden("bot was blocked by the user")
        if not user.started_all and key not in bot.started:
            raise forbidden("bot can't initiate conversation with a user")
        return Target(key, emu.private_chat(user), private_log(bot, key), None, user)
    group = _group_or_migrated(emu, key)
    if group is None:
        raise bad_request("chat not found")
    return Target(group.id, emu.group_chat(group), group.log, group, None)


def read_target(emu: Emulator, bot: BotState, key: int | str) -> Target:
    """A chat for edits, deletes and lookups: no block checks, but it must exist."""
    if isinstance(key, int) and key > 0:
        user = emu.users.get(key)
        if user is None:
            raise bad_request("chat not found")
        return Target(key, emu.private_chat(user), private_log(bot, key), None, user)
    group = _group_or_migrated(emu, key)
    if group is None:
        raise bad_request("chat not found")
    return Target(group.id, emu.group_chat(group), group.log, group, None)


def message_dict(bot: BotState, chat: dict[str, Any], m: StoredMessage, user: User | None = None,
                 edit_date: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"message_id": m.message_id,
                           "from": bot.user_dict if m.from_bot or user is None else user.as_dict(),
                           "chat": chat, "date": m.date}
    if edit_date is not None:
        out["edit_date"] = edit_date
    if m.text is not None:
        out["text"] = m.text
    if m.photo is not None:
        file_id = photo_file_id(m.photo)
        out["photo"] = [{"file_id": file_id, "file_unique_id": file_id[-16:], "width": 1280,
                         "height": 720, "file_size": 102400}]
        if m.caption:
            out["caption"] = m.caption
    if m.reply_markup is not None and "inline_keyboard" in m.reply_markup:
        out["reply_markup"] = m.reply_markup
    return out


def photo_file_id(source: str) -> str:
    if source.startswith("AgAC"):
        return source
    return "AgAC" + hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# --- sending -----------------------------------------------------------------------------------

def _send(emu: Emulator, bot: BotState, p: Params, method: str,
          keyboard: dict[str, Any] | None = None) -> tuple[Target, float, bool]:
    """Apply the limits and the chat checks (the keyboard's buttons too); on success both budgets are
    spent."""
    paid = p_bool(p, "allow_paid_broadcast")
    key = _chat_id(p)
    limiter = bot.limiter
    now = emu.clock()
    if limiter is None:
        target = send_target(emu, bot, key)
        markup.check_chat_buttons(keyboard, private=target.group is None)
        return target, now, paid
    try:
        limiter.check_bot(now, paid)
        try:
            target = send_target(emu, bot, key)
            markup.check_chat_buttons(keyboard, private=target.group is None)
        except ApiError:
            limiter.spend_bot(now, paid)
            raise
        limiter.check_chat(now, target.chat_id, target.group is not None)
    except Refused as refused:
        bot.retry_after_events.append(RetryAfterEvent(
            now, method, key if isinstance(key, int) else None, refused.retry_after, refused.scope,
            refused.budget))
        raise ApiError(429, f"Too Many Requests: retry after {refused.retry_after}",
                       {"retry_after": refused.retry_after}) from None
    limiter.spend_bot(now, paid)
    limiter.spend_chat(now, target.chat_id, target.group is not None)
    return target, now, paid


def send_message(emu: Emulator, bot: BotState, p: Params) -> Any:
    raw = p_str(p, "text")
    if raw is None:
        raise bad_request("message text is empty")
    parse_mode = p_str(p, "parse_mode") or None
    text = markup.plain_text(raw, parse_mode)
    markup.check_text(text, TEXT_LIMIT)
    keyboard = markup.reply_markup(p.get("reply_markup"))
    target, now, paid = _send(emu, bot, p, "sendMessage", keyboard)
    return _record(emu, bot, target, now, paid, "sendMessage", text, raw, parse_mode, keyboard, None)


def _record(emu: Emulator, bot: BotState, target: Target, now: float, paid: bool, method: str,
            text: str, raw: str, parse_mode: str | None, keyboard: dict[str, Any] | None,
            photo: str | None) -> dict[str, Any]:
    log = target.log
    mid = log.allocate()
    stored = StoredMessage(mid, int(time.time()), None if photo else text, True, bot.info.id, keyboard,
                           text if photo else None, photo)
    log.messages[mid] = stored
    bot.sent.append(SentMessage(target.chat_id, mid, text, now, paid, keyboard, method, parse_mode, raw,
                                photo))
    return message_dict(bot, target.chat, stored)


def send_photo(emu: Emulator, bot: BotState, p: Params) -> Any:
    photo = p.get("photo")
    if photo is None or photo == "":
        raise bad_request("there is no photo in the request")
    if isinstance(photo, str):
        if photo.startswith("attach://"):
            photo = p.get(photo[len("attach://"):])
            if photo is None:
                raise bad_request("there is no photo in the request")
        elif not (photo.startswith(("http://", "https://")) or photo in emu.file_ids):
            raise bad_request("wrong file identifier/HTTP URL specified")
    source = photo if isinstance(photo, str) else f"upload:{getattr(photo, 'filename', 'photo')}"
    raw = p_str(p, "caption") or ""
    parse_mode = p_str(p, "parse_mode") or None
    caption = markup.plain_text(raw, parse_mode)
    markup.check_text(caption, CAPTION_LIMIT, caption=True)
    keyboard = markup.reply_markup(p.get("reply_markup"))
    target, now, paid = _send(emu, bot, p, "sendPhoto", keyboard)
    emu.file_ids.add(photo_file_id(source))
    return _record(emu, bot, target, now, paid, "sendPhoto", caption, raw, parse_mode, keyboard, source)


def copy_message(emu: Emulator, bot: BotState, p: Params) -> Any:
    source = read_target(emu, bot, _chat_id(p, "from_chat_id"))
    mid = p_int(p, "message_id", missing="message_id is empty")
    original = source.log.messages.get(mid) if mid is not None else None
    if original is None:
        raise bad_request("message to copy not found")
    keyboard = markup.reply_markup(p.get("reply_markup"))
    parse_mode = p_str(p, "parse_mode") or None
    if original.photo is not None:
        raw = p_str(p, "caption")
        caption = markup.plain_text(raw, parse_mode) if raw is not None else (original.caption or "")
        markup.check_text(caption, CAPTION_LIMIT, caption=True)
        target, now, paid = _send(emu, bot, p, "copyMessage", keyboard)
        message = _record(emu, bot, target, now, paid, "copyMessage", caption, raw or caption, parse_mode,
                          keyboard, original.photo)
    else:
        text = original.text or ""
        target, now, paid = _send(emu, bot, p, "copyMessage", keyboard)
        message = _record(emu, bot, target, now, paid, "copyMessage", text, text, None, keyboard, None)
    return {"message_id": message["message_id"]}


def _own_message(emu: Emulator, bot: BotState, p: Params, missing: str) -> tuple[Target, StoredMessage]:
    if _present(p, "inline_message_id"):
        raise bad_request(missing)
    target = read_target(emu, bot, _chat_id(p))
    mid = p_int(p, "message_id", missing="message identifier is not specified")
    message = target.log.messages.get(mid) if mid is not None else None
    if message is None:
        raise bad_request(missing)
    if not message.from_bot or message.sender_id != bot.info.id:
        raise bad_request("message can't be edited")
    return target, message


def edit_message_text(emu: Emulator, bot: BotState, p: Params) -> Any:
    raw = p_str(p, "text")
    if raw is None:
        raise bad_request("message text is empty")
    text = markup.plain_text(raw, p_str(p, "parse_mode") or None)
    markup.check_text(text, TEXT_LIMIT)
    keyboard = markup.reply_markup(p.get("reply_markup"), inline_only=True)
    target, message = _own_message(emu, bot, p, "message to edit not found")
    markup.check_chat_buttons(keyboard, private=target.group is None)
    if message.text is None:
        raise bad_request("there is no text in the message to edit")
    if message.text == text and message.reply_markup == keyboard:
        raise bad_request("message is not modified: specified new message content and reply markup are "
                          "exactly the same as a current content and reply markup of the message")
    message.text = text
    message.reply_markup = keyboard
    return message_dict(bot, target.chat, message, edit_date=int(time.time()))


def edit_message_reply_markup(emu: Emulator, bot: BotState, p: Params) -> Any:
    keyboard = markup.reply_markup(p.get("reply_markup"), inline_only=True)
    target, message = _own_message(emu, bot, p, "message to edit not found")
    markup.check_chat_buttons(keyboard, private=target.group is None)
    if message.reply_markup == keyboard:
        raise bad_request("message is not modified: specified new message content and reply markup are "
                          "exactly the same as a current content and reply markup of the message")
    message.reply_markup = keyboard
    return message_dict(bot, target.chat, message, edit_date=int(time.time()))


def delete_message(emu: Emulator, bot: BotState, p: Params) -> Any:
    target = read_target(emu, bot, _chat_id(p))
    mid = p_int(p, "message_id", missing="message identifier is not specified")
    message = target.log.messages.get(mid) if mid is not None else None
    if message is None or mid is None:
        raise bad_request("message to delete not found")
    group = target.group
    own = message.from_bot and message.sender_id == bot.info.id
    if group is not None and not own and "can_delete_messages" not in (group.rights_of(bot.info.id) or ()):
        raise bad_request("message can't be deleted")
    del target.log.messages[mid]
    return True


def pin_chat_message(emu: Emulator, bot: BotState, p: Params) -> Any:
    """Pin one of the chat's messages: in a private chat any, in a group only as an administrator with
    can_pin_messages (Bot API, "pinChatMessage"). Pinning is no send: no limit applies."""
    if _present(p, "business_connection_id"):
        raise bad_request("business connection not found")
    target = read_target(emu, bot, _chat_id(p))
    group = target.group
    if group is not None and "can_pin_messages" not in (group.rights_of(bot.info.id) or ()):
        raise bad_request("not enough rights to manage pinned messages in the chat")
    mid = p_int(p, "message_id", missing="message identifier is not specified")
    if mid is None or mid not in target.log.messages:
        raise bad_request("message to pin not found")
    p_bool(p, "disable_notification")
    if mid in target.log.pinned:
        target.log.pinned.remove(mid)
    target.log.pinned.append(mid)
    return True


CALLBACK_ANSWER_TIMEOUT_S = 15.0


def answer_callback_query(emu: Emulator, bot: BotState, p: Params) -> Any:
    query_id = p_str(p, "callback_query_id")
    if not query_id:
        raise bad_request("query_id is empty")
    text = p_str(p, "text") or ""
    if len(text) > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    entry = bot.callback_queries.get(query_id)
    if entry is None or entry[1] or emu.clock() - entry[0] > CALLBACK_ANSWER_TIMEOUT_S:
        raise bad_request("query is too old and response timeout expired or query ID is invalid")
    bot.callback_queries[query_id] = (entry[0], True)
    return True


# --- webhooks and updates ----------------------------------------------------------------------

def _allowed_updates(p: Params) -> list[str] | None:
    value = p_json(p, "allowed_updates")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("can't parse allowed_updates JSON object")
    return value


def set_webhook(emu: Emulator, bot: BotState, p: Params) -> Any:
    url = p.get("url")
    if url is None:
        raise bad_request('parameter "url" is required')
    url = str(url)
    secret = p_str(p, "secret_token") or None
    if secret is not None and not _SECRET_RE.match(secret):
        if len(secret) > 256:
            raise bad_request("secret token is too long")
        raise bad_request("secret token contains unallowed characters")
    max_connections = p_int(p, "max_connections")
    if max_connections is not None and not 1 <= max_connections <= 100:
        raise bad_request("max_connections must be between 1 and 100")
    allowed = _allowed_updates(p)
    if url == "":
        emu.drop_webhook(bot, drop_pending=p_bool(p, "drop_pending_updates"))
        return True
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    if allowed is not None:
        bot.allowed_updates = allowed
    previous = bot.webhook
    bot.webhook = WebhookConfig(url, secret, max_connections or 40, bot.allowed_updates)
    if p_bool(p, "drop_pending_updates"):
        bot.updates.clear()
    if previous is None or previous.url != url:
        bot.last_error_date = None
        bot.last_error_message = None
    emu.start_delivery(bot)
    return True


def delete_webhook(emu: Emulator, bot: BotState, p: Params) -> Any:
    emu.drop_webhook(bot, drop_pending=p_bool(p, "drop_pending_updates"))
    return True


def get_webhook_info(emu: Emulator, bot: BotState, p: Params) -> Any:
    return emu.webhook_info(bot)


async def get_updates(emu: Emulator, bot: BotState, p: Params) -> Any:
    if bot.webhook is not None:
        raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; use "
                            "deleteWebhook to delete the webhook first")
    offset = p_int(p, "offset") or 0
    limit = min(max(p_int(p, "limit") or 100, 1), 100)
    timeout = min(max(p_int(p, "timeout") or 0, 0), 50)
    allowed = _allowed_updates(p)
    if allowed is not None:
        bot.allowed_updates = allowed
    updates = bot.updates
    if offset:
        while updates and updates[0]["update_id"] < offset:
            updates.popleft()
    if not updates and timeout:
        await emu.wait_for_update(bot, timeout)
    return [updates[i] for i in range(min(limit, len(updates)))]


# --- users, groups and members -----------------------------------------------------------------

def get_me(emu: Emulator, bot: BotState, p: Params) -> Any:
    return {**bot.user_dict, "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False, "can_connect_to_business": False, "has_main_web_app": False}


def _group_for_admin(emu: Emulator, bot: BotState, p: Params, rights: str, right: str) -> Group:
    """The group of `chat_id`, when the bot is an administrator there with `right`."""
    target = read_target(emu, bot, _chat_id(p))
    if target.group is None:
        raise bad_request("method is available for supergroup and channel chats only")
    if right not in (target.group.rights_of(bot.info.id) or ()):
        raise bad_request(f"not enough rights to {rights}")
    return target.group


def _user_id(emu: Emulator, p: Params) -> int:
    uid = p_int(p, "user_id", missing="user_id is empty")
    if uid is None or uid not in emu.users:
        raise bad_request("user not found")
    return uid


_JOIN_REQUESTS = "manage chat join requests"
_RESTRICT = "restrict/unrestrict chat member"
_INVITE_LINKS = "manage chat invite links"


def approve_chat_join_request(emu: Emulator, bot: BotState, p: Params) -> Any:
    group = _group_for_admin(emu, bot, p, _JOIN_REQUESTS, "can_invite_users")
    uid = _user_id(emu, p)
    if uid not in group.join_requests:
        raise bad_request("HIDE_REQUESTER_MISSING")
    if uid in group.members:
        raise bad_request("USER_ALREADY_PARTICIPANT")
    del group.join_requests[uid]
    link = group.invite_links.get(group.join_request_links.pop(uid, ""))
    if link is not None:
        link.joined.add(uid)
    emu.member_changed(group, uid, "left", "member", actor=bot.user_dict, invite_link=link,
                       via_join_request=True)
    return True


def decline_chat_join_request(emu: Emulator, bot: BotState, p: Params) -> Any:
    group = _group_for_admin(emu, bot, p, _JOIN_REQUESTS, "can_invite_users")
    uid = _user_id(emu, p)
    if group.join_requests.pop(uid, None) is None:
        raise bad_request("HIDE_REQUESTER_MISSING")
    group.join_request_links.pop(uid, None)
    return True


def ban_chat_member(emu: Emulator, bot: BotState, p: Params) -> Any:
    group = _group_for_admin(emu, bot, p, _RESTRICT, "can_restrict_members")
    uid = _user_id(emu, p)
    if group.admins and uid == group.admins[0]:
        raise bad_request("can't remove chat owner")
    if uid in group.admins:
        raise bad_request("user is an administrator of the chat")
    group.join_requests.pop(uid, None)
    group.join_request_links.pop(uid, None)
    if uid not in group.banned:
        old = "member" if uid in group.members else "left"
        emu.member_changed(group, uid, old, "kicked", actor=bot.user_dict)
    return True


def unban_chat_member(emu: Emulator, bot: BotState, p: Params) -> Any:
    group = _group_for_admin(emu, bot, p, _RESTRICT, "can_restrict_members")
    uid = _user_id(emu, p)
    if uid in group.banned:
        emu.member_changed(group, uid, "kicked", "left", actor=bot.user_dict)
    elif not p_bool(p, "only_if_banned"):
        if group.admins and uid == group.admins[0]:
            raise bad_request("can't remove chat owner")
        if uid in group.admins:
            raise bad_request("user is an administrator of the chat")
        if uid in group.members:
            emu.member_changed(group, uid, "member", "left", actor=bot.user_dict)
    return True


INVITE_LINK_PREFIX = "https://t.me/+"
_LINK_NAME_MAX = 32


def _link_options(p: Params, link: InviteLink | None, now: int) -> dict[str, Any]:
    """name, expire_date, member_limit, creates_join_request as given (the link's own where absent),
    checked the way Telegram checks them."""
    name = p_str(p, "name") if _present(p, "name") else (link.name if link else None)
    if name is not None and len(name) > _LINK_NAME_MAX:
        raise bad_request("invite link name is too long")
    expire = p_int(p, "expire_date") if _present(p, "expire_date") else (link.expire_date if link else None)
    if expire is not None and expire != 0 and expire <= now:
        raise bad_request("EXPIRE_DATE_INVALID")
    limit = p_int(p, "member_limit") if _present(p, "member_limit") else (link.member_limit if link else None)
    if limit is not None and limit != 0 and not 1 <= limit <= 99999:
        raise bad_request("USAGE_LIMIT_INVALID")
    joins = p_bool(p, "creates_join_request") if _present(p, "creates_join_request") else (
        link.creates_join_request if link else False)
    if joins and limit:
        raise bad_request("member limit can't be specified for links requiring administrator approval")
    return {"name": name or None, "expire_date": expire or None, "member_limit": limit or None,
            "creates_join_request": joins}


def link_dict(emu: Emulator, group: Group, link: InviteLink) -> dict[str, Any]:
    creator = next((b.user_dict for b in emu.bot_states() if b.info.id == link.creator_id),
                   {"id": link.creator_id, "is_bot": True, "first_name": "bot"})
    pending = sum(1 for url in group.join_request_links.values() if url == link.link)
    return link.as_dict(creator, pending)


def create_chat_invite_link(emu: Emulator, bot: BotState, p: Params) -> Any:
    group = _group_for_admin(emu, bot, p, _INVITE_LINKS, "can_invite_users")
    options = _link_options(p, None, int(time.time()))
    link = InviteLink(INVITE_LINK_PREFIX + emu.new_link_hash(), bot.info.id, **options)
    group.invite_links[link.link] = link
    return link_dict(emu, group, link)


def _own_link(emu: Emulator, bot: BotState, p: Params) -> tuple[Group, InviteLink]:
    group = _group_for_admin(emu, bot, p, _INVITE_LINKS, "can_invite_users")
    url = p_str(p, "invite_link")
    if not url:
        raise bad_request("invite_link is empty")
    link = group.invite_links.get(url)
    if link is None:
        raise bad_request("INVITE_HASH_EXPIRED")
    return group, link


def edit_chat_invite_link(emu: Emulator, bot: BotState, p: Params) -> Any:
    group, link = _own_link(emu, bot, p)
    if link.revoked:
        raise bad_request("INVITE_HASH_EXPIRED")
    for key, value in _link_options(p, link, int(time.time())).items():
        setattr(link, key, value)
    return link_dict(emu, group, link)


def revoke_chat_invite_link(emu: Emulator, bot: BotState, p: Params) -> Any:
    group, link = _own_link(emu, bot, p)
    link.revoked = True
    return link_dict(emu, group, link)


_NO_GIFTS = {"unlimited_gifts": False, "limited_gifts": False, "unique_gifts": False,
             "premium_subscription": False, "gifts_from_channels": False}


def get_chat(emu: Emulator, bot: BotState, p: Params) -> Any:
    target = read_target(emu, bot, _chat_id(p))
    extra: dict[str, Any] = {"accent_color_id": 0, "max_reaction_count": 11, "accepted_gift_types": _NO_GIFTS}
    if target.group is not None:
        extra["permissions"] = {"can_send_messages": True}
    return {**target.chat, **extra}


def _member(emu: Emulator, bot: BotState, group: Group, uid: int) -> dict[str, Any]:
    if uid == bot.info.id:
        rights = group.rights_of(uid)
        if rights is not None:
            return administrator(bot.user_dict, rights)
        return {"status": "member", "user": bot.user_dict}
    user = emu.users.get(uid)
    if user is None:
        raise bad_request("user not found")
    u = user.as_dict()
    if group.admins and uid == group.admins[0]:
        return {"status": "creator", "user": u, "is_anonymous": False}
    if uid in group.admins:
        return administrator(u, frozenset(ADMIN_RIGHTS) - {"can_promote_members"})
    if uid in group.banned:
        return {"status": "kicked", "user": u, "until_date": 0}
    if uid in group.members:
        return {"status": "member", "user": u}
    return {"status": "left", "user": u}


def administrator(user: dict[str, Any], rights: frozenset[str]) -> dict[str, Any]:
    """A ChatMemberAdministrator with exactly `rights` among the boolean rights."""
    return {"status": "administrator", "user": user, "can_be_edited": False, "is_anonymous": False,
            **{right: right in rights for right in ADMIN_RIGHTS}}


def get_chat_member(emu: Emulator, bot: BotState, p: Params) -> Any:
    target = read_target(emu, bot, _chat_id(p))
    uid = p_int(p, "user_id", missing="user_id is empty")
    assert uid is not None
    if target.group is None:
        if uid == bot.info.id:
            return {"status": "member", "user": bot.user_dict}
        if uid != target.chat_id:
            raise bad_request("user not found")
        return {"status": "member", "user": emu.users[uid].as_dict()}
    return _member(emu, bot, target.group, uid)


def get_chat_member_count(emu: Emulator, bot: BotState, p: Params) -> Any:
    target = read_target(emu, bot, _chat_id(p))
    if target.group is None:
        return 2
    return len(target.group.members | set(target.group.admins)) + 1


def get_chat_administrators(emu: Emulator, bot: BotState, p: Params) -> Any:
    target = read_target(emu, bot, _chat_id(p))
    group = target.group
    if group is None:
        raise bad_request("there are no administrators in the private chat")
    out = [_member(emu, bot, group, uid) for uid in group.admins]
    if group.rights_of(bot.info.id) is not None:
        out.append(_member(emu, bot, group, bot.info.id))
    return out


METHODS: dict[str, Callable[..., Any | Awaitable[Any]]] = {
    "getme": get_me,
    "setwebhook": set_webhook,
    "deletewebhook": delete_webhook,
    "getwebhookinfo": get_webhook_info,
    "getupdates": get_updates,
    "sendmessage": send_message,
    "sendphoto": send_photo,
    "copymessage": copy_message,
    "editmessagetext": edit_message_text,
    "editmessagereplymarkup": edit_message_reply_markup,
    "deletemessage": delete_message,
    "pinchatmessage": pin_chat_message,
    "answercallbackquery": answer_callback_query,
    "approvechatjoinrequest": approve_chat_join_request,
    "declinechatjoinrequest": decline_chat_join_request,
    "banchatmember": ban_chat_member,
    "unbanchatmember": unban_chat_member,
    "getchat": get_chat,
    "getchatmember": get_chat_member,
    "getchatmembercount": get_chat_member_count,
    "getchatadministrators": get_chat_administrators,
    "createchatinvitelink": create_chat_invite_link,
    "editchatinvitelink": edit_chat_invite_link,
    "revokechatinvitelink": revoke_chat_invite_link,
}
ASYNC_METHODS = frozenset({"getupdates"})
CANONICAL = {name.lower(): name for name in (
    "getMe", "setWebhook", "deleteWebhook", "getWebhookInfo", "getUpdates", "sendMessage", "sendPhoto",
    "copyMessage", "editMessageText", "editMessageReplyMarkup", "deleteMessage", "answerCallbackQuery",
    "approveChatJoinRequest", "declineChatJoinRequest", "banChatMember", "unbanChatMember", "getChat",
    "getChatMember", "getChatMemberCount", "getChatAdministrators", "createChatInviteLink",
    "editChatInviteLink", "revokeChatInviteLink",
    "pinChatMessage")}
