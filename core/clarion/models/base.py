"""Building blocks shared by the CRD models: the camelCase base model, references, conditions, CEL rules."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from clarion.models.timezones import TIME_ZONES

# Kubernetes object names (DNS-1123 subdomain) and Secret data keys.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# An HTTP(S) URL; the API server checks the shape, the operator the reachability.
HTTP_URL = r"^https?://[^\s]+$"
# Condition reasons are CamelCase words (metav1.Condition).
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"



def rfc3339(moment: datetime) -> str:
    """An aware timestamp the way Kubernetes writes them: UTC, seconds precision, `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Timestamps in status: RFC 3339 strings on the wire (seconds, `Z`), aware datetimes in Python.
Timestamp = Annotated[
    datetime,
    Field(json_schema_extra={"maxLength": 64}),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
]
# Telegram chat and user ids: 64-bit, negative for groups and channels.
ChatId = Annotated[int, Field(ge=-(2**53), le=2**53, json_schema_extra={"format": "int64"})]
Count = Annotated[int, Field(ge=0, le=2**53, json_schema_extra={"format": "int64"})]


def cel(
    rule: str,
    message: str,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; reason: FieldValueInvalid, -Required or -Forbidden.

    `message_expression` is CEL evaluated to the message when the rule fails; the API server falls back
    to `message` when it fails to evaluate or its result holds a line break.
    """
    entry = {"rule": rule, "message": message}
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def cel_string(text: str) -> str:
    """`text` as a CEL string literal (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


# How an unknown time zone is refused, by the models and by the API server (as CEL) alike.
UNKNOWN_TIME_ZONE = "unknown time zone '{zone}': use an IANA name such as Europe/Berlin"


def unknown_time_zone(zone: str) -> str:
    """The one-line refusal of a time zone not in TIME_ZONES."""
    return UNKNOWN_TIME_ZONE.format(zone=zone)


def time_zone_rule() -> dict[str, str]:
    """The CEL rule of a time zone field: one of TIME_ZONES, refused with `unknown_time_zone(self)`.

    An `enum` would do the check too, but the API server answers it with every allowed value.
    """
    before, after = UNKNOWN_TIME_ZONE.split("{zone}")
    return cel(
        f"self in [{', '.join(cel_string(zone) for zone in TIME_ZONES)}]",
        unknown_time_zone("..."),
        message_expression=f"{cel_string(before)} + self + {cel_string(after)}",
        reason="FieldValueInvalid",
    )


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """The `json_schema_extra` that attaches CEL rules to a model or a field."""
    return {"x-kubernetes-validations": list(entries)}


class CamelModel(BaseModel):
    """Base of every CRD model: camelCase names in YAML, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(CamelModel):
    """Base of status models: tolerant of fields written by other tools (kopf, kubectl)."""

    model_config = ConfigDict(extra="ignore")


class LocalObjectRef(CamelModel):
    """A reference to an object of the same namespace, by name."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the object.")


class SecretKeyRef(CamelModel):
    """A key of a Secret in the same namespace; the value itself is never written into the resource."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
        description="Key inside the Secret's data.",
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """Every condition type a Clarion resource reports."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SPEC_DRIFT = "SpecDrift"
    CREDENTIALS_VALID = "CredentialsValid"
    WEBHOOK_REGISTERED = "WebhookRegistered"
    TEMPLATES_VALID = "TemplatesValid"
    AUTOSCALER_READY = "AutoscalerReady"
    CHANNEL_READY = "ChannelReady"
    BOT_HAS_RIGHTS = "BotHasRights"


class CommonReason(StrEnum):
    """Condition reasons every resource can report."""

    INVALID_SPEC = "InvalidSpec"


def condition_status(value: bool | None) -> ConditionStatus:
    """True, False, or Unknown for None."""
    return "Unknown" if value is None else ("True" if value else "False")


class Condition(StatusModel):
    """One aspect of the resource's current state (Kubernetes API conventions)."""

    type: str = Field(
        min_length=1,
        max_length=316,
        description="Kind of condition, CamelCase (Ready, CredentialsValid, WebhookRegistered, ...).",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="Unknown",
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON,
        description="One CamelCase word saying why the condition is in this state.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: Timestamp | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        le=2**53,
        json_schema_extra={"format": "int64"},
        description="metadata.generation the condition was computed from.",
    )

    @classmethod
    def of(cls, type_: str, status: bool | ConditionStatus | None, reason: str, message: str = "") -> Self:
        """A condition without its timestamps; a None status is Unknown."""
        text = status if isinstance(status, str) else condition_status(status)
        return cls(type=type_, status=text, reason=reason, message=message)

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def merge_conditions(
    old: Sequence[Condition],
    new: Iterable[Condition],
    *,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`old` with each of `new` replacing the condition of its type, in `old`'s order.

    lastTransitionTime moves only when a condition's status changes; conditions of types not in
    `new` are kept as they are. Each new condition records `generation`.
    """
    merged: dict[str, Condition] = {c.type: c for c in old}
    for cond in new:
        previous = merged.get(cond.type)
        kept = previous.last_transition_time if previous and previous.status == cond.status else None
        merged[cond.type] = cond.model_copy(update={
            "last_transition_time": kept or now.replace(microsecond=0), "observed_generation": generation})
    return list(merged.values())


def changed_conditions(old: Sequence[Condition], new: Iterable[Condition]) -> list[Condition]:
    """The conditions of `new` whose status or reason differs from `old` (each worth an Event)."""
    before = {c.type: (c.status, c.reason) for c in old}
    return [c for c in new if before.get(c.type) != (c.status, c.reason)]


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def conditions_field() -> Any:
    """The `conditions` field of a status: a list-map keyed by type."""
    return Field(
        default_factory=list,
        max_length=32,
        description="Current state of the resource, one entry per condition type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def observed_generation_field() -> Any:
    """The `observedGeneration` field of a status."""
    return Field(
        default=None,
        ge=0,
        le=2**53,
        json_schema_extra={"format": "int64"},
        description="metadata.generation the operator last acted on.",
    )


class ResourceStatus(StatusModel):
    """What the status of every Clarion resource has: conditions, and the generation they answer."""

    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = observed_generation_field()
