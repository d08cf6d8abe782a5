-- Idempotency keys for services: a leased, write-once record of one
-- request's outcome, keyed by (organization, key).
--
-- The protocol (SPEC 4.4): idempotency_begin claims the key and hands out a
-- lease token, or replays a stored response; idempotency_complete and
-- idempotency_fail store the outcome under that lease. Unlike the designs
-- it borrows from (Stripe, the IETF Idempotency-Key draft), a lease is a
-- token with an expiry, checked against clock_timestamp(), so a worker whose
-- lease was taken over cannot store a response afterwards, and a stored
-- response can never be rewritten.

SET LOCAL ROLE pgrpc_owner;

CREATE TABLE private.idempotency_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES private.organizations (id) ON DELETE CASCADE,
    key text NOT NULL,
    endpoint text NOT NULL,
    request_hash text NOT NULL,
    status text NOT NULL DEFAULT 'processing',
    lease_token uuid,
    lease_expires_at timestamptz,
    response_status integer,
    response_body jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT idempotency_keys_organization_key_unique UNIQUE (organization_id, key),
    CONSTRAINT idempotency_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
    CONSTRAINT idempotency_endpoint_not_blank CHECK (btrim(endpoint) <> ''),
    CONSTRAINT idempotency_request_hash_not_blank CHECK (btrim(request_hash) <> ''),
    CONSTRAINT idempotency_status_known CHECK (status IN ('processing', 'completed', 'failed')),
    CONSTRAINT idempotency_processing_holds_lease
        CHECK (status <> 'processing' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT idempotency_response_stored_when_finished
        CHECK ((status = 'processing') = (response_status IS NULL)),
    CONSTRAINT idempotency_response_status_is_http CHECK (response_status BETWEEN 100 AND 599),
    CONSTRAINT idempotency_expires_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX idempotency_keys_expires_at_idx ON private.idempotency_keys (expires_at);

COMMENT ON TABLE private.idempotency_keys IS
$$Idempotency keys of services (SPEC 4.4).

status moves only from processing to completed or failed (trigger _100_status_machine). key, endpoint, request_hash, expires_at and a stored response are write-once. Rows are deleted only by the api/admin functions (running as pgrpc_api) or by the cascade from organizations.$$;

-- BEFORE INSERT OR UPDATE: a key is born processing and may only move to
-- completed or failed; a finished row is frozen, so its response is
-- write-once even where it is NULL.
CREATE FUNCTION private.tg_idempotency_keys__status_machine()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- BEFORE DELETE: only the sanctioned functions, which are SECURITY DEFINER
-- and owned by pgrpc_api (so current_user is pgrpc_api inside them), or the
-- cascade from a deleted organization (the parent is already gone then).
CREATE FUNCTION private.tg_idempotency_keys__guard_delete()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

CREATE TRIGGER _100_status_machine BEFORE INSERT OR UPDATE ON private.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_idempotency_keys__status_machine();
CREATE TRIGGER _110_write_once BEFORE UPDATE ON private.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'organization_id', 'key', 'endpoint', 'request_hash', 'expires_at', 'created_at',
        'response_status', 'response_body');
CREATE TRIGGER _120_guard_delete BEFORE DELETE ON private.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_idempotency_keys__guard_delete();
CREATE TRIGGER _130_forbid_truncate BEFORE TRUNCATE ON private.idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_forbid('delete_only_by_function');
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();

-- Raises 409 lease_lost unless p_token is the live lease of a processing,
-- unexpired key; returns the row, locked.
CREATE FUNCTION private.idempotency_lease_row(p_organization_id uuid, p_key text, p_token uuid)
RETURNS private.idempotency_keys
LANGUAGE plpgsql
VOLATILE
AS $$
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
$$;

GRANT EXECUTE ON FUNCTION private.idempotency_lease_row(uuid, text, uuid) TO pgrpc_api;
GRANT SELECT, INSERT, DELETE ON private.idempotency_keys TO pgrpc_api;
GRANT UPDATE (status, lease_token, lease_expires_at, response_status, response_body)
    ON private.idempotency_keys TO pgrpc_api;

INSERT INTO private.settings (key, value, value_type, description) VALUES
    ('idempotency_max_ttl', '30 days', 'interval',
     'Longest ttl_seconds that idempotency_begin accepts.');

-- Functions run by pgrpc_api ----------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.idempotency_begin(
    organization_id uuid,
    key text,
    endpoint text,
    request_hash text,
    ttl_seconds integer DEFAULT 86400,
    lease_seconds integer DEFAULT 60,
    OUT state text,
    OUT lease_token uuid,
    OUT response_status integer,
    OUT response_body jsonb
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.idempotency_begin(uuid, text, text, text, integer, integer) IS
$$Claims an idempotency key, or replays its stored response.

Returns {state, lease_token, response_status, response_body}. state is started (go ahead: lease_token holds the key for lease_seconds) or replay (return response_status and response_body, stored earlier). A live lease held by another caller is 409 idempotency_key_in_use with Retry-After (seconds until that lease expires); the same key with another endpoint or request_hash is 422 idempotency_key_reused; a processing key whose lease expired is taken over with a new lease. Keys live ttl_seconds (default 86400, at most the idempotency_max_ttl setting); an expired key counts as absent. key is 1 to 255 characters (400 invalid_idempotency_key).$$;

CREATE FUNCTION api.idempotency_complete(
    organization_id uuid,
    key text,
    lease_token uuid,
    response_status integer,
    response_body jsonb
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.idempotency_complete(uuid, text, uuid, integer, jsonb) IS
$$Stores the response of a started key and marks it completed.

Later idempotency_begin calls with the same request replay response_status and response_body, which never change again. lease_token must be the live lease from idempotency_begin: a wrong, taken-over or expired lease is 409 lease_lost, and nothing is stored.$$;

CREATE FUNCTION api.idempotency_fail(
    organization_id uuid,
    key text,
    lease_token uuid,
    response_status integer,
    response_body jsonb,
    retryable boolean DEFAULT false
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.idempotency_fail(uuid, text, uuid, integer, jsonb, boolean) IS
$$Records the failure of a started key.

A final failure (retryable false, the default) stores response_status and response_body and is replayed like a completion. A retryable failure releases the key: nothing is stored, and the next idempotency_begin with that key starts afresh. lease_token must be the live lease: otherwise 409 lease_lost.$$;

CREATE FUNCTION api.find_active_idempotency_key(organization_id uuid, key text)
RETURNS private.idempotency_keys
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row private.idempotency_keys;
BEGIN
    PERFORM private.require_org_access(find_active_idempotency_key.organization_id);
    SELECT * INTO v_row
    FROM private.idempotency_keys k
    WHERE k.organization_id = find_active_idempotency_key.organization_id
      AND k.key = find_active_idempotency_key.key
      AND k.expires_at > clock_timestamp();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.find_active_idempotency_key(uuid, text) IS
$$Looks up an idempotency key.

Returns the key's row (status, lease, stored response, expiry), or null when the key is absent or expired. Read-only: callable with GET.$$;

CREATE FUNCTION admin.sweep_idempotency_keys()
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM private.idempotency_keys k WHERE k.expires_at <= clock_timestamp();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION admin.sweep_idempotency_keys() IS
$$Deletes expired idempotency keys.

Returns the number of rows deleted. Expired keys already count as absent, so sweeping only reclaims space; run it from cron.$$;

GRANT EXECUTE ON FUNCTION
    api.idempotency_begin(uuid, text, text, text, integer, integer),
    api.idempotency_complete(uuid, text, uuid, integer, jsonb),
    api.idempotency_fail(uuid, text, uuid, integer, jsonb, boolean),
    api.find_active_idempotency_key(uuid, text)
TO pgrpc_service;
GRANT EXECUTE ON FUNCTION admin.sweep_idempotency_keys() TO pgrpc_admin;
