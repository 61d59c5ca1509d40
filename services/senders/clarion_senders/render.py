"""Turn a campaign's `spec.message` into what is sent to each language."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup


@dataclass(frozen=True)
class Rendered:
    """One language's message, ready for sendMessage (or sendPhoto with a caption)."""

    text: str
    parse_mode: str | None
    reply_markup: InlineKeyboardMarkup | None
    media_url: str | None
    disable_notification: bool


def _keyboard(rows: Any) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=b["text"], url=b.get("url"), callback_data=b.get("callbackData"))
         for b in row]
        for row in rows
    ])


class MessageRenderer:
    """Picks and builds the variant for a recipient's language (its primary subtag), else the main message;
    each language is built once."""

    def __init__(self, message: Mapping[str, Any]) -> None:
        if not isinstance(message.get("text"), str) or not message["text"]:
            raise ValueError("spec.message.text is required")
        parse_mode = message.get("parseMode") or "None"
        self._parse_mode = None if parse_mode == "None" else str(parse_mode)
        self._media_url = message.get("mediaUrl")
        self._silent = bool(message.get("disableNotification", False))
        self._default = self._build(message["text"], message.get("buttons"))
        self._variants = {str(v["language"]).lower(): v for v in message.get("variants") or []}
        self._main_buttons = message.get("buttons")
        self._cache: dict[str | None, Rendered] = {}

    def _build(self, text: str, buttons: Any) -> Rendered:
        return Rendered(text, self._parse_mode, _keyboard(buttons), self._media_url, self._silent)

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
