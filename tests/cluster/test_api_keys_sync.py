"""API key Secrets on a real kube-apiserver, synced into Postgres by the `clarion-operator` process.

Each test first waits (generously) for a warm-up key to show up, which proves the operator is up and
watching; from then on every change must reach Postgres within the documented 5 s.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import asyncpg
import pytest
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.operator import Operator
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.cluster

LATENCY = 5.0  # docs/api-keys.md: a change of a key Secret is in Postgres within 5 s
STARTUP = 60.0
KEY = "Yk2m9QvX4rT7bN1cW8pL3sZ6dF0hJ5gA+/eRtUiOp=="


def key_secret(name: str, key: str = KEY, *, channels: str | None = "orders, alerts", rate: str | None = None,
               revoked: str | None = None, label: str | None = "true") -> dict[str, Any]:
    annotations = {k: v for k, v in (("clarion.io/channels", channels), ("clarion.io/rate-limit", rate),
                                     ("clarion.io/revoked", revoked)) if v is not None}
    labels = {} if label is None else {"clarion.io/api-key": label}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "data": {"key": base64.b64encode(key.encode()).decode()}}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keys:
    """The test namespace's Secrets and their rows."""

    def __init__(self, k8s: KubeApis, namespace: str, db: asyncpg.Pool, operator: Operator) -> None:
        self.k8s, self.namespace, self.db, self.operator = k8s, namespace, db, operator

    def create(self, body: Any) -> None:
        self.k8s.core.create_namespaced_secret(self.namespace, body)

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.k8s.core.patch_namespaced_secret(name, self.namespace, patch)

    def delete(self, name: str) -> None:
        self.k8s.core.delete_namespaced_secret(name, self.namespace)

    def meta(self, name: str) -> Any:
        """The Secret's metadata (a V1ObjectMeta)."""
        return self.k8s.core.read_namespaced_secret(name, self.namespace).metadata

    async def row(self, name: str) -> asyncpg.Record | None:
        return await self.db.fetchrow("SELECT * FROM api_keys WHERE namespace = $1 AND name = $2",
                                      self.namespace, name)

    async def audit(self, name: str) -> list[str]:
        rows = await self.db.fetch("SELECT action FROM audit_log WHERE subject = $1 ORDER BY id",
                                   f"{self.namespace}/{name}")
        return [r["action"] for r in rows]

    def warnings(self, name: str) -> list[str]:
        events = self.k8s.core.list_namespaced_event(self.namespace,
                                                     field_selector=f"involvedObject.name={name}")
        return [str(e.message) for e in events.items if e.type == "Warning" and e.reason == "InvalidApiKey"]

    async def wait_row(self, name: str, what: str, check: Any, timeout: float = LATENCY) -> asyncpg.Record:
        async def matching() -> asyncpg.Record | None:
            row = await self.row(name)
            return row if row is not None and check(row) else None

        try:
            found: asyncpg.Record = await async_wait_for(matching, timeout=timeout, interval=0.05, what=what)
            return found
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.log()}") from None


@pytest.fixture
async def keys(k8s: KubeApis, kube_namespace: str, db: asyncpg.Pool, operator: Operator) -> Keys:
    """The namespace's keys, once the operator has synced a warm-up key (so it is up and watching)."""
    keys = Keys(k8s, kube_namespace, db, operator)
    keys.create(key_secret("warm-up", "warm-up-key-" + "w" * 32))
    await keys.wait_row("warm-up", "the operator to sync its first key", lambda r: True, timeout=STARTUP)
    return keys


async def test_a_labelled_secret_is_synced_then_revoked_by_annotation_and_by_deletion_within_5_s(
        keys: Keys) -> None:
    keys.create(key_secret("backend", rate="20/s"))
    row = await keys.wait_row("backend", "the key's row", lambda r: not r["revoked"])
    assert row["key_sha256"] == sha(KEY)
    assert list(row["channels"]) == ["alerts", "orders"] and row["rate_per_minute"] == 1200
    assert row["secret_uid"] == keys.meta("backend").uid

    keys.patch("backend", {"metadata": {"annotations": {"clarion.io/channels": "*",
                                                        "clarion.io/rate-limit": "600/min"}}})
    await keys.wait_row("backend", "the new scope", lambda r: list(r["channels"]) == ["*"]
                        and r["rate_per_minute"] == 600)

    keys.patch("backend", {"metadata": {"annotations": {"clarion.io/revoked": "true"}}})
    await keys.wait_row("backend", "the revocation by annotation", lambda r: r["revoked"])

    keys.patch("backend", {"metadata": {"annotations": {"clarion.io/revoked": None}}})
    await keys.wait_row("backend", "the key usable again", lambda r: not r["revoked"])

    keys.delete("backend")
    deleted = await keys.wait_row("backend", "the revocation by deletion", lambda r: r["revoked"])
    assert deleted["id"] == row["id"] and deleted["key_sha256"] == sha(KEY)  # the row stays, revoked
    assert await keys.audit("backend") == ["api_key.synced", "api_key.synced", "api_key.revoked",
                                           "api_key.synced", "api_key.revoked"]


async def test_the_operator_leaves_no_trace_on_a_key_secret(keys: Keys) -> None:
    keys.create(key_secret("backend"))
    await keys.wait_row("backend", "the key's row", lambda r: True)
    meta = keys.meta("backend")
    assert not meta.finalizers
    assert set(meta.annotations) == {"clarion.io/channels"}  # no kopf state (it would hold the key)


async def test_an_invalid_secret_gets_a_warning_event_and_no_usable_row(keys: Keys) -> None:
    keys.create(key_secret("short", "too-short-" + "s" * 10))
    warnings: list[str] = await async_wait_for(lambda: keys.warnings("short"), timeout=LATENCY,
                                               what="a Warning Event on the Secret")
    assert any("at least 32" in message for message in warnings)
    assert await keys.row("short") is None
    assert await keys.audit("short") == ["api_key.invalid"]

    keys.create(key_secret("scoped"))
    await keys.wait_row("scoped", "the valid key's row", lambda r: not r["revoked"])
    keys.patch("scoped", {"metadata": {"annotations": {"clarion.io/rate-limit": "lots"}}})
    await keys.wait_row("scoped", "the key revoked once its Secret is invalid", lambda r: r["revoked"])
    later: list[str] = await async_wait_for(lambda: [m for m in keys.warnings("scoped") if "lots" in m],
                                            timeout=LATENCY, what="a Warning Event naming the annotation")
    assert "clarion.io/rate-limit" in later[0]


async def test_an_unlabelled_secret_is_ignored_and_removing_the_label_revokes(keys: Keys) -> None:
    keys.create(key_secret("plain", "plain-key-" + "p" * 32, label=None))
    keys.create(key_secret("labelled"))
    await keys.wait_row("labelled", "the labelled key's row", lambda r: not r["revoked"])
    assert await keys.row("plain") is None and await keys.audit("plain") == []
    assert not keys.meta("plain").finalizers

    keys.patch("labelled", {"metadata": {"labels": {"clarion.io/api-key": None}}})
    await keys.wait_row("labelled", "the revocation when the label is gone", lambda r: r["revoked"])


async def test_a_secret_deleted_while_the_operator_was_down_is_revoked_after_its_restart(keys: Keys) -> None:
    keys.create(key_secret("backend"))
    await keys.wait_row("backend", "the key's row", lambda r: not r["revoked"])
    keys.operator.stop()
    keys.delete("backend")
    keys.operator.start()
    await keys.wait_row("backend", "the sweeper's revocation", lambda r: r["revoked"], timeout=STARTUP)
