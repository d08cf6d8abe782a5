-- Two rules of SPEC §1's trust model that the third attack review found
-- broken (issue 18, items 3 and 12). Both are about what a login may hold:
--
-- 1. No login other than a superuser can block or delay another caller's
--    write through any lock it may take. private.outbox_emit serialised the
--    emitters of one aggregate on a transaction advisory lock keyed by
--    hashtextextended('pgrpc_outbox:' || type || ':' || id). Advisory locks
--    need no privilege, so a login granted nothing could hold that key and
--    stall every write to the aggregate (an anonymous sign_contract waited
--    out its 5 s statement_timeout: 500 57014). The emitters now serialise on
--    a row lock in private.outbox_aggregate_locks, a table only its owner
--    (pgrpc_migrator) may write or row-lock; operators may read it, and
--    ACCESS SHARE, the only table lock SELECT allows, conflicts with no
--    write. (pgrpc migrate's own advisory lock goes too: see src/migrate.rs.)
-- 2. No login may hold pgrpc_api. It owns the SECURITY DEFINER functions of
--    api and admin, and those read credentials (contract tokens, nonces,
--    stored responses) and write outbox events, so a login holding it
--    could read every credential and forge events. As for pgrpc_migrator
--    (V15): while a login holds pgrpc_api, directly or through NOLOGIN
--    roles, every superuser DDL is refused (api_role_held_by_login), so
--    pgrpc migrate stops, and pgrpc migrate checks before it applies
--    anything. GRANT of a role fires no event trigger, so the rule cannot
--    refuse the grant itself; it refuses to carry on while the grant stands,
--    and pgrpc_guard.forbidden_memberships() reports it.
--
-- Runs as the migrating superuser: the guard's functions are its.

DO $superuser$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'V17__outbox_row_lock_and_api_logins must be applied by a superuser'
            USING HINT = 'Run pgrpc migrate with a superuser connection.';
    END IF;
END
$superuser$;

-- 1. The outbox's per-aggregate lock -----------------------------------------

SET LOCAL ROLE pgrpc_migrator;

CREATE TABLE private.outbox_aggregate_locks (
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

COMMENT ON TABLE private.outbox_aggregate_locks IS
$$One row per aggregate that has ever emitted an outbox event: the row private.outbox_emit locks so that, within an aggregate, id order is commit order.

Written and row-locked only by private.outbox_lock_aggregate (SECURITY DEFINER, owner pgrpc_migrator); nobody else holds UPDATE, so no login can take these locks. It grows with the number of aggregates (players, suggestions, connections, reservations, nonces replayed), not with the number of events; rows are never updated, so it does not bloat.$$;

-- Takes the lock of one aggregate until the end of the transaction. The
-- row is created on first use; a concurrent first use waits on the
-- creator's uncommitted row (ON CONFLICT waits for its transaction), then
-- finds the committed row and locks it. No row is ever updated or deleted,
-- so the loop runs at most twice under READ COMMITTED (under REPEATABLE
-- READ a concurrent first use fails with 40001, as any such upsert does).
CREATE FUNCTION private.outbox_lock_aggregate(p_aggregate_type text, p_aggregate_id text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    LOOP
        PERFORM 1
        FROM private.outbox_aggregate_locks AS l
        WHERE l.aggregate_type = p_aggregate_type
          AND l.aggregate_id = p_aggregate_id
        FOR UPDATE;
        EXIT WHEN FOUND;
        -- Ours and uncommitted, the new row serialises the other emitters
        -- as its lock would.
        INSERT INTO private.outbox_aggregate_locks (aggregate_type, aggregate_id)
        VALUES (p_aggregate_type, p_aggregate_id)
        ON CONFLICT DO NOTHING;
        EXIT WHEN FOUND;
    END LOOP;
END
$$;

COMMENT ON FUNCTION private.outbox_lock_aggregate(text, text) IS
$$Locks one outbox aggregate until the end of the transaction.

A row lock in private.outbox_aggregate_locks, which only this function (run as pgrpc_migrator) may take: unlike an advisory key, no login can hold it to stall the aggregate's writers. A NULL type or id is refused (23502).$$;

-- Emits one event. Emitters of one aggregate are serialised by the row lock
-- above, so that within an aggregate the id order is the commit order,
-- which outbox_claim relies on (an event is never claimed while an earlier
-- one of its aggregate is pending or leased). A transaction that emits for
-- two aggregates takes their locks in emission order, as the advisory locks
-- did; no function emits for two aggregates in opposite orders.
CREATE OR REPLACE FUNCTION private.outbox_emit(
    p_aggregate_type text,
    p_aggregate_id text,
    p_event_type text,
    p_payload jsonb
)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM private.outbox_lock_aggregate(p_aggregate_type, p_aggregate_id);
    INSERT INTO private.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_payload)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION private.outbox_emit(text, text, text, jsonb) IS
$$Emits one outbox event in the caller's transaction and returns its id.

The only sanctioned way to write an event: the per-aggregate row lock it takes (private.outbox_lock_aggregate) makes id order equal commit order within an aggregate.$$;

-- Grants: the emitters are the trigger functions (owned by pgrpc_migrator)
-- and the api functions (owned by pgrpc_api); nobody holds a privilege on
-- the table but SELECT, which takes no lock that blocks a write.
REVOKE ALL ON FUNCTION private.outbox_lock_aggregate(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.outbox_lock_aggregate(text, text) TO pgrpc_api;
GRANT SELECT ON private.outbox_aggregate_locks TO pgrpc_admin, pgrpc_owner;

RESET ROLE;

-- 2. No login holds pgrpc_api ------------------------------------------------

-- The memberships the trust model forbids, one row each: any role that is
-- a member of pgrpc_migrator (V15), and any login (other than a superuser,
-- who bypasses every rule anyway) that holds pgrpc_api, directly or through
-- roles of which it is a member. via is the chain, login first.
CREATE FUNCTION pgrpc_guard.forbidden_memberships()
RETURNS TABLE (role name, member name, via text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
    ORDER BY 1, 2, 3
$$;

COMMENT ON FUNCTION pgrpc_guard.forbidden_memberships() IS
$$The role memberships the trust model forbids, as (role, member, via): empty in a sound database.

Any member of pgrpc_migrator, and any login other than a superuser that holds pgrpc_api directly or through other roles (via shows the chain). While a row is here, every superuser DDL and pgrpc migrate are refused.$$;

-- Raises if forbidden_memberships() has a row; p_what names what is refused.
CREATE FUNCTION pgrpc_guard.refuse_forbidden_memberships(p_what text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
END
$$;

COMMENT ON FUNCTION pgrpc_guard.refuse_forbidden_memberships(text) IS
$$Raises 42501 migrator_role_has_members or api_role_held_by_login while pgrpc_guard.forbidden_memberships() has a row.

Called by the DDL guard on every superuser DDL, and by pgrpc migrate before it applies anything.$$;

-- V15's guard, with the membership check above in place of its own (which
-- knew pgrpc_migrator only). Everything else is unchanged.
CREATE OR REPLACE FUNCTION pgrpc_guard.on_ddl_command_end()
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
$$;

REVOKE ALL ON FUNCTION
    pgrpc_guard.forbidden_memberships(),
    pgrpc_guard.refuse_forbidden_memberships(text)
FROM PUBLIC;

-- This migration refuses too, like every later one.
SELECT pgrpc_guard.refuse_forbidden_memberships('V17__outbox_row_lock_and_api_logins');

SELECT pgrpc_guard.refresh_baseline();
