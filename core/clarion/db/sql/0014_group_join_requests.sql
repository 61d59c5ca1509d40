-- Join requests of managed groups and the welcomes the bot posts (issue 16, docs/webhook-and-bot.md).
-- Both outlive the bot process: a question's deadline and a welcome's deletion are rows that the bot's
-- group sweep acts on when due (Postgres's clock), so a restart loses neither.

-- One row per (group, user): the latest request. A new request (another `date`) after a decided one
-- starts the row again; the same update handled twice changes nothing.
CREATE TABLE group_join_requests (
    group_id        bigint NOT NULL REFERENCES managed_groups(id) ON DELETE CASCADE,
    user_id         bigint NOT NULL,
    -- the private chat the bot may write to for 5 minutes after the request (Bot API user_chat_id)
    user_chat_id    bigint NOT NULL,
    first_name      text NOT NULL DEFAULT '',
    username        text,
    language        text,
    -- the update's `date` (unix seconds): tells a new request from the same one handled again
    request_date    bigint NOT NULL,
    -- pending: waiting (for an admin under policy manual); asked: the question was sent, an answer is
    -- due by `deadline`; approved / declined: decided (Telegram told once `applied_at` is set)
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'asked', 'approved', 'declined')),
    deadline        timestamptz,
    -- the manual card in the admin chat
    card_chat_id    bigint,
    card_message_id bigint,
    card_text       text,
    decided_by      text,
    decided_by_name text,
    reason          text,
    decided_at      timestamptz,
    applied_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id),
    CHECK (status <> 'asked' OR deadline IS NOT NULL)
);
CREATE INDEX group_join_requests_due ON group_join_requests (deadline) WHERE status = 'asked';
CREATE INDEX group_join_requests_unapplied ON group_join_requests (decided_at)
    WHERE applied_at IS NULL AND status IN ('approved', 'declined');
CREATE INDEX group_join_requests_user_chat ON group_join_requests (user_chat_id) WHERE status = 'asked';

-- Welcomes to delete at `delete_at`.
CREATE TABLE group_welcomes (
    group_id        bigint NOT NULL REFERENCES managed_groups(id) ON DELETE CASCADE,
    chat_id         bigint NOT NULL,
    message_id      bigint NOT NULL,
    delete_at       timestamptz NOT NULL,
    PRIMARY KEY (chat_id, message_id)
);
CREATE INDEX group_welcomes_due ON group_welcomes (delete_at);

ALTER TABLE group_join_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE group_join_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON group_join_requests TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON group_join_requests TO PUBLIC
    USING (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE group_welcomes ENABLE ROW LEVEL SECURITY;
ALTER TABLE group_welcomes FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON group_welcomes TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON group_welcomes TO PUBLIC
    USING (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())));

-- The bot writes the audit rows of its decisions: a tenant role may add (never read) rows that name one
-- of its own namespace's channels in `details.channel`.
CREATE POLICY clarion_tenant_insert ON audit_log FOR INSERT TO PUBLIC
    WITH CHECK (split_part(details->>'channel', '.', 1) = (SELECT clarion_tenant_namespace()));
