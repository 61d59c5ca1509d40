"""Turn a campaign's `spec.message` into the Bot API request sent to each language."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


def _keyboard(rows: Any) -> dict[str, Any] | None:
    if not rows:
        return None
    return {"inline_keyboard": [
        [{"text": b["text"], **({"url": b["url"]} if b.get("url") else {}),
          **({"callback_data": b["callbackData"]} if b.get("callbackData") else {})}
         for b in row]
        for row in rows
    ]}


class MessageRenderer:
    """Picks and builds the variant for a recipient's language (its primary subtag), else the main message;
    each language is built once."""

    def __init__(self, message: Mapping[str, Any], *, paid_broadcast: bool = False) -> None:
        if not isinstance(message.get("text"), str) or not message["text"]:
            raise ValueError("spec.message.text is required")
        parse_mode = message.get("parseMode") or "None"
        self._parse_mode = None if parse_mode == "None" else str(parse_mode)
        self._media_url = message.get("mediaUrl")
        self._silent = bool(message.get("disableNotification", False))
        self._paid = paid_broadcast
        self._default = self._build(message["text"], message.get("buttons"))
        self._variants = {str(v["language"]).lower(): v for v in message.get("variants") or []}
        self._main_buttons = message.get("buttons")
        self._cache: dict[str | None, Rendered] = {}

    def _build(self, text: str, buttons: Any) -> Rendered:
        fields: dict[str, Any] = {}
        if self._media_url:
            method = "sendPhoto"
            fields["photo"] = self._media_url
            fields["caption"] = text
        else:
            method = "sendMessage"
            fields["text"] = text
        if self._parse_mode:
            fields["parse_mode"] = self._parse_mode
        keyboard = _keyboard(buttons)
        if keyboard:
            fields["reply_markup"] = keyboard
        if self._silent:
            fields["disable_notification"] = True
        if self._paid:
            fields["allow_paid_broadcast"] = True
        return Rendered(method, fields)

    def for_language(self, language: str | None) -> Rendered:
        found = self._cache.get(language)
        if found is not None:
            return found
        primary = language.split("-")[0].lower() if language else None
        variant = self._variants.get(primary) if primary else None
        if variant is None:
            rendered = self._default
        else:
            buttons = variant.get("buttons")
            rendered = self._build(variant["text"], buttons if buttons is not None else self._main_buttons)
        self._cache[language] = rendered
        return rendered
