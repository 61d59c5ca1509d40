"""Keys that name a resource outside Kubernetes, built and parsed only here.

A channel key is `<namespace>.<name>`: the row's name in logs and metrics, the webhook path
(`/tg/webhook/<key>`), the bot's `--channel` argument and the prefix of its Redis streams. A
namespace has no dots, so the first dot splits it.
"""

from __future__ import annotations

import re

#: `{namespace}.{name}`: a Kubernetes namespace (DNS label, no dots) and a resource name.
CHANNEL_KEY_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
CHANNEL_KEY_MAX = 63 + 1 + 253


def channel_key(namespace: str, name: str) -> str:
    """The key of the channel `name` in `namespace`."""
    return f"{namespace}.{name}"


def split_channel_key(key: str) -> tuple[str, str] | None:
    """(namespace, name) of a well-formed channel key, else None."""
    if len(key) > CHANNEL_KEY_MAX or not CHANNEL_KEY_RE.match(key):
        return None
    namespace, _, name = key.partition(".")
    return namespace, name
