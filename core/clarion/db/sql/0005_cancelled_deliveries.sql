-- A cancelled campaign marks what it will never send `cancelled`, so its counts add up to its total
-- and retention still keeps the rows.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'blocked', 'cancelled'));
