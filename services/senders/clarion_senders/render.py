"""Turn a campaign's `spec.message` into the Bot API request sent to each language."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clarion.models import Button, Message


@dataclass(frozen=True)
class Rendered:
    """One language's message: the Bot API method and its fields except `chat_id`.

    `sendMessage` with `text`, or `sendPhoto` with the text as `caption` when the message has a
    `mediaUrl`; `parse_mode`, `reply_markup` (an inline keyboard), `disable_notification` and
    `allow_paid_broadcast` only when set.
    """

    method: str
    fields: Mapping[str, Any]

    def body(self, chat_id: int) -> str:
        """The JSON request body for one recipient."""
        return json.dumps({"chat_id": chat_id, **self.fields}, ensure_ascii=False)


def _button(button: Button) -> dict[str, Any]:
    """The Bot API's InlineKeyboardButton of a button."""
    if button.web_app_url:
        return {"text": button.text, "web_app": {"url": button.web_app_url}}
    if button.url:
        return {"text": button.text, "url": button.url}
    return {"text": button.text, "callback_data": button.callback_data}


def _keyboard(rows: Sequence[Sequence[Button]]) -> dict[str, Any] | None:
    if not rows:
        return None
    return {"inline_keyboard": [[_button(b) for b in row] for row in rows]}


class MessageRenderer:
    """Picks and builds the variant for a recipient's language (its primary subtag), else the main message;
    each language is built once."""

    def __init__(self, message: Message, *, paid_broadcast: bool = False) -> None:
        self._message = message
        self._paid = paid_broadcast
        self._cache: dict[str | None, Rendered] = {}

    def _build(self, text: str, buttons: Sequence[Sequence[Button]]) -> Rendered:
        message = self._message
        fields: dict[str, Any] = {}
        if message.media_url:
            method = "sendPhoto"
            fields["photo"] = message.media_url
            fields["caption"] = text
        else:
            method = "sendMessage"
            fields["text"] = text
        if message.parse_mode != "None":
            fields["parse_mode"] = message.parse_mode
        keyboard = _keyboard(buttons)
        if keyboard:
            fields["reply_markup"] = keyboard
        if message.disable_notification:
            fields["disable_notification"] = True
        if self._paid:
            fields["allow_paid_broadcast"] = True
        return Rendered(method, fields)

    def for_language(self, language: str | None) -> Rendered:
        found = self._cache.get(language)
        if found is None:
            found = self._cache[language] = self._build(*self._message.for_language(language))
        return found
