"""What the group-maintenance workers read from Telegram's ChatMember objects (clarion.telegram.botapi)."""

from __future__ import annotations

from typing import Any

import pytest
from clarion.telegram.botapi import ChatMember

pytestmark = pytest.mark.unit

USER = {"id": 5, "is_bot": False, "first_name": "Ann", "language_code": "ru"}


@pytest.mark.parametrize(("member", "in_chat", "is_admin"), [
    ({"status": "creator"}, True, True),
    ({"status": "administrator"}, True, True),
    ({"status": "member"}, True, False),
    ({"status": "restricted", "is_member": True}, True, False),
    ({"status": "restricted", "is_member": False}, False, False),
    ({"status": "left"}, False, False),
    ({"status": "kicked", "until_date": 0}, False, False),
])
def test_chat_member_status_says_whether_the_user_is_in_the_chat_and_an_admin(
        member: dict[str, Any], in_chat: bool, is_admin: bool) -> None:
    parsed = ChatMember.from_api({**member, "user": USER})
    assert (parsed.in_chat, parsed.is_admin) == (in_chat, is_admin)
    assert (parsed.user_id, parsed.first_name, parsed.language_code) == (5, "Ann", "ru")
