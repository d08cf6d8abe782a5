-- The trust model: only a superuser can bypass a rule.
--
-- Three changes, one concern (SPEC §1 "Trust model", issue 10 items 3, 4):
--
-- 1. Ownership. Foreign-key checks and cascades run as the owner of the
--    table they touch and need its UPDATE (FOR KEY SHARE) and DELETE
--    privileges, so a table owner can never be reduced to a reader. The
--    schemas, tables, views and trigger functions therefore move from
--    pgrpc_owner to pgrpc_migrator, a NOLOGIN role of which no role may be a
--    member; migrations create objects as it (SET LOCAL ROLE
--    pgrpc_migrator). pgrpc_owner keeps its name and becomes what a login
--    holding it may safely be: a reader of the non-secret columns.
-- 2. Credentials. No column readable by pgrpc_admin or pgrpc_owner holds a
--    credential: contract tokens, nonces, lease tokens, and the stored
--    responses of both idempotency mechanisms (a create_player or
--    issue_oauth_nonce response carries a token or a nonce).
-- 3. The DDL guard moves to pgrpc_guard, a schema owned by the migrating
--    superuser that no other role may use. Besides refusing DDL on objects of
--    pgrpc's schemas, it compares a fingerprint of everything protected
--    (owners, ACLs, columns, constraints, indexes, triggers, rules,
--    policies, functions, types, default privileges) with a baseline that
--    every superuser DDL refreshes. That catches what carries no schema in
--    pg_event_trigger_ddl_commands(): GRANT, CREATE TRIGGER, CREATE RULE,
--    CREATE POLICY. The protected schemas are private, api, admin,
--    pgrpc_guard and pgrpc_http (which V16 creates for the proxy's
--    Idempotency-Key helpers).
--
-- Runs as the migrating superuser: event triggers, REASSIGN OWNED and ALTER
-- ROLE ... SET need one.

DO $superuser$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'V15__trust_model must be applied by a superuser'
            USING HINT = 'Run pgrpc migrate with a superuser connection.';
    END IF;
END
$superuser$;

-- The V11 guard lives in private, which an owner login could drop with it.
DROP EVENT TRIGGER pgrpc_guard_ddl;
DROP EVENT TRIGGER pgrpc_guard_drop;
DROP FUNCTION private.tg_guard_ddl();
DROP FUNCTION private.tg_guard_drop();

-- 1. Ownership -------------------------------------------------------------

DO $migrator$
DECLARE
    v_member name;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgrpc_migrator') THEN
        CREATE ROLE pgrpc_migrator NOLOGIN;
    END IF;
    -- No role may act as the owner of record: that is the point of it.
    FOR v_member IN
        SELECT r.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.member
        WHERE m.roleid = 'pgrpc_migrator'::regrole
    LOOP
        EXECUTE format('REVOKE pgrpc_migrator FROM %I', v_member);
    END LOOP;
END
$migrator$;
ALTER ROLE pgrpc_migrator NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;

-- Schemas, tables, sequences, views, types and trigger functions of this
-- database. ACL entries follow the owner, so every grant pgrpc_owner made
-- is now made by pgrpc_migrator. The SECURITY DEFINER emit triggers now run
-- as pgrpc_migrator, which holds every privilege on its tables.
REASSIGN OWNED BY pgrpc_owner TO pgrpc_migrator;

-- A new table is read by nobody until its migration grants SELECT, column
-- by column if it holds a credential: no default privilege can tell a
-- credential from a name (trust.rs checks every private table is granted).
ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_migrator REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
-- pgrpc_owner no longer creates anything.
ALTER DEFAULT PRIVILEGES FOR ROLE pgrpc_owner IN SCHEMA private REVOKE SELECT ON TABLES FROM pgrpc_admin;

GRANT USAGE ON SCHEMA private, api, admin TO pgrpc_owner;

-- 2. Credentials -----------------------------------------------------------

-- Operators and owner logins read every private table except the columns
-- that are credentials, or that store a response which may contain one.
DO $hide$
DECLARE
    v_secret CONSTANT jsonb := '{
        "players":               ["contract_token"],
        "oauth_nonces":          ["nonce"],
        "outbox":                ["lease_token"],
        "idempotency_keys":      ["lease_token", "response_body"],
        "http_idempotency_keys": ["response_headers", "response_body"]
    }';
    v_table record;
    v_all text;
    v_readable text;
    v_role text;
BEGIN
    FOR v_table IN
        SELECT c.oid, c.relname
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'private'::regnamespace AND c.relkind IN ('r', 'p')
    LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
               string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                   FILTER (WHERE NOT coalesce(v_secret -> v_table.relname ? a.attname, false))
        INTO v_all, v_readable
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = v_table.oid AND a.attnum > 0 AND NOT a.attisdropped;
        FOREACH v_role IN ARRAY ARRAY['pgrpc_admin', 'pgrpc_owner'] LOOP
            EXECUTE format('REVOKE SELECT ON private.%I FROM %I', v_table.relname, v_role);
            EXECUTE format('REVOKE SELECT (%s) ON private.%I FROM %I', v_all, v_table.relname, v_role);
            IF v_secret ? v_table.relname THEN
                EXECUTE format('GRANT SELECT (%s) ON private.%I TO %I', v_readable, v_table.relname, v_role);
            ELSE
                EXECUTE format('GRANT SELECT ON private.%I TO %I', v_table.relname, v_role);
            END IF;
        END LOOP;
    END LOOP;
END
$hide$;

-- 3. The guard -------------------------------------------------------------

CREATE SCHEMA pgrpc_guard;
REVOKE ALL ON SCHEMA pgrpc_guard FROM PUBLIC;
COMMENT ON SCHEMA pgrpc_guard IS
$$pgrpc's DDL guard: event trigger functions and the fingerprint baseline.

Owned by the superuser that migrated; no other role has any privilege here.$$;

-- What the guard protects, by name: everything in pgrpc's schemas, the
-- guard's own schema, and the default privileges of pgrpc's roles. Keyed by
-- names, never OIDs, so a database cloned from a template or restored from
-- a dump keeps matching its baseline; a NULL (default) ACL is spelled out,
-- because a restore writes an explicit ACL that equals the default as NULL.
CREATE FUNCTION pgrpc_guard.fingerprint()
RETURNS TABLE (kind text, name text, detail text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ns AS (
        SELECT n.oid, n.nspname
        FROM pg_catalog.pg_namespace n
        WHERE n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
    )
    SELECT 'schema', ns.nspname::text,
           concat_ws(' ', pg_catalog.pg_get_userbyid(n.nspowner), coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))::text)
    FROM ns JOIN pg_catalog.pg_namespace n ON n.oid = ns.oid
    UNION ALL
    SELECT 'relation', ns.nspname || '.' || c.relname,
           concat_ws(' ', c.relkind, pg_catalog.pg_get_userbyid(c.relowner),
                     coalesce(c.relacl, pg_catalog.acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))::text,
                     c.relrowsecurity, c.relforcerowsecurity, c.relpersistence,
                     c.relreplident, c.reloptions::text, c.relispartition)
    FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT 'column', ns.nspname || '.' || c.relname || '.' || a.attname,
           concat_ws(' ', pg_catalog.format_type(a.atttypid, a.atttypmod),
                     a.attnotnull, a.attidentity, a.attgenerated, nullif(a.attacl::text, '{}'),
                     pg_catalog.pg_get_expr(d.adbin, d.adrelid))
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', ns.nspname || '.' || coalesce(c.relname, t.typname) || '.' || k.conname,
           concat_ws(' ', k.contype, pg_catalog.pg_get_constraintdef(k.oid), k.convalidated)
    FROM pg_catalog.pg_constraint k
    JOIN ns ON ns.oid = k.connamespace
    LEFT JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
    LEFT JOIN pg_catalog.pg_type t ON t.oid = k.contypid
    UNION ALL
    SELECT 'index', ns.nspname || '.' || c.relname,
           concat_ws(' ', pg_catalog.pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready)
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
    JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    -- Internal triggers are derived from constraints, which are covered.
    SELECT 'trigger', ns.nspname || '.' || c.relname || '.' || g.tgname,
           concat_ws(' ', g.tgenabled, pg_catalog.pg_get_triggerdef(g.oid))
    FROM pg_catalog.pg_trigger g
    JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
    JOIN ns ON ns.oid = c.relnamespace
    WHERE NOT g.tgisinternal
    UNION ALL
    SELECT 'rule', ns.nspname || '.' || c.relname || '.' || r.rulename,
           concat_ws(' ', r.ev_enabled, pg_catalog.pg_get_ruledef(r.oid))
    FROM pg_catalog.pg_rewrite r
    JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
    JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT 'policy', ns.nspname || '.' || c.relname || '.' || p.polname,
           concat_ws(' ', p.polcmd, p.polpermissive,
                     (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r) END, ',' ORDER BY 1)
                      FROM unnest(p.polroles) AS r),
                     pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                     pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN ns ON ns.oid = c.relnamespace
    UNION ALL
    SELECT 'function', ns.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
           concat_ws(' ', p.prokind, pg_catalog.pg_get_userbyid(p.proowner), coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))::text,
                     p.prosecdef, p.proconfig::text, p.provolatile, p.proisstrict,
                     p.proleakproof, p.proparallel, l.lanname,
                     pg_catalog.pg_get_function_result(p.oid), pg_catalog.md5(p.prosrc),
                     p.probin)
    FROM pg_catalog.pg_proc p
    JOIN ns ON ns.oid = p.pronamespace
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    UNION ALL
    SELECT 'type', ns.nspname || '.' || t.typname,
           concat_ws(' ', t.typtype, pg_catalog.pg_get_userbyid(t.typowner), coalesce(t.typacl, pg_catalog.acldefault('T', t.typowner))::text,
                     CASE WHEN t.typbasetype <> 0 THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END,
                     t.typnotnull, t.typdefault)
    FROM pg_catalog.pg_type t
    JOIN ns ON ns.oid = t.typnamespace
    UNION ALL
    SELECT 'default_acl',
           pg_catalog.pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text,
           d.defaclacl::text
    FROM pg_catalog.pg_default_acl d
    LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
    WHERE pg_catalog.pg_get_userbyid(d.defaclrole) IN ('pgrpc_migrator', 'pgrpc_owner', 'pgrpc_api')
       OR n.nspname IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
    UNION ALL
    SELECT 'event_trigger', e.evtname,
           concat_ws(' ', e.evtevent, e.evtenabled, pg_catalog.pg_get_userbyid(e.evtowner),
                     e.evtfoid::regprocedure::text, e.evttags::text)
    FROM pg_catalog.pg_event_trigger e
$$;

CREATE TABLE pgrpc_guard.baseline (
    kind text NOT NULL,
    name text NOT NULL,
    detail text NOT NULL,
    PRIMARY KEY (kind, name)
);

COMMENT ON TABLE pgrpc_guard.baseline IS
$$The fingerprint of pgrpc's schemas as the last superuser DDL left them.

Refreshed by every DDL a superuser runs (migrations); any DDL by another role that makes pgrpc_guard.fingerprint() differ from it is refused.$$;

-- Whether the role that runs the DDL is a superuser: the session user, or
-- the role it switched to. Inside these SECURITY DEFINER functions
-- current_user is their owner, so the outer role is read from the role
-- setting (SET ROLE can only name a role the session user is a member of).
CREATE FUNCTION pgrpc_guard.caller_is_superuser()
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_roles r
        WHERE r.rolsuper
          AND r.rolname IN (session_user, pg_catalog.current_setting('role', true)))
$$;

-- Stores the current fingerprint as the baseline, writing only what changed.
CREATE FUNCTION pgrpc_guard.refresh_baseline()
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS MATERIALIZED (SELECT * FROM pgrpc_guard.fingerprint()),
    gone AS (
        DELETE FROM pgrpc_guard.baseline b
        WHERE NOT EXISTS (SELECT 1 FROM f WHERE f.kind = b.kind AND f.name = b.name)
    )
    INSERT INTO pgrpc_guard.baseline (kind, name, detail)
    SELECT f.kind, f.name, f.detail FROM f
    ON CONFLICT (kind, name) DO UPDATE SET detail = excluded.detail
    WHERE baseline.detail IS DISTINCT FROM excluded.detail
$$;

CREATE FUNCTION pgrpc_guard.refuse(p_detail text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'schema_change_requires_migration',
        DETAIL = p_detail,
        HINT = 'Change pgrpc''s schemas with a migration applied by a superuser (pgrpc migrate).';
END
$$;

-- ddl_command_end: a superuser's DDL refreshes the baseline; anyone else's
-- is refused if it touched an object of pgrpc's schemas, or if anything
-- protected differs from the baseline (GRANT, CREATE TRIGGER, CREATE RULE
-- and CREATE POLICY report no schema, so only the comparison sees them).
--
-- While any role is a member of pgrpc_migrator, superuser DDL is refused
-- too, so pgrpc migrate stops rather than carry on with a login that can
-- act as the owner of everything. GRANT of a role fires no event trigger,
-- and REVOKE neither, so the fix is always at hand.
CREATE FUNCTION pgrpc_guard.on_ddl_command_end()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cmd record;
    v_changes text;
BEGIN
    IF pgrpc_guard.caller_is_superuser() THEN
        SELECT string_agg(pg_catalog.pg_get_userbyid(m.member), ', ' ORDER BY 1)
        INTO v_changes
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
        WHERE r.rolname = 'pgrpc_migrator';
        IF v_changes IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = 'migrator_role_has_members',
                DETAIL = format('%s is refused while %s may act as pgrpc_migrator, the owner of pgrpc''s objects.',
                                tg_tag, v_changes),
                HINT = format('REVOKE pgrpc_migrator FROM %s; then run it again.', v_changes);
        END IF;
        PERFORM pgrpc_guard.refresh_baseline();
        RETURN;
    END IF;
    FOR v_cmd IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        IF v_cmd.schema_name IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http') THEN
            PERFORM pgrpc_guard.refuse(format('%s on %s is refused for %s.',
                v_cmd.command_tag, v_cmd.object_identity, session_user));
        END IF;
    END LOOP;
    SELECT string_agg(format('%s %s %s', d.change, d.kind, d.name), '; ' ORDER BY d.kind, d.name)
    INTO v_changes
    FROM (
        SELECT coalesce(f.kind, b.kind) AS kind, coalesce(f.name, b.name) AS name,
               CASE WHEN b.name IS NULL THEN 'added'
                    WHEN f.name IS NULL THEN 'removed'
                    ELSE 'changed' END AS change
        FROM pgrpc_guard.fingerprint() f
        FULL JOIN pgrpc_guard.baseline b ON b.kind = f.kind AND b.name = f.name
        WHERE f.detail IS DISTINCT FROM b.detail
    ) d;
    IF v_changes IS NOT NULL THEN
        PERFORM pgrpc_guard.refuse(format('%s by %s is refused: %s.',
            tg_tag, session_user, left(v_changes, 1000)));
    END IF;
END
$$;

-- sql_drop: nothing of pgrpc's schemas is dropped but by a superuser.
CREATE FUNCTION pgrpc_guard.on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_obj record;
BEGIN
    IF pgrpc_guard.caller_is_superuser() THEN
        RETURN;
    END IF;
    FOR v_obj IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF v_obj.schema_name IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')
           OR (v_obj.object_type = 'schema'
               AND v_obj.object_name IN ('private', 'api', 'admin', 'pgrpc_guard', 'pgrpc_http')) THEN
            PERFORM pgrpc_guard.refuse(format('DROP of %s %s is refused for %s.',
                v_obj.object_type, v_obj.object_identity, session_user));
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION
    pgrpc_guard.fingerprint(), pgrpc_guard.caller_is_superuser(),
    pgrpc_guard.refresh_baseline(), pgrpc_guard.refuse(text),
    pgrpc_guard.on_ddl_command_end(), pgrpc_guard.on_sql_drop()
FROM PUBLIC;

-- Event triggers are per database; a database cloned from this one, or
-- restored from its dump, gets them too.
CREATE EVENT TRIGGER pgrpc_guard_ddl ON ddl_command_end
    EXECUTE FUNCTION pgrpc_guard.on_ddl_command_end();
CREATE EVENT TRIGGER pgrpc_guard_drop ON sql_drop
    EXECUTE FUNCTION pgrpc_guard.on_sql_drop();

-- 4. Safety net ------------------------------------------------------------

-- A proxy connection left idle inside a transaction (a bug, a hung
-- process) holds its row locks for at most a minute. Roles are
-- cluster-wide; the setting is the same for every database.
ALTER ROLE pgrpc_authenticator SET idle_in_transaction_session_timeout = '60s';

SELECT pgrpc_guard.refresh_baseline();
