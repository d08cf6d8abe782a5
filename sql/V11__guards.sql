-- Guards that span every module: bounds on the tunables, credentials hidden
-- from operators, and schema changes reserved to migrations.
--
-- Runs as the migrating superuser throughout: event triggers can only be
-- created by a superuser.

-- Bounds for the tunables the modules created. admin.set_setting refuses
-- values outside them (invalid_setting), so a typo cannot make every reader
-- fail ('200000 years' overflows timestamps) or disable a limit.
UPDATE private.settings AS s
SET min_value = b.min_value, max_value = b.max_value
FROM (VALUES
    ('outbox_max_attempts',       '1',        '1000'),
    ('outbox_max_backoff',        '1 second', '7 days'),
    ('idempotency_ttl',           '1 second', '365 days'),
    ('idempotency_max_ttl',       '1 second', '365 days'),
    ('oauth_nonce_max_ttl',       '1 second', '30 days'),
    ('oauth_nonce_replay_window', '1 second', '30 days'),
    ('receive_ip_retention',      '1 hour',   '10 years')
) AS b(key, min_value, max_value)
WHERE s.key = b.key;

-- Operators read the private tables, but not the columns that are
-- credentials: a contract token signs a contract, a nonce completes an
-- OAuth flow, a lease token completes or acknowledges work.
DO $hide$
DECLARE
    v_table record;
    v_columns text;
BEGIN
    FOR v_table IN
        SELECT *
        FROM (VALUES
            ('players',          ARRAY['contract_token']),
            ('oauth_nonces',     ARRAY['nonce']),
            ('idempotency_keys', ARRAY['lease_token']),
            ('outbox',           ARRAY['lease_token'])
        ) AS t(name, secret)
    LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
        INTO v_columns
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = format('private.%I', v_table.name)::regclass
          AND a.attnum > 0
          AND NOT a.attisdropped
          AND a.attname <> ALL (v_table.secret);
        EXECUTE format('REVOKE SELECT ON private.%I FROM pgrpc_admin', v_table.name);
        EXECUTE format('GRANT SELECT (%s) ON private.%I TO pgrpc_admin', v_columns, v_table.name);
    END LOOP;
END
$hide$;

-- Schema changes to pgrpc's schemas are reserved to migrations. The owner
-- of a table can otherwise disable its triggers, drop them, or replace a
-- trigger function with one that does nothing, and every append-only or
-- write-once rule would be gone. These event triggers refuse any DDL on
-- objects of private, api and admin unless a superuser runs it (pgrpc
-- migrate connects as one). A superuser can still bypass every rule: that is
-- the accepted, documented exception.
CREATE FUNCTION private.tg_guard_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_cmd record;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user)
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOR v_cmd IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        IF v_cmd.schema_name IN ('private', 'api', 'admin') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = 'schema_change_requires_migration',
                DETAIL = format('%s on %s is refused for %s.', v_cmd.command_tag, v_cmd.object_identity, session_user),
                HINT = 'Change pgrpc''s schemas with a migration applied by a superuser (pgrpc migrate).';
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION private.tg_guard_drop()
RETURNS event_trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_obj record;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user)
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN;
    END IF;
    FOR v_obj IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() LOOP
        IF v_obj.schema_name IN ('private', 'api', 'admin')
           OR (v_obj.object_type = 'schema' AND v_obj.object_name IN ('private', 'api', 'admin')) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = 'schema_change_requires_migration',
                DETAIL = format('DROP of %s %s is refused for %s.', v_obj.object_type, v_obj.object_identity, session_user),
                HINT = 'Change pgrpc''s schemas with a migration applied by a superuser (pgrpc migrate).';
        END IF;
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION private.tg_guard_ddl(), private.tg_guard_drop() FROM PUBLIC;

-- Event triggers are per database; a re-created database gets its own.
CREATE EVENT TRIGGER pgrpc_guard_ddl ON ddl_command_end
    EXECUTE FUNCTION private.tg_guard_ddl();
CREATE EVENT TRIGGER pgrpc_guard_drop ON sql_drop
    EXECUTE FUNCTION private.tg_guard_drop();
