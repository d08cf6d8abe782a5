-- Module idempotency: idempotency keys of the api functions (begin, complete, fail, sweep).
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.idempotency_keys

-- private.tg_idempotency_keys__status_machine
CREATE OR REPLACE FUNCTION private.tg_idempotency_keys__status_machine()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'processing' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'check_violation',
                MESSAGE = 'invalid_status_transition',
                DETAIL = format('An idempotency key starts as processing, not %s.', NEW.status),
                HINT = 'Insert the key as processing, then complete or fail it.';
        END IF;
        RETURN NEW;
    END IF;

    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (OLD.status = 'processing' AND NEW.status IN ('completed', 'failed')) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation',
            MESSAGE = 'invalid_status_transition',
            DETAIL = format('Idempotency key %s cannot move from %s to %s.', OLD.key, OLD.status, NEW.status),
            HINT = 'Status only moves from processing to completed or failed.';
    END IF;

    IF OLD.status <> 'processing'
       AND (to_jsonb(NEW) - 'updated_at') IS DISTINCT FROM (to_jsonb(OLD) - 'updated_at') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'write_once',
            DETAIL = format('Idempotency key %s is %s; its stored response never changes.', OLD.key, OLD.status),
            HINT = 'A finished key is only replayed, or swept once it expires.';
    END IF;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_idempotency_keys__status_machine() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_idempotency_keys__status_machine() FROM PUBLIC;

-- private.tg_idempotency_keys__guard_delete
CREATE OR REPLACE FUNCTION private.tg_idempotency_keys__guard_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_user = 'pgrpc_api'
       OR NOT EXISTS (SELECT 1 FROM private.organizations o WHERE o.id = OLD.organization_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'delete_only_by_function',
        DETAIL = format('Idempotency key %s of organization %s may only be deleted by idempotency_fail, idempotency_begin or admin.sweep_idempotency_keys.',
                        OLD.key, OLD.organization_id),
        HINT = 'Call admin.sweep_idempotency_keys() to remove expired keys.';
END
$function$;
ALTER FUNCTION private.tg_idempotency_keys__guard_delete() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_idempotency_keys__guard_delete() FROM PUBLIC;

-- private.idempotency_lease_row
CREATE OR REPLACE FUNCTION private.idempotency_lease_row(p_organization_id uuid, p_key text, p_token uuid)
 RETURNS private.idempotency_keys
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_row private.idempotency_keys;
BEGIN
    SELECT * INTO v_row
    FROM private.idempotency_keys k
    WHERE k.organization_id = p_organization_id AND k.key = p_key
    FOR UPDATE;

    IF NOT FOUND
       OR v_row.expires_at <= clock_timestamp()
       OR v_row.status <> 'processing'
       OR p_token IS NULL
       OR v_row.lease_token IS DISTINCT FROM p_token
       OR v_row.lease_expires_at <= clock_timestamp() THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'lease_lost',
            DETAIL = format('Lease %s does not hold idempotency key %s of organization %s: %s.',
                            p_token, p_key, p_organization_id,
                            CASE
                                WHEN NOT FOUND OR v_row.expires_at <= clock_timestamp() THEN 'the key is absent or expired'
                                WHEN v_row.status <> 'processing' THEN 'the key is already ' || v_row.status
                                WHEN v_row.lease_token IS DISTINCT FROM p_token THEN 'another lease holds it'
                                ELSE 'the lease expired at ' || v_row.lease_expires_at
                            END),
            HINT = 'Do not store a response; call idempotency_begin again to replay or retake the key.';
    END IF;
    RETURN v_row;
END
$function$;
ALTER FUNCTION private.idempotency_lease_row(uuid,text,uuid) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.idempotency_lease_row(uuid,text,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.idempotency_lease_row(uuid,text,uuid) TO pgrpc_api;

-- api.idempotency_begin
CREATE OR REPLACE FUNCTION api.idempotency_begin(organization_id uuid, key text, endpoint text, request_hash text, ttl_seconds integer DEFAULT 86400, lease_seconds integer DEFAULT 60, OUT state text, OUT lease_token uuid, OUT response_status integer, OUT response_body jsonb)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_row private.idempotency_keys;
    v_token uuid;
    v_now timestamptz;
    v_retry_after integer;
BEGIN
    IF idempotency_begin.key IS NULL OR char_length(idempotency_begin.key) NOT BETWEEN 1 AND 255 THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_idempotency_key',
            DETAIL = format('An idempotency key is 1 to 255 characters, got %s.',
                            coalesce(char_length(idempotency_begin.key)::text || ' characters', 'null')),
            HINT = 'Use a random UUID as the key.';
    END IF;
    IF idempotency_begin.organization_id IS NULL
       OR coalesce(btrim(idempotency_begin.endpoint), '') = ''
       OR coalesce(btrim(idempotency_begin.request_hash), '') = '' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = 'organization_id, endpoint and request_hash are required and may not be blank.',
            HINT = 'Pass the endpoint being called and a hash of the request body.';
    END IF;
    IF idempotency_begin.ttl_seconds IS NULL OR idempotency_begin.ttl_seconds < 1
       OR make_interval(secs => idempotency_begin.ttl_seconds) > private.setting_interval('idempotency_max_ttl') THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('ttl_seconds must be between 1 and %s seconds, got %s.',
                            extract(epoch FROM private.setting_interval('idempotency_max_ttl'))::bigint,
                            coalesce(idempotency_begin.ttl_seconds::text, 'null')),
            HINT = 'The default, 86400, keeps the key for a day.';
    END IF;
    IF idempotency_begin.lease_seconds IS NULL OR idempotency_begin.lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('lease_seconds must be between 1 and 86400, got %s.',
                            coalesce(idempotency_begin.lease_seconds::text, 'null')),
            HINT = 'Pick a lease a little longer than the operation takes.';
    END IF;
    PERFORM private.require_org_access(idempotency_begin.organization_id);

    -- A few rounds at most: a row may vanish between our INSERT and SELECT
    -- (a retryable failure released it, or it expired and was replaced).
    FOR v_attempt IN 1..5 LOOP
        v_now := clock_timestamp();
        -- A concurrent duplicate blocks here until the first inserter ends.
        INSERT INTO private.idempotency_keys AS k
            (organization_id, key, endpoint, request_hash, lease_token, lease_expires_at, expires_at)
        VALUES (idempotency_begin.organization_id, idempotency_begin.key, idempotency_begin.endpoint,
                idempotency_begin.request_hash, gen_random_uuid(),
                v_now + make_interval(secs => idempotency_begin.lease_seconds),
                v_now + make_interval(secs => idempotency_begin.ttl_seconds))
        ON CONFLICT ON CONSTRAINT idempotency_keys_organization_key_unique DO NOTHING
        RETURNING k.lease_token INTO v_token;

        IF v_token IS NOT NULL THEN
            state := 'started';
            lease_token := v_token;
            RETURN;
        END IF;

        SELECT * INTO v_row
        FROM private.idempotency_keys k
        WHERE k.organization_id = idempotency_begin.organization_id AND k.key = idempotency_begin.key
        FOR UPDATE;
        CONTINUE WHEN NOT FOUND;

        IF v_row.expires_at <= clock_timestamp() THEN
            -- An expired key counts as absent: replace it.
            DELETE FROM private.idempotency_keys k WHERE k.id = v_row.id;
            CONTINUE;
        END IF;

        IF v_row.endpoint <> idempotency_begin.endpoint OR v_row.request_hash <> idempotency_begin.request_hash THEN
            RAISE SQLSTATE 'PT422' USING
                MESSAGE = 'idempotency_key_reused',
                DETAIL = format('Idempotency key %s was first used for another request (endpoint %s).',
                                v_row.key, v_row.endpoint),
                HINT = 'Use a new key for a different request.';
        END IF;

        IF v_row.status IN ('completed', 'failed') THEN
            state := 'replay';
            response_status := v_row.response_status;
            response_body := v_row.response_body;
            RETURN;
        END IF;

        IF v_row.lease_expires_at > clock_timestamp() THEN
            v_retry_after := greatest(1, ceil(extract(epoch FROM v_row.lease_expires_at - clock_timestamp())))::integer;
            RAISE SQLSTATE 'PGRST' USING
                MESSAGE = json_build_object(
                    'code', 'idempotency_key_in_use',
                    'message', 'idempotency_key_in_use',
                    'details', format('Idempotency key %s is being processed under a lease that expires at %s.',
                                      v_row.key, v_row.lease_expires_at),
                    'hint', format('Retry after %s seconds.', v_retry_after))::text,
                DETAIL = json_build_object(
                    'status', 409,
                    'headers', json_build_object('Retry-After', v_retry_after::text))::text;
        END IF;

        -- The previous holder's lease expired (it crashed or stalled): take over.
        UPDATE private.idempotency_keys AS k
        SET lease_token = gen_random_uuid(),
            lease_expires_at = clock_timestamp() + make_interval(secs => idempotency_begin.lease_seconds)
        WHERE k.id = v_row.id
        RETURNING k.lease_token INTO v_token;
        state := 'started';
        lease_token := v_token;
        RETURN;
    END LOOP;

    RAISE SQLSTATE 'PT409' USING
        MESSAGE = 'idempotency_key_in_use',
        DETAIL = format('Idempotency key %s kept changing under concurrent requests.', idempotency_begin.key),
        HINT = 'Retry the request.';
END
$function$;
ALTER FUNCTION api.idempotency_begin(uuid,text,text,text,integer,integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.idempotency_begin(uuid,text,text,text,integer,integer) IS
$$Claims an idempotency key, or replays its stored response.

Returns {state, lease_token, response_status, response_body}. state is started (go ahead: lease_token holds the key for lease_seconds) or replay (return response_status and response_body, stored earlier). A live lease held by another caller is 409 idempotency_key_in_use with Retry-After (seconds until that lease expires); the same key with another endpoint or request_hash is 422 idempotency_key_reused; a processing key whose lease expired is taken over with a new lease. Keys live ttl_seconds (default 86400, at most the idempotency_max_ttl setting); an expired key counts as absent. key is 1 to 255 characters (400 invalid_idempotency_key).$$;
REVOKE ALL ON FUNCTION api.idempotency_begin(uuid,text,text,text,integer,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.idempotency_begin(uuid,text,text,text,integer,integer) TO pgrpc_service;

-- api.idempotency_complete
CREATE OR REPLACE FUNCTION api.idempotency_complete(organization_id uuid, key text, lease_token uuid, response_status integer, response_body jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_row private.idempotency_keys;
BEGIN
    IF idempotency_complete.response_status IS NULL OR idempotency_complete.response_status NOT BETWEEN 100 AND 599 THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('response_status must be an HTTP status (100 to 599), got %s.',
                            coalesce(idempotency_complete.response_status::text, 'null')),
            HINT = 'Pass the status the original request answered.';
    END IF;
    PERFORM private.require_org_access(idempotency_complete.organization_id);
    v_row := private.idempotency_lease_row(idempotency_complete.organization_id, idempotency_complete.key,
                                           idempotency_complete.lease_token);
    UPDATE private.idempotency_keys AS k
    SET status = 'completed',
        response_status = idempotency_complete.response_status,
        response_body = idempotency_complete.response_body
    WHERE k.id = v_row.id;
END
$function$;
ALTER FUNCTION api.idempotency_complete(uuid,text,uuid,integer,jsonb) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.idempotency_complete(uuid,text,uuid,integer,jsonb) IS
$$Stores the response of a started key and marks it completed.

Later idempotency_begin calls with the same request replay response_status and response_body, which never change again. lease_token must be the live lease from idempotency_begin: a wrong, taken-over or expired lease is 409 lease_lost, and nothing is stored.$$;
REVOKE ALL ON FUNCTION api.idempotency_complete(uuid,text,uuid,integer,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.idempotency_complete(uuid,text,uuid,integer,jsonb) TO pgrpc_service;

-- api.idempotency_fail
CREATE OR REPLACE FUNCTION api.idempotency_fail(organization_id uuid, key text, lease_token uuid, response_status integer, response_body jsonb, retryable boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_row private.idempotency_keys;
BEGIN
    IF NOT coalesce(idempotency_fail.retryable, false)
       AND (idempotency_fail.response_status IS NULL OR idempotency_fail.response_status NOT BETWEEN 100 AND 599) THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('A final failure needs an HTTP response_status (100 to 599), got %s.',
                            coalesce(idempotency_fail.response_status::text, 'null')),
            HINT = 'Pass the status the original request answered, or retryable => true.';
    END IF;
    PERFORM private.require_org_access(idempotency_fail.organization_id);
    v_row := private.idempotency_lease_row(idempotency_fail.organization_id, idempotency_fail.key,
                                           idempotency_fail.lease_token);
    IF coalesce(idempotency_fail.retryable, false) THEN
        -- Release the key: the next request with it starts afresh.
        DELETE FROM private.idempotency_keys k WHERE k.id = v_row.id;
    ELSE
        UPDATE private.idempotency_keys AS k
        SET status = 'failed',
            response_status = idempotency_fail.response_status,
            response_body = idempotency_fail.response_body
        WHERE k.id = v_row.id;
    END IF;
END
$function$;
ALTER FUNCTION api.idempotency_fail(uuid,text,uuid,integer,jsonb,boolean) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.idempotency_fail(uuid,text,uuid,integer,jsonb,boolean) IS
$$Records the failure of a started key.

A final failure (retryable false, the default) stores response_status and response_body and is replayed like a completion. A retryable failure releases the key: nothing is stored, and the next idempotency_begin with that key starts afresh. lease_token must be the live lease: otherwise 409 lease_lost.$$;
REVOKE ALL ON FUNCTION api.idempotency_fail(uuid,text,uuid,integer,jsonb,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.idempotency_fail(uuid,text,uuid,integer,jsonb,boolean) TO pgrpc_service;

-- admin.sweep_idempotency_keys
CREATE OR REPLACE FUNCTION admin.sweep_idempotency_keys()
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_service integer;
    v_http integer;
BEGIN
    DELETE FROM private.idempotency_keys k WHERE k.expires_at <= clock_timestamp();
    GET DIAGNOSTICS v_service = ROW_COUNT;
    DELETE FROM private.http_idempotency_keys k WHERE k.expires_at <= clock_timestamp();
    GET DIAGNOSTICS v_http = ROW_COUNT;
    RETURN v_service + v_http;
END
$function$;
ALTER FUNCTION admin.sweep_idempotency_keys() OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.sweep_idempotency_keys() IS
$$Deletes expired idempotency keys.

Covers both the service keys of idempotency_begin (private.idempotency_keys) and the Idempotency-Key header keys (private.http_idempotency_keys). Returns the number of rows deleted from both. Expired keys already count as absent, so sweeping only reclaims space; run it from cron.$$;
REVOKE ALL ON FUNCTION admin.sweep_idempotency_keys() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.sweep_idempotency_keys() TO pgrpc_admin;

-- api.find_active_idempotency_key
CREATE OR REPLACE FUNCTION api.find_active_idempotency_key(organization_id uuid, key text)
 RETURNS api.idempotency_key
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_row api.idempotency_key;
BEGIN
    PERFORM private.require_org_access(find_active_idempotency_key.organization_id);
    SELECT k.id, k.organization_id, k.key, k.endpoint, k.request_hash, k.status,
           k.lease_expires_at, k.response_status, k.response_body, k.created_at, k.expires_at
    INTO v_row
    FROM private.idempotency_keys k
    WHERE k.organization_id = find_active_idempotency_key.organization_id
      AND k.key = find_active_idempotency_key.key
      AND k.expires_at > clock_timestamp();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_row;
END
$function$;
ALTER FUNCTION api.find_active_idempotency_key(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.find_active_idempotency_key(uuid,text) IS
$$Looks up an idempotency key.

Returns {id, organization_id, key, endpoint, request_hash, status, lease_expires_at, response_status, response_body, created_at, expires_at}, or null when the key is absent or expired. The lease_token is never returned: only idempotency_begin hands it out, to the caller that then holds the lease. Read-only: callable with GET.$$;
REVOKE ALL ON FUNCTION api.find_active_idempotency_key(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.find_active_idempotency_key(uuid,text) TO pgrpc_service;
