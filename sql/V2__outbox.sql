-- Transactional outbox: the table, emission and its notification, claiming
-- with leases, acknowledgement, retry with backoff, and the operator's tools.
--
-- Every module emits through private.outbox_emit() inside the transaction
-- that changes state, so a rolled-back change leaves no event and a
-- committed one leaves exactly one.
--
-- Life of an event (status):
--   pending --claim--> leased --ack--> delivered (terminal; purged later)
--                        |  \--nack--> pending (backoff) ... --> dead
--                        \--lease expires--> claimable again (attempts count)
--   dead --admin.outbox_requeue--> pending
-- The event columns (aggregate, type, payload, created_at) never change;
-- only the delivery columns do, and updated_at records when they last did.

SET LOCAL ROLE pgrpc_owner;

CREATE TABLE private.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Delivery columns: the only ones that ever change.
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_token uuid,
    lease_expires_at timestamptz,
    leased_by text,
    last_error text,
    delivered_at timestamptz,
    -- Kept by the _200_updated_at trigger whenever a delivery column changes.
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT outbox_status_known CHECK (status IN ('pending', 'leased', 'delivered', 'dead')),
    CONSTRAINT outbox_attempts_non_negative CHECK (attempts >= 0),
    CONSTRAINT outbox_event_type_not_empty CHECK (event_type <> ''),
    CONSTRAINT outbox_aggregate_not_empty CHECK (aggregate_type <> '' AND aggregate_id <> ''),
    CONSTRAINT outbox_leased_has_lease CHECK (
        status <> 'leased' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT outbox_delivered_has_time CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);

COMMENT ON TABLE private.outbox IS
$$Transactional outbox: one row per event, written in the transaction of the state change.

Event columns (id, aggregate_type, aggregate_id, event_type, payload, created_at) are write-once; the delivery columns (status, attempts, available_at, lease_token, lease_expires_at, leased_by, last_error, delivered_at) are kept by api.outbox_claim/ack/nack and admin.outbox_requeue, and updated_at by a trigger. Debezium's outbox event router can read it directly (see the README).$$;

-- Claiming scans the undelivered rows in id order; delivered and dead rows,
-- however many, are not in these indexes.
CREATE INDEX outbox_undelivered_idx ON private.outbox (id)
    WHERE status IN ('pending', 'leased');
-- "Is there an earlier undelivered event of this aggregate?" (per-aggregate order).
CREATE INDEX outbox_aggregate_undelivered_idx ON private.outbox (aggregate_type, aggregate_id, id)
    WHERE status IN ('pending', 'leased');
CREATE INDEX outbox_dead_idx ON private.outbox (id)
    WHERE status = 'dead';
-- Purging and counting delivered rows.
CREATE INDEX outbox_delivered_at_idx ON private.outbox (delivered_at)
    WHERE status = 'delivered';

-- Emits one event. Emitters of one aggregate are serialized by a
-- transaction-scoped advisory lock, so that within an aggregate the id order
-- is the commit order, which outbox_claim relies on.
CREATE FUNCTION private.outbox_emit(
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
    PERFORM pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended('pgrpc_outbox:' || p_aggregate_type || ':' || p_aggregate_id, 0));
    INSERT INTO private.outbox (aggregate_type, aggregate_id, event_type, payload)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_payload)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION private.outbox_emit(text, text, text, jsonb) IS
$$Emits one outbox event in the caller's transaction and returns its id.

The only sanctioned way to write an event: the per-aggregate advisory lock it takes makes id order equal commit order within an aggregate.$$;

-- One notification per statement, naming the event types only.
CREATE FUNCTION private.tg_outbox__notify()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_types text;
BEGIN
    SELECT string_agg(DISTINCT event_type, ',' ORDER BY event_type) INTO v_types FROM new_rows;
    IF v_types IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('pgrpc_outbox', v_types);
    END IF;
    RETURN NULL;
END
$$;

-- BEFORE UPDATE (row): the delivery state machine. A delivered event is
-- never handed out again; a dead one comes back only through requeue.
CREATE FUNCTION private.tg_outbox__status_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- BEFORE DELETE (row) and BEFORE TRUNCATE (statement): only delivered events
-- may be removed, so an undelivered or dead event is never lost.
CREATE FUNCTION private.tg_outbox__guard_delete()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

CREATE TRIGGER _100_event_write_once BEFORE UPDATE ON private.outbox
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'aggregate_type', 'aggregate_id', 'event_type', 'payload', 'created_at');
CREATE TRIGGER _110_status_transition BEFORE UPDATE OF status ON private.outbox
    FOR EACH ROW EXECUTE FUNCTION private.tg_outbox__status_transition();
CREATE TRIGGER _120_guard_delete BEFORE DELETE ON private.outbox
    FOR EACH ROW EXECUTE FUNCTION private.tg_outbox__guard_delete();
CREATE TRIGGER _120_guard_truncate BEFORE TRUNCATE ON private.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_outbox__guard_delete();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.outbox
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _900_notify AFTER INSERT ON private.outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_outbox__notify();

INSERT INTO private.settings (key, value, value_type, description) VALUES
    ('outbox_max_attempts', '25', 'integer', 'Delivery attempts before an outbox event becomes dead.'),
    ('outbox_max_backoff', '1 hour', 'interval', 'Longest delay outbox_nack waits before a retry (before jitter).');

-- Privileges: pgrpc_api writes events and the delivery columns only (not
-- updated_at: the trigger keeps it); it may delete (delivered rows only, by
-- the trigger above) for the purge.
GRANT EXECUTE ON FUNCTION private.outbox_emit(text, text, text, jsonb) TO pgrpc_api;
GRANT SELECT, INSERT, DELETE ON private.outbox TO pgrpc_api;
GRANT UPDATE (status, attempts, available_at, lease_token, lease_expires_at, leased_by, last_error, delivered_at)
    ON private.outbox TO pgrpc_api;

-- Consumer RPC --------------------------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.outbox_claim(
    consumer text,
    max_events integer DEFAULT 100,
    lease_seconds integer DEFAULT 30,
    event_types text[] DEFAULT NULL,
    OUT lease_token uuid,
    OUT events jsonb
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_max_attempts integer := private.setting_int('outbox_max_attempts');
BEGIN
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
        RETURNING o.id, o.event_type, o.aggregate_type, o.aggregate_id, o.payload, o.attempts, o.created_at
    )
    SELECT coalesce(
               jsonb_agg(jsonb_build_object(
                   'id', l.id,
                   'event_type', l.event_type,
                   'aggregate_type', l.aggregate_type,
                   'aggregate_id', l.aggregate_id,
                   'payload', l.payload,
                   'attempts', l.attempts,
                   'created_at', l.created_at) ORDER BY l.id),
               '[]'::jsonb)
    INTO outbox_claim.events
    FROM leased AS l;
END
$$;

COMMENT ON FUNCTION api.outbox_claim(text, integer, integer, text[]) IS
$$Leases up to max_events deliverable outbox events to consumer.

Returns {lease_token, events: [{id, event_type, aggregate_type, aggregate_id, payload, attempts, created_at}]}, oldest first; events is [] when nothing is due. Claimable: pending events whose available_at has come, and leased events whose lease expired. Rows are taken FOR UPDATE SKIP LOCKED, so concurrent consumers never receive the same event within a lease. Per-aggregate order: an event is handed out only when no earlier event of its aggregate is pending or leased, so each claim carries at most one event per aggregate. event_types (null = all) restricts the claim; an event still waits for earlier events of its aggregate of other types. attempts counts claims, the current one included; a lease that expires on the last allowed attempt (setting outbox_max_attempts) makes its event dead.$$;

CREATE FUNCTION api.outbox_ack(lease_token uuid, ids bigint[])
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE private.outbox AS o
    SET status = 'delivered',
        delivered_at = clock_timestamp()
    WHERE o.id = ANY (outbox_ack.ids)
      AND o.status = 'leased'
      AND o.lease_token = outbox_ack.lease_token;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION api.outbox_ack(uuid, bigint[]) IS
$$Marks events delivered; returns how many were acknowledged.

Only events currently leased under lease_token count: an unknown id, a wrong token, an event already acknowledged or one re-claimed by another consumer after its lease expired is silently left alone (and not counted). An expired lease that nobody re-claimed can still be acknowledged: the delivery happened and no one else holds the event.$$;

CREATE FUNCTION api.outbox_nack(
    lease_token uuid,
    id bigint,
    error text,
    retry_in_seconds integer DEFAULT NULL,
    OUT status text,
    OUT attempts integer,
    OUT available_at timestamptz
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.outbox_nack(uuid, bigint, text, integer) IS
$$Reports a failed delivery; the event is retried later or becomes dead.

Requires the current lease (else 409 lease_lost). The event goes back to pending, available after retry_in_seconds if given, else after 2^attempts seconds (capped by setting outbox_max_backoff) times a random jitter between 0.5 and 1.5. Once attempts reaches setting outbox_max_attempts (default 25) the event becomes dead instead; admin.outbox_requeue revives it. error is stored in last_error. Returns {status, attempts, available_at}.$$;

-- Operators -----------------------------------------------------------------

CREATE FUNCTION admin.outbox_requeue(ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
    v_types text;
BEGIN
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
$$;

COMMENT ON FUNCTION admin.outbox_requeue(bigint[]) IS
$$Puts dead outbox events back to pending; returns how many.

ids null means every dead event. Attempts restart at zero and last_error is kept for the record. A revived event is delivered after events of its aggregate that were emitted later and already delivered: consumers dedupe and order by event id.$$;

CREATE FUNCTION admin.outbox_purge_delivered(older_than interval DEFAULT '7 days')
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION admin.outbox_purge_delivered(interval) IS
$$Deletes events delivered longer ago than older_than; returns how many.

Pending, leased and dead events are never deleted (a trigger refuses it for every role).$$;

CREATE VIEW admin.outbox_health AS
SELECT
    (SELECT count(*) FROM private.outbox WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM private.outbox WHERE status = 'leased') AS leased,
    (SELECT count(*) FROM private.outbox
      WHERE status = 'leased' AND lease_expires_at < clock_timestamp()) AS expired_leases,
    (SELECT count(*) FROM private.outbox WHERE status = 'delivered') AS delivered,
    (SELECT count(*) FROM private.outbox WHERE status = 'dead') AS dead,
    oldest.created_at AS oldest_pending_at,
    clock_timestamp() - oldest.created_at AS oldest_pending_age,
    (SELECT max(delivered_at) FROM private.outbox WHERE status = 'delivered') AS last_delivered_at
FROM (SELECT NULL) AS one
-- ids grow with time, so the lowest pending id is the oldest pending event.
LEFT JOIN LATERAL (
    SELECT o.created_at FROM private.outbox AS o
    WHERE o.status = 'pending' ORDER BY o.id LIMIT 1
) AS oldest ON true;

COMMENT ON VIEW admin.outbox_health IS
$$One row: outbox counts by status, expired leases, the oldest pending event and its age, and the last delivery.

dead > 0 or a growing oldest_pending_age needs an operator: see the README's outbox section.$$;

-- Grants --------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION
    api.outbox_claim(text, integer, integer, text[]),
    api.outbox_ack(uuid, bigint[]),
    api.outbox_nack(uuid, bigint, text, integer)
TO pgrpc_service;
GRANT EXECUTE ON FUNCTION
    admin.outbox_requeue(bigint[]),
    admin.outbox_purge_delivered(interval)
TO pgrpc_admin;
GRANT SELECT ON admin.outbox_health TO pgrpc_admin;

RESET ROLE;
