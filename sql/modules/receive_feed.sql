-- Module receive_feed: the receive feed, unread counts and the legacy receives.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.receive_feed_entries, private.receive_unread, private.legacy_recent_receives

-- private.tg_receive__normalize_owner_email
CREATE OR REPLACE FUNCTION private.tg_receive__normalize_owner_email()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    NEW.owner_email := lower(btrim(NEW.owner_email));
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_receive__normalize_owner_email() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_receive__normalize_owner_email() FROM PUBLIC;

-- private.tg_receive_feed_entries__redact_only
CREATE OR REPLACE FUNCTION private.tg_receive_feed_entries__redact_only()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF (to_jsonb(NEW) - 'sender_ip' - 'updated_at') IS DISTINCT FROM (to_jsonb(OLD) - 'sender_ip' - 'updated_at')
       OR (NEW.sender_ip IS NOT NULL AND NEW.sender_ip IS DISTINCT FROM OLD.sender_ip) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'write_once',
            DETAIL = format('Feed entry %s is write-once; only sender_ip may be cleared.', OLD.reservation_id),
            HINT = 'Use admin.scrub_receive_ips to clear addresses.';
    END IF;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_receive_feed_entries__redact_only() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_receive_feed_entries__redact_only() FROM PUBLIC;

-- private.tg_receive_feed_entries__emit_finalized
CREATE OR REPLACE FUNCTION private.tg_receive_feed_entries__emit_finalized()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_user = 'pgrpc_api'
       AND coalesce(current_setting('pgrpc.receive_legacy_migration', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM private.outbox_emit('receive', NEW.reservation_id::text, 'receive.finalized',
        jsonb_build_object(
            'reservation_id', NEW.reservation_id,
            'owner_email', NEW.owner_email,
            'created_at', NEW.created_at,
            'file_count', NEW.file_count,
            'total_bytes', NEW.total_bytes,
            'sender_label', NEW.sender_label));
    RETURN NULL;
END
$function$;
ALTER FUNCTION private.tg_receive_feed_entries__emit_finalized() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_receive_feed_entries__emit_finalized() FROM PUBLIC;

-- private.legacy_receive_element
CREATE OR REPLACE FUNCTION private.legacy_receive_element(p_element jsonb, OUT reservation_id uuid, OUT created_at timestamp with time zone, OUT file_count integer, OUT total_bytes bigint, OUT sender_label text, OUT sender_ip inet, OUT unread boolean, OUT error text)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v_field text;
    v_count numeric;
    v_bytes numeric;
BEGIN
    IF jsonb_typeof(p_element) IS DISTINCT FROM 'object' THEN
        error := 'element is not an object';
        RETURN;
    END IF;
    BEGIN
        v_field := 'reservationId';
        IF jsonb_typeof(p_element -> 'reservationId') IS DISTINCT FROM 'string' THEN
            RAISE invalid_text_representation USING MESSAGE = 'missing or not a string';
        END IF;
        reservation_id := (p_element ->> 'reservationId')::uuid;

        v_field := 'createdAt';
        created_at := CASE jsonb_typeof(p_element -> 'createdAt')
            WHEN 'string' THEN (p_element ->> 'createdAt')::timestamptz
            WHEN 'number' THEN to_timestamp((p_element ->> 'createdAt')::numeric / 1000)
        END;
        IF created_at IS NULL OR NOT isfinite(created_at) THEN
            RAISE invalid_text_representation USING MESSAGE = 'missing or not a finite time';
        END IF;

        v_field := 'fileCount';
        v_count := (p_element ->> 'fileCount')::numeric;
        IF v_count IS NULL OR v_count < 0 OR v_count <> trunc(v_count) THEN
            RAISE invalid_text_representation USING MESSAGE = 'missing or not a non-negative integer';
        END IF;
        file_count := v_count::integer;

        v_field := 'totalBytes';
        v_bytes := (p_element ->> 'totalBytes')::numeric;
        IF v_bytes IS NULL OR v_bytes < 0 OR v_bytes <> trunc(v_bytes) THEN
            RAISE invalid_text_representation USING MESSAGE = 'missing or not a non-negative integer';
        END IF;
        total_bytes := v_bytes::bigint;

        v_field := 'senderIp';
        sender_ip := (p_element ->> 'senderIp')::inet;

        sender_label := p_element ->> 'senderLabel';
        unread := coalesce(p_element -> 'unread' = 'true'::jsonb, false);
    EXCEPTION WHEN data_exception THEN
        reservation_id := NULL; created_at := NULL; file_count := NULL; total_bytes := NULL;
        sender_label := NULL; sender_ip := NULL; unread := NULL;
        error := format('%s: %s', v_field, SQLERRM);
    END;
END
$function$;
ALTER FUNCTION private.legacy_receive_element(jsonb) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.legacy_receive_element(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.legacy_receive_element(jsonb) TO pgrpc_api, pgrpc_admin;

-- private.legacy_receives
CREATE OR REPLACE FUNCTION private.legacy_receives(p_entries jsonb)
 RETURNS SETOF private.receive_feed_item
 LANGUAGE sql
 STABLE
AS $function$
    SELECT DISTINCT ON (p.reservation_id)
        p.reservation_id, p.created_at, p.file_count, p.total_bytes, p.sender_label, p.sender_ip,
        bool_or(p.unread) OVER (PARTITION BY p.reservation_id)
    FROM jsonb_array_elements(p_entries) AS el(value)
    CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p
    WHERE p.error IS NULL
    ORDER BY p.reservation_id, p.created_at
$function$;
ALTER FUNCTION private.legacy_receives(jsonb) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.legacy_receives(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.legacy_receives(jsonb) TO pgrpc_api, pgrpc_admin;

-- private.legacy_receives_valid
CREATE OR REPLACE FUNCTION private.legacy_receives_valid(p_entries jsonb)
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
    SELECT NOT EXISTS (
        SELECT 1
        FROM jsonb_array_elements(p_entries) AS el(value)
        CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p
        WHERE p.error IS NOT NULL)
$function$;
ALTER FUNCTION private.legacy_receives_valid(jsonb) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.legacy_receives_valid(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.legacy_receives_valid(jsonb) TO pgrpc_api, pgrpc_admin;

-- private.receive_ip_retention
CREATE OR REPLACE FUNCTION private.receive_ip_retention()
 RETURNS interval
 LANGUAGE sql
 STABLE
AS $function$
    SELECT coalesce(private.setting_interval('receive_ip_retention'), interval '30 days')
$function$;
ALTER FUNCTION private.receive_ip_retention() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.receive_ip_retention() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.receive_ip_retention() TO pgrpc_api, pgrpc_admin;

-- admin.legacy_receives_invalid
CREATE OR REPLACE VIEW admin.legacy_receives_invalid AS
 SELECT l.owner_email,
    el.ordinality AS element_index,
    el.value AS element,
    p.error
   FROM ((private.legacy_recent_receives l
     CROSS JOIN LATERAL jsonb_array_elements(l.entries) WITH ORDINALITY el(value, ordinality))
     CROSS JOIN LATERAL private.legacy_receive_element(el.value) p(reservation_id, created_at, file_count, total_bytes, sender_label, sender_ip, unread, error))
  WHERE (p.error IS NOT NULL);
ALTER VIEW admin.legacy_receives_invalid OWNER TO pgrpc_migrator;
COMMENT ON VIEW admin.legacy_receives_invalid IS
$$Legacy feed elements that do not parse, with the reason (element_index is 1-based).

admin.migrate_legacy_receives skips the owners listed here; fix the element with an UPDATE of private.legacy_recent_receives as a superuser, then migrate again.$$;
REVOKE ALL ON admin.legacy_receives_invalid FROM PUBLIC;
GRANT SELECT ON admin.legacy_receives_invalid TO pgrpc_admin;

-- api.unread_receive_count
CREATE OR REPLACE FUNCTION api.unread_receive_count(owner_email text)
 RETURNS integer
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_owner text := lower(btrim(unread_receive_count.owner_email));
    v_markers integer;
    v_legacy integer;
BEGIN
    PERFORM private.require_mailbox_access(v_owner);
    SELECT count(*) INTO v_markers FROM private.receive_unread AS u WHERE u.owner_email = v_owner;
    SELECT count(*) INTO v_legacy
    FROM private.legacy_recent_receives AS l
    CROSS JOIN LATERAL private.legacy_receives(l.entries) AS g
    WHERE l.owner_email = v_owner
      AND g.unread
      AND NOT EXISTS (SELECT 1 FROM private.receive_feed_entries AS e WHERE e.reservation_id = g.reservation_id);
    RETURN v_markers + v_legacy;
END
$function$;
ALTER FUNCTION api.unread_receive_count(text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.unread_receive_count(text) IS
$$Counts a mailbox's unread receive feed entries.

The count is derived: one per unread marker, plus legacy elements marked unread that are not migrated yet. It always equals the number of items recent_receives would flag unread. A pgrpc_user may count only its own mailbox (403 forbidden).$$;
REVOKE ALL ON FUNCTION api.unread_receive_count(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.unread_receive_count(text) TO pgrpc_user, pgrpc_service;

-- api.mark_receives_read
CREATE OR REPLACE FUNCTION api.mark_receives_read(owner_email text, reservation_ids uuid[] DEFAULT NULL::uuid[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_owner text := lower(btrim(mark_receives_read.owner_email));
    v_ids uuid[] := mark_receives_read.reservation_ids;
    v_entries jsonb;
    v_legacy_cleared integer := 0;
    v_markers_cleared integer;
BEGIN
    IF array_ndims(mark_receives_read.reservation_ids) > 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_reservation_ids',
            DETAIL = format('reservation_ids must be a one-dimensional array, got %s dimensions.', array_ndims(mark_receives_read.reservation_ids)),
            HINT = 'Pass a flat JSON array of reservation ids, or null for all of them.';
    END IF;
    PERFORM private.require_mailbox_access(v_owner);

    -- Legacy flags first, under the row lock: if a migration holds the row,
    -- wait for it, so that the marker DELETE below (a later statement, a
    -- newer snapshot) sees the markers it created.
    SELECT l.entries INTO v_entries
    FROM private.legacy_recent_receives AS l
    WHERE l.owner_email = v_owner
    FOR UPDATE;
    IF FOUND THEN
        SELECT count(*) INTO v_legacy_cleared
        FROM private.legacy_receives(v_entries) AS g
        WHERE g.unread
          AND (v_ids IS NULL OR g.reservation_id = ANY (v_ids))
          AND NOT EXISTS (SELECT 1 FROM private.receive_feed_entries AS e WHERE e.reservation_id = g.reservation_id);

        UPDATE private.legacy_recent_receives AS l
        SET entries = (
            SELECT jsonb_agg(
                       CASE WHEN p.error IS NULL AND el.value ? 'unread'
                                 AND (v_ids IS NULL OR p.reservation_id = ANY (v_ids))
                            THEN el.value - 'unread'
                            ELSE el.value END
                       ORDER BY el.ordinality)
            FROM jsonb_array_elements(l.entries) WITH ORDINALITY AS el(value, ordinality)
            CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p)
        WHERE l.owner_email = v_owner
          AND EXISTS (
              SELECT 1
              FROM jsonb_array_elements(l.entries) AS el(value)
              CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p
              WHERE p.error IS NULL AND el.value ? 'unread'
                AND (v_ids IS NULL OR p.reservation_id = ANY (v_ids)));
    END IF;

    DELETE FROM private.receive_unread AS u
    WHERE u.owner_email = v_owner
      AND (v_ids IS NULL OR u.reservation_id = ANY (v_ids));
    GET DIAGNOSTICS v_markers_cleared = ROW_COUNT;

    RETURN v_markers_cleared + v_legacy_cleared;
END
$function$;
ALTER FUNCTION api.mark_receives_read(text,uuid[]) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.mark_receives_read(text,uuid[]) IS
$$Marks a mailbox's receive feed entries read.

reservation_ids names the entries to mark; null marks them all; ids of other mailboxes are ignored. Returns the number of entries that were unread and no longer are (legacy entries not yet migrated included). A pgrpc_user may mark only its own mailbox (403 forbidden).$$;
REVOKE ALL ON FUNCTION api.mark_receives_read(text,uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.mark_receives_read(text,uuid[]) TO pgrpc_user, pgrpc_service;

-- admin.migrate_legacy_receives
CREATE OR REPLACE FUNCTION admin.migrate_legacy_receives(batch_size integer DEFAULT 1000)
 RETURNS TABLE(owners_migrated bigint, entries_inserted bigint, entries_already_present bigint, markers_inserted bigint, owners_remaining bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_ip_cutoff timestamptz := clock_timestamp() - private.receive_ip_retention();
    v_row record;
    v_total bigint;
    v_inserted bigint;
    v_markers bigint;
    v_owners bigint := 0;
    v_entries_inserted bigint := 0;
    v_entries_present bigint := 0;
    v_markers_inserted bigint := 0;
BEGIN
    IF migrate_legacy_receives.batch_size IS NULL OR migrate_legacy_receives.batch_size NOT BETWEEN 1 AND 100000 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_batch_size',
            DETAIL = format('batch_size must be between 1 and 100000, got %s.',
                            coalesce(migrate_legacy_receives.batch_size::text, 'null')),
            HINT = 'Migrate in batches of about 1000 owners and repeat.';
    END IF;

    -- No receive.finalized for migrated entries: the entries' trigger skips
    -- its event while this transaction-local flag is on and the insert runs
    -- as pgrpc_api (that is, inside this function). Turned off again below;
    -- an error rolls it back with everything else.
    PERFORM pg_catalog.set_config('pgrpc.receive_legacy_migration', 'on', true);

    -- Rows another session holds (a concurrent migration, a mark-read) are
    -- skipped, not waited for: the next call picks them up.
    FOR v_row IN
        SELECT l.owner_email, l.entries
        FROM private.legacy_recent_receives AS l
        WHERE private.legacy_receives_valid(l.entries)
        ORDER BY l.owner_email
        LIMIT migrate_legacy_receives.batch_size
        FOR UPDATE SKIP LOCKED
    LOOP
        -- ON CONFLICT DO NOTHING converges with finalize_receive and with a
        -- reservation listed under two owners: the existing entry wins, and
        -- so does its unread state. Addresses past retention are not copied.
        WITH source AS (
            SELECT * FROM private.legacy_receives(v_row.entries)
        ),
        inserted AS (
            INSERT INTO private.receive_feed_entries AS e
                (reservation_id, owner_email, created_at, file_count, total_bytes, sender_label, sender_ip)
            SELECT s.reservation_id, v_row.owner_email, s.created_at, s.file_count, s.total_bytes, s.sender_label,
                   CASE WHEN s.created_at >= v_ip_cutoff THEN s.sender_ip END
            FROM source AS s
            ON CONFLICT DO NOTHING
            RETURNING e.reservation_id
        ),
        markers AS (
            INSERT INTO private.receive_unread (reservation_id, owner_email)
            SELECT i.reservation_id, v_row.owner_email
            FROM inserted AS i
            JOIN source AS s USING (reservation_id)
            WHERE s.unread
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM source), (SELECT count(*) FROM inserted), (SELECT count(*) FROM markers)
        INTO v_total, v_inserted, v_markers;

        DELETE FROM private.legacy_recent_receives AS l WHERE l.owner_email = v_row.owner_email;

        v_owners := v_owners + 1;
        v_entries_inserted := v_entries_inserted + v_inserted;
        v_entries_present := v_entries_present + (v_total - v_inserted);
        v_markers_inserted := v_markers_inserted + v_markers;
    END LOOP;
    PERFORM pg_catalog.set_config('pgrpc.receive_legacy_migration', 'off', true);

    RETURN QUERY
    SELECT v_owners, v_entries_inserted, v_entries_present, v_markers_inserted,
           (SELECT count(*) FROM private.legacy_recent_receives);
END
$function$;
ALTER FUNCTION admin.migrate_legacy_receives(integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.migrate_legacy_receives(integer) IS
$$Moves up to batch_size legacy feed arrays into feed entries, in one transaction.

For each legacy row (locked FOR UPDATE SKIP LOCKED): every valid element becomes an entry unless its reservation already has one (ON CONFLICT DO NOTHING), an unread marker is added for a new entry whose element said "unread": true, and the legacy row is deleted, all in the same transaction. No events are emitted: these receives were announced long ago (the entries' receive.finalized trigger is skipped through the transaction-local flag pgrpc.receive_legacy_migration, which only this function sets). Returns owners_migrated, entries_inserted, entries_already_present, markers_inserted and owners_remaining. Idempotent and safe to run during finalizations and alongside itself; call it again until owners_migrated is 0. Rows with an unparsable element are never migrated; admin.legacy_receives_invalid lists them.$$;
REVOKE ALL ON FUNCTION admin.migrate_legacy_receives(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.migrate_legacy_receives(integer) TO pgrpc_admin;

-- admin.scrub_receive_ips
CREATE OR REPLACE FUNCTION admin.scrub_receive_ips(older_than interval DEFAULT NULL::interval)
 RETURNS TABLE(entries_scrubbed bigint, legacy_elements_scrubbed bigint)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_older_than interval := coalesce(scrub_receive_ips.older_than, private.receive_ip_retention());
    v_cutoff timestamptz;
    v_entries bigint;
    v_legacy bigint := 0;
    v_row record;
    v_new jsonb;
    v_count bigint;
BEGIN
    IF v_older_than < interval '0' THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_older_than',
            DETAIL = format('older_than must not be negative, got %s.', v_older_than),
            HINT = 'Omit it to use the receive_ip_retention setting.';
    END IF;
    v_cutoff := clock_timestamp() - v_older_than;

    UPDATE private.receive_feed_entries AS e SET sender_ip = NULL
    WHERE e.sender_ip IS NOT NULL AND e.created_at < v_cutoff;
    GET DIAGNOSTICS v_entries = ROW_COUNT;

    FOR v_row IN
        SELECT l.owner_email, l.entries
        FROM private.legacy_recent_receives AS l
        WHERE EXISTS (
            SELECT 1
            FROM jsonb_array_elements(l.entries) AS el(value)
            CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p
            WHERE p.error IS NULL AND p.sender_ip IS NOT NULL AND p.created_at < v_cutoff)
        FOR UPDATE
    LOOP
        SELECT jsonb_agg(CASE WHEN p.error IS NULL AND p.sender_ip IS NOT NULL AND p.created_at < v_cutoff
                              THEN el.value - 'senderIp' ELSE el.value END
                         ORDER BY el.ordinality),
               count(*) FILTER (WHERE p.error IS NULL AND p.sender_ip IS NOT NULL AND p.created_at < v_cutoff)
        INTO v_new, v_count
        FROM jsonb_array_elements(v_row.entries) WITH ORDINALITY AS el(value, ordinality)
        CROSS JOIN LATERAL private.legacy_receive_element(el.value) AS p;

        UPDATE private.legacy_recent_receives AS l SET entries = v_new WHERE l.owner_email = v_row.owner_email;
        v_legacy := v_legacy + v_count;
    END LOOP;

    RETURN QUERY SELECT v_entries, v_legacy;
END
$function$;
ALTER FUNCTION admin.scrub_receive_ips(interval) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.scrub_receive_ips(interval) IS
$$Clears sender IPs of feed entries older than older_than (default: the receive_ip_retention setting).

Also removes senderIp from legacy elements that old. Returns entries_scrubbed and legacy_elements_scrubbed. recent_receives already hides such addresses; the scrub removes them from storage. Schedule it daily.$$;
REVOKE ALL ON FUNCTION admin.scrub_receive_ips(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.scrub_receive_ips(interval) TO pgrpc_admin;

-- admin.prune_receive_feed
CREATE OR REPLACE FUNCTION admin.prune_receive_feed(keep_per_owner integer DEFAULT 500)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_deleted bigint;
BEGIN
    IF prune_receive_feed.keep_per_owner IS NULL OR prune_receive_feed.keep_per_owner < 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_keep_per_owner',
            DETAIL = format('keep_per_owner must be at least 1, got %s.',
                            coalesce(prune_receive_feed.keep_per_owner::text, 'null')),
            HINT = 'Keep at least the newest entry of each mailbox.';
    END IF;

    DELETE FROM private.receive_feed_entries AS e
    USING (
        SELECT r.reservation_id
        FROM (
            SELECT f.reservation_id,
                   row_number() OVER (PARTITION BY f.owner_email
                                      ORDER BY f.created_at DESC, f.reservation_id DESC) AS position
            FROM private.receive_feed_entries AS f
        ) AS r
        WHERE r.position > prune_receive_feed.keep_per_owner
    ) AS old
    WHERE e.reservation_id = old.reservation_id;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$function$;
ALTER FUNCTION admin.prune_receive_feed(integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.prune_receive_feed(integer) IS
$$Deletes each mailbox's feed entries beyond its newest keep_per_owner (default 500).

Their unread markers go with them (ON DELETE CASCADE). Returns the number of entries deleted. Run it after the legacy migration has finished, since legacy arrays are not counted.$$;
REVOKE ALL ON FUNCTION admin.prune_receive_feed(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.prune_receive_feed(integer) TO pgrpc_admin;

-- api.finalize_receive
CREATE OR REPLACE FUNCTION api.finalize_receive(reservation_id uuid, owner_email text, file_count integer, total_bytes bigint, sender_ip inet DEFAULT NULL::inet, sender_label text DEFAULT NULL::text)
 RETURNS api.receive_finalization
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_owner text := lower(btrim(finalize_receive.owner_email));
    v_existing_owner text;
BEGIN
    IF finalize_receive.reservation_id IS NULL THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_reservation_id',
            DETAIL = 'reservation_id is null.',
            HINT = 'Pass the reservation''s uuid.';
    END IF;

    -- The entry's _900_emit_outbox trigger emits receive.finalized; this
    -- flag (for the legacy migration only) must not silence it, whatever
    -- the caller set.
    PERFORM pg_catalog.set_config('pgrpc.receive_legacy_migration', 'off', true);
    INSERT INTO private.receive_feed_entries AS e
        (reservation_id, owner_email, file_count, total_bytes, sender_label, sender_ip)
    VALUES (finalize_receive.reservation_id, v_owner, finalize_receive.file_count,
            finalize_receive.total_bytes, finalize_receive.sender_label, finalize_receive.sender_ip)
    ON CONFLICT DO NOTHING;

    IF FOUND THEN
        INSERT INTO private.receive_unread (reservation_id, owner_email)
        VALUES (finalize_receive.reservation_id, v_owner);
        RETURN ROW(finalize_receive.reservation_id, true)::api.receive_finalization;
    END IF;

    -- A duplicate: this statement sees the committed winner.
    SELECT e.owner_email INTO v_existing_owner
    FROM private.receive_feed_entries AS e
    WHERE e.reservation_id = finalize_receive.reservation_id;
    IF v_existing_owner IS DISTINCT FROM v_owner THEN
        RAISE SQLSTATE 'PT409' USING MESSAGE = 'reservation_owner_mismatch',
            DETAIL = format('Reservation %s was finalized for another mailbox, not %s.',
                            finalize_receive.reservation_id, v_owner),
            HINT = 'A reservation belongs to one mailbox; check the reservation id.';
    END IF;
    RETURN ROW(finalize_receive.reservation_id, false)::api.receive_finalization;
END
$function$;
ALTER FUNCTION api.finalize_receive(uuid,text,integer,bigint,inet,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.finalize_receive(uuid,text,integer,bigint,inet,text) IS
$$Records a finalized receive in its owner's feed, once per reservation.

Returns {reservation_id, newly_created}. The first call for a reservation inserts the entry and an unread marker, and the entry's trigger emits one receive.finalized event (payload reservation_id, owner_email, created_at, file_count, total_bytes, sender_label; never the IP), all in one transaction. A repeat, concurrent or not, changes nothing and returns newly_created false; a repeat naming another mailbox is 409 reservation_owner_mismatch. owner_email is stored lowercased; file_count and total_bytes must be non-negative (400).$$;
REVOKE ALL ON FUNCTION api.finalize_receive(uuid,text,integer,bigint,inet,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.finalize_receive(uuid,text,integer,bigint,inet,text) TO pgrpc_service;

-- api.recent_receives
CREATE OR REPLACE FUNCTION api.recent_receives(owner_email text, max_entries integer DEFAULT 20, before_created_at timestamp with time zone DEFAULT NULL::timestamp with time zone, before_reservation_id uuid DEFAULT NULL::uuid)
 RETURNS SETOF api.receive_feed_item
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_owner text := lower(btrim(recent_receives.owner_email));
    v_before_at timestamptz := coalesce(recent_receives.before_created_at, 'infinity'::timestamptz);
    v_before_id uuid := coalesce(recent_receives.before_reservation_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid);
    v_ip_cutoff timestamptz := clock_timestamp() - private.receive_ip_retention();
BEGIN
    PERFORM private.require_mailbox_access(v_owner);
    IF recent_receives.max_entries IS NULL OR recent_receives.max_entries NOT BETWEEN 1 AND 200 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_max_entries',
            DETAIL = format('max_entries must be between 1 and 200, got %s.', coalesce(recent_receives.max_entries::text, 'null')),
            HINT = 'Ask for at most 200 entries and page with before_created_at and before_reservation_id.';
    END IF;
    IF (recent_receives.before_created_at IS NULL) <> (recent_receives.before_reservation_id IS NULL) THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_cursor',
            DETAIL = 'before_created_at and before_reservation_id must be given together.',
            HINT = 'Pass the created_at and reservation_id of the last entry of the previous page, or neither.';
    END IF;

    RETURN QUERY
    WITH current_entries AS (
        SELECT e.reservation_id, e.created_at, e.file_count, e.total_bytes, e.sender_label, e.sender_ip,
               EXISTS (SELECT 1 FROM private.receive_unread AS u
                       WHERE u.reservation_id = e.reservation_id) AS unread
        FROM private.receive_feed_entries AS e
        WHERE e.owner_email = v_owner
          AND (e.created_at, e.reservation_id) < (v_before_at, v_before_id)
        ORDER BY e.created_at DESC, e.reservation_id DESC
        LIMIT recent_receives.max_entries
    ),
    legacy_entries AS (
        -- Not yet migrated; a reservation that already has an entry (of
        -- any owner) is shown from the entry only.
        SELECT g.reservation_id, g.created_at, g.file_count, g.total_bytes, g.sender_label, g.sender_ip, g.unread
        FROM private.legacy_recent_receives AS l
        CROSS JOIN LATERAL private.legacy_receives(l.entries) AS g
        WHERE l.owner_email = v_owner
          AND (g.created_at, g.reservation_id) < (v_before_at, v_before_id)
          AND NOT EXISTS (SELECT 1 FROM private.receive_feed_entries AS e
                          WHERE e.reservation_id = g.reservation_id)
    )
    SELECT x.reservation_id, x.created_at, x.file_count, x.total_bytes, x.sender_label,
           CASE WHEN x.created_at >= v_ip_cutoff THEN x.sender_ip END,
           x.unread
    FROM (SELECT * FROM current_entries UNION ALL SELECT * FROM legacy_entries) AS x
    ORDER BY x.created_at DESC, x.reservation_id DESC
    LIMIT recent_receives.max_entries;
END
$function$;
ALTER FUNCTION api.recent_receives(text,integer,timestamp with time zone,uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.recent_receives(text,integer,timestamp with time zone,uuid) IS
$$Lists a mailbox's receive feed, newest first, one keyset page at a time.

Each item: {reservation_id, created_at, file_count, total_bytes, sender_label, sender_ip, unread}. max_entries is 1..200 (else 400 invalid_max_entries). For the next page pass the last item's created_at and reservation_id as before_created_at and before_reservation_id (both or neither, else 400 invalid_cursor). sender_ip is null once the entry is older than the receive_ip_retention setting, whether or not the scrub has run. Entries still in the legacy array are included, once each. A pgrpc_user may read only the mailbox of its email claim (403 forbidden).$$;
REVOKE ALL ON FUNCTION api.recent_receives(text,integer,timestamp with time zone,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.recent_receives(text,integer,timestamp with time zone,uuid) TO pgrpc_user, pgrpc_service;
