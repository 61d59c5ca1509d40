"""A backend's notification through the public API on the real node: the chart's webhook (the API)
accepts it, the operator's worker Deployment sends it from a container, and the SMTP server on the host
receives it. Everything but the SMTP server is a container of the built images."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from clarion_dev.cluster.node import NODE_IP, POD_SUBNET
from clarion_dev.smtp_sink import SmtpSink
from clarion_dev.testing.campaigns import GROUP, VERSION
from clarion_dev.testing.cluster import KubeApis
from clarion_dev.testing.node import NodeCluster, Release
from clarion_dev.testing.waiting import async_wait_for

pytestmark = pytest.mark.node


@pytest.fixture
async def node_smtp_sink() -> AsyncIterator[SmtpSink]:
    """A plain SMTP server on the node's bridge address, where the worker pods reach it."""
    sink = SmtpSink(host=NODE_IP)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


async def test_an_email_sent_through_the_api_by_a_worker_container_reaches_the_smtp_server(
    node_cluster: NodeCluster, clarion_release: Release, node_apis: KubeApis, node_namespace: str,
    node_db: asyncpg.Pool, node_smtp_sink: SmtpSink,
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    core: Any = node_apis.core
    core.create_namespaced_secret(node_namespace, {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shop-backend", "labels": {"clarion.io/api-key": "true"},
                     "annotations": {"clarion.io/channels": "mail"}},
        "stringData": {"key": key}})
    node_apis.custom.create_namespaced_custom_object(GROUP, VERSION, node_namespace, "notificationchannels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NotificationChannel", "metadata": {"name": "mail"},
        "spec": {"type": "email",
                 "email": {"host": NODE_IP, "port": node_smtp_sink.port, "tls": "none",
                           "from": "Clarion <noreply@clarion.test>"},
                 "workers": {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}}})
    service: dict[str, Any] = json.loads(node_cluster.kubectl(
        "get", "service", f"{clarion_release.name}-webhook", "-n", clarion_release.namespace, "-o", "json"))
    api = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/api/v1"
    request = {"channel": f"{node_namespace}/mail", "recipient": {"email": "ada@example.com"},
               "content": {"subject": "Your order shipped", "text": "Order 42 is on its way."},
               "reference": "order-42"}

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        async def accepted() -> dict[str, Any] | None:
            # 401 until the operator has synced the key and the webhook reloaded it; 422 until the
            # channel is in Postgres
            answer = await client.post(f"{api}/notifications", json=request,
                                       headers={"Idempotency-Key": "order-42-shipped"})
            return dict(answer.json()) if answer.status_code == 202 else None

        notification: dict[str, Any] = await async_wait_for(accepted, timeout=120, interval=0.5,
                                                            what="the API to accept the notification")

        def delivered() -> list[Any] | None:
            return node_smtp_sink.messages or None

        [message] = await async_wait_for(delivered, timeout=180, interval=0.3, what="the email at the server")
        assert message.rcpt_tos == ["ada@example.com"]
        assert message.message["Subject"] == "Your order shipped"
        assert message.message["From"] == "Clarion <noreply@clarion.test>"
        assert "Order 42 is on its way." in message.message.get_body(("plain",)).get_content()

        async def sent() -> dict[str, Any] | None:
            answer = await client.get(f"{api}/notifications/{notification['id']}")
            body: dict[str, Any] = answer.json()
            return body if body.get("status") == "sent" else None

        status: dict[str, Any] = await async_wait_for(sent, timeout=60, interval=0.3, what="status sent")
        assert status["attempts"] == 1

    # Sent from a pod's address on the node's bridge (not the host's): a worker container of the channel.
    assert ipaddress.ip_address(message.peer) in ipaddress.ip_network(POD_SUBNET)
    assert message.peer != NODE_IP
    pods: Any = node_apis.core.list_namespaced_pod(
        node_namespace, label_selector="app.kubernetes.io/component=worker,clarion.io/lane=instant")
    assert {c.image for p in pods.items for c in p.spec.containers} == {node_cluster.images["clarion"].ref}
    row = await node_db.fetchrow("SELECT status FROM notifications WHERE id = $1::uuid", notification["id"])
    assert row["status"] == "sent"
