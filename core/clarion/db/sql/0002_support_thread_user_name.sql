-- The support inbox answers a user in their language and shows admins whom they are answering,
-- without another lookup (the user may never have subscribed).
ALTER TABLE support_threads ADD COLUMN user_name text;
ALTER TABLE support_threads ADD COLUMN user_language text;
