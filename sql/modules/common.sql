-- Module common: request claims, role checks and the generic rule triggers (forbid, write-once, updated_at) every module uses.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: (none)

-- private.tg_forbid
CREATE OR REPLACE FUNCTION private.tg_forbid()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_rule text := coalesce(TG_ARGV[0], 'append_only');
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = v_rule,
        DETAIL = format('%s on %I.%I is not allowed (%s).',
                        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, v_rule),
        HINT = 'This table''s rows are never rewritten or removed this way; see the README.';
END
$function$;
ALTER FUNCTION private.tg_forbid() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_forbid() FROM PUBLIC;

-- private.tg_write_once
CREATE OR REPLACE FUNCTION private.tg_write_once()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_old jsonb := to_jsonb(OLD);
    v_new jsonb := to_jsonb(NEW);
    v_col text;
BEGIN
    FOREACH v_col IN ARRAY TG_ARGV LOOP
        IF v_old -> v_col IS NOT NULL
           AND v_old -> v_col <> 'null'::jsonb
           AND (v_new -> v_col) IS DISTINCT FROM (v_old -> v_col) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = 'write_once',
                DETAIL = format('Column %I of %I.%I is write-once and already set.',
                                v_col, TG_TABLE_SCHEMA, TG_TABLE_NAME),
                HINT = 'Write-once values never change; create a new row instead.';
        END IF;
    END LOOP;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_write_once() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_write_once() FROM PUBLIC;

-- private.tg_set_updated_at
CREATE OR REPLACE FUNCTION private.tg_set_updated_at()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_set_updated_at() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_set_updated_at() FROM PUBLIC;

-- private.claims
CREATE OR REPLACE FUNCTION private.claims()
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb, '{}'::jsonb)
$function$;
ALTER FUNCTION private.claims() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.claims() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.claims() TO pgrpc_api, pgrpc_admin;

-- private.claim
CREATE OR REPLACE FUNCTION private.claim(p_name text)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT private.claims() ->> p_name
$function$;
ALTER FUNCTION private.claim(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.claim(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.claim(text) TO pgrpc_api, pgrpc_admin;

-- private.jwt_sub
CREATE OR REPLACE FUNCTION private.jwt_sub()
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT private.claim('sub')
$function$;
ALTER FUNCTION private.jwt_sub() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.jwt_sub() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.jwt_sub() TO pgrpc_api, pgrpc_admin;

-- private.jwt_email
CREATE OR REPLACE FUNCTION private.jwt_email()
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT lower(private.claim('email'))
$function$;
ALTER FUNCTION private.jwt_email() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.jwt_email() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.jwt_email() TO pgrpc_api, pgrpc_admin;

-- private.jwt_org_id
CREATE OR REPLACE FUNCTION private.jwt_org_id()
 RETURNS uuid
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v_raw text := private.claim('org_id');
BEGIN
    IF v_raw IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN v_raw::uuid;
EXCEPTION WHEN invalid_text_representation THEN
    RETURN NULL;
END
$function$;
ALTER FUNCTION private.jwt_org_id() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.jwt_org_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.jwt_org_id() TO pgrpc_api, pgrpc_admin;

-- private.request_role
CREATE OR REPLACE FUNCTION private.request_role()
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
    SELECT coalesce(nullif(current_setting('role', true), 'none'), session_user::text)
$function$;
ALTER FUNCTION private.request_role() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.request_role() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.request_role() TO pgrpc_api, pgrpc_admin;

-- private.caller_is_unscoped
CREATE OR REPLACE FUNCTION private.caller_is_unscoped()
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
    SELECT pg_catalog.pg_has_role(private.request_role(), 'pgrpc_service', 'MEMBER')
        OR pg_catalog.pg_has_role(private.request_role(), 'pgrpc_admin', 'MEMBER')
$function$;
ALTER FUNCTION private.caller_is_unscoped() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.caller_is_unscoped() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.caller_is_unscoped() TO pgrpc_api, pgrpc_admin;

-- private.require_org_access
CREATE OR REPLACE FUNCTION private.require_org_access(p_org uuid)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF NOT private.caller_is_unscoped()
       AND (private.jwt_org_id() IS NULL OR private.jwt_org_id() IS DISTINCT FROM p_org) THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = 'The token''s org_id does not grant access to this organization.',
            HINT = 'Use a token issued for that organization.';
    END IF;
END
$function$;
ALTER FUNCTION private.require_org_access(uuid) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.require_org_access(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.require_org_access(uuid) TO pgrpc_api, pgrpc_admin;

-- private.require_mailbox_access
CREATE OR REPLACE FUNCTION private.require_mailbox_access(p_email text)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF NOT private.caller_is_unscoped()
       AND (private.jwt_email() IS NULL OR private.jwt_email() IS DISTINCT FROM lower(p_email)) THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = 'The token''s email claim does not grant access to this mailbox.',
            HINT = 'Use a token issued for that mailbox.';
    END IF;
END
$function$;
ALTER FUNCTION private.require_mailbox_access(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.require_mailbox_access(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.require_mailbox_access(text) TO pgrpc_api, pgrpc_admin;

-- api.version
CREATE OR REPLACE FUNCTION api.version()
 RETURNS text
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT '0.1.0'::text
$function$;
ALTER FUNCTION api.version() OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.version() IS
$$The pgrpc schema version.

Returns the version of the SQL contract this database was migrated to. Callable by every request role, anonymous included.$$;
REVOKE ALL ON FUNCTION api.version() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.version() TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_admin;

-- private.url_problem
CREATE OR REPLACE FUNCTION private.url_problem(p_url text, p_schemes text[])
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    WITH parts AS (
        SELECT regexp_match(p_url, '^([A-Za-z][A-Za-z0-9+.-]*):(//([^/?#]*))?([^?#]*)(\?[^#]*)?(#.*)?$') AS m
    ), authority AS (
        SELECT m,
               lower(m[1]) AS scheme,
               m[3] AS auth,
               regexp_match(m[3], '^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(:(.*))?$') AS hp
        FROM parts
    )
    SELECT CASE
        WHEN p_url IS NULL THEN NULL
        WHEN length(p_url) > 2048 THEN
            'is ' || length(p_url) || ' characters long; at most 2048 are allowed'
        WHEN p_url !~ '^[]A-Za-z0-9._~:/?#[@!$&''()*+,;=%-]*$' THEN
            'contains characters not allowed in a URL (spaces, quotes, backslashes, control or non-ASCII characters); percent-encode them'
        WHEN m IS NULL THEN
            'is not an absolute URL: it has no scheme'
        WHEN NOT (scheme = ANY (p_schemes)) THEN
            'must use the ' || array_to_string(p_schemes, ' or ') || ' scheme, not ' || scheme
        WHEN m[2] IS NULL THEN
            'is not an absolute URL with a host: it has no //host part'
        WHEN auth LIKE '%@%' THEN
            'must not carry credentials (user@ or user:password@) before the host'
        WHEN hp IS NULL THEN
            'has an invalid host ' || quote_literal(left(auth, 100))
        WHEN hp[1] = '' THEN
            'has no host'
        WHEN hp[1] NOT LIKE '[%'
             AND (length(hp[1]) > 253
                  OR hp[1] !~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$') THEN
            'has an invalid host ' || quote_literal(left(hp[1], 100))
        WHEN hp[2] IS NOT NULL
             AND CASE WHEN hp[3] ~ '^[0-9]{1,5}$' THEN hp[3]::integer NOT BETWEEN 1 AND 65535 ELSE true END THEN
            'has an invalid port ' || quote_literal(left(hp[3], 20))
    END
    FROM authority
$function$;
ALTER FUNCTION private.url_problem(text,text[]) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.url_problem(text,text[]) IS
$$What is wrong with a URL, or NULL when it is an absolute URL with a host and one of the given schemes.$$;
REVOKE ALL ON FUNCTION private.url_problem(text,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.url_problem(text,text[]) TO pgrpc_api, pgrpc_admin;

-- private.check_url
CREATE OR REPLACE FUNCTION private.check_url(p_url text, p_column text, p_schemes text[])
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    v_problem text := private.url_problem(p_url, p_schemes);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_url',
            DETAIL = p_column || ' ' || quote_literal(left(p_url, 200)) || ' ' || v_problem || '.',
            HINT = 'Use an absolute ' || array_to_string(p_schemes, ' or ') || ' URL with a host, such as https://example.atlassian.net.';
    END IF;
    RETURN true;
END
$function$;
ALTER FUNCTION private.check_url(text,text,text[]) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.check_url(text,text,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.check_url(text,text,text[]) TO pgrpc_api, pgrpc_admin;

-- private.caller_is_anonymous
CREATE OR REPLACE FUNCTION private.caller_is_anonymous()
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT pg_catalog.pg_has_role(private.request_role(), 'pgrpc_anon', 'MEMBER')
       AND NOT pg_catalog.pg_has_role(private.request_role(), 'pgrpc_user', 'MEMBER')
       AND NOT private.caller_is_unscoped()
$function$;
ALTER FUNCTION private.caller_is_anonymous() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.caller_is_anonymous() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.caller_is_anonymous() TO pgrpc_api;
