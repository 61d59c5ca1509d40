"""The emulated world: bots, users, groups, chat histories and the records tests inspect."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from clarion_dev.telegram.limits import BotLimiter


class ApiError(Exception):
    """A Bot API error reply: `{"ok": false, "error_code", "description", "parameters"}`."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def bad_request(what: str) -> ApiError:
    return ApiError(400, f"Bad Request: {what}")


def forbidden(what: str) -> ApiError:
    return ApiError(403, f"Forbidden: {what}")


@dataclass(frozen=True)
class BotInfo:
    id: int
    token: str
    username: str


@dataclass(slots=True)
class SentMessage:
    """One message the emulator accepted from a bot. `at` is the emulator's clock (monotonic)."""

    chat_id: int
    message_id: int
    text: str
    at: float
    paid: bool
    reply_markup: dict[str, Any] | None
    method: str
    parse_mode: str | None = None
    raw_text: str = ""
    photo: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "message_id": self.message_id, "text": self.text, "at": self.at,
                "paid": self.paid, "reply_markup": self.reply_markup, "method": self.method,
                "parse_mode": self.parse_mode, "raw_text": self.raw_text, "photo": self.photo}


@dataclass
class User:
    id: int
    first_name: str
    username: str | None = None
    language_code: str | None = "en"
    deactivated: bool = False
    started_all: bool = True
    """True: every bot may message this user (as if they had pressed Start everywhere)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.username:
            out["username"] = self.username
        if self.language_code:
            out["language_code"] = self.language_code
        return out

    def private_chat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "private", "first_name": self.first_name}
        if self.username:
            out["username"] = self.username
        return out


@dataclass(slots=True)
class StoredMessage:
    message_id: int
    date: int
    text: str | None
    from_bot: bool
    sender_id: int
    reply_markup: dict[str, Any] | None = None
    caption: str | None = None
    photo: str | None = None


@dataclass
class ChatLog:
    """The history of one chat as a bot sees it; message ids grow by one per message."""

    next_id: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    pinned: list[int] = field(default_factory=list)
    """Ids of the pinned messages, the latest pin last (pinChatMessage)."""

    def allocate(self) -> int:
        mid = self.next_id
        self.next_id += 1
        return mid


ADMIN_RIGHTS = ("can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
                "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories",
                "can_edit_stories", "can_delete_stories", "can_send_welcome_messages", "can_pin_messages")
"""The boolean rights of a ChatMemberAdministrator (Bot API, "ChatMemberAdministrator")."""
DEFAULT_BOT_RIGHTS = frozenset(ADMIN_RIGHTS) - {"can_promote_members", "can_post_stories", "can_edit_stories",
                                                "can_delete_stories"}
"""What a bot made administrator gets unless a test says otherwise."""


@dataclass
class InviteLink:
    """A ChatInviteLink a bot created (createChatInviteLink)."""

    link: str
    creator_id: int
    name: str | None = None
    expire_date: int | None = None
    member_limit: int | None = None
    creates_join_request: bool = False
    revoked: bool = False
    joined: set[int] = field(default_factory=set)
    """Users who joined through the link (member_limit counts those still members)."""

    def as_dict(self, creator: dict[str, Any], pending: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {"invite_link": self.link, "creator": creator,
                               "creates_join_request": self.creates_join_request, "is_primary": False,
                               "is_revoked": self.revoked}
        if self.name:
            out["name"] = self.name
        if self.expire_date is not None:
            out["expire_date"] = self.expire_date
        if self.member_limit is not None:
            out["member_limit"] = self.member_limit
        if self.creates_join_request:
            out["pending_join_request_count"] = pending
        return out


@dataclass
class Group:
    id: int
    title: str
    type: str
    members: set[int]
    admins: list[int]
    bot_is_admin: bool = True
    username: str | None = None
    migrated_to: int | None = None
    join_requests: dict[int, int] = field(default_factory=dict)
    banned: set[int] = field(default_factory=set)
    log: ChatLog = field(default_factory=ChatLog)
    bot_rights: dict[int, frozenset[str] | None] = field(default_factory=dict)
    """Per bot id: its administrator rights, or None when it is a plain member. A bot not listed is an
    administrator with DEFAULT_BOT_RIGHTS when bot_is_admin, else a member."""
    invite_links: dict[str, InviteLink] = field(default_factory=dict)
    join_request_links: dict[int, str] = field(default_factory=dict)
    """Pending join requests that came through an invite link: user id -> the link."""
    member_changes: list[tuple[int, str, str]] = field(default_factory=list)
    """Every membership change, in order: (user id, old status, new status), statuses as in chat_member
    ("member", "left", "kicked"); e.g. a ban then unban of a member is (id, member, kicked),
    (id, kicked, left)."""

    def rights_of(self, bot_id: int) -> frozenset[str] | None:
        """The bot's administrator rights in this group; None when it is not an administrator."""
        if bot_id in self.bot_rights:
            return self.bot_rights[bot_id]
        return DEFAULT_BOT_RIGHTS if self.bot_is_admin else None

    def chat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "title": self.title}
        if self.username:
            out["username"] = self.username
        if self.type == "group":
            out["all_members_are_administrators"] = False
        return out


@dataclass
class WebhookConfig:
    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: list[str] | None
    ip_address: str = "127.0.0.1"


DEFAULT_UPDATE_TYPES = frozenset({
    "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
    "business_message", "edited_business_message", "deleted_business_messages", "inline_query",
    "chosen_inline_result", "callback_query", "shipping_query", "pre_checkout_query",
    "purchased_paid_media", "poll", "poll_answer", "my_chat_member", "chat_join_request",
    "chat_boost", "removed_chat_boost",
})


@dataclass
class MethodStats:
    accepted: int = 0
    too_many_requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    timeouts: int = 0
    dropped: int = 0


@dataclass(slots=True)
class RetryAfterEvent:
    at: float
    method: str
    chat_id: int | None
    retry_after: int
    scope: str
    budget: str


@dataclass
class BotState:
    info: BotInfo
    first_name: str
    limiter: BotLimiter | None
    user_dict: dict[str, Any] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    blocked: set[int] = field(default_factory=set)
    private_logs: dict[int, ChatLog] = field(default_factory=dict)
    sent: list[SentMessage] = field(default_factory=list)
    stats: dict[str, MethodStats] = field(default_factory=dict)
    retry_after_events: list[RetryAfterEvent] = field(default_factory=list)
    webhook: WebhookConfig | None = None
    allowed_updates: list[str] | None = None
    updates: deque[dict[str, Any]] = field(default_factory=deque)
    next_update_id: int = 1
    last_error_date: int | None = None
    last_error_message: str | None = None
    webhook_deliveries: int = 0
    webhook_failures: int = 0
    webhook_given_up: int = 0
    callback_queries: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def method_stats(self, method: str) -> MethodStats:
        stats = self.stats.get(method)
        if stats is None:
            stats = self.stats[method] = MethodStats()
        return stats

    def wants(self, update_type: str) -> bool:
        allowed = self.allowed_updates
        if not allowed:
            return update_type in DEFAULT_UPDATE_TYPES
        return update_type in allowed
