"""The control API under /_emulator/ (JSON), so another process can drive the emulator."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from clarion_dev.telegram import http
from clarion_dev.telegram.faults import LatencyModel

if TYPE_CHECKING:
    from clarion_dev.telegram.server import Emulator

Handler = Callable[[http.Request], Awaitable[http.Reply]]


def _json(status: int, data: Any) -> http.Reply:
    return status, json.dumps(data).encode()


def _endpoint(fn: Callable[[dict[str, Any]], Awaitable[Any]]) -> Handler:
    """Wrap fn(body-or-query) -> result; bad input answers 400 with the reason and changes nothing."""

    async def handler(request: http.Request) -> http.Reply:
        args: dict[str, Any] = request.query
        if request.body:
            try:
                body = request.json()
            except ValueError:
                return _json(400, {"ok": False, "error": "body is not JSON"})
            if not isinstance(body, dict):
                return _json(400, {"ok": False, "error": "body must be a JSON object"})
            args.update(body)
        try:
            return _json(200, {"ok": True, "result": await fn(args)})
        except (KeyError, TypeError, ValueError) as exc:
            message = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            return _json(400, {"ok": False, "error": message})

    return handler


def _int(args: dict[str, Any], name: str) -> int:
    try:
        return int(args[name])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {args[name]!r}") from None


def routes(emu: Emulator) -> dict[tuple[str, str], Handler]:
    """(HTTP method, path) -> handler for every control endpoint."""
    async def health(args: dict[str, Any]) -> Any:
        return {"limits": emu.limits_mode, "scale": emu.scale, "bots": len(emu.bots())}

    async def add_bot(args: dict[str, Any]) -> Any:
        info = emu.add_bot(args.get("token"), args.get("username"), args.get("first_name"))
        return vars(info)

    async def list_bots(args: dict[str, Any]) -> Any:
        return [vars(info) for info in emu.bots()]

    async def add_users(args: dict[str, Any]) -> Any:
        if "users" in args:
            users = args["users"]
            if not isinstance(users, list):
                raise ValueError("users must be a list")
            for item in users:
                emu.add_user(int(item["id"]), item.get("first_name", "Test"), item.get("username"),
                             item.get("language_code", "en"), started=bool(item.get("started", True)))
            return {"added": len(users)}
        count = _int(args, "count")
        result = emu.add_users(count, int(args.get("start_id", 100_000)),
                               blocked_share=float(args.get("blocked_share", 0.0)),
                               deactivated_share=float(args.get("deactivated_share", 0.0)),
                               token=args.get("token"), seed=int(args.get("seed", 0)),
                               language_code=str(args.get("language_code", "en")))
        return {"added": count, **result}

    async def add_group(args: dict[str, Any]) -> Any:
        group = emu.add_group(_int(args, "chat_id"), str(args["title"]), args.get("type", "supergroup"),
                              [int(u) for u in args.get("members", [])],
                              [int(u) for u in args.get("admins", [])],
                              bool(args.get("bot_is_admin", True)), args.get("username"))
        return emu.group_chat(group)

    async def migrate_group(args: dict[str, Any]) -> Any:
        return emu.group_chat(emu.migrate_group(_int(args, "chat_id"), _int(args, "new_chat_id")))

    async def bot_rights(args: dict[str, Any]) -> Any:
        rights = args.get("rights")
        if rights is not None and not (isinstance(rights, list) and all(isinstance(r, str) for r in rights)):
            raise ValueError("rights must be a list of right names, or null for a plain member")
        emu.set_bot_rights(str(args["token"]), _int(args, "chat_id"), rights)
        return True

    async def join_by_link(args: dict[str, Any]) -> Any:
        return await emu.join_by_link(str(args["invite_link"]), _int(args, "user_id"))

    async def leave_group(args: dict[str, Any]) -> Any:
        return list((await emu.leave_group(_int(args, "chat_id"), _int(args, "user_id"))).values())

    async def set_blocked(args: dict[str, Any]) -> Any:
        emu.set_blocked(str(args["token"]), _int(args, "user_id"), bool(args.get("blocked", True)))
        return True

    async def deactivate(args: dict[str, Any]) -> Any:
        emu.deactivate_user(_int(args, "user_id"))
        return True

    async def user_sends(args: dict[str, Any]) -> Any:
        return await emu.user_sends(str(args["token"]), _int(args, "user_id"), str(args["text"]))

    async def user_sends_in_group(args: dict[str, Any]) -> Any:
        reply_to = args.get("reply_to")
        return await emu.user_sends_in_group(str(args["token"]), _int(args, "chat_id"),
                                             _int(args, "user_id"), str(args["text"]),
                                             None if reply_to is None else _int(args, "reply_to"))

    async def press_button(args: dict[str, Any]) -> Any:
        chat_id = args.get("chat_id")
        return await emu.press_button(str(args["token"]), _int(args, "user_id"), _int(args, "message_id"),
                                      str(args["data"]), int(chat_id) if chat_id is not None else None)

    async def request_join(args: dict[str, Any]) -> Any:
        return await emu.request_join(str(args["token"]), _int(args, "chat_id"), _int(args, "user_id"))

    async def block(args: dict[str, Any]) -> Any:
        return await emu.block(str(args["token"]), _int(args, "user_id"))

    async def unblock(args: dict[str, Any]) -> Any:
        return await emu.unblock(str(args["token"]), _int(args, "user_id"))

    async def sent(args: dict[str, Any]) -> Any:
        messages = emu.bot(str(args["token"])).sent
        since = int(args.get("since", 0))
        limit = int(args.get("limit", 1000))
        if since < 0 or not 1 <= limit <= 100_000:
            raise ValueError("since must be >= 0 and limit within 1..100000")
        chat_id = args.get("chat_id")
        if chat_id is None:
            page = messages[since:since + limit]
            return {"messages": [m.as_dict() for m in page], "next": since + len(page),
                    "total": len(messages)}
        wanted = int(chat_id)
        picked = [m.as_dict() for m in messages[since:] if m.chat_id == wanted][:limit]
        return {"messages": picked, "total": len(messages)}

    async def stats(args: dict[str, Any]) -> Any:
        token = str(args["token"])
        return {**emu.stats(token), "retry_afters": [asdict(e) for e in emu.retry_afters(token)]}

    async def webhook(args: dict[str, Any]) -> Any:
        return emu.webhook(str(args["token"]))

    async def wait_idle(args: dict[str, Any]) -> Any:
        try:
            await emu.wait_webhook_idle(str(args["token"]), float(args.get("timeout", 10.0)))
        except TimeoutError as exc:
            raise ValueError(str(exc)) from None
        return True

    async def faults(args: dict[str, Any]) -> Any:
        latency = args.get("latency")
        if "latency_ms" in args:
            latency = [float(args["latency_ms"]) / 1000, float(args.get("jitter_ms", 0)) / 1000]
        config = emu.faults.set(
            str(args["method"]),
            LatencyModel(float(latency[0]), float(latency[1])) if latency is not None else None,
            float(args.get("error_rate_5xx", 0.0)), float(args.get("timeout_rate", 0.0)),
            float(args.get("drop_rate", 0.0)), error_status=int(args.get("error_status", 500)),
            timeout_hold_s=float(args.get("timeout_hold_s", 30.0)),
            lost_response_rate=float(args.get("lost_response_rate", 0.0)))
        return asdict(config)

    async def clear_faults(args: dict[str, Any]) -> Any:
        emu.faults.clear(args.get("method"))
        return True

    async def limits(args: dict[str, Any]) -> Any:
        emu.set_limits(args["limits"], float(args.get("scale", 1.0)))
        return {"limits": emu.limits_mode, "scale": emu.scale}

    async def reset(args: dict[str, Any]) -> Any:
        emu.reset()
        return True

    p = "/_emulator"
    return {
        ("GET", f"{p}/health"): _endpoint(health),
        ("GET", f"{p}/bots"): _endpoint(list_bots),
        ("POST", f"{p}/bots"): _endpoint(add_bot),
        ("POST", f"{p}/users"): _endpoint(add_users),
        ("POST", f"{p}/groups"): _endpoint(add_group),
        ("POST", f"{p}/groups/migrate"): _endpoint(migrate_group),
        ("POST", f"{p}/groups/bot_rights"): _endpoint(bot_rights),
        ("POST", f"{p}/join_by_link"): _endpoint(join_by_link),
        ("POST", f"{p}/leave_group"): _endpoint(leave_group),
        ("POST", f"{p}/set_blocked"): _endpoint(set_blocked),
        ("POST", f"{p}/deactivate"): _endpoint(deactivate),
        ("POST", f"{p}/user_sends"): _endpoint(user_sends),
        ("POST", f"{p}/user_sends_in_group"): _endpoint(user_sends_in_group),
        ("POST", f"{p}/press_button"): _endpoint(press_button),
        ("POST", f"{p}/request_join"): _endpoint(request_join),
        ("POST", f"{p}/block"): _endpoint(block),
        ("POST", f"{p}/unblock"): _endpoint(unblock),
        ("GET", f"{p}/sent"): _endpoint(sent),
        ("GET", f"{p}/stats"): _endpoint(stats),
        ("GET", f"{p}/webhook"): _endpoint(webhook),
        ("POST", f"{p}/wait_webhook_idle"): _endpoint(wait_idle),
        ("POST", f"{p}/faults"): _endpoint(faults),
        ("DELETE", f"{p}/faults"): _endpoint(clear_faults),
        ("POST", f"{p}/limits"): _endpoint(limits),
        ("POST", f"{p}/reset"): _endpoint(reset),
    }
