-- Bulk jobs (issue 13, docs/notifications.md "Bulk"): `POST /api/v1/bulk` stores the job and its
-- validated, rendered rows in one transaction; an expander (a task in every webhook replica) turns the
-- rows into `notifications` on the bulk lane, a chunk per transaction, moving a cursor in the same
-- transaction, so an expansion interrupted anywhere resumes where it stopped and creates no row twice.

-- status: accepted (stored, not yet claimed) -> expanding (a replica holds it, with a lease) -> done
-- (every row is a notification) | failed (its rows went missing; last_error says why).
CREATE TABLE bulk_jobs (
    id              uuid PRIMARY KEY,
    channel_id      bigint NOT NULL REFERENCES channels(id),
    api_key_id      bigint REFERENCES api_keys(id),
    template        jsonb NOT NULL,                -- {"name", "language"}: what each row was rendered from
    reference       text,                          -- the client's reference, given to every notification
    scheduled_for   timestamptz,                   -- every notification's scheduledFor
    trace_id        text NOT NULL,                 -- the request's; every notification carries it
    total           integer NOT NULL CHECK (total > 0),
    expanded        integer NOT NULL DEFAULT 0,    -- the cursor: rows 1..expanded are notifications
    status          text NOT NULL DEFAULT 'accepted'
                    CHECK (status IN ('accepted', 'expanding', 'done', 'failed')),
    last_error      text,
    claimed_by      text,                          -- the replica expanding it
    claimed_until   timestamptz,                   -- its lease: past it, another replica takes over
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK (expanded BETWEEN 0 AND total)
);
-- The expander's queue: jobs not finished, oldest first.
CREATE INDEX bulk_jobs_unfinished ON bulk_jobs (created_at) WHERE status IN ('accepted', 'expanding');

-- The rows still to expand, as they will be stored: each is deleted in the transaction that creates
-- its notification (whose id, fixed at accept time, is `notification_id`).
CREATE TABLE bulk_job_rows (
    job_id          uuid NOT NULL REFERENCES bulk_jobs(id) ON DELETE CASCADE,
    row_no          integer NOT NULL,              -- 1-based, in request order
    notification_id uuid NOT NULL,
    recipient       text NOT NULL,
    content         text NOT NULL,                 -- rendered, as the worker sends it: JSON (COPY takes text)
    reference       text,                          -- the row's own, else the job's
    PRIMARY KEY (job_id, row_no)
);

-- A job's progress: its notifications by status.
CREATE INDEX notifications_bulk_job ON notifications (bulk_job_id, status) WHERE bulk_job_id IS NOT NULL;

ALTER TABLE bulk_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulk_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON bulk_jobs TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON bulk_jobs TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE bulk_job_rows ENABLE ROW LEVEL SECURITY;
ALTER TABLE bulk_job_rows FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON bulk_job_rows TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON bulk_job_rows TO PUBLIC
    USING (job_id IN (SELECT id FROM bulk_jobs))
    WITH CHECK (job_id IN (SELECT id FROM bulk_jobs));
