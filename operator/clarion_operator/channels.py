"""NotificationChannel handlers: validate credentials, register the webhook, keep the row and the bot.

Handlers are thin: they read Secrets, call the checks in `probes`, store the outcome in Postgres
and status, and run the bot Deployment. Every step is safe to repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

import kopf
from clarion.metrics import counter
from clarion.telegram import botapi

from clarion_operator import builders, probes, store
from clarion_operator.channel_logic import (
    ChannelCheck,
    Verdict,
    channel_conditions,
    check_due,
    referenced_secrets,
    stored_config,
    webhook_endpoint,
)
from clarion_operator.conditions import merge_conditions, parse_rfc3339, rfc3339, transitions
from clarion_operator.startup import Context, context

CHANNELS = ("clarion.io", "v1alpha1", "notificationchannels")
SECRET_REVISION = "clarion.io/secret-revision"
TIMER_SECONDS = 10.0
CHECKS = counter("clarion_operator_channel_checks_total",
                 "Channel credential checks by channel type and the Ready reason they ended with.",
                 ["type", "reason"])


def _lock(memo: Any) -> asyncio.Lock:
    lock: asyncio.Lock | None = memo.get("channel_lock")
    if lock is None:
        lock = memo["channel_lock"] = asyncio.Lock()
    return lock


async def _secret_value(ctx: Context, namespace: str, ref: dict[str, Any]) -> str | Verdict:
    """The referenced Secret value, or the Verdict that explains why it cannot be read."""
    name, key = ref["name"], ref.get("key", "token")
    data = await ctx.kube.read_secret(namespace, name)
    if data is None:
        return Verdict(False, "SecretNotFound", f"Secret {namespace}/{name} does not exist")
    if key not in data:
        return Verdict(False, "SecretKeyNotFound", f"Secret {namespace}/{name} has no key {key!r}")
    return data[key].strip()


async def _webhook_secret(ctx: Context, body: kopf.Body, webhook: dict[str, Any]) -> str | Verdict:
    """The webhook secret token: from the referenced Secret, else from the generated one the channel owns."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    ref = webhook.get("secretTokenSecretRef")
    if ref:
        return await _secret_value(ctx, namespace, ref)
    owned = {"name": builders.webhook_secret_name(name), "key": builders.WEBHOOK_SECRET_KEY}
    found = await _secret_value(ctx, namespace, owned)
    if isinstance(found, str):
        return found
    secret = builders.webhook_secret(namespace, name, secrets.token_urlsafe(48))
    kopf.append_owner_reference(secret, owner=body)
    await ctx.kube.create_secret(secret)
    return await _secret_value(ctx, namespace, owned)


async def _check_telegram(ctx: Context, body: kopf.Body, telegram: dict[str, Any],
                          *, register: bool) -> tuple[ChannelCheck, str | None]:
    """The check and the sha256 of the webhook secret token (None when unknown)."""
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    token = await _secret_value(ctx, namespace, telegram["botTokenSecretRef"])
    if isinstance(token, Verdict):
        return ChannelCheck(token), None
    webhook = telegram.get("webhook")
    plan = None
    digest = None
    if webhook:
        secret_token = await _webhook_secret(ctx, body, webhook)
        if isinstance(secret_token, Verdict):
            unchecked = Verdict(None, "NotChecked", "waiting for the webhook secret")
            return ChannelCheck(unchecked, secret_token), None
        digest = hashlib.sha256(secret_token.encode()).hexdigest()
        plan = probes.WebhookPlan(
            url=webhook_endpoint(webhook["url"], namespace, name),
            secret_token=secret_token,
            allowed_updates=list(webhook.get("allowedUpdates") or []),
            max_connections=int(webhook.get("maxConnections", 40)),
            drop_pending_updates=bool(webhook.get("dropPendingUpdates", False)),
        )
    check = await probes.check_telegram(
        token, telegram.get("apiBaseUrl", "https://api.telegram.org"), plan, register=register,
        timeout_seconds=ctx.settings.telegram_timeout_seconds)
    return check, digest


async def _check_email(ctx: Context, namespace: str, email: dict[str, Any]) -> ChannelCheck:
    username = password = None
    if email.get("usernameSecretRef") and email.get("passwordSecretRef"):
        user = await _secret_value(ctx, namespace, email["usernameSecretRef"])
        if isinstance(user, Verdict):
            return ChannelCheck(user)
        word = await _secret_value(ctx, namespace, email["passwordSecretRef"])
        if isinstance(word, Verdict):
            return ChannelCheck(word)
        username, password = user, word
    return await probes.check_smtp(
        host=email["host"], port=int(email.get("port", 587)), tls=email.get("tls", "starttls"),
        username=username, password=password, timeout_seconds=ctx.settings.smtp_timeout_seconds,
        ca_file=ctx.settings.smtp_ca_file)


async def _check_webpush(ctx: Context, namespace: str, webpush: dict[str, Any]) -> ChannelCheck:
    key = await _secret_value(ctx, namespace, webpush["vapidPrivateKeySecretRef"])
    if isinstance(key, Verdict):
        return ChannelCheck(key)
    return ChannelCheck(Verdict(True, "KeyPresent", "the VAPID private key is readable"))


async def _ensure_bot(ctx: Context, body: kopf.Body, telegram: dict[str, Any]) -> None:
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    database_url, redis_url = ctx.runtime_urls()
    await ctx.kube.apply_secret(builders.runtime_secret(namespace, ctx.settings.runtime_secret_name,
                                                        database_url, redis_url))
    ctx.runtime_secret_namespaces.add(namespace)
    ref = telegram["botTokenSecretRef"]
    deployment = builders.bot_deployment(
        namespace=namespace, channel=name, token_secret=ref["name"], token_key=ref.get("key", "token"),
        replicas=int((telegram.get("bot") or {}).get("replicas", 2)), image=ctx.settings.image,
        pull_policy=ctx.settings.image_pull_policy, runtime_secret_name=ctx.settings.runtime_secret_name)
    kopf.append_owner_reference(deployment, owner=body)
    await ctx.kube.apply_deployment(deployment)


async def reconcile_channel(body: kopf.Body, memo: Any, patch: kopf.Patch, logger: kopf.Logger,
                            *, register: bool) -> None:
    """Check the channel, store the result in Postgres and status, run its bot when it can."""
    ctx = context(memo)
    spec: dict[str, Any] = dict(body.spec)
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    kind = spec.get("type")
    digest = None
    if kind == "telegram":
        check, digest = await _check_telegram(ctx, body, spec["telegram"], register=register)
        section = spec["telegram"]
    elif kind == "email":
        check, section = await _check_email(ctx, namespace, spec["email"]), spec["email"]
    else:
        check, section = await _check_webpush(ctx, namespace, spec["webpush"]), spec["webpush"]
    await store.upsert_channel(
        ctx.db, namespace=namespace, name=name, type_=str(kind), uid=body.metadata.uid or "",
        bot_id=check.bot_id, bot_username=check.bot_username,
        api_base_url=section.get("apiBaseUrl") if kind == "telegram" else None,
        webhook_secret_sha256=digest, config=stored_config(section), ready=check.ready)
    if kind == "telegram" and check.credentials.ok:
        await _ensure_bot(ctx, body, spec["telegram"])
    now = datetime.now(UTC)
    old = list(body.status.get("conditions") or [])
    fresh = channel_conditions(check)
    generation = body.metadata.get("generation")
    patch.status["conditions"] = merge_conditions(old, fresh, generation=generation, now=now)
    patch.status["observedGeneration"] = generation
    patch.status["lastCheckedAt"] = rfc3339(now)
    if check.bot_id is not None:
        patch.status["botId"] = check.bot_id
        patch.status["botUsername"] = check.bot_username
    if kind == "telegram":
        patch.status["webhookUrl"] = check.webhook_url
    for cond in transitions(old, fresh):
        if cond["type"] == "Ready" or cond["status"] == "False":
            level = "Normal" if cond["status"] == "True" else "Warning"
            kopf.event(body, type=level, reason=cond["reason"], message=cond["message"])
    CHECKS.labels(str(kind), fresh[-1]["reason"]).inc()
    logger.info("channel %s/%s checked: ready=%s (%s)", namespace, name, check.ready,
                fresh[-1]["reason"])


@kopf.on.resume(*CHANNELS)
@kopf.on.create(*CHANNELS)
@kopf.on.update(*CHANNELS)
async def channel_changed(body: kopf.Body, memo: Any, patch: kopf.Patch, logger: kopf.Logger,
                          **_: Any) -> None:
    """Created, changed, a referenced Secret changed, or the operator restarted: check and register."""
    async with _lock(memo), context(memo).reconciling:
        await reconcile_channel(body, memo, patch, logger, register=True)


@kopf.timer(*CHANNELS, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
async def channel_health(body: kopf.Body, memo: Any, patch: kopf.Patch, logger: kopf.Logger,
                         **_: Any) -> None:
    """Re-check every healthCheckIntervalSeconds when Ready, every channel_retry_seconds when not."""
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in body.status.get("conditions") or ())
    due = check_due(parse_rfc3339(body.status.get("lastCheckedAt")), ready=ready,
                    interval_seconds=float(body.spec.get("healthCheckIntervalSeconds", 300)),
                    retry_seconds=context(memo).settings.channel_retry_seconds, now=datetime.now(UTC))
    if not due:
        return
    async with _lock(memo), context(memo).reconciling:
        await reconcile_channel(body, memo, patch, logger, register=False)


@kopf.on.delete(*CHANNELS)
async def channel_deleted(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Remove the webhook (best effort: a revoked token cannot), then mark the channel row deleted."""
    ctx = context(memo)
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    telegram = body.spec.get("telegram")
    if body.spec.get("type") == "telegram" and telegram:
        token = await _secret_value(ctx, namespace, dict(telegram["botTokenSecretRef"]))
        if isinstance(token, Verdict):
            logger.warning("webhook of %s/%s left in place: %s", namespace, name, token.message)
        else:
            try:
                await probes.delete_webhook(token, telegram.get("apiBaseUrl", "https://api.telegram.org"),
                                            timeout_seconds=ctx.settings.telegram_timeout_seconds)
            except (botapi.InvalidTokenFormat, botapi.BotApiError, *botapi.UNREACHABLE) as exc:
                logger.warning("deleteWebhook for %s/%s failed: %r", namespace, name, exc)
    await store.mark_channel_deleted(ctx.db, namespace, name, body.metadata.uid or "")


CHANNEL_TOKENS = "channel_token_refs"


@kopf.index(*CHANNELS, id=CHANNEL_TOKENS)
async def channel_token_refs(namespace: str | None, name: str, spec: kopf.Spec,
                             **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """(namespace, channel) -> the bot token Secret reference of each Telegram channel (campaigns read it)."""
    if spec.get("type") != "telegram":
        return None
    return {(namespace or "", name): dict(spec["telegram"]["botTokenSecretRef"])}


@kopf.index(*CHANNELS)
async def channel_secrets(namespace: str | None, name: str, spec: kopf.Spec,
                          **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, Secret name) -> channels that read that Secret."""
    return {(namespace or "", secret): name for secret in referenced_secrets(dict(spec))}


@kopf.on.event("", "v1", "secrets")
async def secret_changed(type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any,
                         **kwargs: Any) -> None:
    """A Secret a channel reads was added or changed: mark the channel so its update handler re-checks."""
    if not type:  # the initial listing: on.resume checks every channel anyway
        return
    index: kopf.Index[tuple[str, str], str] = kwargs["channel_secrets"]
    revision = name + "@" + str(body.metadata.get("resourceVersion"))
    for channel in index.get((namespace or "", name), []):
        await context(memo).kube.annotate_resource(
            CHANNELS[2], namespace or "", channel, {SECRET_REVISION: revision})
