-- Organizations, sites, opportunities and suggestions: the shared tenancy
-- tables the token and task-management modules build on.

SET LOCAL ROLE pgrpc_owner;

CREATE TABLE private.organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    plan text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT organizations_plan_known CHECK (plan IN ('free', 'freemium', 'paid')),
    CONSTRAINT organizations_name_not_blank CHECK (btrim(name) <> '')
);

CREATE TABLE private.sites (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES private.organizations (id) ON DELETE CASCADE,
    base_url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT sites_base_url_is_http CHECK (base_url ~ '^https?://[^/\s?#]+([/?#]\S*)?$')
);
CREATE INDEX sites_organization_id_idx ON private.sites (organization_id);

CREATE TABLE private.opportunities (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id uuid NOT NULL REFERENCES private.sites (id) ON DELETE CASCADE,
    type text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT opportunities_type_not_blank CHECK (btrim(type) <> '')
);
CREATE INDEX opportunities_site_id_idx ON private.opportunities (site_id);

CREATE TABLE private.suggestions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    opportunity_id uuid NOT NULL REFERENCES private.opportunities (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'NEW',
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT suggestions_status_known CHECK (status IN ('NEW', 'APPROVED', 'SKIPPED', 'FIXED', 'OUTDATED')),
    CONSTRAINT suggestions_data_is_object CHECK (jsonb_typeof(data) = 'object')
);
CREATE INDEX suggestions_opportunity_id_idx ON private.suggestions (opportunity_id);

CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.organizations
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.sites
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.opportunities
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.suggestions
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();

GRANT SELECT, INSERT ON private.organizations, private.sites, private.opportunities, private.suggestions
    TO pgrpc_api;
GRANT UPDATE (status, data) ON private.suggestions TO pgrpc_api;

-- Raises 404 not_found unless the row exists; returns its organization.
CREATE FUNCTION private.site_organization(p_site_id uuid)
RETURNS uuid
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_org uuid;
BEGIN
    SELECT organization_id INTO v_org FROM private.sites WHERE id = p_site_id;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING MESSAGE = 'not_found',
            DETAIL = format('There is no site %s.', p_site_id),
            HINT = 'Create the site with create_site first.';
    END IF;
    RETURN v_org;
END
$$;

GRANT EXECUTE ON FUNCTION private.site_organization(uuid) TO pgrpc_api;

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.create_organization(name text, plan text)
RETURNS private.organizations
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.organizations (name, plan)
    VALUES (create_organization.name, create_organization.plan)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_organization(text, text) IS
$$Creates an organization.

plan is free, freemium or paid; whether an organization's tokens are metered follows from its plan's allowances, never from its id. Returns the new row.$$;

CREATE FUNCTION api.create_site(organization_id uuid, base_url text)
RETURNS private.sites
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.sites (organization_id, base_url)
    VALUES (create_site.organization_id, create_site.base_url)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_site(uuid, text) IS
$$Creates a site of an organization.

base_url must be an http(s) URL. An unknown organization is a 409 foreign-key error. Returns the new row.$$;

CREATE FUNCTION api.create_opportunity(site_id uuid, type text)
RETURNS private.opportunities
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.opportunities (site_id, type)
    VALUES (create_opportunity.site_id, create_opportunity.type)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_opportunity(uuid, text) IS
$$Creates an opportunity on a site.

type is the opportunity type (for example broken-backlinks); it maps to a token type through private.token_types. Returns the new row.$$;

CREATE FUNCTION api.create_suggestion(opportunity_id uuid, data jsonb, status text DEFAULT 'NEW')
RETURNS private.suggestions
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.suggestions (opportunity_id, data, status)
    VALUES (create_suggestion.opportunity_id, create_suggestion.data, create_suggestion.status)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_suggestion(uuid, jsonb, text) IS
$$Creates a suggestion for an opportunity.

data must be a JSON object; status is one of NEW, APPROVED, SKIPPED, FIXED, OUTDATED (default NEW). Returns the new row.$$;

GRANT EXECUTE ON FUNCTION
    api.create_organization(text, text),
    api.create_site(uuid, text),
    api.create_opportunity(uuid, text),
    api.create_suggestion(uuid, jsonb, text)
TO pgrpc_service;

RESET ROLE;
