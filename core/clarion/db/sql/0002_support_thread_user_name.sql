-- The support inbox shows admins who they are answering without another lookup.
ALTER TABLE support_threads ADD COLUMN user_name text;
