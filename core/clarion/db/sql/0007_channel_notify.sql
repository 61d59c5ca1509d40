-- Every change to a channel row is announced on the `clarion_channels` notification channel, so the
-- webhook's in-memory copy of the table follows it (and can serve it while Postgres is down).
-- Payload: the channel key `namespace.name` of the row changed; '' after a TRUNCATE (reload all).
-- Notifications are sent at commit; identical ones in one transaction are folded into one.
CREATE FUNCTION channels_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('clarion_channels', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('clarion_channels', OLD.namespace || '.' || OLD.name);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('clarion_channels', NEW.namespace || '.' || NEW.name);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER channels_notify AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION channels_notify();
CREATE TRIGGER channels_notify_truncate AFTER TRUNCATE ON channels
    FOR EACH STATEMENT EXECUTE FUNCTION channels_notify();
