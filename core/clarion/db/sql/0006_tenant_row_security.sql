-- Tenant row security (docs/tenancy.md, ADR 0005). Each namespace's pods log in as that namespace's
-- own role; these policies limit such a role to the rows of its namespace. Which tables and columns a
-- tenant role may touch at all is granted to the group role `clarion_tenant` by the operator
-- (clarion.db.tenancy.TENANT_PRIVILEGES), after every migration, so that a column a later migration adds
-- is granted in the same change as the query that needs it.
--
-- Every table in the schema has RLS enabled and forced, and a policy (tests/integration/test_tenancy.py
-- fails for a table without): a table added later comes with its policy.
--
-- Two permissive policies per table, OR-ed by Postgres for the roles they apply to:
-- - `clarion_system`, TO the role running this migration (the operator's, which owns the tables; the
--   webhook and workers in the system namespace use it too, or a role that is a member of it): every row.
--   Postgres folds `true OR …` away, so the system role pays nothing per row.
-- - `clarion_tenant`, TO PUBLIC: rows of the namespace that `clarion_tenant_namespace()` maps the current
--   role to (NULL, so no row at all, for a role that is not a tenant's). The function is wrapped in a
--   scalar subquery: an InitPlan, evaluated once per statement, not once per row. Tables without a
--   namespace column go through their parent's (deliveries → campaigns, subscribers → channels, ...)
--   with an uncorrelated `IN (SELECT id ...)`: one hashed subplan per statement, built from the parent's
--   namespace index, then a hash probe per row; the sender's claim keeps its index scan (its own
--   conditions are leakproof operators, so they still go into the index).

-- Which namespace each tenant role belongs to, and the state of its credentials. Two login roles per
-- namespace (slots a and b) so that a rotation can leave the previous password working for a grace
-- period: the active slot is in the runtime Secret, the other one retires at `retiring_until`.
CREATE TABLE tenants (
    namespace               text PRIMARY KEY,
    role_a                  name UNIQUE,
    role_b                  name UNIQUE,
    active_slot             text NOT NULL DEFAULT 'a' CHECK (active_slot IN ('a', 'b')),
    retiring_until          timestamptz,
    redis_user              text UNIQUE,
    redis_password_sha256   text,
    redis_previous_sha256   text,
    -- sha256 of the runtime Secret's data as last written: a Secret that differs was lost or edited.
    secret_sha256           text NOT NULL,
    rotated_at              timestamptz NOT NULL DEFAULT now(),
    created_at              timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION clarion_tenant_namespace() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, public
AS $$ SELECT namespace FROM public.tenants WHERE role_a = current_user OR role_b = current_user $$;

-- Tables with a namespace column.
ALTER TABLE channels ENABLE ROW LEVEL SECURITY;
ALTER TABLE channels FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON channels TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON channels TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

ALTER TABLE campaigns ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaigns FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON campaigns TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON campaigns TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

ALTER TABLE managed_groups ENABLE ROW LEVEL SECURITY;
ALTER TABLE managed_groups FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON managed_groups TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON managed_groups TO PUBLIC
    USING (namespace = (SELECT clarion_tenant_namespace()))
    WITH CHECK (namespace = (SELECT clarion_tenant_namespace()));

-- Tables reached through their parent.
ALTER TABLE deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON deliveries TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON deliveries TO PUBLIC
    USING (campaign_id IN (SELECT id FROM campaigns WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (campaign_id IN (SELECT id FROM campaigns WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE subscribers ENABLE ROW LEVEL SECURITY;
ALTER TABLE subscribers FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON subscribers TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON subscribers TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE notifications FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON notifications TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON notifications TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE support_threads ENABLE ROW LEVEL SECURITY;
ALTER TABLE support_threads FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON support_threads TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON support_threads TO PUBLIC
    USING (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (channel_id IN (SELECT id FROM channels WHERE namespace = (SELECT clarion_tenant_namespace())));

ALTER TABLE group_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE group_members FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON group_members TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON group_members TO PUBLIC
    USING (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())))
    WITH CHECK (group_id IN (SELECT id FROM managed_groups WHERE namespace = (SELECT clarion_tenant_namespace())));

-- System-only tables: no tenant policy, so a tenant role sees no row even if a grant slipped through.
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON audit_log TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE schema_migrations FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON schema_migrations TO CURRENT_USER USING (true) WITH CHECK (true);

-- A tenant role reads its own mapping (clarion_tenant_namespace runs as the caller), nothing else.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY clarion_system ON tenants TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY clarion_tenant ON tenants FOR SELECT TO PUBLIC
    USING (role_a = current_user OR role_b = current_user);
