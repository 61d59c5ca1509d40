"""The one place status is written, and the handler wrapper that parses each body once.

Handlers build the whole new status as the resource's status model; `write_status` patches only
the fields that differ from the status the object had, so a pass that changed nothing writes
nothing. A spec that does not parse never reaches a handler: `typed` reports it as
`Ready=False`/`InvalidSpec` (the message names the field) and returns, so kopf does not retry it
until the spec changes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, TypeVar

import kopf
from clarion.models import (
    CommonReason,
    Condition,
    ConditionType,
    CustomObject,
    InvalidSpec,
    changed_conditions,
    merge_conditions,
)
from clarion.models.base import ResourceStatus

R = TypeVar("R", bound=CustomObject[Any, Any])
S = TypeVar("S", bound=ResourceStatus)


def write_status(patch: kopf.Patch, old: S, new: S) -> None:
    """Patch each status field of `new` that differs from `old`; a field that became unset is removed."""
    dumped = new.model_dump(mode="json", by_alias=True)
    for name, info in type(new).model_fields.items():
        if getattr(old, name) != getattr(new, name):
            alias = info.alias or name
            patch.status[alias] = dumped[alias]


def announce_conditions(body: kopf.Body, old: Sequence[Condition], fresh: Iterable[Condition]) -> None:
    """An Event for each condition that changed: Ready either way (Normal when it turns true), any
    other condition when it turns False (Warning)."""
    for cond in changed_conditions(old, fresh):
        if cond.type == ConditionType.READY or cond.status == "False":
            kopf.event(body, type="Normal" if cond.is_true else "Warning", reason=cond.reason,
                       message=cond.message)


def report_invalid_spec(body: kopf.Body, patch: kopf.Patch, error: InvalidSpec) -> None:
    """Ready=False with reason InvalidSpec and the field path in the message; an Event when it is news."""
    ready = Condition.of(ConditionType.READY, False, CommonReason.INVALID_SPEC, error.message)
    old = error.status
    generation = error.meta.generation
    conditions = merge_conditions(old.conditions, [ready], generation=generation, now=datetime.now(UTC))
    write_status(patch, old, old.model_copy(update={"conditions": conditions,
                                                    "observed_generation": generation}))
    if changed_conditions(old.conditions, [ready]):
        kopf.event(body, type="Warning", reason=CommonReason.INVALID_SPEC, message=error.message)


Handler = Callable[Concatenate[R, ...], Awaitable[None]]


def typed(model: type[R]) -> Callable[[Handler[R]], Callable[..., Awaitable[None]]]:
    """Wrap a handler that takes the parsed resource first: `async def fn(campaign, *, patch, ...)`.

    The wrapper parses the body into `model` and passes every kopf keyword on (indexes included).
    """
    def wrap(handler: Handler[R]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def parse_then_handle(*, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            try:
                resource = model.parse(body)
            except InvalidSpec as error:
                report_invalid_spec(body, patch, error)
                return
            await handler(resource, body=body, patch=patch, **kwargs)
        return parse_then_handle
    return wrap
