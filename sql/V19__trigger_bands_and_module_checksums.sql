-- Trigger names by meaning, and the checksums of the module files.
--
-- 1. Every trigger of pgrpc is named _<band>_<rule>: the band says what
--    kind of rule it is (docs/sql-conventions.md, "Trigger bands"), the rule
--    is the name of the function it fires without tg_ and its table prefix.
--    Triggers of one table and one event fire in the alphabetical order of
--    their names, so the bands also fix the order: normalize, forbid,
--    write-once, state machine, checks, delete guard, truncate guard,
--    updated_at, then the AFTER triggers that emit to the outbox. Every
--    rename below keeps the relative order of the triggers of a table that
--    fire on the same event, except on private.idempotency_keys, where
--    write-once (_200) now runs before the state machine (_300) as on every
--    other table; neither writes NEW, so only which of the two refusals is
--    reported for an update both refuse can differ.
-- 2. pgrpc_guard.module_checksums: what pgrpc migrate applied of
--    sql/modules/*.sql, the live home of every function and view since
--    this version. Owned by the migrating superuser, like the rest of
--    pgrpc_guard; no other role may read or write it.
--
-- Runs as the migrating superuser (as V15): pgrpc_guard is its schema.
-- The guard's DDL event trigger would refresh its baseline after each of
-- the renames; it is off until they are done, and the CREATE TABLE that
-- follows fires it once (its member check, then the refresh).

ALTER EVENT TRIGGER pgrpc_guard_ddl DISABLE;

DO $renames$
DECLARE
    v_rename record;
BEGIN
    FOR v_rename IN
        SELECT * FROM (VALUES
            ('http_idempotency_keys', '_100_freeze_stored', '_200_freeze_stored'),
            ('http_idempotency_keys', '_110_write_once', '_200_write_once'),
            ('http_idempotency_keys', '_120_guard_delete', '_500_guard_delete'),
            ('http_idempotency_keys', '_130_forbid_truncate', '_600_forbid_truncate'),
            ('http_idempotency_keys', '_200_updated_at', '_700_set_updated_at'),
            ('idempotency_keys', '_100_status_machine', '_300_status_machine'),
            ('idempotency_keys', '_110_write_once', '_200_write_once'),
            ('idempotency_keys', '_120_guard_delete', '_500_guard_delete'),
            ('idempotency_keys', '_130_forbid_truncate', '_600_forbid_truncate'),
            ('idempotency_keys', '_200_updated_at', '_700_set_updated_at'),
            ('legacy_recent_receives', '_100_normalize_owner_email', '_010_normalize_owner_email'),
            ('legacy_recent_receives', '_200_updated_at', '_700_set_updated_at'),
            ('oauth_nonce_consumptions', '_110_forbid_truncate', '_600_forbid_truncate'),
            ('oauth_nonce_consumptions', '_120_guard_delete', '_500_guard_delete'),
            ('oauth_nonces', '_110_forbid_truncate', '_600_forbid_truncate'),
            ('oauth_nonces', '_120_guard_delete', '_500_guard_delete'),
            ('opportunities', '_200_updated_at', '_700_set_updated_at'),
            ('organizations', '_200_updated_at', '_700_set_updated_at'),
            ('outbox', '_050_contract_signed_has_signed_player', '_400_contract_signed_has_signed_player'),
            ('outbox', '_100_event_write_once', '_200_write_once'),
            ('outbox', '_110_status_transition', '_300_status_transition'),
            ('outbox', '_120_guard_delete', '_500_guard_delete'),
            ('outbox', '_120_guard_truncate', '_600_guard_delete'),
            ('outbox', '_200_updated_at', '_700_set_updated_at'),
            ('parents', '_100_write_once', '_200_write_once'),
            ('parents', '_200_updated_at', '_700_set_updated_at'),
            ('players', '_100_forbid_truncate', '_600_keep_signed'),
            ('players', '_100_keep_signed', '_500_keep_signed'),
            ('players', '_100_write_once', '_200_write_once'),
            ('players', '_110_contract_transition', '_300_contract_transition'),
            ('players', '_200_updated_at', '_700_set_updated_at'),
            ('players', '_900_emit_outbox', '_900_emit_contract_signed'),
            ('players', '_900_emit_outbox_on_insert', '_900_emit_contract_signed_on_insert'),
            ('receive_feed_entries', '_100_normalize_owner_email', '_010_normalize_owner_email'),
            ('receive_feed_entries', '_110_redact_only', '_200_redact_only'),
            ('receive_feed_entries', '_200_updated_at', '_700_set_updated_at'),
            ('receive_feed_entries', '_900_emit_outbox', '_900_emit_finalized'),
            ('receive_unread', '_100_normalize_owner_email', '_010_normalize_owner_email'),
            ('settings', '_050_write_once', '_200_write_once'),
            ('settings', '_100_forbid_truncate', '_600_forbid_truncate'),
            ('settings', '_100_validate', '_400_validate'),
            ('settings', '_200_updated_at', '_700_set_updated_at'),
            ('sites', '_200_updated_at', '_700_set_updated_at'),
            ('suggestion_completeness', '_200_updated_at', '_700_set_updated_at'),
            ('suggestion_grants', '_100_delete_only_by_cascade', '_500_delete_only_by_cascade'),
            ('suggestion_grants', '_100_forbid_truncate', '_600_forbid_truncate'),
            ('suggestion_grants', '_900_emit_outbox', '_900_emit_granted'),
            ('suggestions', '_200_updated_at', '_700_set_updated_at'),
            ('task_management_connections', '_100_write_once', '_200_write_once'),
            ('task_management_connections', '_150_check_transition', '_300_check_transition'),
            ('task_management_connections', '_200_updated_at', '_700_set_updated_at'),
            ('task_management_connections', '_900_emit_outbox', '_900_emit_status_changed'),
            ('teams', '_100_write_once', '_200_write_once'),
            ('teams', '_200_updated_at', '_700_set_updated_at'),
            ('ticket_suggestions', '_100_forbid_truncate', '_600_forbid_truncate'),
            ('ticket_suggestions', '_110_delete_only_by_cascade', '_500_delete_only_by_cascade'),
            ('ticket_suggestions', '_150_check_link', '_400_check_link'),
            ('tickets', '_100_write_once', '_200_write_once'),
            ('tickets', '_150_check_opportunity', '_400_check_opportunity'),
            ('tickets', '_200_updated_at', '_700_set_updated_at'),
            ('tickets', '_900_emit_outbox', '_900_emit_created'),
            ('token_allowances', '_200_updated_at', '_700_set_updated_at'),
            ('token_types', '_200_updated_at', '_700_set_updated_at'),
            ('tokens', '_100_write_once', '_200_write_once'),
            ('tokens', '_110_spend_one_at_a_time', '_400_spend_one_at_a_time'),
            ('tokens', '_120_delete_only_by_prune', '_500_delete_only_by_prune'),
            ('tokens', '_120_forbid_truncate', '_600_delete_only_by_prune'),
            ('tokens', '_200_updated_at', '_700_set_updated_at')
        ) AS r(tab, old_name, new_name)
    LOOP
        EXECUTE format('ALTER TRIGGER %I ON private.%I RENAME TO %I',
                       v_rename.old_name, v_rename.tab, v_rename.new_name);
    END LOOP;
END
$renames$;

ALTER TABLE private.tickets RENAME CONSTRAINT _900_emit_outbox TO _900_emit_created;

ALTER EVENT TRIGGER pgrpc_guard_ddl ENABLE;

CREATE TABLE pgrpc_guard.module_checksums (
    module text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON pgrpc_guard.module_checksums FROM PUBLIC;

COMMENT ON TABLE pgrpc_guard.module_checksums IS
$$What pgrpc migrate applied of sql/modules/<module>.sql: the md5 of the file's text.

pgrpc migrate re-applies a module only when its checksum differs. Written by the migrating superuser only.$$;

-- The deferred constraint trigger of private.tickets carries its name in
-- pg_constraint too, which SET CONSTRAINTS reads: both are renamed above,
-- and the SET CONSTRAINTS of api.create_ticket follows. Its body is otherwise
-- V14's; from this version on it lives in sql/modules/task_management.sql.
CREATE OR REPLACE FUNCTION api.create_ticket(connection_id uuid, external_ticket_id text, ticket_key text, ticket_url text, suggestion_ids uuid[] DEFAULT '{}'::uuid[], opportunity_id uuid DEFAULT NULL::uuid, ticket_status text DEFAULT NULL::text, created_by text DEFAULT NULL::text)
 RETURNS api.ticket
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_connection private.task_management_connections;
    v_ticket api.ticket;
    v_suggestions uuid[];
    v_missing uuid[];
    v_taken text;
    v_linked integer;
    v_created_by text := coalesce(create_ticket.created_by, private.jwt_sub());
BEGIN
    -- The row lock keeps the connection active until this ticket commits
    -- (a concurrent disconnect waits for it, then applies).
    SELECT c.* INTO v_connection
    FROM private.task_management_connections AS c
    WHERE c.id = create_ticket.connection_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no task-management connection %s.', create_ticket.connection_id),
            HINT = 'active_task_management_connection finds an organization''s connection.';
    END IF;
    PERFORM private.require_org_access(v_connection.organization_id);
    IF private.request_role() = 'pgrpc_user'
       AND v_created_by IS DISTINCT FROM private.jwt_sub() THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = format('A user may only create tickets as itself (%s), not as %s.',
                            coalesce(private.jwt_sub(), 'no sub'), v_created_by),
            HINT = 'Leave created_by empty: it defaults to the token''s sub.';
    END IF;
    IF v_connection.status <> 'active' THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'connection_not_active',
            DETAIL = format('Connection %s is %s, not active.', v_connection.id, v_connection.status),
            HINT = CASE WHEN v_connection.status = 'disconnected'
                        THEN 'Connect again with connect_task_management and use the new connection.'
                        ELSE 'Re-authorize with connect_task_management, or set the status back to active.'
                   END;
    END IF;

    -- Sorted and distinct: every caller locks suggestions in the same
    -- order, so two tickets racing for overlapping sets cannot deadlock.
    SELECT coalesce(array_agg(DISTINCT s ORDER BY s), '{}') INTO v_suggestions
    FROM unnest(coalesce(create_ticket.suggestion_ids, '{}')) AS s
    WHERE s IS NOT NULL;

    SELECT array_agg(s ORDER BY s) INTO v_missing
    FROM unnest(v_suggestions) AS s
    WHERE NOT EXISTS (SELECT 1 FROM private.suggestions AS x WHERE x.id = s);
    IF v_missing IS NOT NULL THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no suggestion %s.', array_to_string(v_missing, ', ')),
            HINT = 'Pass only existing suggestion ids.';
    END IF;
    IF create_ticket.opportunity_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM private.opportunities AS o WHERE o.id = create_ticket.opportunity_id) THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no opportunity %s.', create_ticket.opportunity_id),
            HINT = 'Pass an existing opportunity id, or none.';
    END IF;

    -- The ticket.created trigger must run at commit, after the links below
    -- exist, even if the caller made constraints IMMEDIATE.
    SET CONSTRAINTS private._900_emit_created DEFERRED;
    INSERT INTO private.tickets AS t
        (connection_id, organization_id, opportunity_id, external_ticket_id, ticket_key,
         ticket_url, ticket_status, ticket_provider, created_by)
    VALUES
        (v_connection.id, v_connection.organization_id, create_ticket.opportunity_id,
         create_ticket.external_ticket_id, create_ticket.ticket_key, create_ticket.ticket_url,
         create_ticket.ticket_status, v_connection.provider, v_created_by)
    RETURNING t.id, t.connection_id, t.organization_id, t.opportunity_id, t.external_ticket_id,
              t.ticket_key, t.ticket_url, t.ticket_status, t.ticket_provider, t.created_by,
              t.created_at, t.updated_at
    INTO v_ticket;

    -- All or nothing: a suggestion already linked (before, or by a
    -- concurrent call that committed first) is skipped here, and the
    -- shortfall aborts the whole call, the ticket included.
    WITH linked AS (
        INSERT INTO private.ticket_suggestions (ticket_id, suggestion_id, opportunity_id)
        SELECT v_ticket.id, x.id, x.opportunity_id
        FROM private.suggestions AS x
        JOIN unnest(v_suggestions) AS s(id) ON s.id = x.id
        ORDER BY x.id
        ON CONFLICT (suggestion_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO v_linked FROM linked;

    IF v_linked < cardinality(v_suggestions) THEN
        SELECT string_agg(format('%s (ticket %s)', ts.suggestion_id, ts.ticket_id), ', ' ORDER BY ts.suggestion_id)
        INTO v_taken
        FROM private.ticket_suggestions AS ts
        WHERE ts.suggestion_id = ANY (v_suggestions)
          AND ts.ticket_id <> v_ticket.id;
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'suggestion_already_ticketed',
            DETAIL = format('Already linked to a ticket: %s. Nothing was created.', coalesce(v_taken, 'a suggestion')),
            HINT = 'ticket_for_suggestion returns the existing ticket; leave that suggestion out.';
    END IF;

    UPDATE private.task_management_connections AS c
    SET last_used_at = clock_timestamp()
    WHERE c.id = v_connection.id;

    -- ticket.created is written at commit by the tickets' _900_emit_created
    -- trigger, with the links inserted above.
    RETURN v_ticket;
END
$function$;
