-- Message templates of a channel (ADR 0007): `spec.templates` as the operator stored it, each entry
-- {"name", "revision", "error", "template"}; `error` is set when the operator found that the template
-- does not compile, and the API then refuses it by name. The webhook's channel copy follows it by the
-- channel row's NOTIFY (migration 0007). A constant default: no table rewrite.
ALTER TABLE channels ADD COLUMN templates jsonb NOT NULL DEFAULT '[]';
