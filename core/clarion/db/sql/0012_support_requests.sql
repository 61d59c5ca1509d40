-- Support requests answered from the Mini App (issue 15). A support thread is now any request that
-- reached a channel's support chat: a user's DM to the bot (origin telegram), or POST /api/v1/requests
-- from a backend such as a website's contact form (origin api: answered by email). Its admin post is
-- edited with the outcome of the reply, so the thread keeps what the edit needs.
ALTER TABLE support_threads
    ADD COLUMN origin text NOT NULL DEFAULT 'telegram',
    ADD COLUMN requester_email text,
    -- the request's own text, shown in the Mini App (a DM's text, or the API's `text`)
    ADD COLUMN body text,
    -- the admin post's text as sent: the edit puts the outcome above it
    ADD COLUMN post_text text,
    -- the admin post of an api request is a notification the channel's worker sends; the bot records
    -- its message id (admin_message_id) from the notification's status event
    ADD COLUMN post_notification_id uuid,
    ADD COLUMN status text NOT NULL DEFAULT 'open',
    ADD COLUMN replied_by bigint,
    ADD COLUMN replied_by_name text,
    ADD COLUMN reply_text text,
    ADD COLUMN reply_notification_id uuid,
    ADD COLUMN last_error text,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    -- the `updated_at` of the outcome the admin post shows since the bot edited it: while a settled
    -- thread's differs, the edit is owed (the bot's sweep makes it after a crash or an outage)
    ADD COLUMN post_shown_at timestamptz,
    ALTER COLUMN user_chat_id DROP NOT NULL,
    ALTER COLUMN admin_message_id DROP NOT NULL,
    ADD CONSTRAINT support_threads_origin CHECK (origin IN ('telegram', 'api')),
    -- open: nobody answered yet; replying: an answer is being sent; replied / failed: its outcome
    -- (failed keeps the Reply button: an admin may try again)
    ADD CONSTRAINT support_threads_status CHECK (status IN ('open', 'replying', 'replied', 'failed')),
    ADD CONSTRAINT support_threads_requester CHECK (
        (origin = 'telegram' AND user_chat_id IS NOT NULL)
        OR (origin = 'api' AND requester_email IS NOT NULL AND post_notification_id IS NOT NULL));

-- A notification sent for a support thread (its admin post, or a reply): the bot's sweep finds
-- replies whose status event it missed.
ALTER TABLE notifications ADD COLUMN support_thread_id bigint REFERENCES support_threads(id) ON DELETE SET NULL;
CREATE INDEX notifications_support_thread ON notifications (support_thread_id) WHERE support_thread_id IS NOT NULL;

-- HMAC-SHA256 with key "WebAppData" over the bot token (Telegram's Mini App initData key): the webhook
-- checks initData with it and never holds the token. Written by the operator from the token it checks.
ALTER TABLE channels ADD COLUMN webapp_secret bytea;
