-- A delivery keeps the chat id of the audience snapshot (part of its key); when Telegram moved a group
-- to a supergroup, the id the message actually went to is recorded here.
ALTER TABLE deliveries ADD COLUMN delivered_chat_id bigint;
