-- Events and routing (issue 17, docs/events.md). The operator stores each NotificationRoute it
-- reconciles (its uid: a re-created route of the same name revives the row, the delete of an older
-- one does not touch it); POST /api/v1/events reads the live routes of the namespace matching an
-- event's type and initiator role. `events` keeps each event a namespace sent, by the backend's id, with
-- the answer it got: the same id again is answered from here, without a second fan-out. A follow-up
-- event (a press of a card's button in the bot) is a row too, with `reference` = the id of the event
-- whose card it was; `follow_ups` lists the event types of that card's buttons, in order.
CREATE TABLE notification_routes (
    id              bigserial PRIMARY KEY,
    namespace       text NOT NULL,
    name            text NOT NULL,
    uid             text NOT NULL,
    event_type      text NOT NULL,
    initiator_role  text NOT NULL,
    enabled         boolean NOT NULL,
    spec            jsonb NOT NULL,
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
    api_key_id      bigint,
    received_at     timestamptz NOT NULL DEFAULT now(),
    result          jsonb,                      -- the answer given; NULL while the first fan-out runs
    UNIQUE (namespace, event_id)
);
CREATE INDEX events_reference ON events (namespace, reference, received_at DESC) WHERE reference IS NOT NULL;

ALTER TABLE notification_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_routes FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON notification_routes TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON notification_routes TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON events TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON events TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));
