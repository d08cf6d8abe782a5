-- Module organizations: organizations, sites, opportunities and suggestions.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.organizations, private.sites, private.opportunities, private.suggestions, private.suggestion_completeness

-- private.site_organization
CREATE OR REPLACE FUNCTION private.site_organization(p_site_id uuid)
 RETURNS uuid
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;
ALTER FUNCTION private.site_organization(uuid) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.site_organization(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.site_organization(uuid) TO pgrpc_api;

-- api.create_organization
CREATE OR REPLACE FUNCTION api.create_organization(name text, plan text)
 RETURNS api.organization
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.organizations (name, plan)
    VALUES (create_organization.name, create_organization.plan)
    RETURNING id, name, plan, created_at, updated_at
$function$;
ALTER FUNCTION api.create_organization(text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_organization(text,text) IS
$$Creates an organization.

plan is free, freemium or paid; whether an organization's tokens are metered follows from its plan's allowances, never from its id. Returns the new organization: {id, name, plan, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_organization(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_organization(text,text) TO pgrpc_service;

-- api.create_site
CREATE OR REPLACE FUNCTION api.create_site(organization_id uuid, base_url text)
 RETURNS api.site
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.sites (organization_id, base_url)
    VALUES (create_site.organization_id, create_site.base_url)
    RETURNING id, organization_id, base_url, created_at, updated_at
$function$;
ALTER FUNCTION api.create_site(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_site(uuid,text) IS
$$Creates a site of an organization.

base_url must be an http(s) URL. An unknown organization is a 409 foreign-key error. Returns the new site: {id, organization_id, base_url, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_site(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_site(uuid,text) TO pgrpc_service;

-- api.create_opportunity
CREATE OR REPLACE FUNCTION api.create_opportunity(site_id uuid, type text)
 RETURNS api.opportunity
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.opportunities (site_id, type)
    VALUES (create_opportunity.site_id, create_opportunity.type)
    RETURNING id, site_id, type, created_at, updated_at
$function$;
ALTER FUNCTION api.create_opportunity(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_opportunity(uuid,text) IS
$$Creates an opportunity on a site.

type is the opportunity type (for example broken-backlinks); it maps to a token type through private.token_types. Returns the new opportunity: {id, site_id, type, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_opportunity(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_opportunity(uuid,text) TO pgrpc_service;

-- api.create_suggestion
CREATE OR REPLACE FUNCTION api.create_suggestion(opportunity_id uuid, data jsonb, status text DEFAULT 'NEW'::text)
 RETURNS api.suggestion
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.suggestions (opportunity_id, data, status)
    VALUES (create_suggestion.opportunity_id, create_suggestion.data, create_suggestion.status)
    RETURNING id, opportunity_id, status, data, created_at, updated_at
$function$;
ALTER FUNCTION api.create_suggestion(uuid,jsonb,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_suggestion(uuid,jsonb,text) IS
$$Creates a suggestion for an opportunity.

data must be a JSON object; status is one of NEW, APPROVED, SKIPPED, FIXED, OUTDATED (default NEW). Returns the new suggestion: {id, opportunity_id, status, data, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_suggestion(uuid,jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_suggestion(uuid,jsonb,text) TO pgrpc_service;
