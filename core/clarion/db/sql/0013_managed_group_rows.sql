-- ManagedGroup controller (issue 16, ADR 0010). The operator records each group it reconciles: the
-- resource's uid (a re-created group of the same name revives the row; the delete of an older one
-- does not touch it), the chat's title, and when the member count was last read from Telegram (the
-- operator's timer refreshes it every groupMemberCountSeconds).
ALTER TABLE managed_groups
    ADD COLUMN uid text,
    ADD COLUMN title text,
    ADD COLUMN member_count_at timestamptz;
