"""One router per feature; `routers()` builds them in the order the dispatcher must try them."""

from __future__ import annotations

from aiogram import Router

from clarion_bot.handlers import commands, diagnostics, language, membership, support


def routers() -> list[Router]:
    """Diagnostics and commands first; the support inbox last, since it takes any other private message."""
    return [module.build_router() for module in (diagnostics, language, commands, membership, support)]
