"""The objects the operator creates: names, ownership-independent shape, env contracts."""

from __future__ import annotations

import pytest
from clarion.models import ScalingPolicy, SecretKeyRef
from clarion_operator import builders

pytestmark = pytest.mark.unit


def _env(container: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {e["name"]: e for e in container["env"]}


def test_long_names_are_shortened_deterministically_within_63_characters() -> None:
    long = "a" * 80
    name = builders.sender_job_name(long, 12)
    assert len(name) <= 63 and name.endswith("-r12")
    assert name == builders.sender_job_name(long, 12)
    assert name != builders.sender_job_name("a" * 81, 12)
    assert builders.sender_job_name("spring-sale", 1) == "spring-sale-r1"


def test_sender_job_is_indexed_with_one_completion_per_shard() -> None:
    job = builders.sender_job(namespace="ns", campaign="sale", run=2, campaign_id=7, shards=3,
                              token=SecretKeyRef(name="bot", key="token"), image="img:1", pull_policy="Never",
                              runtime_secret_name="clarion-runtime", backoff_limit=6)
    spec = job["spec"]
    assert job["metadata"]["name"] == "sale-r2"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 6 and spec["template"]["spec"]["restartPolicy"] == "Never"
    labels = spec["template"]["metadata"]["labels"]
    assert labels["clarion.io/campaign"] == "sale"
    assert labels["app.kubernetes.io/component"] == "sender"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["clarion-sender", "campaign"]
    env = _env(container)
    assert env["CLARION_CAMPAIGN_ID"]["value"] == "7"
    assert env["CLARION_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "bot", "key": "token"}
    assert env["CLARION_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "clarion-runtime", "key": "database-url"}
    assert env["CLARION_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    assert env["CLARION_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["securityContext"]["runAsNonRoot"] is True


def test_sender_job_replaces_a_pod_only_after_it_has_terminated() -> None:
    """A sender takes over what earlier senders of its index held; two at once would send twice."""
    job = builders.sender_job(namespace="ns", campaign="sale", run=1, campaign_id=7, shards=2,
                              token=SecretKeyRef(name="bot", key="token"), image="img:1", pull_policy="Never",
                              runtime_secret_name="clarion-runtime", backoff_limit=6)
    assert job["spec"]["podReplacementPolicy"] == "Failed"


def test_bot_deployment_runs_the_channel_bot() -> None:
    dep = builders.bot_deployment(namespace="ns", channel="shop", token=SecretKeyRef(name="bot", key="tok"),
                                  replicas=3, image="img:1", pull_policy="IfNotPresent",
                                  runtime_secret_name="clarion-runtime")
    assert dep["metadata"]["name"] == "shop-bot"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "clarion", "app.kubernetes.io/component": "bot",
        "clarion.io/channel": "shop"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["clarion-bot", "--channel", "ns.shop"]
    assert _env(container)["CLARION_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "bot", "key": "tok"}
    assert "resources" in container


def test_runtime_and_webhook_secrets_carry_their_keys() -> None:
    runtime = builders.runtime_secret("ns", "clarion-runtime", "postgresql://db", "redis://r")
    assert runtime["stringData"] == {"database-url": "postgresql://db", "redis-url": "redis://r",
                                     "redis-username": "", "redis-password": ""}
    # the Redis user and password on their own too, unquoted, for KEDA's TriggerAuthentication
    tenant = builders.runtime_secret("ns", "clarion-runtime", "postgresql://db",
                                     "redis://clarion-t-ab%40c:p%3Aw%2F@r:6380/3")
    assert tenant["stringData"]["redis-username"] == "clarion-t-ab@c"
    assert tenant["stringData"]["redis-password"] == "p:w/"
    assert runtime["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clarion-operator"
    hook = builders.webhook_secret("ns", "shop", "t0k")
    assert hook["metadata"]["name"] == "shop-webhook-secret"
    assert hook["stringData"] == {"token": "t0k"}


def test_bot_pods_carry_the_credentials_revision_so_a_rotation_rolls_them_onto_the_new_secret() -> None:
    def pod_annotations(revision: str) -> dict[str, str]:
        dep = builders.bot_deployment(namespace="ns", channel="shop",
                                      token=SecretKeyRef(name="bot", key="tok"), replicas=1, image="img:1",
                                      pull_policy="IfNotPresent",
                                      runtime_secret_name="clarion-runtime", credentials_revision=revision)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert _env(container)["CLARION_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "clarion-runtime", "key": "database-url"}
        assert _env(container)["CLARION_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "clarion-runtime", "key": "redis-url"}
        annotations: dict[str, str] = dep["spec"]["template"]["metadata"]["annotations"]
        return annotations

    assert pod_annotations("r1") == {builders.CREDENTIALS_REVISION: "r1"}
    assert pod_annotations("r1") != pod_annotations("r2")


def test_worker_deployment_runs_one_lane_of_a_channel_with_its_secrets_tenant_credentials_and_a_metrics_port(
) -> None:
    deployment = builders.worker_deployment(
        namespace="shop", channel="mail", lane="bulk", replicas=2, concurrency=64, image="img:1",
        pull_policy="Never",
        secrets={"CLARION_SMTP_USERNAME": SecretKeyRef(name="smtp", key="user"),
                 "CLARION_SMTP_PASSWORD": SecretKeyRef(name="smtp", key="password")},
        runtime_secret_name="clarion-runtime", credentials_revision="r7")
    spec = deployment["spec"]
    assert deployment["metadata"]["name"] == "mail-workers-bulk" and spec["replicas"] == 2
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    assert spec["selector"]["matchLabels"]["clarion.io/lane"] == "bulk"
    assert spec["template"]["metadata"]["annotations"]["clarion.io/credentials-revision"] == "r7"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["clarion-worker", "--channel", "shop.mail", "--lanes", "bulk"]
    env = _env(container)
    assert env["CLARION_SMTP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "smtp", "key": "password"}
    assert env["CLARION_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "clarion-runtime"
    assert env["CLARION_WORKER_CONCURRENCY"]["value"] == "64"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert env["CLARION_METRICS_PORT"]["value"] == "9090"


def test_bot_sender_and_worker_pods_serve_metrics_on_the_named_port() -> None:
    token = SecretKeyRef(name="bot", key="token")
    common = {"image": "img:1", "pull_policy": "Never", "runtime_secret_name": "clarion-runtime"}
    pods = {
        "bot": builders.bot_deployment(namespace="ns", channel="shop", token=token, replicas=1, **common),
        "worker": builders.worker_deployment(namespace="ns", channel="shop", lane="instant", replicas=1,
                                             concurrency=8, secrets={"CLARION_BOT_TOKEN": token}, **common),
        "sender": builders.sender_job(namespace="ns", campaign="sale", run=1, campaign_id=7, shards=2,
                                      token=token, backoff_limit=6, **common),
    }
    for component, owner in pods.items():
        template = owner["spec"]["template"]
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == component
        [container] = template["spec"]["containers"]
        port = {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
        assert container["ports"] == [port], component
        assert _env(container)["CLARION_METRICS_PORT"]["value"] == "9090", component


def test_each_lane_has_its_own_worker_deployment_and_selector() -> None:
    common = {"namespace": "ns", "channel": "shop", "secrets": {}, "replicas": 0, "concurrency": 8,
              "image": "img:1", "pull_policy": "Never", "runtime_secret_name": "clarion-runtime"}
    instant = builders.worker_deployment(lane="instant", **common)  # type: ignore[arg-type]
    bulk = builders.worker_deployment(lane="bulk", **common)  # type: ignore[arg-type]
    names = {instant["metadata"]["name"], bulk["metadata"]["name"]}
    assert names == {"shop-workers-instant", "shop-workers-bulk"}
    assert instant["spec"]["selector"] != bulk["spec"]["selector"]
    assert builders.legacy_worker_deployment_name("shop") == "shop-workers"


def test_a_keda_lane_gets_a_scaled_object_in_lag_mode_on_its_stream_and_consumer_group() -> None:
    policy = ScalingPolicy(engine="keda", min_replicas=1, max_replicas=7, target_lag_per_replica=250,
                           scale_down_cooldown_seconds=120)
    redis = builders.RedisAddress.of("redis://user:pw@redis.clarion-system:6379/11")
    scaled = builders.keda_scaled_object(namespace="ns", channel="shop", lane="bulk", policy=policy,
                                         redis=redis)
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert scaled["metadata"]["name"] == "shop-workers-bulk"
    assert scaled["metadata"]["labels"]["clarion.io/lane"] == "bulk"
    assert "annotations" not in scaled["metadata"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "shop-workers-bulk"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 7)
    assert spec["cooldownPeriod"] == 120
    assert spec["pollingInterval"] == builders.KEDA_POLLING_SECONDS
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 120}}
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"] == {
        "address": "redis.clarion-system:6379", "databaseIndex": "11", "enableTLS": "false",
        "stream": "notify:ns.shop:bulk", "consumerGroup": "workers", "lagCount": "250",
        "activationLagCount": "0"}
    assert trigger["authenticationRef"] == {"name": "shop-workers-bulk", "kind": "TriggerAuthentication"}


def test_the_trigger_authentication_reads_the_namespace_s_redis_user_from_its_runtime_secret() -> None:
    auth = builders.keda_trigger_authentication(namespace="ns", channel="shop", lane="instant",
                                                runtime_secret_name="clarion-runtime")
    assert (auth["kind"], auth["metadata"]["name"]) == ("TriggerAuthentication", "shop-workers-instant")
    assert auth["spec"] == {"secretTargetRef": [
        {"parameter": "username", "name": "clarion-runtime", "key": "redis-username"},
        {"parameter": "password", "name": "clarion-runtime", "key": "redis-password"}]}


def test_a_keda_lane_that_is_off_is_paused_at_zero_and_a_long_cooldown_keeps_the_hpa_s_hour() -> None:
    policy = ScalingPolicy(engine="keda", min_replicas=0, max_replicas=0, scale_down_cooldown_seconds=7200)
    scaled = builders.keda_scaled_object(namespace="ns", channel="shop", lane="bulk", policy=policy,
                                         redis=builders.RedisAddress.of("redis://r"))
    assert scaled["metadata"]["annotations"] == {"autoscaling.keda.sh/paused-replicas": "0"}
    assert scaled["spec"]["cooldownPeriod"] == 7200
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 3600


@pytest.mark.parametrize(("url", "address", "database", "tls"), [
    ("redis://r", "r:6379", 0, False),
    ("redis://u:p@10.0.0.5:7000/4", "10.0.0.5:7000", 4, False),
    ("rediss://r.example:6380?db=2", "r.example:6380", 2, True),
    ("redis://[::1]:6379/1", "[::1]:6379", 1, False),
])
def test_keda_reaches_redis_where_the_runtime_url_points_with_its_database_and_tls(
    url: str, address: str, database: int, tls: bool,
) -> None:
    assert builders.RedisAddress.of(url) == builders.RedisAddress(address, database, tls)


def test_a_unix_socket_redis_url_cannot_be_given_to_keda() -> None:
    with pytest.raises(ValueError, match="TCP address"):
        builders.RedisAddress.of("unix:///run/redis.sock?db=1")
