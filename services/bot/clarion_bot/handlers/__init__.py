"""One router per feature; `routers()` builds them in the order the dispatcher must try them."""

from __future__ import annotations

from aiogram import Router

from clarion_bot.handlers import commands, diagnostics, join_requests, language, membership, support


def routers() -> list[Router]:
    """Diagnostics and commands first (a command is never an answer to a join question); the support inbox
    last, since it takes any other private message."""
    return [module.build_router()
            for module in (diagnostics, language, commands, join_requests, membership, support)]
