"""One router per feature; `routers()` builds them in the order the dispatcher must try them."""

from __future__ import annotations

from aiogram import Router

from clarion_bot.handlers import (
    commands,
    diagnostics,
    event_cards,
    group_commands,
    group_members,
    join_requests,
    language,
    membership,
    support,
)


def routers() -> list[Router]:
    """Diagnostics and commands first (a command is never an answer to a join question); the support inbox
    last, since it takes any other private message. Group messages reach no handler but the group
    commands; the activity middleware (clarion_bot.activity) sees each of them before."""
    return [module.build_router()
            for module in (diagnostics, event_cards, language, commands, group_commands, join_requests,
                           group_members, membership, support)]
