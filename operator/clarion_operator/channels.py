"""NotificationChannel handlers: validate credentials, register the webhook, keep the row and the bot.

Handlers are thin: they take the parsed channel, read its Secrets, run the checks in
`credential_checks`, store the outcome in Postgres, write the status `channel_status` builds, and
run the bot Deployment. Every step is safe to repeat.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from clarion.metrics import counter
from clarion.models import (
    NOTIFICATION_CHANNEL,
    ChannelReason,
    ConditionType,
    EmailSettings,
    InvalidSpec,
    NotificationChannel,
    ResourceKey,
    SecretKeyRef,
    TelegramSettings,
    WebPushSettings,
    WorkerLane,
    find_condition,
    worker_lanes,
)
from clarion.telegram import botapi
from clarion.telegram.webapp import webapp_secret
from kubernetes.client.exceptions import ApiException

from clarion_operator import builders, credential_checks, store, tenancy
from clarion_operator.channel_logic import (
    ChannelCheck,
    Verdict,
    autoscaler_verdict,
    channel_conditions,
    channel_status,
    check_due,
    stored_config,
    stored_templates,
    webhook_endpoint,
)
from clarion_operator.context import Context, context, object_lock
from clarion_operator.indexes import ChannelSecrets
from clarion_operator.k8s import NotServed
from clarion_operator.status import announce_conditions, typed, write_status

CHANNELS = NOTIFICATION_CHANNEL.selector
SECRET_REVISION = "clarion.io/secret-revision"
TIMER_SECONDS = 10.0
CHECKS = counter("clarion_operator_channel_checks_total",
                 "Channel credential checks by channel type and the Ready reason they ended with.",
                 ["type", "reason"])


async def secret_value(ctx: Context, namespace: str, ref: SecretKeyRef) -> str | Verdict:
    """The referenced Secret value, or the Verdict that explains why it cannot be read."""
    data = await ctx.kube.read_secret(namespace, ref.name)
    if data is None:
        return Verdict.failed(ChannelReason.SECRET_NOT_FOUND, f"Secret {namespace}/{ref.name} does not exist")
    if ref.key not in data:
        return Verdict.failed(ChannelReason.SECRET_KEY_NOT_FOUND,
                              f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
    return data[ref.key].strip()


@dataclass(frozen=True)
class _Checked:
    """A check, the sha256 of the webhook secret token and the Secret holding it, and the Mini App key of a
    token getMe accepted (None when unknown)."""

    check: ChannelCheck
    webhook_secret_sha256: str | None = None
    webhook_secret_name: str | None = None
    webapp_secret: bytes | None = None


async def _webhook_secret(ctx: Context, channel: NotificationChannel, body: kopf.Body,
                          ref: SecretKeyRef | None) -> tuple[str | Verdict, str]:
    """The webhook secret token (from the referenced Secret, else from the generated one the channel
    owns) and the name of the Secret that holds it."""
    if ref is not None:
        return await secret_value(ctx, channel.namespace, ref), ref.name
    owned = SecretKeyRef(name=builders.webhook_secret_name(channel.name), key=builders.WEBHOOK_SECRET_KEY)
    found = await secret_value(ctx, channel.namespace, owned)
    if isinstance(found, str):
        return found, owned.name
    secret = builders.webhook_secret(channel.namespace, channel.name, secrets.token_urlsafe(48))
    kopf.append_owner_reference(secret, owner=body)
    await ctx.kube.create_secret(secret)
    return await secret_value(ctx, channel.namespace, owned), owned.name


async def _check_telegram(ctx: Context, channel: NotificationChannel, body: kopf.Body,
                          telegram: TelegramSettings, *, register: bool) -> _Checked:
    token = await secret_value(ctx, channel.namespace, telegram.bot_token_secret_ref)
    if isinstance(token, Verdict):
        return _Checked(ChannelCheck(token))
    webhook = telegram.webhook
    plan = None
    digest = secret_name = None
    if webhook is not None:
        secret_token, secret_name = await _webhook_secret(ctx, channel, body, webhook.secret_token_secret_ref)
        if isinstance(secret_token, Verdict):
            unchecked = Verdict.undecided(ChannelReason.NOT_CHECKED, "waiting for the webhook secret")
            return _Checked(ChannelCheck(unchecked, secret_token), webhook_secret_name=secret_name)
        digest = hashlib.sha256(secret_token.encode()).hexdigest()
        plan = credential_checks.WebhookPlan(
            url=webhook_endpoint(webhook.url, channel.namespace, channel.name),
            secret_token=secret_token,
            allowed_updates=list(webhook.allowed_updates),
            max_connections=webhook.max_connections,
            drop_pending_updates=webhook.drop_pending_updates,
        )
    check = await credential_checks.check_telegram(
        token, telegram.api_base_url, plan, register=register,
        timeout_seconds=ctx.settings.telegram_timeout_seconds)
    return _Checked(check, digest, secret_name, webapp_secret(token) if check.bot_id is not None else None)


async def _check_email(ctx: Context, namespace: str, email: EmailSettings) -> ChannelCheck:
    username = password = None
    if email.username_secret_ref is not None and email.password_secret_ref is not None:
        user = await secret_value(ctx, namespace, email.username_secret_ref)
        if isinstance(user, Verdict):
            return ChannelCheck(user)
        word = await secret_value(ctx, namespace, email.password_secret_ref)
        if isinstance(word, Verdict):
            return ChannelCheck(word)
        username, password = user, word
    return await credential_checks.check_smtp(
        email, username=username, password=password, timeout_seconds=ctx.settings.smtp_timeout_seconds,
        ca_file=ctx.settings.smtp_ca_file)


async def _check_webpush(ctx: Context, namespace: str, webpush: WebPushSettings) -> ChannelCheck:
    ref = webpush.vapid_private_key_secret_ref
    key = await secret_value(ctx, namespace, ref)
    if isinstance(key, Verdict):
        return ChannelCheck(key)
    return credential_checks.check_vapid_key(key, f"{namespace}/{ref.name} key {ref.key!r}")


async def _ensure_bot(ctx: Context, channel: NotificationChannel, body: kopf.Body,
                      telegram: TelegramSettings) -> None:
    credentials = await tenancy.ensure_runtime_secret(ctx, channel.namespace)
    deployment = builders.bot_deployment(
        namespace=channel.namespace, channel=channel.name, token=telegram.bot_token_secret_ref,
        replicas=telegram.bot.replicas, image=ctx.settings.image,
        pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name,
        credentials_revision=credentials)
    kopf.append_owner_reference(deployment, owner=body)
    await ctx.kube.apply_deployment(deployment)


async def _ensure_workers(ctx: Context, channel: NotificationChannel, body: kopf.Body) -> Verdict:
    """The channel's worker Deployments, one per lane of its type (`worker_lanes`: a telegram channel
    also has the group-posts and group-maintenance lanes; docs/notifications.md, ADRs 0008 and 0010):
    created at the lane's minReplicas, their size left to the scaler afterwards; the one Deployment of
    both lanes that came before is deleted. Then each lane's KEDA objects (`_ensure_keda`)."""
    spec = channel.spec
    secrets: dict[str, SecretKeyRef] = {}
    if spec.telegram is not None:
        secrets["CLARION_BOT_TOKEN"] = spec.telegram.bot_token_secret_ref
    if spec.email is not None and spec.email.username_secret_ref and spec.email.password_secret_ref:
        secrets["CLARION_SMTP_USERNAME"] = spec.email.username_secret_ref
        secrets["CLARION_SMTP_PASSWORD"] = spec.email.password_secret_ref
    if spec.webpush is not None:
        secrets["CLARION_VAPID_PRIVATE_KEY"] = spec.webpush.vapid_private_key_secret_ref
    credentials = await tenancy.ensure_runtime_secret(ctx, channel.namespace)
    policies = {lane: spec.workers.autoscaling.policy(lane, ctx.settings.worker_autoscaling)
                for lane in worker_lanes(spec.type)}
    for lane, policy in policies.items():
        deployment = builders.worker_deployment(
            namespace=channel.namespace, channel=channel.name, lane=lane, secrets=secrets,
            replicas=policy.min_replicas, concurrency=spec.workers.concurrency, image=ctx.settings.image,
            pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name,
            credentials_revision=credentials)
        kopf.append_owner_reference(deployment, owner=body)
        await ctx.kube.apply_deployment(deployment, scaled=True)
    await ctx.kube.delete_deployment(channel.namespace, builders.legacy_worker_deployment_name(channel.name))
    keda_lanes = [lane for lane, policy in policies.items() if policy.engine == "keda"]
    return await _ensure_keda(ctx, channel, body, keda_lanes)


def _refused(exc: ApiException) -> bool:
    """A request the API server will refuse again (so not worth kopf's retries): a 4xx, or the 500 a
    server-side apply gets for a field the CRD does not declare (the installed KEDA is too old)."""
    return 400 <= int(exc.status or 0) < 500 or "field not declared in schema" in str(exc.body)


def _refusal(exc: ApiException) -> str:
    """What the API server said when it refused a request."""
    try:
        message = str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        message = str(exc.reason)
    return f"{exc.status}: {message}"[:1000]


async def _ensure_keda(ctx: Context, channel: NotificationChannel, body: kopf.Body,
                       keda_lanes: list[WorkerLane]) -> Verdict:
    """A ScaledObject and its TriggerAuthentication for each lane with engine keda (owned by the
    channel, named like the lane's Deployment), none for the others: KEDA then owns the keda lanes'
    replicas, the operator's scaler the others'. KEDA's CRDs missing, or a refusal of the API server,
    becomes AutoscalerReady=False (the channel and its workers go on at their minimum); it is tried
    again at the next check."""
    namespace, kube = channel.namespace, ctx.kube
    lanes = ", ".join(keda_lanes)
    try:
        redis = builders.RedisAddress.of(ctx.runtime_urls()[1]) if keda_lanes else None
    except ValueError as exc:
        return Verdict.failed(ChannelReason.REDIS_ADDRESS_UNSUPPORTED, f"engine keda (lane {lanes}): {exc}")
    try:
        for lane in worker_lanes(channel.spec.type):
            name = builders.worker_deployment_name(channel.name, lane)
            if redis is None or lane not in keda_lanes:
                for plural in (builders.SCALED_OBJECTS, builders.TRIGGER_AUTHENTICATIONS):
                    await kube.delete_custom(builders.KEDA_API_VERSION, plural, namespace, name)
                continue
            policy = channel.spec.workers.autoscaling.policy(lane, ctx.settings.worker_autoscaling)
            authentication = builders.keda_trigger_authentication(
                namespace=namespace, channel=channel.name, lane=lane,
                runtime_secret_name=ctx.settings.runtime_secret_name)
            scaled = builders.keda_scaled_object(namespace=namespace, channel=channel.name, lane=lane,
                                                 policy=policy, redis=redis)
            for plural, obj in ((builders.TRIGGER_AUTHENTICATIONS, authentication),
                                (builders.SCALED_OBJECTS, scaled)):
                kopf.append_owner_reference(obj, owner=body)
                await kube.apply_custom(plural, obj)
    except NotServed:
        return Verdict.failed(ChannelReason.KEDA_NOT_INSTALLED,
                              f"engine keda (lane {lanes}): the cluster has no KEDA (keda.sh ScaledObject "
                              "and TriggerAuthentication CRDs); those workers keep their present size until "
                              "KEDA is installed or the engine is operator")
    except ApiException as exc:
        if not _refused(exc):
            raise
        return Verdict.failed(ChannelReason.KEDA_OBJECT_REFUSED,
                              f"engine keda (lane {lanes}): the API server refused a KEDA object: "
                              f"{_refusal(exc)}")
    return autoscaler_verdict(keda_lanes)


async def reconcile_channel(channel: NotificationChannel, body: kopf.Body, memo: Any, patch: kopf.Patch,
                            logger: kopf.Logger, *, register: bool) -> None:
    """Check the channel, store the result in Postgres and status, run its bot when it can."""
    ctx = context(memo)
    spec, section = channel.spec, channel.spec.section
    if isinstance(section, TelegramSettings):
        checked = await _check_telegram(ctx, channel, body, section, register=register)
    elif isinstance(section, EmailSettings):
        checked = _Checked(await _check_email(ctx, channel.namespace, section))
    else:
        checked = _Checked(await _check_webpush(ctx, channel.namespace, section))
    check = checked.check
    templates = stored_templates(spec)
    await store.upsert_channel(
        ctx.db, namespace=channel.namespace, name=channel.name, type_=spec.type, uid=channel.uid,
        bot_id=check.bot_id, bot_username=check.bot_username,
        api_base_url=spec.telegram.api_base_url if spec.telegram else None,
        webhook_secret_sha256=checked.webhook_secret_sha256,
        config=stored_config(section, check.vapid_public_key),
        webapp_secret=checked.webapp_secret, templates=[t.to_json() for t in templates], ready=check.ready)
    if spec.telegram is not None and check.credentials.status == "True":
        await _ensure_bot(ctx, channel, body, spec.telegram)
    autoscaler = None
    if check.credentials.status == "True":
        autoscaler = await _ensure_workers(ctx, channel, body)
    fresh = channel_conditions(check, templates, autoscaler)
    status = channel_status(channel.status, check, fresh, telegram=spec.telegram is not None,
                            webhook_secret_name=checked.webhook_secret_name, generation=channel.generation,
                            now=datetime.now(UTC))
    write_status(patch, channel.status, status)
    announce_conditions(body, channel.status.conditions, fresh)
    ready = fresh[-1]
    CHECKS.labels(spec.type, ready.reason).inc()
    logger.info("channel %s checked: ready=%s (%s)", channel.key, check.ready, ready.reason)


@kopf.on.resume(*CHANNELS)
@kopf.on.create(*CHANNELS)
@kopf.on.update(*CHANNELS)
@typed(NotificationChannel)
async def channel_changed(channel: NotificationChannel, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                          logger: kopf.Logger, **_: Any) -> None:
    """Created, changed, a referenced Secret changed, or the operator restarted: check and register."""
    async with object_lock(memo), context(memo).reconciling:
        await reconcile_channel(channel, body, memo, patch, logger, register=True)


@kopf.timer(*CHANNELS, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
@typed(NotificationChannel)
async def channel_health(channel: NotificationChannel, *, body: kopf.Body, memo: Any, patch: kopf.Patch,
                         logger: kopf.Logger, **_: Any) -> None:
    """Re-check every healthCheckIntervalSeconds when Ready, every channel_retry_seconds when not."""
    ready = find_condition(channel.status.conditions, ConditionType.READY)
    due = check_due(channel.status.last_checked_at, ready=ready is not None and ready.is_true,
                    interval_seconds=channel.spec.health_check_interval_seconds,
                    retry_seconds=context(memo).settings.channel_retry_seconds, now=datetime.now(UTC))
    if not due:
        return
    async with object_lock(memo), context(memo).reconciling:
        await reconcile_channel(channel, body, memo, patch, logger, register=False)


@kopf.on.delete(*CHANNELS)
async def channel_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Remove the webhook (best effort: a revoked token cannot), then mark the channel row deleted.

    A spec that does not parse cannot name its bot: the row is still marked deleted.
    """
    ctx = context(memo)
    try:
        channel = NotificationChannel.parse(body)
    except InvalidSpec as error:
        logger.warning("channel %s/%s deleted with an invalid spec; webhook left in place: %s",
                       error.meta.namespace, error.meta.name, error.message)
        await store.mark_channel_deleted(ctx.db, error.meta.namespace, error.meta.name, error.meta.uid)
        await tenancy.release_if_unused(ctx, error.meta.namespace)
        return
    telegram = channel.spec.telegram
    if telegram is not None:
        token = await secret_value(ctx, channel.namespace, telegram.bot_token_secret_ref)
        if isinstance(token, Verdict):
            logger.warning("webhook of %s left in place: %s", channel.key, token.message)
        else:
            try:
                await credential_checks.delete_webhook(token, telegram.api_base_url,
                                                       timeout_seconds=ctx.settings.telegram_timeout_seconds)
            except (botapi.InvalidTokenFormat, botapi.BotApiError, *botapi.UNREACHABLE) as exc:
                logger.warning("deleteWebhook for %s failed: %r", channel.key, exc)
    await store.mark_channel_deleted(ctx.db, channel.namespace, channel.name, channel.uid)
    await tenancy.release_if_unused(ctx, channel.namespace)


@kopf.on.event("", "v1", "secrets")  # type: ignore[arg-type]  # kopf's protocol has no index parameters
async def secret_changed(type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any,
                         channel_secrets: ChannelSecrets, **_: Any) -> None:
    """A Secret a channel reads was added or changed: mark the channel so its update handler re-checks."""
    if not type:  # the initial listing: on.resume checks every channel anyway
        return
    revision = name + "@" + str(body.metadata.get("resourceVersion"))
    for channel in channel_secrets.get(ResourceKey(namespace or "", name), []):
        await context(memo).kube.annotate_resource(
            NOTIFICATION_CHANNEL.plural, namespace or "", channel, {SECRET_REVISION: revision})
