-- Module guard: the DDL guard: fingerprint, baseline and event trigger functions.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: pgrpc_guard.baseline, pgrpc_guard.module_checksums

-- pgrpc_guard.fingerprint
CREATE OR REPLACE FUNCTION pgrpc_guard.fingerprint()
 RETURNS TABLE(kind text, name text, detail text)
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.fingerprint() FROM PUBLIC;

-- pgrpc_guard.caller_is_superuser
CREATE OR REPLACE FUNCTION pgrpc_guard.caller_is_superuser()
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_roles r
        WHERE r.rolsuper
          AND r.rolname IN (session_user, pg_catalog.current_setting('role', true)))
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.caller_is_superuser() FROM PUBLIC;

-- pgrpc_guard.refresh_baseline
CREATE OR REPLACE FUNCTION pgrpc_guard.refresh_baseline()
 RETURNS void
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    WITH f AS MATERIALIZED (SELECT * FROM pgrpc_guard.fingerprint()),
    gone AS (
        DELETE FROM pgrpc_guard.baseline b
        WHERE NOT EXISTS (SELECT 1 FROM f WHERE f.kind = b.kind AND f.name = b.name)
    )
    INSERT INTO pgrpc_guard.baseline (kind, name, detail)
    SELECT f.kind, f.name, f.detail FROM f
    ON CONFLICT (kind, name) DO UPDATE SET detail = excluded.detail
    WHERE baseline.detail IS DISTINCT FROM excluded.detail
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.refresh_baseline() FROM PUBLIC;

-- pgrpc_guard.refuse
CREATE OR REPLACE FUNCTION pgrpc_guard.refuse(p_detail text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'schema_change_requires_migration',
        DETAIL = p_detail,
        HINT = 'Change pgrpc''s schemas with a migration applied by a superuser (pgrpc migrate).';
END
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.refuse(text) FROM PUBLIC;

-- pgrpc_guard.on_ddl_command_end
CREATE OR REPLACE FUNCTION pgrpc_guard.on_ddl_command_end()
 RETURNS event_trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_cmd record;
    v_changes text;
BEGIN
    IF pgrpc_guard.caller_is_superuser() THEN
        PERFORM pgrpc_guard.refuse_forbidden_memberships(tg_tag);
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
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.on_ddl_command_end() FROM PUBLIC;

-- pgrpc_guard.on_sql_drop
CREATE OR REPLACE FUNCTION pgrpc_guard.on_sql_drop()
 RETURNS event_trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
REVOKE ALL ON FUNCTION pgrpc_guard.on_sql_drop() FROM PUBLIC;

-- pgrpc_guard.forbidden_memberships
CREATE OR REPLACE FUNCTION pgrpc_guard.forbidden_memberships()
 RETURNS TABLE(role name, member name, via text)
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT 'pgrpc_migrator'::name, r.rolname, r.rolname || ' -> pgrpc_migrator'
    FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_roles r ON r.oid = m.member
    WHERE m.roleid = 'pgrpc_migrator'::regrole
    UNION ALL
    (
        -- Membership graphs have no cycles (PostgreSQL refuses them), so
        -- the recursion ends.
        WITH RECURSIVE holder (oid, via) AS (
            SELECT m.member, pg_catalog.pg_get_userbyid(m.member) || ' -> pgrpc_api'
            FROM pg_catalog.pg_auth_members m
            WHERE m.roleid = 'pgrpc_api'::regrole
            UNION
            SELECT m.member, pg_catalog.pg_get_userbyid(m.member) || ' -> ' || h.via
            FROM pg_catalog.pg_auth_members m
            JOIN holder h ON m.roleid = h.oid
        )
        SELECT 'pgrpc_api'::name, r.rolname, h.via
        FROM holder h
        JOIN pg_catalog.pg_roles r ON r.oid = h.oid
        WHERE r.rolcanlogin AND NOT r.rolsuper
    )
    UNION ALL
    (
        -- Up to PostgreSQL 15, CREATEROLE lets a role grant itself any role
        -- but a superuser (pgrpc_api, pgrpc_migrator) or give one LOGIN, and
        -- revoke it again before any check runs: a login that has it, or
        -- may SET ROLE to a role that has it, holds both in effect. From 16
        -- on, CREATEROLE grants only roles it holds with ADMIN OPTION, a
        -- membership the rows above report.
        WITH RECURSIVE reach (login, oid, via) AS (
            SELECT r.oid, r.oid, r.rolname::text
            FROM pg_catalog.pg_roles r
            WHERE r.rolcanlogin AND NOT r.rolsuper
            UNION
            SELECT c.login, m.roleid, c.via || ' -> ' || pg_catalog.pg_get_userbyid(m.roleid)
            FROM pg_catalog.pg_auth_members m
            JOIN reach c ON m.member = c.oid
        )
        SELECT 'CREATEROLE'::name, pg_catalog.pg_get_userbyid(c.login), c.via || ' (CREATEROLE)'
        FROM reach c
        JOIN pg_catalog.pg_roles r ON r.oid = c.oid
        WHERE r.rolcreaterole AND NOT r.rolsuper
          AND pg_catalog.current_setting('server_version_num')::int < 160000
    )
    ORDER BY 1, 2, 3
$function$;
COMMENT ON FUNCTION pgrpc_guard.forbidden_memberships() IS
$$The role memberships the trust model forbids, as (role, member, via): empty in a sound database.

Any member of pgrpc_migrator; any login other than a superuser that holds pgrpc_api directly or through other roles (via shows the chain); and, on PostgreSQL 15 and earlier, any login other than a superuser that has CREATEROLE or may SET ROLE to a role that has it (role CREATEROLE): it may grant itself pgrpc_api or pgrpc_migrator at any moment and revoke them before a check. While a row is here, every superuser DDL and pgrpc migrate are refused.$$;
REVOKE ALL ON FUNCTION pgrpc_guard.forbidden_memberships() FROM PUBLIC;

-- pgrpc_guard.refuse_forbidden_memberships
CREATE OR REPLACE FUNCTION pgrpc_guard.refuse_forbidden_memberships(p_what text)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_members text;
    v_chains text;
BEGIN
    SELECT string_agg(f.member, ', ' ORDER BY f.member)
    INTO v_members
    FROM pgrpc_guard.forbidden_memberships() f
    WHERE f.role = 'pgrpc_migrator';
    IF v_members IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'migrator_role_has_members',
            DETAIL = format('%s is refused while %s may act as pgrpc_migrator, the owner of pgrpc''s objects.',
                            p_what, v_members),
            HINT = format('REVOKE pgrpc_migrator FROM %s; then run it again.', v_members);
    END IF;
    SELECT string_agg(DISTINCT f.member, ', ' ORDER BY f.member), string_agg(f.via, '; ' ORDER BY f.via)
    INTO v_members, v_chains
    FROM pgrpc_guard.forbidden_memberships() f
    WHERE f.role = 'pgrpc_api';
    IF v_members IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'api_role_held_by_login',
            DETAIL = format('%s is refused while the login %s holds pgrpc_api, which reads credentials and writes outbox events (%s).',
                            p_what, v_members, left(v_chains, 1000)),
            HINT = 'Revoke one membership of each chain (for a direct member: REVOKE pgrpc_api FROM <login>); operators get pgrpc_admin or pgrpc_owner. Then run it again.';
    END IF;
    SELECT string_agg(DISTINCT f.member, ', ' ORDER BY f.member), string_agg(f.via, '; ' ORDER BY f.via)
    INTO v_members, v_chains
    FROM pgrpc_guard.forbidden_memberships() f
    WHERE f.role = 'CREATEROLE';
    IF v_members IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'createrole_held_by_login',
            DETAIL = format('%s is refused while the login %s may use CREATEROLE, with which it can grant itself pgrpc_api or pgrpc_migrator and revoke them before any check (%s).',
                            p_what, v_members, left(v_chains, 1000)),
            HINT = 'ALTER ROLE <role> NOCREATEROLE for each chain''s last role (a login that must create roles is a superuser in effect: make it one, or create roles as a superuser). Then run it again.';
    END IF;
END
$function$;
COMMENT ON FUNCTION pgrpc_guard.refuse_forbidden_memberships(text) IS
$$Raises 42501 migrator_role_has_members, api_role_held_by_login or createrole_held_by_login while pgrpc_guard.forbidden_memberships() has a row.

Called by the DDL guard on every superuser DDL, and by pgrpc migrate before it applies anything.$$;
REVOKE ALL ON FUNCTION pgrpc_guard.refuse_forbidden_memberships(text) FROM PUBLIC;
