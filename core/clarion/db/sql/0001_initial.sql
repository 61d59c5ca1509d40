-- Clarion's initial schema. Postgres is the source of truth; Redis only carries work in flight.

CREATE TABLE channels (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,
    type            text NOT NULL CHECK (type IN ('telegram', 'email', 'webpush')),
    uid             text,
    bot_id          bigint,
    bot_username    text,
    api_base_url    text,
    -- sha256 hex of the webhook secret token: the webhook compares digests in constant time.
    webhook_secret_sha256 text,
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    ready           boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    UNIQUE (namespace, name)
);

CREATE TABLE subscribers (
    channel_id          bigint NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    chat_id             bigint NOT NULL,
    username            text,
    first_name          text,
    last_name           text,
    language            text,
    subscribed          boolean NOT NULL DEFAULT true,
    unavailable         boolean NOT NULL DEFAULT false,
    unavailable_reason  text,
    unavailable_since   timestamptz,
    tags                text[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, chat_id)
);
-- The audience snapshot reads only reachable subscribers of one channel.
CREATE INDEX subscribers_reachable ON subscribers (channel_id, chat_id) WHERE subscribed AND NOT unavailable;
CREATE INDEX subscribers_tags ON subscribers USING gin (tags);

CREATE TABLE campaigns (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,
    uid             text NOT NULL UNIQUE,
    channel_id      bigint NOT NULL REFERENCES channels(id),
    spec            jsonb NOT NULL,
    message_hash    text NOT NULL,
    phase           text NOT NULL DEFAULT 'Scheduled',
    run             integer NOT NULL DEFAULT 1,
    shards          integer NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 1000),
    total           integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    deleted_at      timestamptz
);
CREATE INDEX campaigns_by_name ON campaigns (namespace, name);

CREATE TABLE deliveries (
    campaign_id     bigint NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    chat_id         bigint NOT NULL,
    shard           integer NOT NULL DEFAULT 0,
    language        text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'blocked')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    message_id      bigint,
    next_attempt_at timestamptz NOT NULL DEFAULT '-infinity',
    claimed_by      text,
    claimed_until   timestamptz,
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, chat_id)
);
-- The sender's claim: pending rows of one shard whose time has come, oldest first.
CREATE INDEX deliveries_claim ON deliveries (campaign_id, shard, next_attempt_at)
    WHERE status = 'pending';
-- Rows a dead sender left claimed, found and released by the next claim.
CREATE INDEX deliveries_in_flight ON deliveries (campaign_id, shard, claimed_until)
    WHERE status = 'sending';
-- Status counts per campaign.
CREATE INDEX deliveries_status ON deliveries (campaign_id, status);

CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    channel_id      bigint NOT NULL REFERENCES channels(id),
    class           text NOT NULL DEFAULT 'default',
    recipient       text NOT NULL,
    payload         jsonb NOT NULL,
    idempotency_key text,
    api_key_id      bigint,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE UNIQUE INDEX notifications_idempotency ON notifications (channel_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The replay that finds accepted notifications Redis dropped.
CREATE INDEX notifications_pending ON notifications (next_attempt_at) WHERE status IN ('pending', 'sending');

CREATE TABLE managed_groups (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,
    channel_id      bigint NOT NULL REFERENCES channels(id),
    chat_id         bigint NOT NULL,
    spec            jsonb NOT NULL DEFAULT '{}'::jsonb,
    phase           text NOT NULL DEFAULT 'Growth',
    member_count    integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    UNIQUE (namespace, name),
    UNIQUE (channel_id, chat_id)
);

CREATE TABLE group_members (
    group_id        bigint NOT NULL REFERENCES managed_groups(id) ON DELETE CASCADE,
    user_id         bigint NOT NULL,
    status          text NOT NULL DEFAULT 'member'
                    CHECK (status IN ('member', 'pending', 'warned', 'removed', 'left', 'declined')),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    warned_at       timestamptz,
    removed_at      timestamptz,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_inactive ON group_members (group_id, last_activity_at) WHERE status = 'member';

CREATE TABLE support_threads (
    id              bigserial PRIMARY KEY,
    channel_id      bigint NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    user_chat_id    bigint NOT NULL,
    admin_chat_id   bigint NOT NULL,
    admin_message_id bigint NOT NULL,
    user_message_id bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel_id, admin_chat_id, admin_message_id)
);

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    subject         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_subject ON audit_log (subject, at);
