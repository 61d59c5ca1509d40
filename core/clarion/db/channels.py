"""Channel lookups: the rows the operator writes, read by the webhook and the bot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import ValidationError

from clarion.keys import channel_key, split_channel_key
from clarion.models.channel import BOT_LANGUAGES, DEFAULT_BOT_LANGUAGE, ChannelTemplate, SupportSettings


@dataclass(frozen=True)
class StoredTemplate:
    """A channel template as its row holds it (`channels.templates`, migration 0010): the template,
    its revision, and why it does not compile when the operator found that it does not."""

    name: str
    revision: str
    template: ChannelTemplate | None
    error: str | None = None

    @classmethod
    def of(cls, template: ChannelTemplate, error: str | None) -> StoredTemplate:
        return cls(template.name, template.revision, template, error)

    def to_json(self) -> dict[str, Any]:
        body = {} if self.template is None else self.template.to_k8s()
        return {"name": self.name, "revision": self.revision, "error": self.error, "template": body}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> StoredTemplate:
        """The stored entry; one this version cannot read is kept, as broken, so the API names it."""
        try:
            template = ChannelTemplate.model_validate(value["template"])
        except (ValidationError, KeyError, TypeError) as exc:
            return cls(str(value.get("name")), str(value.get("revision")), None,
                       f"the stored template cannot be read: {exc}")
        revision = str(value.get("revision") or template.revision)
        return cls(template.name, revision, template, value.get("error"))


@dataclass(frozen=True)
class ChannelRecord:
    """One live channel row; `config` is the NotificationChannel's `spec.telegram` minus secrets,
    `templates` its `spec.templates` by name."""

    id: int
    key: str
    type: str
    bot_id: int | None
    bot_username: str | None
    api_base_url: str | None
    webhook_secret_sha256: str | None
    ready: bool
    config: dict[str, Any] = field(default_factory=dict)
    templates: Mapping[str, StoredTemplate] = field(default_factory=dict)
    #: HMAC-SHA256 with key "WebAppData" over the bot token (a telegram channel whose token the operator
    #: checked): the key its Mini App's initData is checked with (clarion.telegram.webapp). Never logged.
    webapp_secret: bytes | None = field(default=None, repr=False)

    @property
    def admin_chat_ids(self) -> frozenset[int]:
        return frozenset(int(x) for x in self.config.get("adminChatIds") or ())

    @property
    def support_chat_id(self) -> int | None:
        value = self.config.get("supportChatId")
        return int(value) if value is not None else None

    @property
    def support(self) -> SupportSettings:
        """`spec.telegram.support`: the Mini App and the email channel that answers api requests."""
        return SupportSettings.model_validate(self.config.get("support") or {})

    @property
    def default_language(self) -> str:
        value = self.config.get("defaultLanguage")
        return value if value in BOT_LANGUAGES else DEFAULT_BOT_LANGUAGE


#: The notification channel on which Postgres announces each changed channel row (migration 0007).
#: Payload: the channel key, or '' when every row may have changed (TRUNCATE).
CHANNELS_NOTIFY = "clarion_channels"

_SELECT = """
    SELECT id, namespace, name, type, bot_id, bot_username, api_base_url, webhook_secret_sha256, ready,
           config, templates, webapp_secret
    FROM channels WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL
"""
_SELECT_ALL = """
    SELECT id, namespace, name, type, bot_id, bot_username, api_base_url, webhook_secret_sha256, ready,
           config, templates, webapp_secret
    FROM channels WHERE deleted_at IS NULL
"""


def _record(row: asyncpg.Record) -> ChannelRecord:
    return ChannelRecord(
        id=row["id"], key=channel_key(row["namespace"], row["name"]), type=row["type"], bot_id=row["bot_id"],
        bot_username=row["bot_username"], api_base_url=row["api_base_url"],
        webhook_secret_sha256=row["webhook_secret_sha256"], ready=row["ready"],
        config=dict(row["config"] or {}),
        templates={t.name: t for t in map(StoredTemplate.from_json, row["templates"] or ())},
        webapp_secret=row["webapp_secret"],
    )


async def get_channel(db: asyncpg.Pool | asyncpg.Connection, key: str) -> ChannelRecord | None:
    """The live (not deleted) channel with this key, or None (also for a malformed key)."""
    parts = split_channel_key(key)
    if parts is None:
        return None
    row = await db.fetchrow(_SELECT, *parts)
    return None if row is None else _record(row)


async def list_channels(db: asyncpg.Pool | asyncpg.Connection) -> list[ChannelRecord]:
    """Every live (not deleted) channel."""
    return [_record(row) for row in await db.fetch(_SELECT_ALL)]


async def channel_key_of(db: asyncpg.Pool | asyncpg.Connection, channel_id: int) -> str | None:
    """The key of the live channel with this row id, or None."""
    row = await db.fetchrow("SELECT namespace, name FROM channels WHERE id = $1 AND deleted_at IS NULL",
                            channel_id)
    return None if row is None else channel_key(row["namespace"], row["name"])
