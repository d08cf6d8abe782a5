-- The W3C trace context of the transaction that wrote an outbox event, kept
-- with the event (SPEC 2.3: one trace from the HTTP call to the webhook).
--
-- private.outbox_emit stores pgrpc_http.traceparent() and
-- pgrpc_http.tracestate() (sql/modules/trace.sql): the context the proxy
-- put in request.headers, validated again in SQL, or NULL when there is
-- none (a psql session, a job) or it is invalid; a bad header never fails
-- the write. api.outbox_claim hands them out, and pgrpc relay continues
-- the trace on the webhook call. Debezium can carry them as Kafka headers.
--
-- Both are event columns: written at insert, never changed, like the
-- aggregate and the payload (the _200_write_once trigger now names them,
-- and pgrpc_api has no UPDATE on them).

SET LOCAL ROLE pgrpc_migrator;

ALTER TABLE private.outbox
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate text,
    ADD CONSTRAINT outbox_traceparent_is_w3c CHECK (
        traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
        AND substr(traceparent, 4, 32) <> repeat('0', 32)
        AND substr(traceparent, 37, 16) <> repeat('0', 16)),
    ADD CONSTRAINT outbox_tracestate_bounded CHECK (
        tracestate IS NULL OR (octet_length(tracestate) <= 512 AND traceparent IS NOT NULL));

COMMENT ON COLUMN private.outbox.traceparent IS
$$The W3C traceparent of the transaction that emitted the event (its trace id, and its span as parent), or NULL when it had none. Write-once.$$;
COMMENT ON COLUMN private.outbox.tracestate IS
$$The W3C tracestate that came with traceparent (at most 32 members, 512 bytes), or NULL. Write-once.$$;

COMMENT ON TABLE private.outbox IS
$$Transactional outbox: one row per event, written in the transaction of the state change.

Event columns (id, aggregate_type, aggregate_id, event_type, payload, created_at, and the emitting transaction's W3C traceparent and tracestate) are write-once; the delivery columns (status, attempts, available_at, lease_token, lease_expires_at, leased_by, last_error, delivered_at) are kept by api.outbox_claim/ack/nack and admin.outbox_requeue, and updated_at by a trigger. Debezium's outbox event router can read it directly (see docs/outbox.md).$$;

DROP TRIGGER _200_write_once ON private.outbox;
CREATE TRIGGER _200_write_once BEFORE UPDATE ON private.outbox
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'aggregate_type', 'aggregate_id', 'event_type', 'payload', 'created_at',
        'traceparent', 'tracestate');

GRANT SELECT (traceparent, tracestate) ON private.outbox TO pgrpc_admin, pgrpc_owner;

-- outbox_emit runs as pgrpc_api (the api functions) or pgrpc_migrator (the
-- emitting triggers); both read the context through pgrpc_http.
GRANT USAGE ON SCHEMA pgrpc_http TO pgrpc_api;

COMMENT ON SCHEMA pgrpc_http IS
$$The proxy's own helpers: the Idempotency-Key header (SPEC 2.3: http_idempotency_claim and http_idempotency_store) and the request's trace context (traceparent, tracestate, trace_id). Never exposed over HTTP; the request roles may execute these five only.$$;

RESET ROLE;
