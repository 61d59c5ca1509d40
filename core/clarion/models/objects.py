"""Custom resources as the API server holds them, parsed once into typed objects.

A handler parses the body it is given with `BroadcastCampaign.parse(body)` (or the channel's or
group's class) and works with the typed object from then on: metadata, the spec model with every
default filled in, and the status as it was last written. A spec that does not parse raises
`InvalidSpec`, whose message names the field; the metadata and the old status still come with it,
so the caller can report the problem in status without crashing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clarion.models.base import CamelModel, ResourceStatus, Timestamp
from clarion.models.campaign import BroadcastCampaignSpec, BroadcastCampaignStatus
from clarion.models.channel import NotificationChannelSpec, NotificationChannelStatus
from clarion.models.group import ManagedGroupSpec, ManagedGroupStatus
from clarion.models.route import NotificationRouteSpec, NotificationRouteStatus

SpecT = TypeVar("SpecT", bound=CamelModel)
StatusT = TypeVar("StatusT", bound=ResourceStatus)


class ResourceKey(NamedTuple):
    """Where a namespaced object lives: the key of kopf indexes, `namespace/name` in logs."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class ObjectMeta(BaseModel):
    """The parts of `metadata` the operator reads."""

    model_config = ConfigDict(alias_generator=None, extra="ignore", populate_by_name=True)

    namespace: str = ""
    name: str = ""
    uid: str = ""
    generation: int | None = None
    creation_timestamp: Timestamp | None = Field(default=None, alias="creationTimestamp")


def field_path(error: Mapping[str, Any], root: str = "spec") -> str:
    """`spec.delivery.parallelism`, `spec.audience.chatIds[3]`: where a pydantic error is."""
    path = root
    for part in error.get("loc", ()):
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe(error: ValidationError, root: str = "spec") -> str:
    """One line per problem, each naming its field: `spec.delivery.parallelism: Input should be ...`."""
    return "; ".join(f"{field_path(e, root)}: {e['msg']}" for e in error.errors(include_url=False))


class InvalidSpec(ValueError):
    """A spec that does not parse; `message` names each field that is wrong."""

    def __init__(self, meta: ObjectMeta, status: ResourceStatus, message: str) -> None:
        super().__init__(message)
        self.meta = meta
        self.status = status
        self.message = message


class CustomObject(BaseModel, Generic[SpecT, StatusT]):
    """One custom resource: metadata, spec and status, each typed."""

    model_config = ConfigDict(frozen=True)
    spec_model: ClassVar[type[CamelModel]]
    status_model: ClassVar[type[ResourceStatus]]

    metadata: ObjectMeta
    spec: SpecT
    status: StatusT

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.metadata.namespace, self.metadata.name)

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def uid(self) -> str:
        return self.metadata.uid

    @property
    def generation(self) -> int | None:
        return self.metadata.generation

    @property
    def created_at(self) -> datetime | None:
        return self.metadata.creation_timestamp

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Self:
        """The typed resource of an API object (a kopf `Body` or a dict); raises InvalidSpec.

        A status that does not parse (written by hand, or by another tool) counts as empty: the
        operator writes it anew from what it observes.
        """
        meta = ObjectMeta.model_validate(dict(body.get("metadata") or {}))
        try:
            status = cls.status_model.model_validate(dict(body.get("status") or {}))
        except ValidationError:
            status = cls.status_model()
        try:
            spec = cls.spec_model.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            raise InvalidSpec(meta, status, describe(exc)) from exc
        return cls.model_validate({"metadata": meta, "spec": spec, "status": status})


class NotificationChannel(CustomObject[NotificationChannelSpec, NotificationChannelStatus]):
    spec_model = NotificationChannelSpec
    status_model = NotificationChannelStatus


class BroadcastCampaign(CustomObject[BroadcastCampaignSpec, BroadcastCampaignStatus]):
    spec_model = BroadcastCampaignSpec
    status_model = BroadcastCampaignStatus


class ManagedGroup(CustomObject[ManagedGroupSpec, ManagedGroupStatus]):
    spec_model = ManagedGroupSpec
    status_model = ManagedGroupStatus


class NotificationRoute(CustomObject[NotificationRouteSpec, NotificationRouteStatus]):
    spec_model = NotificationRouteSpec
    status_model = NotificationRouteStatus
