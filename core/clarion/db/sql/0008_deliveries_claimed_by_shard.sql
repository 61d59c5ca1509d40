-- The shard (Job completion index) of the sender holding a `sending` row, which need not be the row's
-- own shard: a sender whose shard is drained helps with the others. A new sender for index i takes
-- back at once what earlier senders of index i held (the Job never runs two pods of one index at the
-- same time: podReplacementPolicy Failed), instead of waiting out their lease. A nullable column
-- without a default: no table rewrite.
ALTER TABLE deliveries ADD COLUMN claimed_by_shard integer;
