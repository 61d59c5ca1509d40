"""Telegram Bot API emulator: a strict local stand-in for api.telegram.org (see docs/emulator.md)."""

from clarion_dev.telegram.faults import FaultConfig, Faults, LatencyModel
from clarion_dev.telegram.limits import RateLimits
from clarion_dev.telegram.server import Emulator, LimitsMode, quiet_gc
from clarion_dev.telegram.webhook import WebhookRetry
from clarion_dev.telegram.world import BotInfo, Group, RetryAfterEvent, SentMessage, User

__all__ = [
    "BotInfo",
    "Emulator",
    "FaultConfig",
    "Faults",
    "Group",
    "LatencyModel",
    "LimitsMode",
    "RateLimits",
    "RetryAfterEvent",
    "SentMessage",
    "User",
    "WebhookRetry",
    "quiet_gc",
]
