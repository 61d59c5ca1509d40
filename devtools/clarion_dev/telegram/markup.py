"""Text formatting (Bot API "Formatting options") and reply markup checks, loose but strict enough
that what Telegram would refuse is refused here too."""

from __future__ import annotations

import json
import re
from typing import Any

from clarion_dev.telegram.world import ApiError, bad_request

HTML_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
                       "a", "code", "pre", "blockquote", "tg-emoji", "tg-time"})
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY_RE = re.compile(r"&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[a-zA-Z]+);")
MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {"*": "Bold", "_": "Italic", "__": "Underline", "~": "Strikethrough", "||": "Spoiler",
               "[": "TextUrl"}
_COMMAND_RE = re.compile(r"(?<![\w/])/[a-zA-Z0-9_]{1,32}(@[a-zA-Z0-9_]{3,32})?")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts text in."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _entities_error(text: str, pos: int, what: str) -> ApiError:
    offset = len(text[:pos].encode())
    return bad_request(f"can't parse entities: {what} at byte offset {offset}")


def plain_text(text: str, parse_mode: str | None) -> str:
    """The text a user sees once `parse_mode` markup is removed; 400 when it does not parse."""
    if not parse_mode:
        return text
    mode = parse_mode.lower()
    if mode == "html":
        return _html(text)
    if mode == "markdownv2":
        return _markdown_v2(text)
    if mode == "markdown":
        return _markdown(text)
    raise bad_request(f"unsupported parse_mode \"{parse_mode}\"")


def _unescape(chunk: str) -> str:
    if "&" not in chunk:
        return chunk

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("#x"):
            return chr(int(name[2:], 16))
        if name.startswith("#"):
            return chr(int(name[1:]))
        return _NAMED_ENTITIES.get(name, match.group(0))

    return _ENTITY_RE.sub(one, chunk)


def _html(text: str) -> str:
    if "<" not in text:
        if ">" in text:
            raise _entities_error(text, text.index(">"), "Unexpected end of name token")
        return _unescape(text)
    out: list[str] = []
    stack: list[tuple[str, int]] = []
    pos = 0
    while True:
        start = text.find("<", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if ">" in chunk:
            raise _entities_error(text, pos + chunk.index(">"), "Unexpected end of name token")
        out.append(_unescape(chunk))
        if start < 0:
            break
        end = text.find(">", start)
        if end < 0:
            raise _entities_error(text, start, "Unclosed start tag")
        body = text[start + 1:end].strip()
        if body.startswith("/"):
            name = body[1:].strip().lower()
            if not stack:
                raise _entities_error(text, start, f'Unexpected end tag "{name}"')
            if stack[-1][0] != name:
                raise _entities_error(
                    text, start, f'Unmatched end tag, expected "</{stack[-1][0]}>", found "</{name}>"')
            stack.pop()
        else:
            name, _, attrs = body.partition(" ")
            name = name.lower()
            if not name or not (name[0].isalpha()):
                raise _entities_error(text, start, "Empty tag name")
            if name not in HTML_TAGS:
                raise _entities_error(text, start, f'Unsupported start tag "{name}"')
            if name == "span" and "tg-spoiler" not in attrs:
                raise _entities_error(text, start, 'Tag "span" must have class "tg-spoiler"')
            if name == "a" and "href" not in attrs:
                raise _entities_error(text, start, 'Tag "a" must have attribute "href"')
            stack.append((name, start))
        pos = end + 1
    if stack:
        name, start = stack[-1]
        raise bad_request(f"can't parse entities: Can't find end tag corresponding to start tag \"{name}\"")
    return "".join(out)


def _markdown_v2(text: str) -> str:
    out: list[str] = []
    stack: list[tuple[str, int]] = []
    i, n = 0, len(text)
    line_start = True
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and 0 < ord(text[i + 1]) < 127:
                out.append(text[i + 1])
                i += 2
                line_start = False
                continue
            raise _entities_error(text, i, "Character '\\' is reserved and must be escaped")
        if c == "`":
            fence = "```" if text.startswith("```", i) else "`"
            end = i + len(fence)
            while True:
                end = text.find(fence, end)
                if end < 0:
                    name = "Pre" if fence == "```" else "Code"
                    raise _entities_error(text, i, f"Can't find end of {name} entity")
                if text[end - 1] != "\\":
                    break
                end += 1
            body = text[i + len(fence):end]
            if fence == "```" and "\n" in body:
                first, _, rest = body.partition("\n")
                body = rest if first and " " not in first else body
            out.append(body.replace("\\`", "`").replace("\\\\", "\\"))
            i = end + len(fence)
            continue
        marker = ""
        if c in "*_~|":
            marker = "__" if text.startswith("__", i) else "||" if text.startswith("||", i) else c
            if marker == "|":
                raise _entities_error(text, i, "Character '|' is reserved and must be escaped with the "
                                               "preceding '\\'")
            if stack and stack[-1][0] == marker:
                stack.pop()
            else:
                stack.append((marker, i))
            i += len(marker)
            line_start = False
            continue
        if c == "[":
            stack.append(("[", i))
            i += 1
            continue
        if c == "]" and stack and stack[-1][0] == "[":
            stack.pop()
            if text.startswith("(", i + 1):
                close = text.find(")", i + 2)
                if close < 0:
                    raise _entities_error(text, i, "Can't find end of a URL")
                i = close + 1
            else:
                i += 1
            continue
        if c == ">" and line_start:
            i += 1
            continue
        if c in MDV2_RESERVED:
            raise _entities_error(text, i, f"Character '{c}' is reserved and must be escaped with the "
                                           "preceding '\\'")
        out.append(c)
        line_start = c == "\n"
        i += 1
    if stack:
        marker, start = stack[-1]
        raise _entities_error(text, start, f"Can't find end of {_MDV2_NAMES[marker]} entity")
    return "".join(out)


def _markdown(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            i += 2
            continue
        if c in "*_`":
            fence = "```" if text.startswith("```", i) else c
            end = text.find(fence, i + len(fence))
            if end < 0:
                raise _entities_error(text, i, "Can't find end of the entity starting")
            out.append(text[i + len(fence):end])
            i = end + len(fence)
            continue
        if c == "[":
            close = text.find("]", i + 1)
            if close < 0:
                raise _entities_error(text, i, "Can't find end of the entity starting")
            out.append(text[i + 1:close])
            i = close + 1
            if text.startswith("(", i):
                end = text.find(")", i)
                if end < 0:
                    raise _entities_error(text, i, "Can't find end of a URL")
                i = end + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def check_text(text: str, limit: int, *, caption: bool = False) -> None:
    """Length rules for message text (1..4096) and captions (0..1024), after formatting."""
    if not caption and not text.strip():
        raise bad_request("message text is empty")
    if utf16_len(text) > limit:
        raise bad_request("message caption is too long" if caption else "message is too long")


_BUTTON_ACTIONS = ("url", "callback_data", "web_app", "login_url", "switch_inline_query",
                   "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
                   "callback_game", "pay")


def reply_markup(value: Any, *, inline_only: bool = False) -> dict[str, Any] | None:
    """Validate `reply_markup` (JSON text or object); returns the object or None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise bad_request("can't parse reply keyboard markup JSON object") from None
    if not isinstance(value, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in value:
        _inline_keyboard(value["inline_keyboard"])
        return value
    if inline_only:
        raise bad_request("inline keyboard expected")
    if "keyboard" in value:
        rows = value["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise bad_request("field \"keyboard\" must be an Array of Arrays")
        return value
    if value.get("remove_keyboard") is True or value.get("force_reply") is True:
        return value
    raise bad_request("object expected as reply markup")


def _inline_keyboard(rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise bad_request("can't parse inline keyboard button: field \"inline_keyboard\" must be an "
                          "Array of Arrays")
    count = 0
    for row in rows:
        for button in row:
            count += 1
            if not isinstance(button, dict):
                raise bad_request("can't parse inline keyboard button: InlineKeyboardButton must be an "
                                  "Object")
            if not isinstance(button.get("text"), str):
                raise bad_request("can't parse inline keyboard button: Field \"text\" must be of type "
                                  "String")
            actions = [key for key in _BUTTON_ACTIONS if key in button]
            if not actions:
                raise bad_request("can't parse inline keyboard button: Text buttons are unallowed in "
                                  "the inline keyboard")
            data = button.get("callback_data")
            if data is not None and (not isinstance(data, str) or not 1 <= len(data.encode()) <= 64):
                raise bad_request("BUTTON_DATA_INVALID")
            web_app = button.get("web_app")
            if web_app is not None:
                app_url = web_app.get("url") if isinstance(web_app, dict) else None
                if not isinstance(app_url, str) or not app_url.startswith("https://"):
                    raise bad_request(f"inline keyboard button Web App URL '{app_url}' is invalid: Only "
                                      "HTTPS links are allowed")
            url = button.get("url")
            if url is not None and (not isinstance(url, str)
                                    or not url.startswith(("http://", "https://", "tg://"))):
                raise bad_request(f"inline keyboard button URL '{url}' is invalid: Wrong HTTP URL")
    if count > 100:
        raise bad_request("reply markup is too long")


def check_chat_buttons(keyboard: dict[str, Any] | None, *, private: bool) -> None:
    """Buttons a chat may not carry: `web_app` buttons are "available only in private chats between a user
    and the bot"; elsewhere Telegram answers BUTTON_TYPE_INVALID."""
    if private or keyboard is None:
        return
    if any("web_app" in button for row in keyboard.get("inline_keyboard") or () for button in row):
        raise bad_request("BUTTON_TYPE_INVALID")


def command_entities(text: str) -> list[dict[str, Any]]:
    """bot_command entities, as Telegram attaches them to incoming messages."""
    if "/" not in text:
        return []
    out = []
    for match in _COMMAND_RE.finditer(text):
        offset = utf16_len(text[:match.start()])
        out.append({"type": "bot_command", "offset": offset, "length": utf16_len(match.group(0))})
    return out
