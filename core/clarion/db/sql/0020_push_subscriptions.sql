-- Web push subscriptions (issue 17): one row per browser subscription (PushSubscription.toJSON():
-- endpoint, keys.p256dh, keys.auth) registered through POST /api/v1/push-subscriptions for one
-- recipient of one webpush channel. The push service's 404 or 410 deletes the row.
CREATE TABLE push_subscriptions (
    id              uuid PRIMARY KEY,
    channel_id      bigint NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    recipient       text NOT NULL,              -- the backend's own id of the person
    endpoint        text NOT NULL,
    p256dh          text NOT NULL,              -- the browser's P-256 public key, base64url
    auth            text NOT NULL,              -- the 16-byte auth secret, base64url
    expires_at      timestamptz,                -- PushSubscription.expirationTime, when given
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sent_at    timestamptz,
    UNIQUE (channel_id, endpoint)
);
CREATE INDEX push_subscriptions_recipient ON push_subscriptions (channel_id, recipient);

ALTER TABLE push_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE push_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON push_subscriptions TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON push_subscriptions TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));
