"""The group-maintenance lane's work: one `GroupTask` of a channel's managed group at a time (ADR 0010).

`GroupMaintenance.handle(task)` does the task's kind; the lane's stream consumer acks the entry once it
returns, and leaves it pending (retried) when it raises. What each kind does:

- `inactivity-sweep` (the group in phase Monitoring with `spec.inactivity`): warned members seen since
  their warning become members again; members silent ≥ removeAfterDays are removed (banChatMember, then
  unbanChatMember with only_if_banned, so they may join again), at most `removalsPerMinute` in any
  60 s for the group (a sliding window in Redis, shared by every worker and surviving restarts; a sweep
  that reaches it stops, the next sweep goes on); members silent ≥ warnAfterDays and not yet warned get a
  warning in the group that mentions them (`warningText`, else the built-in text in their language), at
  most `WARNINGS_PER_SWEEP` per sweep. Never the chat's administrators or creator (getChatAdministrators
  at every sweep, getChatMember before each act), `exemptUserIds`, nor the bot. Each warning and removal
  is a compare-and-set on the member row with its audit row (`group.member.warned`,
  `group.member.removed`, actor `group-maintenance`), so a sweep run twice acts once. `dryRun`: nobody is
  warned or removed; whom a sweep would remove now is stored on the group's row for the operator's status
  and Event.
- `rotate-invite` (`spec.inviteLinks`): createChatInviteLink for the task's period (expiring after
  expireAfterHours, else rotateEveryHours; memberLimit in Growth, creates_join_request in Monitoring),
  stored only if no link for this period is (compare-and-set on `invite_link_slot`), then the previous
  link is revoked. A second run for the period makes no second link.
- any other kind: logged and acknowledged (an entry from an older or newer operator).

Telegram's answers (clarion.telegram.errors): 429 pauses the bot everywhere and raises (the entry is
retried after the pause); 5xx and network errors raise; a member gone from the chat is marked `left`;
the bot kicked, not an administrator, lacking a right, or the chat gone is logged and acknowledged: the
operator's rights check reports it (`BotHasRights`), and retrying could only loop. The warning takes a
send slot of the shared limiter (the group's 20 per minute); the other calls send nothing into the chat
and only wait out a pause, as the bot's own non-message calls do.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
import structlog
from clarion.db import group_maintenance as q
from clarion.db import groups
from clarion.db.channels import ChannelRecord
from clarion.db.groups import GroupRecord
from clarion.i18n import Translator, pick_language
from clarion.metrics import counter
from clarion.models.group import Inactivity
from clarion.ratelimit import SharedRateLimit
from clarion.streams import GroupTask, GroupTaskKind, rate_key
from clarion.telegram.botapi import BotApi, BotApiError, ChatMember
from clarion.telegram.errors import Outcome, classify
from clarion.telegram.limiter import RateLimiter

log = structlog.get_logger("clarion.group_maintenance")

T = TypeVar("T")

#: Warnings posted by one sweep at most: a minute of the group's default send budget (20 per minute,
#: shared with the group's posts), so a sweep holds its entry for about a minute, not hours.
WARNINGS_PER_SWEEP = 20
#: Removal candidates read per sweep beyond the cap (some turn out gone or promoted).
_SLACK = 20

ACTIONS = counter("clarion_group_maintenance_total",
                  "Group-maintenance outcomes by kind and result (warned, removed, left, capped, "
                  "dry_run, rotated, skipped, unknown_kind, telegram_refused).", ["kind", "result"])

#: 400 descriptions that mean the user is not in the chat (any more).
_NOT_IN_CHAT = ("user not found", "user_not_participant", "participant_id_invalid", "member not found",
                "user_id_invalid")
#: 400 descriptions that mean the user may not be removed: an administrator or the owner.
_PROTECTED = ("administrator", "chat owner", "user_admin_invalid")
#: revokeChatInviteLink's answers for a link that is already expired or revoked.
_LINK_GONE = ("invite_hash_expired", "invite_hash_invalid")


class _Refused(Exception):
    """Telegram refused the group's maintenance for a reason retrying cannot help (logged, acked)."""


class GroupMaintenance:
    """Handles one channel's group-maintenance entries with its Bot API client and the shared limiter."""

    def __init__(self, *, pool: asyncpg.Pool, redis: aioredis.Redis, api: BotApi, limiter: RateLimiter,
                 channel: ChannelRecord) -> None:
        self.pool = pool
        self.api = api
        self.limiter = limiter
        self.channel = channel
        self._window = SharedRateLimit(redis)

    async def handle(self, task: GroupTask) -> None:
        """Do the task; raise to have it retried (429 after pausing the bot, 5xx, network, Postgres,
        Redis)."""
        bound = log.bind(channel=self.channel.key, group=f"{task.namespace}/{task.name}", kind=str(task.kind),
                         trace_id=task.trace_id)
        group = await groups.get_group_by_id(self.pool, task.group_id)
        if group is None or group.channel_id != self.channel.id:
            bound.info("group_maintenance_no_group")
            ACTIONS.labels(str(task.kind), "skipped").inc()
            return
        try:
            if task.kind is GroupTaskKind.INACTIVITY_SWEEP:
                await self._sweep(group, bound)
            elif task.kind is GroupTaskKind.ROTATE_INVITE:
                await self._rotate(group, task.slot, bound)
            else:
                bound.info("group_maintenance_kind_unknown")
                ACTIONS.labels(str(task.kind), "unknown_kind").inc()
        except _Refused as refused:
            bound.warning("group_maintenance_refused", error=str(refused))
            ACTIONS.labels(str(task.kind), "telegram_refused").inc()

    # --- Telegram ------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, send_to: int | None = None,
                    **kwargs: Any) -> T:
        """One Bot API call: a send slot first when it posts into `send_to`, else only a pause waited out.

        429 pauses the bot everywhere and raises; a refusal retrying cannot help becomes `_Refused`; a
        400 about the user (gone, protected) is raised as it came, for the caller to judge.
        """
        if send_to is not None:
            await self.limiter.acquire(send_to)
        elif (paused := self.limiter.paused_for()) > 0:
            await asyncio.sleep(paused)
        try:
            return await method(*args, **kwargs)
        except BotApiError as exc:
            found = classify(exc)
            if found.outcome is Outcome.RATE_LIMITED:
                await self.limiter.pause(found.retry_after)
                raise
            if found.outcome is Outcome.RETRY or _about_user(exc):
                raise
            raise _Refused(found.error) from exc

    # --- inactivity ----------------------------------------------------------------------------

    async def _sweep(self, group: GroupRecord, bound: Any) -> None:
        policy = group.spec.inactivity
        kind = str(GroupTaskKind.INACTIVITY_SWEEP)
        if policy is None or group.phase != "Monitoring":
            bound.info("group_sweep_not_due", phase=group.phase, inactivity=policy is not None)
            ACTIONS.labels(kind, "skipped").inc()
            return
        admins = await self._call(self.api.get_chat_administrators, group.chat_id)
        excluded = sorted({m.user_id for m in admins} | set(policy.exempt_user_ids)
                          | ({self.channel.bot_id} if self.channel.bot_id is not None else set()))
        if policy.dry_run:
            listed, total = await q.dry_run_candidates(self.pool, group.id, policy.remove_after_days,
                                                       excluded)
            await q.record_dry_run(self.pool, group.id, listed, total)
            bound.info("group_sweep_dry_run", would_remove=total)
            ACTIONS.labels(kind, "dry_run").inc()
            return
        await q.clear_dry_run(self.pool, group.id)
        await q.readmit_active(self.pool, group.id)
        removed = await self._remove(group, policy, excluded, bound)
        warned = await self._warn(group, policy, excluded)
        bound.info("group_sweep_done", removed=removed, warned=warned)

    def _details(self, group: GroupRecord, member: q.Silent) -> dict[str, Any]:
        return {"channel": self.channel.key, "namespace": group.namespace, "group": group.name,
                "group_id": group.id, "chat_id": group.chat_id, "user_id": member.user_id,
                "days_silent": member.days_silent}

    async def _member(self, group: GroupRecord, silent: q.Silent) -> ChatMember | None:
        """The member as Telegram sees them now; None (and the row marked left) when gone from the chat.

        Banned with a removal of ours begun (a run cut short between ban and unban): the unban and the
        row's `removed` are finished here. Banned otherwise (an administrator's ban): left alone, `left`.
        """
        try:
            member = await self._call(self.api.get_chat_member, group.chat_id, silent.user_id)
        except BotApiError as exc:
            if not _not_in_chat(exc):
                raise
            member = None
        if member is not None and member.status == "kicked" and silent.removing:
            await self._call(self.api.unban_chat_member, group.chat_id, silent.user_id)
            await self._removed(group, silent)
            return None
        if member is None or not member.in_chat:
            await q.mark_left(self.pool, group.id, silent.user_id)
            ACTIONS.labels(str(GroupTaskKind.INACTIVITY_SWEEP), "left").inc()
            return None
        return member

    async def _removed(self, group: GroupRecord, silent: q.Silent) -> bool:
        policy = group.spec.inactivity
        assert policy is not None
        details = self._details(group, silent) | {"remove_after_days": policy.remove_after_days}
        if not await q.mark_removed(self.pool, group.id, silent.user_id, details):
            return False
        ACTIONS.labels(str(GroupTaskKind.INACTIVITY_SWEEP), "removed").inc()
        return True

    async def _remove(self, group: GroupRecord, policy: Inactivity, excluded: list[int], bound: Any) -> int:
        kind = str(GroupTaskKind.INACTIVITY_SWEEP)
        window = rate_key(self.channel.bot_id or 0, f"group-removals:{group.chat_id}")
        removed = 0
        for silent in await q.due_for_removal(self.pool, group.id, policy.remove_after_days, excluded,
                                              policy.removals_per_minute + _SLACK):
            member = await self._member(group, silent)
            if member is None or member.is_admin:
                continue
            allowed, _ = await self._window.allow_in_window(window, policy.removals_per_minute, 60.0)
            if not allowed:
                bound.info("group_removals_capped", per_minute=policy.removals_per_minute)
                ACTIONS.labels(kind, "capped").inc()
                break
            await q.begin_removal(self.pool, group.id, silent.user_id)
            try:
                await self._call(self.api.ban_chat_member, group.chat_id, silent.user_id)
                await self._call(self.api.unban_chat_member, group.chat_id, silent.user_id)
            except BotApiError as exc:
                if _not_in_chat(exc):
                    await q.mark_left(self.pool, group.id, silent.user_id)
                    continue
                if _protected(exc):
                    continue
                raise
            removed += await self._removed(group, silent)
        return removed

    async def _warn(self, group: GroupRecord, policy: Inactivity, excluded: list[int]) -> int:
        warned = 0
        for silent in await q.due_for_warning(self.pool, group.id, policy.warn_after_days, excluded,
                                              WARNINGS_PER_SWEEP):
            member = await self._member(group, silent)
            if member is None or member.is_admin:
                continue
            text = self._warning(policy, silent, member)
            await self._call(self.api.send_message, group.chat_id, text, parse_mode="HTML",
                             send_to=group.chat_id)
            details = self._details(group, silent) | {"warn_after_days": policy.warn_after_days}
            if await q.mark_warned(self.pool, group.id, silent.user_id, policy.warn_after_days, details):
                warned += 1
                ACTIONS.labels(str(GroupTaskKind.INACTIVITY_SWEEP), "warned").inc()
        return warned

    def _warning(self, policy: Inactivity, silent: q.Silent, member: ChatMember) -> str:
        """The warning as HTML, mentioning the member by a tg://user link on their first name."""
        name = member.first_name or silent.first_name or str(silent.user_id)
        mention = f'<a href="tg://user?id={silent.user_id}">{html.escape(name)}</a>'
        if policy.warning_text is not None:
            return html.escape(policy.warning_text, quote=False).replace("{name}", mention)
        language = pick_language(member.language_code, silent.language, default=self.channel.default_language)
        return Translator(language)("groups.inactivity_warning", name=mention, days=silent.days_silent,
                                    remove_days=policy.remove_after_days)

    # --- invite links --------------------------------------------------------------------------

    async def _rotate(self, group: GroupRecord, slot: int, bound: Any) -> None:
        kind = str(GroupTaskKind.ROTATE_INVITE)
        links = group.spec.invite_links
        stored = await q.invite_link_slot(self.pool, group.id)
        if links is None or (stored is not None and stored >= slot):
            bound.info("group_rotation_not_due", slot=slot, stored_slot=stored,
                       invite_links=links is not None)
            ACTIONS.labels(kind, "skipped").inc()
            return
        expire = int(time.time()) + 3600 * (links.expire_after_hours or links.rotate_every_hours)
        monitoring = group.phase == "Monitoring"
        chat = group.chat_id
        link = await self._call(self.api.create_chat_invite_link, chat, name=links.name or None,
                                expire_date=expire, member_limit=None if monitoring else links.member_limit,
                                creates_join_request=True if monitoring else None)
        done = await q.store_invite_link(self.pool, group.id, slot, link, datetime.fromtimestamp(expire, UTC))
        surplus = link if done is None else done.previous
        if surplus is not None:
            try:
                await self._call(self.api.revoke_chat_invite_link, chat, surplus)
            except _Refused as refused:
                if not any(gone in str(refused).lower() for gone in _LINK_GONE):
                    raise
        bound.info("group_invite_rotated" if done is not None else "group_rotation_raced", slot=slot)
        ACTIONS.labels(kind, "rotated" if done is not None else "skipped").inc()


def _about_user(exc: BotApiError) -> bool:
    return exc.status == 400 and (_not_in_chat(exc) or _protected(exc))


def _not_in_chat(exc: BotApiError) -> bool:
    text = exc.description.lower()
    return exc.status == 400 and any(needle in text for needle in _NOT_IN_CHAT)


def _protected(exc: BotApiError) -> bool:
    text = exc.description.lower()
    return exc.status == 400 and any(needle in text for needle in _PROTECTED)
