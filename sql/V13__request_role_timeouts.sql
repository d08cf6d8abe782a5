-- Bounds on how long one request may run, per request role.
--
-- The proxy applies each request role's own settings (ALTER ROLE … SET) in
-- every transaction it opens as that role, as PostgREST does: SET ROLE alone
-- would not apply them. These are the shipped defaults; an operator changes
-- them with ALTER ROLE (cluster-wide, or IN DATABASE for one database), then
-- NOTIFY pgrst, 'reload schema'. Roles are cluster-wide, so a value already
-- set (by an operator, or by this migration in another database) is kept.
--
-- The authenticator's own idle_in_transaction_session_timeout is set by
-- V15: it ends a session a crashed proxy left in a transaction.

DO $timeouts$
DECLARE
    v_role record;
BEGIN
    FOR v_role IN
        SELECT *
        FROM (VALUES
            ('pgrpc_anon',    '5s'),
            ('pgrpc_user',    '15s'),
            ('pgrpc_service', '60s')
        ) AS r(name, timeout)
    LOOP
        IF NOT EXISTS (
            SELECT 1
            FROM pg_catalog.pg_db_role_setting s
            CROSS JOIN LATERAL unnest(s.setconfig) AS c(entry)
            WHERE s.setrole = v_role.name::regrole
              AND s.setdatabase = 0
              AND c.entry LIKE 'statement\_timeout=%'
        ) THEN
            EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', v_role.name, v_role.timeout);
        END IF;
    END LOOP;
END
$timeouts$;
