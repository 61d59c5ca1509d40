"""Status conditions as plain dicts (Kubernetes API conventions), computed without I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    """An aware timestamp the way Kubernetes writes them: UTC, seconds precision, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    """The aware datetime of an RFC 3339 string, or None."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def condition(type_: str, status: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    """One condition without its timestamps; `None` status means Unknown."""
    text = "Unknown" if status is None else ("True" if status else "False")
    return {"type": type_, "status": text, "reason": reason, "message": message}


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None,
    new: Iterable[Mapping[str, Any]],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """`old` with each of `new` replacing the condition of its type.

    lastTransitionTime moves only when a condition's status changes; conditions of types not in
    `new` are kept as they are.
    """
    stamp = rfc3339(now)
    result: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in (old or ()) if "type" in c}
    for cond in new:
        previous = result.get(cond["type"])
        moved = previous is None or previous.get("status") != cond["status"]
        merged = dict(cond)
        kept = None if moved or previous is None else previous.get("lastTransitionTime")
        merged["lastTransitionTime"] = kept or stamp
        if generation is not None:
            merged["observedGeneration"] = generation
        result[cond["type"]] = merged
    return list(result.values())


def transitions(
    old: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The conditions of `new` whose status or reason differs from `old` (worth an Event)."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in (old or ())}
    return [dict(c) for c in new if before.get(c["type"]) != (c["status"], c["reason"])]
