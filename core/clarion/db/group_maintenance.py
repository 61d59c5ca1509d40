"""The group-maintenance workers' queries: inactivity (warn, remove, dry run) and invite links (ADR 0010).

The workers run as the namespace's tenant role (clarion.db.tenancy: their grants are the block marked
"the group-maintenance workers"). Every write is a compare-and-set, so an entry handled twice changes
nothing the first run did not:

- a warning or removal moves the member row from the status it was read in, and writes its audit row in
  the same transaction; a row another run (or the bot's activity tracking) moved first is left alone;
- an invite link is stored only for a later period (`invite_link_slot`) than the stored one.

Days of silence are counted by Postgres's clock (`now()`), the one tests move by moving
`last_activity_at` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clarion.db.notifications import audit
from clarion.db.pool import Db

ACTOR = "group-maintenance"
#: At most this many dry-run candidates are stored (the status shows them; the count has them all).
DRY_RUN_LISTED = 100


@dataclass(frozen=True)
class Silent:
    """A member silent long enough to be warned or removed, with what the warning needs."""

    user_id: int
    status: str
    days_silent: int
    first_name: str | None
    """From the member's join request, when they joined through one."""
    language: str | None
    """From the join request, else the member's subscriber row of the channel."""
    removing: bool = False
    """A removal was begun (`begin_removal`) and not finished: the ban may stand without its unban."""


# A warned member counts as silent from the time they were last seen; one who spoke after the warning is
# a member again (readmit). `days_silent` is whole days.
_SILENT = """SELECT m.user_id, m.status, floor(extract(epoch FROM now() - m.last_activity_at) / 86400)::int
                    AS days_silent, r.first_name, coalesce(r.language, s.language) AS language,
                    coalesce(m.removed_at >= m.last_activity_at, false) AS removing
             FROM group_members m
             JOIN managed_groups g ON g.id = m.group_id
             LEFT JOIN group_join_requests r ON r.group_id = m.group_id AND r.user_id = m.user_id
             LEFT JOIN subscribers s ON s.channel_id = g.channel_id AND s.chat_id = m.user_id
             WHERE m.group_id = $1 AND NOT (m.user_id = ANY($2::bigint[]))"""


async def readmit_active(db: Db, group_id: int) -> int:
    """Warned members seen after their warning are members again; how many."""
    result: str = await db.execute(
        """UPDATE group_members SET status = 'member', warned_at = NULL
           WHERE group_id = $1 AND status = 'warned' AND last_activity_at > warned_at""", group_id)
    return int(result.split()[-1])


async def due_for_removal(db: Db, group_id: int, remove_after_days: int, excluded: list[int],
                          limit: int) -> list[Silent]:
    """Members and warned members silent for at least `remove_after_days`, longest silent first."""
    rows = await db.fetch(
        _SILENT + """ AND m.status IN ('member', 'warned')
                      AND m.last_activity_at <= now() - make_interval(days => $3)
                      ORDER BY m.last_activity_at, m.user_id LIMIT $4""",
        group_id, excluded, remove_after_days, limit)
    return [Silent(**dict(row)) for row in rows]


async def due_for_warning(db: Db, group_id: int, warn_after_days: int, excluded: list[int],
                          limit: int) -> list[Silent]:
    """Members (not yet warned) silent for at least `warn_after_days`, longest silent first."""
    rows = await db.fetch(
        _SILENT + """ AND m.status = 'member' AND m.last_activity_at <= now() - make_interval(days => $3)
                      ORDER BY m.last_activity_at, m.user_id LIMIT $4""",
        group_id, excluded, warn_after_days, limit)
    return [Silent(**dict(row)) for row in rows]


async def mark_warned(db: Db, group_id: int, user_id: int, warn_after_days: int,
                      details: dict[str, Any]) -> bool:
    """member → warned (still silent past `warn_after_days`), with its audit row; False if not so."""
    async with db.acquire() as conn, conn.transaction():
        warned = await conn.fetchval(
            """UPDATE group_members SET status = 'warned', warned_at = now()
               WHERE group_id = $1 AND user_id = $2 AND status = 'member'
                 AND last_activity_at <= now() - make_interval(days => $3)
               RETURNING true""", group_id, user_id, warn_after_days)
        if warned:
            await audit(conn, ACTOR, "group.member.warned", f"telegram:{user_id}", details)
    return bool(warned)


async def begin_removal(db: Db, group_id: int, user_id: int) -> None:
    """Note that the member is being removed (`removed_at`, status unchanged) before the ban, so that a
    run cut short between ban and unban is finished by the next one rather than taken for an
    administrator's ban. A member seen again later (`last_activity_at` after it) is not being removed."""
    await db.execute(
        """UPDATE group_members SET removed_at = now()
           WHERE group_id = $1 AND user_id = $2 AND status IN ('member', 'warned')""", group_id, user_id)


async def mark_removed(db: Db, group_id: int, user_id: int, details: dict[str, Any]) -> bool:
    """member or warned → removed, with its audit row; False if another run removed them first."""
    async with db.acquire() as conn, conn.transaction():
        removed = await conn.fetchval(
            """UPDATE group_members SET status = 'removed', removed_at = now()
               WHERE group_id = $1 AND user_id = $2 AND status IN ('member', 'warned')
               RETURNING true""", group_id, user_id)
        if removed:
            await audit(conn, ACTOR, "group.member.removed", f"telegram:{user_id}", details)
    return bool(removed)


async def mark_left(db: Db, group_id: int, user_id: int) -> None:
    """The member is no longer in the chat (Telegram says so): nothing to warn or remove."""
    await db.execute(
        """UPDATE group_members SET status = 'left'
           WHERE group_id = $1 AND user_id = $2 AND status IN ('member', 'warned')""", group_id, user_id)


async def dry_run_candidates(db: Db, group_id: int, remove_after_days: int,
                             excluded: list[int]) -> tuple[list[int], int]:
    """Whom a sweep would remove now: the first DRY_RUN_LISTED user ids (ascending) and how many in all."""
    row = await db.fetchrow(
        """SELECT (array_agg(user_id ORDER BY user_id))[1:$4] AS listed, count(*)::int AS total
           FROM group_members
           WHERE group_id = $1 AND status IN ('member', 'warned') AND NOT (user_id = ANY($2::bigint[]))
             AND last_activity_at <= now() - make_interval(days => $3)""",
        group_id, excluded, remove_after_days, DRY_RUN_LISTED)
    assert row is not None
    return list(row["listed"] or []), int(row["total"])


async def record_dry_run(db: Db, group_id: int, listed: list[int], total: int) -> None:
    await db.execute(
        """UPDATE managed_groups SET dry_run_candidates = $2, dry_run_candidate_count = $3, dry_run_at = now()
           WHERE id = $1""", group_id, listed, total)


async def clear_dry_run(db: Db, group_id: int) -> None:
    """Forget a dry run's list (the policy now acts); no write when there is none."""
    await db.execute(
        """UPDATE managed_groups
           SET dry_run_candidates = NULL, dry_run_candidate_count = NULL, dry_run_at = NULL
           WHERE id = $1 AND (dry_run_at IS NOT NULL OR dry_run_candidates IS NOT NULL
                              OR dry_run_candidate_count IS NOT NULL)""", group_id)


async def invite_link_slot(db: Db, group_id: int) -> int | None:
    """The rotation period the stored invite link was made for (None: no link yet)."""
    slot: int | None = await db.fetchval("SELECT invite_link_slot FROM managed_groups WHERE id = $1",
                                         group_id)
    return slot


@dataclass(frozen=True)
class Stored:
    """The new link was stored; `previous` is the link it replaced (to revoke), if any."""

    previous: str | None


async def store_invite_link(db: Db, group_id: int, slot: int, link: str,
                            expires_at: datetime | None) -> Stored | None:
    """Make `link` the group's current one for period `slot`, unless a link for this period or a later one
    is stored already (then None: the caller revokes its own, surplus link)."""
    row = await db.fetchrow(
        """WITH old AS (SELECT id, invite_link FROM managed_groups
                        WHERE id = $1 AND deleted_at IS NULL
                          AND (invite_link_slot IS NULL OR invite_link_slot < $2)
                        FOR UPDATE)
           UPDATE managed_groups g
           SET invite_link = $3, invite_link_expires_at = $4, invite_link_slot = $2
           FROM old WHERE g.id = old.id
           RETURNING old.invite_link AS previous""", group_id, slot, link, expires_at)
    return Stored(row["previous"]) if row is not None else None
