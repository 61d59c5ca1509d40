"""Support requests (docs/support.md): `POST /api/v1/requests`, and what the Mini App reads and posts."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from clarion.db.support import ThreadStatus
from clarion.models.base import CamelModel
from clarion.models.channel import BotLanguage
from clarion.models.notification import EMAIL_ADDRESS, ChannelRef

#: The longest request or reply text: a Telegram message (4096) with room for the post's header.
SUPPORT_TEXT_MAX = 4000
_NO_NUL = r"^[^\x00]*$"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class SupportRequestBody(ChannelRef):
    """`POST /api/v1/requests`: a request for the support chat of a telegram channel, answered by email,
    e.g. from a website's contact form."""

    email: str = Field(max_length=254, pattern=EMAIL_ADDRESS, description="The requester's email address: "
                                                                         "the answer goes there.")
    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\x00\r\n]*$",
                             description="The requester's name, shown to the admins.")
    text: str = Field(min_length=1, max_length=SUPPORT_TEXT_MAX, pattern=_NO_NUL,
                      description="The request.")
    language: BotLanguage | None = Field(
        default=None, description="The requester's language (the answer email's subject); default: the "
                                  "channel's.")

    _text = field_validator("text")(_not_blank)


class SupportRequestView(CamelModel):
    """The answer to `POST /api/v1/requests`: the request's thread id and status."""

    id: int = Field(description="The support thread's id.")
    status: ThreadStatus


class MiniAppRequest(CamelModel):
    """A request as the Mini App shows it (`GET /app/api/requests/{id}`)."""

    id: int
    origin: Literal["telegram", "api"] = Field(description="telegram: a DM to the bot; api: POST /api/v1/"
                                                           "requests (answered by email).")
    name: str | None = Field(description="The requester's name.")
    email: str | None = Field(description="The requester's email (api requests).")
    text: str | None = Field(description="The request's text.")
    language: str | None = Field(description="The requester's language.")
    status: ThreadStatus
    replied_by_name: str | None
    reply_text: str | None
    last_error: str | None
    created_at: datetime


class ReplyBody(CamelModel):
    """`POST /app/api/replies`: an admin's answer to a thread."""

    thread: int = Field(ge=1, le=2**63 - 1, description="The support thread's id.")
    text: str = Field(min_length=1, max_length=SUPPORT_TEXT_MAX, pattern=_NO_NUL, description="The answer.")

    _text = field_validator("text")(_not_blank)


class ReplyView(CamelModel):
    """The answer to `POST /app/api/replies`: the reply is queued; its notification's id."""

    thread: int
    status: ThreadStatus
    notification_id: str
