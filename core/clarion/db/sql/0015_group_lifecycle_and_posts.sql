-- ManagedGroup lifecycle, invite links, dry runs and posts (issue 16, ADR 0010).
--
-- managed_groups gains what the group-maintenance workers record and the operator puts in status:
-- when the group entered its phase, the current invite link (and the rotation period it was made for,
-- so a rotation done twice in one period makes one link), and the members a dry run of the inactivity
-- policy would remove now.
ALTER TABLE managed_groups
    ADD COLUMN phase_since timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN invite_link text,
    ADD COLUMN invite_link_expires_at timestamptz,
    ADD COLUMN invite_link_slot bigint,
    ADD COLUMN dry_run_candidates bigint[],
    ADD COLUMN dry_run_candidate_count integer,
    ADD COLUMN dry_run_at timestamptz;

-- The member count each time the operator read it: the growth rate of phase thresholds
-- (lifecycle.minGrowthPerDay over growthWindowDays). The operator keeps at most one row per hour.
CREATE TABLE group_member_counts (
    group_id        bigint NOT NULL REFERENCES managed_groups(id) ON DELETE CASCADE,
    at              timestamptz NOT NULL DEFAULT now(),
    member_count    integer NOT NULL CHECK (member_count >= 0),
    PRIMARY KEY (group_id, at)
);

-- Posts in a group are notifications on the lane `group-posts` (ADR 0010): the notification row is the
-- accepted work, sent by the channel's group-posts workers through the shared limiter (20 per minute
-- per group). group_posts records which notification each scheduled post's occurrence became, so an
-- occurrence is posted once however often the operator's timer looks at it (name NULL: a one-off post
-- made through the API).
ALTER TABLE notifications DROP CONSTRAINT notifications_lane_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_lane_check
    CHECK (lane IN ('instant', 'bulk', 'group-posts'));

CREATE TABLE group_posts (
    group_id        bigint NOT NULL REFERENCES managed_groups(id) ON DELETE CASCADE,
    name            text,
    due_at          timestamptz NOT NULL,
    notification_id uuid NOT NULL UNIQUE REFERENCES notifications(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, name, due_at)
);

ALTER TABLE group_member_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE group_member_counts FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON group_member_counts TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE group_posts ENABLE ROW LEVEL SECURITY;
ALTER TABLE group_posts FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON group_posts TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON group_posts TO PUBLIC
    USING (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())));
