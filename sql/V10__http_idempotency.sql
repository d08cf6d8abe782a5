-- The Idempotency-Key header of POST /rpc/*: the SQL half of the protocol.
--
-- The proxy, inside the request's transaction and after SET ROLE to the
-- request role, calls private.http_idempotency_claim(key, request_hash)
-- before the function and private.http_idempotency_store(...) after it,
-- then commits. The claim is an INSERT ... ON CONFLICT DO NOTHING of a row
-- that stays uncommitted until the call commits, so a concurrent duplicate
-- blocks on that insert: if the first commits, the duplicate replays the
-- stored response; if it rolls back (the function failed), the duplicate
-- claims the key itself. The function's effects and the stored response
-- commit together or not at all.
--
-- The caller's scope is computed here, from the request role and the JWT
-- claims, never taken from the proxy.
--
-- Requires READ COMMITTED (the default): after the blocking insert, the
-- next statement must take a fresh snapshot to see the winner's row.

SET LOCAL ROLE pgrpc_owner;

CREATE TABLE private.http_idempotency_keys (
    scope text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    response_status integer,
    response_headers jsonb,
    response_body text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key),
    CONSTRAINT http_idempotency_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
    CONSTRAINT http_idempotency_request_hash_not_blank CHECK (btrim(request_hash) <> ''),
    CONSTRAINT http_idempotency_response_status_is_http CHECK (response_status BETWEEN 100 AND 599),
    CONSTRAINT http_idempotency_headers_are_json_headers
        CHECK (response_headers IS NULL OR jsonb_typeof(response_headers) IN ('object', 'array')),
    CONSTRAINT http_idempotency_response_stored_whole
        CHECK (response_status IS NOT NULL OR (response_headers IS NULL AND response_body IS NULL)),
    CONSTRAINT http_idempotency_expires_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX http_idempotency_keys_expires_at_idx ON private.http_idempotency_keys (expires_at);

COMMENT ON TABLE private.http_idempotency_keys IS
$$Keys of the Idempotency-Key HTTP header and the responses stored under them (SPEC 2.3).

scope is the caller: request role plus sub (or org_id) claim. Every column is write-once, and a row whose response is stored never changes. Rows are deleted only by the functions running as pgrpc_api (an expired key is replaced; admin.sweep_idempotency_keys removes expired ones).$$;

-- BEFORE UPDATE: once the response is stored, the row is frozen, so even a
-- NULL body or headers cannot be filled in afterwards.
CREATE FUNCTION private.tg_http_idempotency_keys__freeze_stored()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF OLD.response_status IS NOT NULL
       AND (to_jsonb(NEW) - 'updated_at') IS DISTINCT FROM (to_jsonb(OLD) - 'updated_at') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'write_once',
            DETAIL = format('The response stored under idempotency key %s never changes.', OLD.key),
            HINT = 'A stored response is only replayed, or swept once it expires.';
    END IF;
    RETURN NEW;
END
$$;

-- BEFORE DELETE: only the functions owned by pgrpc_api (current_user is
-- pgrpc_api only inside them).
CREATE FUNCTION private.tg_http_idempotency_keys__guard_delete()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_user = 'pgrpc_api' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'delete_only_by_function',
        DETAIL = format('Idempotency key %s of %s may only be deleted by the claim (once expired) or by admin.sweep_idempotency_keys.',
                        OLD.key, OLD.scope),
        HINT = 'Call admin.sweep_idempotency_keys() to remove expired keys.';
END
$$;

CREATE TRIGGER _100_freeze_stored BEFORE UPDATE ON private.http_idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_http_idempotency_keys__freeze_stored();
CREATE TRIGGER _110_write_once BEFORE UPDATE ON private.http_idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'scope', 'key', 'request_hash', 'created_at', 'expires_at',
        'response_status', 'response_headers', 'response_body');
CREATE TRIGGER _120_guard_delete BEFORE DELETE ON private.http_idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_http_idempotency_keys__guard_delete();
CREATE TRIGGER _130_forbid_truncate BEFORE TRUNCATE ON private.http_idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_forbid('delete_only_by_function');
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.http_idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();

-- The caller's scope: 'role:sub:<sub>', else 'role:org:<org_id>', else
-- 'role' alone (anonymous callers without claims share one scope, so they
-- should use random keys).
CREATE FUNCTION private.http_idempotency_scope()
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT private.request_role()
        || coalesce(':sub:' || nullif(private.jwt_sub(), ''),
                    ':org:' || private.jwt_org_id()::text,
                    '')
$$;

GRANT EXECUTE ON FUNCTION private.http_idempotency_scope() TO pgrpc_api;
GRANT SELECT, INSERT, DELETE ON private.http_idempotency_keys TO pgrpc_api;
GRANT UPDATE (response_status, response_headers, response_body) ON private.http_idempotency_keys TO pgrpc_api;

INSERT INTO private.settings (key, value, value_type, description) VALUES
    ('idempotency_ttl', '24 hours', 'interval',
     'How long a key sent in the Idempotency-Key header is remembered, with its response.');

-- Functions run by pgrpc_api ----------------------------------------------
--
-- pgrpc_api may not create objects in private, so the two functions the
-- proxy calls are created by pgrpc_owner and handed to pgrpc_api below
-- (as SECURITY DEFINER they must run as pgrpc_api, the role that holds the
-- table privileges and that the DELETE guard recognises).

CREATE FUNCTION private.http_idempotency_claim(p_key text, p_request_hash text)
RETURNS TABLE (state text, response_status integer, response_headers jsonb, response_body text)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_scope text := private.http_idempotency_scope();
    v_row private.http_idempotency_keys;
BEGIN
    IF p_key IS NULL OR char_length(p_key) NOT BETWEEN 1 AND 255 THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_idempotency_key',
            DETAIL = format('The Idempotency-Key header must be 1 to 255 characters, got %s.',
                            coalesce(char_length(p_key)::text || ' characters', 'none')),
            HINT = 'Send a random UUID as the Idempotency-Key.';
    END IF;
    IF coalesce(btrim(p_request_hash), '') = '' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = 'The request hash is required.',
            HINT = 'The proxy hashes method, path, profile and canonical body.';
    END IF;

    FOR v_attempt IN 1..5 LOOP
        -- Blocks while another transaction holds an uncommitted claim on the key.
        INSERT INTO private.http_idempotency_keys AS k (scope, key, request_hash, expires_at)
        VALUES (v_scope, p_key, p_request_hash,
                clock_timestamp() + private.setting_interval('idempotency_ttl'))
        ON CONFLICT ON CONSTRAINT http_idempotency_keys_pkey DO NOTHING;
        IF FOUND THEN
            RETURN QUERY SELECT 'claimed'::text, NULL::integer, NULL::jsonb, NULL::text;
            RETURN;
        END IF;

        -- A new statement, so a new snapshot: it sees the row the blocking
        -- transaction committed.
        SELECT * INTO v_row
        FROM private.http_idempotency_keys k
        WHERE k.scope = v_scope AND k.key = p_key;
        CONTINUE WHEN NOT FOUND;  -- removed meanwhile: try to claim again

        IF v_row.expires_at <= clock_timestamp() OR v_row.response_status IS NULL THEN
            -- Expired, or a claim committed without a response (abandoned):
            -- counts as absent and is replaced.
            DELETE FROM private.http_idempotency_keys k
            WHERE k.scope = v_scope AND k.key = p_key
              AND (k.expires_at <= clock_timestamp() OR k.response_status IS NULL);
            CONTINUE;
        END IF;

        IF v_row.request_hash <> p_request_hash THEN
            RAISE SQLSTATE 'PT422' USING
                MESSAGE = 'idempotency_key_reused',
                DETAIL = format('Idempotency key %s was first used, at %s, for a different request.',
                                p_key, v_row.created_at),
                HINT = 'Use a new Idempotency-Key for a different request.';
        END IF;

        RETURN QUERY SELECT 'replay'::text, v_row.response_status, v_row.response_headers, v_row.response_body;
        RETURN;
    END LOOP;

    RAISE SQLSTATE 'PT409' USING
        MESSAGE = 'idempotency_key_in_use',
        DETAIL = format('Idempotency key %s kept changing under concurrent requests.', p_key),
        HINT = 'Retry the request.';
END
$$;

COMMENT ON FUNCTION private.http_idempotency_claim(text, text) IS
$$Claims an Idempotency-Key for the current transaction, or returns the response stored under it.

Called by the proxy inside the request's transaction, before the function. state is claimed (this transaction holds the key until it commits or rolls back; the other columns are null) or replay (a response was stored for the same request: return it with Idempotent-Replayed: true). The same key with another request hash raises 422 idempotency_key_reused (PT422); a key that is empty or over 255 characters raises 400 invalid_idempotency_key. Keys are scoped to the caller (request role plus sub, or org_id) and live for the idempotency_ttl setting; an expired key counts as absent. A concurrent duplicate blocks until the holder ends, then replays or claims.$$;

CREATE FUNCTION private.http_idempotency_store(
    p_key text,
    p_response_status integer,
    p_response_headers jsonb,
    p_response_body text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_response_status IS NULL OR p_response_status NOT BETWEEN 100 AND 599 THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('The response status must be 100 to 599, got %s.', coalesce(p_response_status::text, 'null')),
            HINT = 'Store the status the function''s call answered.';
    END IF;
    IF p_response_headers IS NOT NULL AND jsonb_typeof(p_response_headers) NOT IN ('object', 'array') THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_argument',
            DETAIL = format('The response headers must be a JSON object or array, got %s.', jsonb_typeof(p_response_headers)),
            HINT = 'Store headers as response.headers holds them: [{"name": "value"}, ...].';
    END IF;

    UPDATE private.http_idempotency_keys AS k
    SET response_status = p_response_status,
        response_headers = p_response_headers,
        response_body = p_response_body
    WHERE k.scope = private.http_idempotency_scope()
      AND k.key = p_key
      AND k.response_status IS NULL;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'idempotency_key_not_claimed',
            DETAIL = format('No claim without a stored response exists for idempotency key %s in this scope.', p_key),
            HINT = 'Call private.http_idempotency_claim in the same transaction first; a response is stored once.';
    END IF;
END
$$;

COMMENT ON FUNCTION private.http_idempotency_store(text, integer, jsonb, text) IS
$$Stores the response under the Idempotency-Key this transaction claimed.

Called by the proxy after the function succeeded and before COMMIT. p_response_headers is a JSON object or, as the response.headers setting holds them, an array of one-key objects. Write-once: a second store, or a store without a claim, raises 409 idempotency_key_not_claimed.$$;

RESET ROLE;
ALTER FUNCTION private.http_idempotency_claim(text, text) OWNER TO pgrpc_api;
ALTER FUNCTION private.http_idempotency_store(text, integer, jsonb, text) OWNER TO pgrpc_api;
-- The request roles call these two by name, so they need USAGE on private;
-- they hold no table privilege there, and every other private function has
-- EXECUTE revoked from PUBLIC.
GRANT USAGE ON SCHEMA private TO pgrpc_anon, pgrpc_user, pgrpc_service;
SET LOCAL ROLE pgrpc_api;

-- Replaces the V6 sweep: one call reclaims both kinds of keys.
CREATE OR REPLACE FUNCTION admin.sweep_idempotency_keys()
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION admin.sweep_idempotency_keys() IS
$$Deletes expired idempotency keys.

Covers both the service keys of idempotency_begin (private.idempotency_keys) and the Idempotency-Key header keys (private.http_idempotency_keys). Returns the number of rows deleted from both. Expired keys already count as absent, so sweeping only reclaims space; run it from cron.$$;

-- Grants -------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION
    private.http_idempotency_claim(text, text),
    private.http_idempotency_store(text, integer, jsonb, text)
TO pgrpc_anon, pgrpc_user, pgrpc_service;
