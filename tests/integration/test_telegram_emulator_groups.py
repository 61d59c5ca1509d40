"""Group administration in the emulator, as Telegram does it: the bot's own admin rights, chat_member
updates, invite links and the refusals of a bot without the right (aiogram's Bot, unchanged)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import ChatMemberAdministrator
from clarion_dev.telegram import Emulator
from clarion_dev.testing.telegram import aiogram_bot

pytestmark = pytest.mark.integration

OWNER, BOB, DAVE, ERIN = 601, 602, 604, 605
GROUP = -100_901
GROUP_UPDATES = ["message", "chat_member", "chat_join_request"]


@pytest.fixture
async def world(telegram_emulator: Emulator) -> Emulator:
    emu = telegram_emulator
    emu.add_user(OWNER, "Olga", "olga")
    emu.add_user(BOB, "Bob")
    emu.add_user(DAVE, "Dave", "dave")
    emu.add_user(ERIN, "Erin")
    emu.add_group(GROUP, "Runners", members=[BOB], admins=[OWNER])
    return emu


@pytest.fixture
async def bot(world: Emulator) -> AsyncIterator[Bot]:
    info = world.add_bot(username="runners_bot")
    client = aiogram_bot(world, info.token, timeout=5)
    await client.get_updates(allowed_updates=GROUP_UPDATES)  # chat_member only when asked for
    try:
        yield client
    finally:
        await client.session.close()


async def _updates(bot: Bot) -> list[dict[str, Any]]:
    """Every queued update as the raw JSON Telegram sends, confirmed afterwards."""
    raw = [u.model_dump(mode="json", exclude_none=True, by_alias=True) for u in await bot.get_updates()]
    if raw:
        await bot.get_updates(offset=raw[-1]["update_id"] + 1)
    return raw


async def test_get_chat_member_of_the_bot_shows_exactly_the_rights_a_test_gives_it(
    world: Emulator, bot: Bot,
) -> None:
    me = await bot.get_chat_member(GROUP, bot.id)
    assert isinstance(me, ChatMemberAdministrator)
    assert me.can_invite_users and me.can_restrict_members and me.can_delete_messages

    world.set_bot_rights(bot.token, GROUP, ["can_invite_users", "can_delete_messages"])
    me = await bot.get_chat_member(GROUP, bot.id)
    assert isinstance(me, ChatMemberAdministrator)
    assert (me.can_invite_users, me.can_delete_messages, me.can_restrict_members) == (True, True, False)
    with pytest.raises(TelegramBadRequest, match="not enough rights to restrict/unrestrict chat member"):
        await bot.ban_chat_member(GROUP, BOB)
    assert (await bot.get_chat_member(GROUP, BOB)).status == "member"

    world.set_bot_rights(bot.token, GROUP, None)
    assert (await bot.get_chat_member(GROUP, bot.id)).status == "member"
    with pytest.raises(TelegramBadRequest, match="not enough rights to manage chat invite links"):
        await bot.create_chat_invite_link(GROUP)
    with pytest.raises(ValueError, match="unknown administrator rights"):
        world.set_bot_rights(bot.token, GROUP, ["can_fly"])


async def test_approving_a_join_request_needs_can_invite_users_and_sends_chat_member(
    world: Emulator, bot: Bot,
) -> None:
    world.set_bot_rights(bot.token, GROUP, ["can_restrict_members"])
    await world.request_join(bot.token, GROUP, DAVE)
    with pytest.raises(TelegramBadRequest, match="not enough rights to manage chat join requests"):
        await bot.approve_chat_join_request(GROUP, DAVE)
    world.set_bot_rights(bot.token, GROUP, ["can_invite_users"])  # granted later: the request waited
    assert await bot.approve_chat_join_request(GROUP, DAVE) is True

    updates = await _updates(bot)
    assert [next(k for k in u if k != "update_id") for u in updates] == ["chat_join_request", "chat_member"]
    joined = updates[1]["chat_member"]
    assert joined["chat"]["id"] == GROUP and joined["from"]["id"] == bot.id
    assert joined["old_chat_member"]["status"] == "left" and joined["new_chat_member"]["status"] == "member"
    assert joined["new_chat_member"]["user"]["id"] == DAVE and joined["via_join_request"] is True
    assert await bot.get_chat_member_count(GROUP) == 4


async def test_ban_unban_and_leaving_send_chat_member_updates(world: Emulator, bot: Bot) -> None:
    await bot.ban_chat_member(GROUP, BOB)
    await bot.unban_chat_member(GROUP, BOB)
    await world.request_join(bot.token, GROUP, DAVE)
    await bot.approve_chat_join_request(GROUP, DAVE)
    await world.leave_group(GROUP, DAVE)

    changes = [u["chat_member"] for u in await _updates(bot) if "chat_member" in u]
    moves = [(c["new_chat_member"]["user"]["id"], c["old_chat_member"]["status"],
              c["new_chat_member"]["status"]) for c in changes]
    assert moves == [(BOB, "member", "kicked"), (BOB, "kicked", "left"), (DAVE, "left", "member"),
                     (DAVE, "member", "left")]
    assert (await bot.get_chat_member(GROUP, BOB)).status == "left"


async def test_chat_member_is_sent_only_to_bots_that_asked_for_it(world: Emulator, bot: Bot) -> None:
    await bot.get_updates(allowed_updates=["message"])
    await bot.ban_chat_member(GROUP, BOB)
    assert await _updates(bot) == []


async def test_invite_link_joins_at_once_until_its_member_limit(world: Emulator, bot: Bot) -> None:
    link = await bot.create_chat_invite_link(GROUP, name="spring", member_limit=1,
                                             expire_date=int(time.time()) + 3600)
    assert link.invite_link.startswith("https://t.me/+") and link.name == "spring"
    assert link.member_limit == 1 and not link.creates_join_request and not link.is_revoked

    update = await world.join_by_link(link.invite_link, DAVE)
    assert update is not None
    joined = update["chat_member"]
    assert joined["new_chat_member"]["status"] == "member" and joined["from"]["id"] == DAVE
    assert joined["invite_link"]["invite_link"] == link.invite_link
    with pytest.raises(ValueError, match="USERS_TOO_MUCH"):
        await world.join_by_link(link.invite_link, ERIN)
    assert (await bot.get_chat_member(GROUP, ERIN)).status == "left"


async def test_invite_link_with_creates_join_request_produces_a_join_request(
    world: Emulator, bot: Bot,
) -> None:
    link = await bot.create_chat_invite_link(GROUP, creates_join_request=True)
    update = await world.join_by_link(link.invite_link, ERIN)
    assert update is not None
    request = update["chat_join_request"]
    assert request["from"]["id"] == ERIN and request["user_chat_id"] == ERIN
    assert request["invite_link"]["invite_link"] == link.invite_link
    assert (await bot.get_chat_member(GROUP, ERIN)).status == "left"
    assert await bot.decline_chat_join_request(GROUP, ERIN) is True
    with pytest.raises(TelegramBadRequest, match="member limit can't be specified"):
        await bot.create_chat_invite_link(GROUP, creates_join_request=True, member_limit=5)


async def test_revoked_or_expired_links_cannot_be_used_and_edits_are_checked(
    world: Emulator, bot: Bot,
) -> None:
    link = await bot.create_chat_invite_link(GROUP, name="old")
    edited = await bot.edit_chat_invite_link(GROUP, link.invite_link, name="renamed", member_limit=10)
    assert (edited.name, edited.member_limit) == ("renamed", 10)
    with pytest.raises(TelegramBadRequest, match="EXPIRE_DATE_INVALID"):
        await bot.edit_chat_invite_link(GROUP, link.invite_link, expire_date=int(time.time()) - 10)
    with pytest.raises(TelegramBadRequest, match="USAGE_LIMIT_INVALID"):
        await bot.create_chat_invite_link(GROUP, member_limit=100_000)
    with pytest.raises(TelegramBadRequest, match="invite link name is too long"):
        await bot.create_chat_invite_link(GROUP, name="x" * 33)

    revoked = await bot.revoke_chat_invite_link(GROUP, link.invite_link)
    assert revoked.is_revoked
    with pytest.raises(ValueError, match="INVITE_HASH_EXPIRED"):
        await world.join_by_link(link.invite_link, DAVE)
    with pytest.raises(TelegramBadRequest, match="INVITE_HASH_EXPIRED"):
        await bot.edit_chat_invite_link(GROUP, link.invite_link, name="again")
    with pytest.raises(TelegramBadRequest, match="INVITE_HASH_EXPIRED"):
        await bot.revoke_chat_invite_link(GROUP, "https://t.me/+nosuchlink")

    short = await bot.create_chat_invite_link(GROUP, expire_date=int(time.time()) + 3600)
    world.groups[GROUP].invite_links[short.invite_link].expire_date = int(time.time()) - 1  # time passed
    with pytest.raises(ValueError, match="INVITE_HASH_EXPIRED"):
        await world.join_by_link(short.invite_link, DAVE)
    assert (await bot.get_chat_member(GROUP, DAVE)).status == "left"


async def test_deleting_someone_elses_message_needs_can_delete_messages(world: Emulator, bot: Bot) -> None:
    first = await world.user_sends_in_group(bot.token, GROUP, BOB, "spam")
    second = await world.user_sends_in_group(bot.token, GROUP, BOB, "more spam")
    world.set_bot_rights(bot.token, GROUP, ["can_invite_users"])
    with pytest.raises(TelegramBadRequest, match="message can't be deleted"):
        await bot.delete_message(GROUP, first["message"]["message_id"])
    world.set_bot_rights(bot.token, GROUP, ["can_delete_messages"])
    assert await bot.delete_message(GROUP, second["message"]["message_id"]) is True
    assert world.message(bot.token, GROUP, second["message"]["message_id"]) is None


async def test_control_api_sets_rights_and_lets_users_join_and_leave(world: Emulator, bot: Bot) -> None:
    async with aiohttp.ClientSession(base_url=world.base_url) as http:
        reply = await http.post("/_emulator/groups/bot_rights",
                                json={"token": bot.token, "chat_id": GROUP, "rights": ["can_invite_users"]})
        assert (await reply.json())["ok"] is True
        me = await bot.get_chat_member(GROUP, bot.id)
        assert isinstance(me, ChatMemberAdministrator) and not me.can_restrict_members
        link = await bot.create_chat_invite_link(GROUP)
        joining = {"invite_link": link.invite_link, "user_id": DAVE}
        reply = await http.post("/_emulator/join_by_link", json=joining)
        assert (await reply.json())["result"]["chat_member"]["new_chat_member"]["status"] == "member"
        reply = await http.post("/_emulator/leave_group", json={"chat_id": GROUP, "user_id": DAVE})
        assert (await reply.json())["result"][0]["chat_member"]["new_chat_member"]["status"] == "left"
        bad = await http.post("/_emulator/groups/bot_rights",
                              json={"token": bot.token, "chat_id": GROUP, "rights": "all"})
        assert bad.status == 400
