-- Transactional notifications (issue 13, docs/notifications.md): API keys, the outbox rows the public
-- API accepts and the workers send, and idempotency records. The `notifications` table of 0001 was
-- never written; it is replaced by the shape the API and the workers need.

-- API keys: Secrets labelled `clarion.io/api-key`, synced by the operator. The key itself is never
-- stored, only its SHA-256 (keys are 32+ random bytes: a fast hash is enough, nothing to brute-force).
CREATE TABLE api_keys (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,                -- the Secret's name
    secret_uid      text NOT NULL,                -- the Secret's uid (a re-created Secret is a new key)
    key_sha256      text NOT NULL UNIQUE,         -- hex SHA-256 of the key
    channels        text[] NOT NULL,              -- channel names of the namespace it may use; '*': all
    rate_per_minute integer CHECK (rate_per_minute IS NULL OR rate_per_minute > 0),
    revoked         boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, name)
);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON api_keys TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON api_keys TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

-- Every change to a key is announced on `clarion_api_keys` (payload: the key row's id), so the
-- webhook's copy follows a revocation at once.
CREATE FUNCTION api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('clarion_api_keys', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('clarion_api_keys', OLD.id::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('clarion_api_keys', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys_notify();

DROP TABLE notifications;

-- One row per accepted notification: the durable record (the streams only point at it).
-- status: created (accepted, not yet on a stream) -> queued (on its lane's stream) -> sending ->
-- sent | failed | blocked | cancelled; a retried one goes back to queued with next_attempt_at.
CREATE TABLE notifications (
    id                  uuid PRIMARY KEY,
    channel_id          bigint NOT NULL REFERENCES channels(id),
    lane                text NOT NULL CHECK (lane IN ('instant', 'bulk')),
    recipient           text NOT NULL,             -- a Telegram chat id or an email address
    content             jsonb NOT NULL,            -- what to send, rendered at accept time
    reference           text,                      -- the client's own reference
    api_key_id          bigint REFERENCES api_keys(id),
    bulk_job_id         uuid,
    status              text NOT NULL DEFAULT 'created'
                        CHECK (status IN ('created', 'queued', 'sending', 'sent', 'failed', 'blocked',
                                          'cancelled')),
    attempts            integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 3,
    last_error          text,
    provider_message_id text,
    trace_id            text NOT NULL,
    enqueued_at         timestamptz,               -- last put on its lane's stream; NULL: not on one
    claimed_by          text,                      -- the worker sending it (status sending)
    claimed_until       timestamptz,               -- its lease: past it, another worker may take over
    scheduled_for       timestamptz,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);
CREATE INDEX notifications_reference ON notifications (channel_id, reference, created_at)
    WHERE reference IS NOT NULL;
-- The replayer: rows not yet settled whose stream entry may have been lost.
CREATE INDEX notifications_unsettled ON notifications (next_attempt_at)
    WHERE status IN ('created', 'queued', 'sending');

ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON notifications TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON notifications TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));

-- Idempotency-Key records: the first answer, kept 24 h. `request_sha256` is the hash of the request
-- body (and route); `response` is null while the first request is still being accepted.
CREATE TABLE idempotency_keys (
    api_key_id      bigint NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    key             text NOT NULL,
    request_sha256  text NOT NULL,
    status_code     integer,
    response        jsonb,
    location        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON idempotency_keys TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON idempotency_keys TO PUBLIC
    USING (api_key_id IN (SELECT id FROM api_keys WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (api_key_id IN (SELECT id FROM api_keys WHERE namespace = (SELECT clarion_tenant_namespace())));
