-- Roles, schemas, default privileges, settings and the request-claims helpers.
--
-- Roles are cluster-wide, so every CREATE ROLE is guarded: a second database
-- in the same cluster must migrate cleanly. Migrations run as a superuser;
-- each later migration switches to pgrpc_owner (tables) and pgrpc_api
-- (SECURITY DEFINER functions) with SET LOCAL ROLE, so ownership is explicit.

DO $roles$
DECLARE
    v_role record;
BEGIN
    FOR v_role IN
        SELECT *
        FROM (VALUES
            ('pgrpc_owner',         'NOLOGIN'),
            ('pgrpc_api',           'NOLOGIN'),
            ('pgrpc_authenticator', 'LOGIN NOINHERIT'),
            ('pgrpc_anon',          'NOLOGIN'),
            ('pgrpc_user',          'NOLOGIN'),
            ('pgrpc_service',       'NOLOGIN'),
            ('pgrpc_admin',         'NOLOGIN')
        ) AS r(name, options)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role.name) THEN
            EXECUTE format('CREATE ROLE %I %s', v_role.name, v_role.options);
        END IF;
    END LOOP;
END
$roles$;

-- A role that already existed (another database of the cluster, or an
-- operator's hand) is brought back to the attributes SPEC §1 requires.
ALTER ROLE pgrpc_owner NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
ALTER ROLE pgrpc_api NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
ALTER ROLE pgrpc_authenticator LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
ALTER ROLE pgrpc_anon NOLOGIN NOSUPERUSER NOBYPASSRLS;
ALTER ROLE pgrpc_user NOLOGIN NOSUPERUSER NOBYPASSRLS;
ALTER ROLE pgrpc_service NOLOGIN NOSUPERUSER NOBYPASSRLS;
ALTER ROLE pgrpc_admin NOLOGIN NOSUPERUSER NOBYPASSRLS;

-- The proxy's connection role may become the request roles and nothing else.
GRANT pgrpc_anon, pgrpc_user, pgrpc_service TO pgrpc_authenticator;
DO $members$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT r.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
        WHERE m.member = 'pgrpc_authenticator'::regrole
          AND r.rolname NOT IN ('pgrpc_anon', 'pgrpc_user', 'pgrpc_service')
    LOOP
        EXECUTE format('REVOKE %I FROM pgrpc_authenticator', v_role);
    END LOOP;
END
$members$;

-- Functions call public.gen_random_bytes(): pgcrypto must live in public.
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;
DO $pgcrypto$
BEGIN
    IF (SELECT n.nspname FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pgcrypto') <> 'public' THEN
        RAISE EXCEPTION 'pgcrypto is installed outside schema public'
            USING HINT = 'ALTER EXTENSION pgcrypto SET SCHEMA public, then migrate again.';
    END IF;
END
$pgcrypto$;

CREATE SCHEMA IF NOT EXISTS private AUTHORIZATION pgrpc_owner;
CREATE SCHEMA IF NOT EXISTS api AUTHORIZATION pgrpc_owner;
CREATE SCHEMA IF NOT EXISTS admin AUTHORIZATION pgrpc_owner;

-- Nothing is callable by PUBLIC unless a migration grants it per role.
ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_api REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_owner IN SCHEMA private GRANT SELECT ON TABLES TO pgrpc_admin;
REVOKE ALL ON SCHEMA private, api, admin FROM PUBLIC;

-- pgrpc_api owns the SECURITY DEFINER functions of api and admin; it cannot
-- log in, and only a superuser can become it.
GRANT USAGE, CREATE ON SCHEMA api, admin TO pgrpc_api;
GRANT USAGE ON SCHEMA private TO pgrpc_api;
GRANT USAGE ON SCHEMA api TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_admin;
GRANT USAGE ON SCHEMA admin, private TO pgrpc_admin;
-- The proxy prepares its statements as pgrpc_authenticator before switching
-- role, and PostgreSQL may re-plan them later as the request role; name
-- lookup needs USAGE on the schemas they mention (api, and private for the
-- Idempotency-Key functions). USAGE grants no access to any table or
-- function: EXECUTE is still checked per role when the call runs.
GRANT USAGE ON SCHEMA api, private TO pgrpc_authenticator;
GRANT USAGE ON SCHEMA private TO pgrpc_anon, pgrpc_user, pgrpc_service;

SET LOCAL ROLE pgrpc_owner;

-- Generic trigger functions shared by every module. ------------------------

-- BEFORE UPDATE/DELETE (row) or BEFORE TRUNCATE (statement): always refuse.
-- TG_ARGV[0], when given, names the rule in the error ('append_only').
CREATE FUNCTION private.tg_forbid()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- BEFORE UPDATE (row): refuse a change to any column named in TG_ARGV once
-- that column holds a value. NULL to a value is allowed (a write-once column
-- may be filled later); a value to anything else is not.
CREATE FUNCTION private.tg_write_once()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- BEFORE UPDATE (row): keep updated_at.
CREATE FUNCTION private.tg_set_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$;

-- Request claims ------------------------------------------------------------

-- The JWT claims of the current request, as the proxy (or PostgREST) set
-- them; '{}' outside a request (psql).
CREATE FUNCTION private.claims()
RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb, '{}'::jsonb)
$$;

CREATE FUNCTION private.claim(p_name text)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT private.claims() ->> p_name
$$;

CREATE FUNCTION private.jwt_sub()
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT private.claim('sub')
$$;

CREATE FUNCTION private.jwt_email()
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT lower(private.claim('email'))
$$;

-- org_id claim as a uuid; a malformed claim counts as absent.
CREATE FUNCTION private.jwt_org_id()
RETURNS uuid
LANGUAGE plpgsql
STABLE
AS $$
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
$$;

-- The role the request runs as: the role set by the proxy (SET LOCAL ROLE),
-- which stays visible inside SECURITY DEFINER functions, or the session
-- user for a psql operator who did not SET ROLE.
CREATE FUNCTION private.request_role()
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(nullif(current_setting('role', true), 'none'), session_user::text)
$$;

-- True for callers that act on any organization or mailbox: members of
-- pgrpc_service or pgrpc_admin (and superusers). Everyone else, pgrpc_user
-- and any role derived from it included, is scoped by its JWT claims.
CREATE FUNCTION private.caller_is_unscoped()
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.pg_has_role(private.request_role(), 'pgrpc_service', 'MEMBER')
        OR pg_catalog.pg_has_role(private.request_role(), 'pgrpc_admin', 'MEMBER')
$$;

-- Raises 403 forbidden unless the caller may act on organization p_org:
-- a scoped caller only within its own org_id claim.
CREATE FUNCTION private.require_org_access(p_org uuid)
RETURNS void
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    IF NOT private.caller_is_unscoped()
       AND (private.jwt_org_id() IS NULL OR private.jwt_org_id() IS DISTINCT FROM p_org) THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = 'The token''s org_id does not grant access to this organization.',
            HINT = 'Use a token issued for that organization.';
    END IF;
END
$$;

-- Raises 403 forbidden unless the caller may act on mailbox p_email:
-- a scoped caller only for the email claim of its token (case-insensitive).
CREATE FUNCTION private.require_mailbox_access(p_email text)
RETURNS void
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    IF NOT private.caller_is_unscoped()
       AND (private.jwt_email() IS NULL OR private.jwt_email() IS DISTINCT FROM lower(p_email)) THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = 'The token''s email claim does not grant access to this mailbox.',
            HINT = 'Use a token issued for that mailbox.';
    END IF;
END
$$;

-- Settings ------------------------------------------------------------------

-- Tunables. Each module inserts its own keys; value_type says how the value
-- is validated, so admin.set_setting needs no per-key code.
CREATE TABLE private.settings (
    key text PRIMARY KEY,
    value text NOT NULL,
    value_type text NOT NULL,
    description text NOT NULL,
    -- Inclusive bounds, in the same type as the value; NULL means unbounded.
    min_value text,
    max_value text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT settings_value_type_known CHECK (value_type IN ('interval', 'integer', 'text')),
    CONSTRAINT settings_key_is_snake_case CHECK (key ~ '^[a-z][a-z0-9_]*$')
);

-- Validates a value against its declared type (positive intervals and
-- positive integers only) and its bounds.
CREATE FUNCTION private.tg_settings__validate()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_low boolean := false;
    v_high boolean := false;
BEGIN
    BEGIN
        IF NEW.value_type = 'interval' THEN
            v_low := NEW.min_value IS NOT NULL AND NEW.value::interval < NEW.min_value::interval;
            v_high := NEW.max_value IS NOT NULL AND NEW.value::interval > NEW.max_value::interval;
        ELSIF NEW.value_type = 'integer' THEN
            v_low := NEW.min_value IS NOT NULL AND NEW.value::bigint < NEW.min_value::bigint;
            v_high := NEW.max_value IS NOT NULL AND NEW.value::bigint > NEW.max_value::bigint;
        END IF;
        IF NEW.value_type = 'interval' AND NEW.value::interval <= interval '0' THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s must be a positive interval, got %L.', NEW.key, NEW.value),
                HINT = 'Use an interval such as ''30 days''.';
        ELSIF NEW.value_type = 'integer' AND NEW.value::integer <= 0 THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s must be a positive integer, got %L.', NEW.key, NEW.value),
                HINT = 'Use a whole number greater than zero.';
        END IF;
    EXCEPTION
        WHEN invalid_datetime_format OR invalid_text_representation
             OR numeric_value_out_of_range OR datetime_field_overflow
             OR interval_field_overflow THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s expects a %s, got %L.', NEW.key, NEW.value_type, NEW.value),
                HINT = 'Check the value''s format.';
    END;
    IF v_low OR v_high THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
            DETAIL = format('Setting %s must lie between %s and %s, got %L.', NEW.key,
                            coalesce(NEW.min_value, '-infinity'), coalesce(NEW.max_value, 'infinity'), NEW.value),
            HINT = 'Choose a value within the bounds.';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER _100_validate BEFORE INSERT OR UPDATE ON private.settings
    FOR EACH ROW EXECUTE FUNCTION private.tg_settings__validate();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.settings
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _050_write_once BEFORE UPDATE ON private.settings
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once('key', 'value_type');
-- A tunable is never removed: every reader relies on it.
CREATE TRIGGER _100_forbid_delete BEFORE DELETE ON private.settings
    FOR EACH ROW EXECUTE FUNCTION private.tg_forbid('settings_are_permanent');
CREATE TRIGGER _100_forbid_truncate BEFORE TRUNCATE ON private.settings
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_forbid('settings_are_permanent');

-- Readers of a tunable. A missing key is a broken installation: fail loudly
-- rather than treat NULL as "no limit".
CREATE FUNCTION private.setting(p_key text)
RETURNS text
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_value text;
BEGIN
    SELECT value INTO v_value FROM private.settings WHERE key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = 'setting_missing',
            DETAIL = format('private.settings has no row %L.', p_key),
            HINT = 'Run pgrpc migrate; settings are created by the migrations.';
    END IF;
    RETURN v_value;
END
$$;

CREATE FUNCTION private.setting_interval(p_key text)
RETURNS interval
LANGUAGE sql
STABLE
AS $$
    SELECT private.setting(p_key)::interval
$$;

CREATE FUNCTION private.setting_int(p_key text)
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT private.setting(p_key)::integer
$$;

GRANT EXECUTE ON FUNCTION
    private.claims(), private.claim(text), private.jwt_sub(), private.jwt_email(),
    private.jwt_org_id(), private.request_role(), private.caller_is_unscoped(),
    private.require_org_access(uuid),
    private.require_mailbox_access(text), private.setting(text),
    private.setting_interval(text), private.setting_int(text)
TO pgrpc_api, pgrpc_admin;
GRANT SELECT ON private.settings TO pgrpc_api, pgrpc_admin;

-- Functions run by pgrpc_api ----------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.version()
RETURNS text
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '0.1.0'::text
$$;

COMMENT ON FUNCTION api.version() IS
$$The pgrpc schema version.

Returns the version of the SQL contract this database was migrated to. Callable by every request role, anonymous included.$$;

GRANT EXECUTE ON FUNCTION api.version() TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_admin;

RESET ROLE;
GRANT UPDATE (value) ON private.settings TO pgrpc_api;
SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION admin.set_setting(key text, value text)
RETURNS private.settings
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row private.settings;
BEGIN
    UPDATE private.settings AS s SET value = set_setting.value
    WHERE s.key = set_setting.key
    RETURNING s.* INTO v_row;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING MESSAGE = 'not_found',
            DETAIL = format('There is no setting named %L.', set_setting.key),
            HINT = 'SELECT key FROM private.settings lists the settings.';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION admin.set_setting(text, text) IS
$$Changes a tunable in private.settings.

The value is validated against the setting's type (a positive interval or a positive integer) and its bounds (min_value, max_value); an unknown key is not_found and a malformed or out-of-bounds value is invalid_setting.$$;

GRANT EXECUTE ON FUNCTION admin.set_setting(text, text) TO pgrpc_admin;

RESET ROLE;
