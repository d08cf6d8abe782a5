-- Module trace: the request's W3C trace context as SQL sees it (traceparent, tracestate, trace id).
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: (none)

-- pgrpc_http.traceparent
CREATE OR REPLACE FUNCTION pgrpc_http.traceparent()
 RETURNS text
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_headers text := pg_catalog.current_setting('request.headers', true);
    v_value text;
BEGIN
    IF v_headers IS NULL OR v_headers = '' THEN
        RETURN NULL;
    END IF;
    -- The proxy always sets valid JSON; anybody else may set anything, and
    -- a bad setting must never fail the write that asked for the context.
    BEGIN
        v_value := v_headers::jsonb ->> 'traceparent';
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
    IF v_value ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
       AND substr(v_value, 4, 32) <> repeat('0', 32)
       AND substr(v_value, 37, 16) <> repeat('0', 16) THEN
        RETURN v_value;
    END IF;
    RETURN NULL;
END
$function$;
ALTER FUNCTION pgrpc_http.traceparent() OWNER TO pgrpc_api;
COMMENT ON FUNCTION pgrpc_http.traceparent() IS
$$The request's W3C traceparent (version 00), or NULL.

Read from request.headers, which the proxy sets with the effective context: the caller's trace id (or a new one when it sent none or an invalid one) and the span of this transaction as parent. Anything but a valid version-00 value (32 and 16 lowercase hex digits, neither all zeros) gives NULL, never an error. private.outbox_emit stores it with every event.$$;
REVOKE ALL ON FUNCTION pgrpc_http.traceparent() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrpc_http.traceparent() TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_api, pgrpc_migrator;

-- pgrpc_http.tracestate
CREATE OR REPLACE FUNCTION pgrpc_http.tracestate()
 RETURNS text
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_headers text := pg_catalog.current_setting('request.headers', true);
    v_value text;
    v_members text[];
BEGIN
    IF pgrpc_http.traceparent() IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        v_value := v_headers::jsonb ->> 'tracestate';
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
    IF v_value IS NULL OR octet_length(v_value) > 512 THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(m.member ORDER BY m.n)
    INTO v_members
    FROM (SELECT btrim(p.part, E' \t') AS member, p.n
          FROM unnest(string_to_array(v_value, ',')) WITH ORDINALITY AS p (part, n)) AS m
    WHERE m.member <> '';
    IF v_members IS NULL
       OR cardinality(v_members) > 32
       OR EXISTS (SELECT 1 FROM unnest(v_members) AS m (member)
                  WHERE m.member !~ '^([a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$')
       OR (SELECT count(DISTINCT split_part(m.member, '=', 1)) FROM unnest(v_members) AS m (member))
          <> cardinality(v_members) THEN
        RETURN NULL;
    END IF;
    RETURN array_to_string(v_members, ',');
END
$function$;
ALTER FUNCTION pgrpc_http.tracestate() OWNER TO pgrpc_api;
COMMENT ON FUNCTION pgrpc_http.tracestate() IS
$$The request's W3C tracestate, or NULL.

Only with a valid traceparent. At most 32 list members and 512 bytes, each member a valid key=value, no key twice; anything else gives NULL (dropped whole, never cut), never an error. Optional whitespace is removed.$$;
REVOKE ALL ON FUNCTION pgrpc_http.tracestate() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrpc_http.tracestate() TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_api, pgrpc_migrator;

-- pgrpc_http.trace_id
CREATE OR REPLACE FUNCTION pgrpc_http.trace_id()
 RETURNS text
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT substr(pgrpc_http.traceparent(), 4, 32)
$function$;
ALTER FUNCTION pgrpc_http.trace_id() OWNER TO pgrpc_api;
COMMENT ON FUNCTION pgrpc_http.trace_id() IS
$$The request's trace id (32 lowercase hex digits), or NULL.

The id that links the client's call, this transaction, its outbox events and the relay's webhook calls; log it, or store it with a row.$$;
REVOKE ALL ON FUNCTION pgrpc_http.trace_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrpc_http.trace_id() TO pgrpc_anon, pgrpc_user, pgrpc_service, pgrpc_api, pgrpc_migrator;
