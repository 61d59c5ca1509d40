-- Events and routing (issue 17, docs/events.md). The operator stores each NotificationRoute it
-- reconciles (its uid: a re-created route of the same name revives the row, the delete of an older
-- one does not touch it); POST /api/v1/events reads the live routes of the namespace matching an
-- event's type and initiator role. `events` keeps each event a namespace sent, by the backend's id, with
-- the answer it got: the same id again is answered from here, without a second fan-out. A follow-up
-- event (a press of a card's button in the bot) is a row too, with `reference` = the id of the event
-- whose card it was; `follow_ups` lists the event types of that card's buttons, in order, and
-- `callback_route` names the route whose `callback` receives them. `event_deliveries` is the outbox of
-- those callbacks: one row per follow-up, written with it, retried by the webhook service until the
-- backend answers 2xx. A route's callback secret (`callback_secret`, from the Secret the route
-- references) is stored by the operator, like a channel's webapp key, and read only by the webhook.
CREATE TABLE notification_routes (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,
    uid             text NOT NULL,
    event_type      text NOT NULL,
    initiator_role  text NOT NULL,
    enabled         boolean NOT NULL,
    spec            jsonb NOT NULL,
    callback_url    text,
    callback_secret bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    UNIQUE (namespace, name)
);
CREATE INDEX notification_routes_match ON notification_routes (namespace, event_type, initiator_role)
    WHERE deleted_at IS NULL;

CREATE TABLE events (
    id              uuid PRIMARY KEY,           -- Clarion's own id (a card's buttons carry it)
    namespace       text NOT NULL,
    event_id        text NOT NULL,              -- the backend's id
    type            text NOT NULL,
    reference       text,                       -- a follow-up: the event_id it follows
    initiator       jsonb NOT NULL,             -- {role, id}
    data            jsonb NOT NULL DEFAULT '{}',
    follow_ups      jsonb NOT NULL DEFAULT '[]',
    callback_route  text,
    api_key_id      bigint,
    received_at     timestamptz NOT NULL DEFAULT now(),
    result          jsonb,                      -- the answer given; NULL while the first fan-out runs
    UNIQUE (namespace, event_id)
);
CREATE INDEX events_reference ON events (namespace, reference, received_at DESC) WHERE reference IS NOT NULL;

CREATE TABLE event_deliveries (
    event_id        uuid PRIMARY KEY REFERENCES events(id) ON DELETE CASCADE,
    namespace       text NOT NULL,
    route           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_deliveries_due ON event_deliveries (next_attempt_at) WHERE delivered_at IS NULL;

ALTER TABLE notification_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_routes FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON notification_routes TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON notification_routes TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

ALTER TABLE event_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON event_deliveries TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON event_deliveries TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON events TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON events TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));
