"""Building blocks shared by the CRD models: the camelCase base model, references, conditions, CEL rules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Kubernetes object names (DNS-1123 subdomain) and Secret data keys.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# An HTTP(S) URL; the API server checks the shape, the operator the reachability.
HTTP_URL = r"^https?://[^\s]+$"
# Condition reasons are CamelCase words (metav1.Condition).
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# Timestamps in status: RFC 3339 strings on the wire, aware datetimes in Python.
Timestamp = Annotated[datetime, Field(json_schema_extra={"maxLength": 64})]
# Telegram chat and user ids: 64-bit, negative for groups and channels.
ChatId = Annotated[int, Field(ge=-(2**53), le=2**53, json_schema_extra={"format": "int64"})]
Count = Annotated[int, Field(ge=0, le=2**53, json_schema_extra={"format": "int64"})]


def cel(
    rule: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; reason: FieldValueInvalid, -Required or -Forbidden."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


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


def upsert_condition(
    conditions: Sequence[Condition],
    new: Condition,
    *,
    now: datetime | None = None,
) -> list[Condition]:
    """Conditions with `new` replacing its type; lastTransitionTime moves only when the status changes."""
    stamp = now or datetime.now(UTC)
    result: list[Condition] = []
    replaced = False
    for old in conditions:
        if old.type != new.type:
            result.append(old)
            continue
        replaced = True
        moved = old.status != new.status or old.last_transition_time is None
        result.append(
            new.model_copy(update={"last_transition_time": stamp if moved else old.last_transition_time})
        )
    if not replaced:
        result.append(new.model_copy(update={"last_transition_time": new.last_transition_time or stamp}))
    return result


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
