-- Module outbox: the transactional outbox: emit, claim, ack, nack, requeue, purge.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.outbox, private.outbox_aggregate_locks

-- private.outbox_emit
CREATE OR REPLACE FUNCTION private.outbox_emit(p_aggregate_type text, p_aggregate_id text, p_event_type text, p_payload jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_id bigint;
BEGIN
    PERFORM private.outbox_lock_aggregate(p_aggregate_type, p_aggregate_id);
    -- The trace context of the request, validated (NULL if absent or bad).
    INSERT INTO private.outbox (aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_payload,
            pgrpc_http.traceparent(), pgrpc_http.tracestate())
    RETURNING id INTO v_id;
    RETURN v_id;
END
$function$;
ALTER FUNCTION private.outbox_emit(text,text,text,jsonb) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.outbox_emit(text,text,text,jsonb) IS
$$Emits one outbox event in the caller's transaction and returns its id.

The only sanctioned way to write an event: the per-aggregate row lock it takes (private.outbox_lock_aggregate) makes id order equal commit order within an aggregate. The event carries the request's W3C trace context (pgrpc_http.traceparent() and tracestate()), NULL when there is none or it is invalid.$$;
REVOKE ALL ON FUNCTION private.outbox_emit(text,text,text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.outbox_emit(text,text,text,jsonb) TO pgrpc_api;

-- private.tg_outbox__notify
CREATE OR REPLACE FUNCTION private.tg_outbox__notify()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_types text;
BEGIN
    SELECT string_agg(DISTINCT event_type, ',' ORDER BY event_type) INTO v_types FROM new_rows;
    IF v_types IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('pgrpc_outbox', v_types);
    END IF;
    RETURN NULL;
END
$function$;
ALTER FUNCTION private.tg_outbox__notify() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_outbox__notify() FROM PUBLIC;

-- private.tg_outbox__status_transition
CREATE OR REPLACE FUNCTION private.tg_outbox__status_transition()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'pending' AND NEW.status = 'leased')
        OR (OLD.status = 'leased' AND NEW.status IN ('pending', 'delivered', 'dead'))
        OR (OLD.status = 'dead' AND NEW.status = 'pending')
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation',
            MESSAGE = 'invalid_transition',
            DETAIL = format('Outbox event %s cannot go from %s to %s.', OLD.id, OLD.status, NEW.status),
            HINT = 'Use api.outbox_claim/ack/nack or admin.outbox_requeue.';
    END IF;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_outbox__status_transition() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_outbox__status_transition() FROM PUBLIC;

-- private.tg_outbox__guard_delete
CREATE OR REPLACE FUNCTION private.tg_outbox__guard_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF TG_OP = 'TRUNCATE' OR OLD.status <> 'delivered' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'outbox_undelivered',
            DETAIL = CASE WHEN TG_OP = 'TRUNCATE'
                          THEN 'TRUNCATE on private.outbox is not allowed: it would discard undelivered events.'
                          ELSE format('Outbox event %s is %s, not delivered.', OLD.id, OLD.status) END,
            HINT = 'Only delivered events are removed, by admin.outbox_purge_delivered.';
    END IF;
    RETURN OLD;
END
$function$;
ALTER FUNCTION private.tg_outbox__guard_delete() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_outbox__guard_delete() FROM PUBLIC;

-- api.outbox_claim
CREATE OR REPLACE FUNCTION api.outbox_claim(consumer text, max_events integer DEFAULT 100, lease_seconds integer DEFAULT 30, event_types text[] DEFAULT NULL::text[], OUT lease_token uuid, OUT events jsonb)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_max_attempts integer := private.setting_int('outbox_max_attempts');
BEGIN
    IF array_ndims(outbox_claim.event_types) > 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_event_types',
            DETAIL = format('event_types must be a one-dimensional array, got %s dimensions.', array_ndims(outbox_claim.event_types)),
            HINT = 'Pass a flat JSON array of event types, for example ["order.created"], or null for all.';
    END IF;
    IF outbox_claim.consumer IS NULL OR btrim(outbox_claim.consumer) = ''
       OR length(outbox_claim.consumer) > 200 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_consumer',
            DETAIL = 'consumer must be a non-empty name of at most 200 characters.',
            HINT = 'Name the relay instance, for example email-relay-1.';
    END IF;
    IF outbox_claim.max_events IS NULL OR outbox_claim.max_events NOT BETWEEN 1 AND 1000 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_max_events',
            DETAIL = format('max_events must be between 1 and 1000, got %s.', outbox_claim.max_events),
            HINT = 'Claim at most 1000 events at a time.';
    END IF;
    IF outbox_claim.lease_seconds IS NULL OR outbox_claim.lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_lease_seconds',
            DETAIL = format('lease_seconds must be between 1 and 86400, got %s.', outbox_claim.lease_seconds),
            HINT = 'Use a lease longer than one delivery batch takes.';
    END IF;

    -- A lease that expired on its last allowed attempt (the consumer died or
    -- hung on it) makes the event dead rather than redelivering it forever.
    UPDATE private.outbox AS o
    SET status = 'dead',
        last_error = 'lease expired on the last allowed attempt'
                     || coalesce(' (last error: ' || o.last_error || ')', '')
    WHERE o.id IN (
        SELECT x.id FROM private.outbox AS x
        WHERE x.status = 'leased'
          AND x.lease_expires_at <= v_now
          AND x.attempts >= v_max_attempts
        FOR UPDATE SKIP LOCKED);

    outbox_claim.lease_token := gen_random_uuid();

    -- Only the head of each aggregate is claimable: the NOT EXISTS reads the
    -- committed state without skipping locked rows, so an event whose
    -- predecessor is pending, leased, or being claimed right now by another
    -- consumer is never handed out.
    WITH picked AS (
        SELECT o.id
        FROM private.outbox AS o
        WHERE o.status IN ('pending', 'leased')
          AND CASE o.status WHEN 'pending' THEN o.available_at ELSE o.lease_expires_at END <= v_now
          AND (outbox_claim.event_types IS NULL OR o.event_type = ANY (outbox_claim.event_types))
          AND NOT EXISTS (
              SELECT 1
              FROM private.outbox AS e
              WHERE e.aggregate_type = o.aggregate_type
                AND e.aggregate_id = o.aggregate_id
                AND e.id < o.id
                AND e.status IN ('pending', 'leased'))
        ORDER BY o.id
        LIMIT outbox_claim.max_events
        FOR UPDATE OF o SKIP LOCKED
    ), leased AS (
        UPDATE private.outbox AS o
        SET status = 'leased',
            lease_token = outbox_claim.lease_token,
            lease_expires_at = v_now + make_interval(secs => outbox_claim.lease_seconds),
            leased_by = outbox_claim.consumer,
            attempts = o.attempts + 1
        FROM picked
        WHERE o.id = picked.id
        RETURNING o.id, o.event_type, o.aggregate_type, o.aggregate_id, o.payload, o.attempts, o.created_at,
                  o.traceparent, o.tracestate
    )
    SELECT coalesce(
               jsonb_agg(jsonb_build_object(
                   'id', l.id,
                   'event_type', l.event_type,
                   'aggregate_type', l.aggregate_type,
                   'aggregate_id', l.aggregate_id,
                   'payload', l.payload,
                   'attempts', l.attempts,
                   'created_at', l.created_at,
                   'traceparent', l.traceparent,
                   'tracestate', l.tracestate) ORDER BY l.id),
               '[]'::jsonb)
    INTO outbox_claim.events
    FROM leased AS l;
END
$function$;
ALTER FUNCTION api.outbox_claim(text,integer,integer,text[]) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.outbox_claim(text,integer,integer,text[]) IS
$$Leases up to max_events deliverable outbox events to consumer.

Returns {lease_token, events: [{id, event_type, aggregate_type, aggregate_id, payload, attempts, created_at, traceparent, tracestate}]}, oldest first (traceparent and tracestate: the W3C trace context of the transaction that emitted the event, or null); events is [] when nothing is due. Claimable: pending events whose available_at has come, and leased events whose lease expired. Rows are taken FOR UPDATE SKIP LOCKED, so concurrent consumers never receive the same event within a lease. Per-aggregate order: an event is handed out only when no earlier event of its aggregate is pending or leased, so each claim carries at most one event per aggregate. event_types (null = all) restricts the claim; an event still waits for earlier events of its aggregate of other types. attempts counts claims, the current one included; a lease that expires on the last allowed attempt (setting outbox_max_attempts) makes its event dead.$$;
REVOKE ALL ON FUNCTION api.outbox_claim(text,integer,integer,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.outbox_claim(text,integer,integer,text[]) TO pgrpc_service;

-- api.outbox_ack
CREATE OR REPLACE FUNCTION api.outbox_ack(lease_token uuid, ids bigint[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_count integer;
BEGIN
    IF array_ndims(outbox_ack.ids) > 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_ids',
            DETAIL = format('ids must be a one-dimensional array, got %s dimensions.', array_ndims(outbox_ack.ids)),
            HINT = 'Pass a flat JSON array of event ids, for example [1, 2, 3].';
    END IF;
    UPDATE private.outbox AS o
    SET status = 'delivered',
        delivered_at = clock_timestamp()
    WHERE o.id = ANY (outbox_ack.ids)
      AND o.status = 'leased'
      AND o.lease_token = outbox_ack.lease_token;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$function$;
ALTER FUNCTION api.outbox_ack(uuid,bigint[]) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.outbox_ack(uuid,bigint[]) IS
$$Marks events delivered; returns how many were acknowledged.

Only events currently leased under lease_token count: an unknown id, a wrong token, an event already acknowledged or one re-claimed by another consumer after its lease expired is silently left alone (and not counted). An expired lease that nobody re-claimed can still be acknowledged: the delivery happened and no one else holds the event.$$;
REVOKE ALL ON FUNCTION api.outbox_ack(uuid,bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.outbox_ack(uuid,bigint[]) TO pgrpc_service;

-- api.outbox_nack
CREATE OR REPLACE FUNCTION api.outbox_nack(lease_token uuid, id bigint, error text, retry_in_seconds integer DEFAULT NULL::integer, OUT status text, OUT attempts integer, OUT available_at timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_max_attempts integer := private.setting_int('outbox_max_attempts');
    v_max_backoff double precision := extract(epoch FROM private.setting_interval('outbox_max_backoff'));
    v_now timestamptz := clock_timestamp();
    v_delay double precision;
    v_attempts integer;
BEGIN
    IF outbox_nack.retry_in_seconds < 0 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_retry_in_seconds',
            DETAIL = format('retry_in_seconds must not be negative, got %s.', outbox_nack.retry_in_seconds),
            HINT = 'Pass null to use exponential backoff.';
    END IF;

    SELECT o.attempts INTO v_attempts
    FROM private.outbox AS o
    WHERE o.id = outbox_nack.id
      AND o.status = 'leased'
      AND o.lease_token = outbox_nack.lease_token
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT409' USING MESSAGE = 'lease_lost',
            DETAIL = format('Outbox event %s is not leased under token %s.', outbox_nack.id, outbox_nack.lease_token),
            HINT = 'The lease expired and was re-claimed, or the event was already acknowledged; claim again.';
    END IF;

    -- 2^attempts seconds, capped, times a jitter in [0.5, 1.5) so that
    -- consumers failing together do not retry together.
    v_delay := coalesce(outbox_nack.retry_in_seconds::double precision,
                        least(power(2, v_attempts), v_max_backoff) * (0.5 + random()));

    UPDATE private.outbox AS o
    SET status = CASE WHEN o.attempts >= v_max_attempts THEN 'dead' ELSE 'pending' END,
        available_at = v_now + make_interval(secs => v_delay),
        last_error = left(coalesce(outbox_nack.error, 'unspecified error'), 4000)
    WHERE o.id = outbox_nack.id
    RETURNING o.status, o.attempts, o.available_at
    INTO outbox_nack.status, outbox_nack.attempts, outbox_nack.available_at;
END
$function$;
ALTER FUNCTION api.outbox_nack(uuid,bigint,text,integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.outbox_nack(uuid,bigint,text,integer) IS
$$Reports a failed delivery; the event is retried later or becomes dead.

Requires the current lease (else 409 lease_lost). The event goes back to pending, available after retry_in_seconds if given, else after 2^attempts seconds (capped by setting outbox_max_backoff) times a random jitter between 0.5 and 1.5. Once attempts reaches setting outbox_max_attempts (default 25) the event becomes dead instead; admin.outbox_requeue revives it. error is stored in last_error. Returns {status, attempts, available_at}.$$;
REVOKE ALL ON FUNCTION api.outbox_nack(uuid,bigint,text,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.outbox_nack(uuid,bigint,text,integer) TO pgrpc_service;

-- admin.outbox_requeue
CREATE OR REPLACE FUNCTION admin.outbox_requeue(ids bigint[] DEFAULT NULL::bigint[])
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_count integer;
    v_types text;
BEGIN
    IF array_ndims(outbox_requeue.ids) > 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_ids',
            DETAIL = format('ids must be a one-dimensional array, got %s dimensions.', array_ndims(outbox_requeue.ids)),
            HINT = 'Pass a flat array of event ids, for example ARRAY[101, 102], or null for every dead event.';
    END IF;
    WITH revived AS (
        UPDATE private.outbox AS o
        SET status = 'pending',
            attempts = 0,
            available_at = clock_timestamp(),
            lease_token = NULL,
            lease_expires_at = NULL,
            leased_by = NULL
        WHERE o.status = 'dead'
          AND (outbox_requeue.ids IS NULL OR o.id = ANY (outbox_requeue.ids))
        RETURNING o.event_type
    )
    SELECT count(*), string_agg(DISTINCT r.event_type, ',' ORDER BY r.event_type)
    INTO v_count, v_types
    FROM revived AS r;
    IF v_types IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('pgrpc_outbox', v_types);
    END IF;
    RETURN v_count;
END
$function$;
ALTER FUNCTION admin.outbox_requeue(bigint[]) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.outbox_requeue(bigint[]) IS
$$Puts dead outbox events back to pending; returns how many.

ids null means every dead event; an array of more than one dimension is 400 invalid_ids. Attempts restart at zero and last_error is kept for the record. A revived event is delivered after events of its aggregate that were emitted later and already delivered: consumers dedupe and order by event id.$$;
REVOKE ALL ON FUNCTION admin.outbox_requeue(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.outbox_requeue(bigint[]) TO pgrpc_admin;

-- admin.outbox_purge_delivered
CREATE OR REPLACE FUNCTION admin.outbox_purge_delivered(older_than interval DEFAULT '7 days'::interval)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_count bigint;
BEGIN
    IF outbox_purge_delivered.older_than IS NULL OR outbox_purge_delivered.older_than < interval '0' THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_older_than',
            DETAIL = format('older_than must be a non-negative interval, got %s.', outbox_purge_delivered.older_than),
            HINT = 'For example: SELECT admin.outbox_purge_delivered(''30 days'');';
    END IF;
    DELETE FROM private.outbox AS o
    WHERE o.status = 'delivered'
      AND o.delivered_at < clock_timestamp() - outbox_purge_delivered.older_than;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$function$;
ALTER FUNCTION admin.outbox_purge_delivered(interval) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.outbox_purge_delivered(interval) IS
$$Deletes events delivered longer ago than older_than; returns how many.

Pending, leased and dead events are never deleted (a trigger refuses it for every role).$$;
REVOKE ALL ON FUNCTION admin.outbox_purge_delivered(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.outbox_purge_delivered(interval) TO pgrpc_admin;

-- admin.outbox_health
CREATE OR REPLACE VIEW admin.outbox_health AS
 SELECT ( SELECT count(*) AS count
           FROM private.outbox
          WHERE (outbox.status = 'pending'::text)) AS pending,
    ( SELECT count(*) AS count
           FROM private.outbox
          WHERE (outbox.status = 'leased'::text)) AS leased,
    ( SELECT count(*) AS count
           FROM private.outbox
          WHERE ((outbox.status = 'leased'::text) AND (outbox.lease_expires_at < clock_timestamp()))) AS expired_leases,
    ( SELECT count(*) AS count
           FROM private.outbox
          WHERE (outbox.status = 'delivered'::text)) AS delivered,
    ( SELECT count(*) AS count
           FROM private.outbox
          WHERE (outbox.status = 'dead'::text)) AS dead,
    oldest.created_at AS oldest_pending_at,
    (clock_timestamp() - oldest.created_at) AS oldest_pending_age,
    ( SELECT max(outbox.delivered_at) AS max
           FROM private.outbox
          WHERE (outbox.status = 'delivered'::text)) AS last_delivered_at
   FROM (( SELECT NULL::text AS "?column?") one
     LEFT JOIN LATERAL ( SELECT o.created_at
           FROM private.outbox o
          WHERE (o.status = 'pending'::text)
          ORDER BY o.id
         LIMIT 1) oldest ON (true));
ALTER VIEW admin.outbox_health OWNER TO pgrpc_api;
COMMENT ON VIEW admin.outbox_health IS
$$One row: outbox counts by status, expired leases, the oldest pending event and its age, and the last delivery.

dead > 0 or a growing oldest_pending_age needs an operator: see the README's outbox section.$$;
REVOKE ALL ON admin.outbox_health FROM PUBLIC;
GRANT SELECT ON admin.outbox_health TO pgrpc_admin;

-- private.outbox_lock_aggregate
CREATE OR REPLACE FUNCTION private.outbox_lock_aggregate(p_aggregate_type text, p_aggregate_id text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION private.outbox_lock_aggregate(text,text) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.outbox_lock_aggregate(text,text) IS
$$Locks one outbox aggregate until the end of the transaction.

A row lock in private.outbox_aggregate_locks, which only this function (run as pgrpc_migrator) may take: unlike an advisory key, no login can hold it to stall the aggregate's writers. A NULL type or id is refused (23502).$$;
REVOKE ALL ON FUNCTION private.outbox_lock_aggregate(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.outbox_lock_aggregate(text,text) TO pgrpc_api;
