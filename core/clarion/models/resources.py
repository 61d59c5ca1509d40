"""The custom resources: names, models and printer columns, as the CRD generator renders them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from clarion.models.campaign import BroadcastCampaignSpec, BroadcastCampaignStatus
from clarion.models.channel import NotificationChannelSpec, NotificationChannelStatus
from clarion.models.group import ManagedGroupSpec, ManagedGroupStatus
from clarion.models.route import NotificationRouteSpec, NotificationRouteStatus

GROUP = "clarion.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "clarion"


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry (`kubectl get` column)."""

    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Resource:
    """A custom resource kind and what its CRD is made of."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def selector(self) -> tuple[str, str, str]:
        """(group, version, plural): how kopf handlers and the API client name the resource."""
        return GROUP, VERSION, self.plural


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since the resource was created.")
_READY = PrinterColumn(
    "Ready",
    "string",
    '.status.conditions[?(@.type=="Ready")].status',
    "Ready condition: True, False or Unknown.",
)

NOTIFICATION_CHANNEL = Resource(
    kind="NotificationChannel",
    plural="notificationchannels",
    singular="notificationchannel",
    short_names=("nc",),
    description="A delivery channel: a Telegram bot, an SMTP server or a web push identity.",
    spec=NotificationChannelSpec,
    status=NotificationChannelStatus,
    columns=(
        PrinterColumn("Type", "string", ".spec.type", "telegram, email or webpush."),
        _READY,
        PrinterColumn("Bot", "string", ".status.botUsername", "Username of the Telegram bot."),
        PrinterColumn("Instant", "integer", ".status.workers.instant.replicas", "Instant-lane worker pods."),
        PrinterColumn("Bulk", "integer", ".status.workers.bulk.replicas", "Bulk-lane worker pods."),
        PrinterColumn("Lag", "integer", ".status.workers.instant.lag",
                      "Instant-lane entries not yet delivered to a worker."),
        PrinterColumn("Bulk Lag", "integer", ".status.workers.bulk.lag",
                      "Bulk-lane entries not yet delivered to a worker.", priority=1),
        PrinterColumn("Group Posts", "integer", ".status.workers.groupPosts.replicas",
                      "Group-posts-lane worker pods (telegram).", priority=1),
        PrinterColumn("Group Maint", "integer", ".status.workers.groupMaintenance.replicas",
                      "Group-maintenance-lane worker pods (telegram).", priority=1),
        PrinterColumn("Webhook", "string", ".status.webhookUrl", "Registered webhook URL.", priority=1),
        _AGE,
    ),
)

BROADCAST_CAMPAIGN = Resource(
    kind="BroadcastCampaign",
    plural="broadcastcampaigns",
    singular="broadcastcampaign",
    short_names=("bc",),
    description="One message sent once to an audience of a channel, now or at a scheduled time.",
    spec=BroadcastCampaignSpec,
    status=BroadcastCampaignStatus,
    columns=(
        PrinterColumn("Phase", "string", ".status.phase", "Where the campaign is in its life."),
        PrinterColumn("Channel", "string", ".spec.channelRef.name", "NotificationChannel that sends it."),
        PrinterColumn("Total", "integer", ".status.total", "Recipients."),
        PrinterColumn("Sent", "integer", ".status.sent", "Delivered."),
        PrinterColumn("Failed", "integer", ".status.failed", "Failed for good."),
        PrinterColumn("Progress", "integer", ".status.progress", "Settled deliveries, percent."),
        PrinterColumn("ETA", "date", ".status.eta", "Expected completion.", priority=1),
        _AGE,
    ),
)

MANAGED_GROUP = Resource(
    kind="ManagedGroup",
    plural="managedgroups",
    singular="managedgroup",
    short_names=("mg",),
    description="A Telegram group whose join requests, inactivity and scheduled posts are automated.",
    spec=ManagedGroupSpec,
    status=ManagedGroupStatus,
    columns=(
        PrinterColumn("Chat", "integer", ".spec.chatId", "Telegram chat id."),
        PrinterColumn("Phase", "string", ".status.phase", "Growth or Monitoring."),
        PrinterColumn("Members", "integer", ".status.memberCount", "Members of the group."),
        PrinterColumn("Pending", "integer", ".status.pendingJoinRequests", "Join requests waiting."),
        _AGE,
    ),
)

NOTIFICATION_ROUTE = Resource(
    kind="NotificationRoute",
    plural="notificationroutes",
    singular="notificationroute",
    short_names=("nr",),
    description="Which recipients of an event are notified, on which channel, with what text.",
    spec=NotificationRouteSpec,
    status=NotificationRouteStatus,
    columns=(
        PrinterColumn("Event", "string", ".spec.eventType", "The event type routed."),
        PrinterColumn("Initiator", "string", ".spec.initiatorRole", "The initiator's role."),
        PrinterColumn("Enabled", "boolean", ".spec.enabled", "False: matching events notify nobody."),
        _READY,
        _AGE,
    ),
)

RESOURCES: tuple[Resource, ...] = (
    NOTIFICATION_CHANNEL, BROADCAST_CAMPAIGN, MANAGED_GROUP, NOTIFICATION_ROUTE)
PLURALS: dict[str, str] = {resource.kind: resource.plural for resource in RESOURCES}
