-- What the operator needs to stay idempotent across restarts: the retryFailed value it has acted
-- on, and how many extra sender runs it started because a Job ended with deliveries unsent.
ALTER TABLE campaigns ADD COLUMN retry_observed integer NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN recovery_runs integer NOT NULL DEFAULT 0;
