-- Scheduled group posts (issue 16, ADR 0010): up to when the operator has looked for a group's due
-- occurrences. The next pass queues those between this time and now; the ones more than the catch-up
-- window old are skipped with an Event. A new group starts looking from its creation.
ALTER TABLE managed_groups ADD COLUMN posts_checked_at timestamptz NOT NULL DEFAULT now();
