"""The aiogram Dispatcher of one channel: routers, FSM storage in Redis, injected dependencies."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.storage.base import DefaultKeyBuilder
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.methods import AnswerCallbackQuery, CopyMessage, EditMessageText, SendMessage
from aiogram.methods.base import Response
from clarion.models import PUBLIC_BOT_API

from clarion_bot.activity import ActivityBuffer, ActivityMiddleware
from clarion_bot.context import ChannelHolder, install_context
from clarion_bot.group_joins import GroupCache
from clarion_bot.handlers import routers

# aiogram asks pydantic for `Response[<result type>]` on every call, and pydantic caches parametrised
# generics only weakly: after a garbage collection the next call rebuilds the class (milliseconds).
# Holding the ones the bot uses keeps them cached.
RESPONSE_TYPES = tuple(Response[m.__returning__]  # type: ignore[name-defined]
                       for m in (SendMessage, EditMessageText, AnswerCallbackQuery, CopyMessage))


def build_dispatcher(*, db: Any, redis: aioredis.Redis, holder: ChannelHolder,
                     activity: ActivityBuffer | None = None) -> Dispatcher:
    """Handlers get `db` (asyncpg pool), `redis`, `group_cache`, `channel`, `language` and `t` injected by
    keyword. Group members' messages are recorded in `activity` (a buffer of its own when not given;
    whoever runs the dispatcher flushes it: `dp["activity"]`)."""
    storage = RedisStorage(redis, key_builder=DefaultKeyBuilder(prefix=f"fsm:{holder.current.key}"))
    dp = Dispatcher(storage=storage)
    dp["db"] = db
    dp["redis"] = redis
    dp["holder"] = holder
    dp["group_cache"] = GroupCache()
    dp["activity"] = activity or ActivityBuffer(db=db, redis=redis)
    dp.message.outer_middleware(ActivityMiddleware(holder, dp["activity"]))
    dp.include_routers(*routers())
    install_context(dp, holder)
    return dp


def build_bot(token: str, api_base: str | None) -> Bot:
    """A Bot talking to `api_base` (the public Bot API, a local Bot API server or the emulator)."""
    server = TelegramAPIServer.from_base(api_base or PUBLIC_BOT_API)
    return Bot(token, session=AiohttpSession(api=server))
