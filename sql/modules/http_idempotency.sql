-- Module http_idempotency: the proxy's Idempotency-Key header: claim, store, scope.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.http_idempotency_keys

-- private.tg_http_idempotency_keys__freeze_stored
CREATE OR REPLACE FUNCTION private.tg_http_idempotency_keys__freeze_stored()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_http_idempotency_keys__freeze_stored() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_http_idempotency_keys__freeze_stored() FROM PUBLIC;

-- private.tg_http_idempotency_keys__guard_delete
CREATE OR REPLACE FUNCTION private.tg_http_idempotency_keys__guard_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_http_idempotency_keys__guard_delete() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_http_idempotency_keys__guard_delete() FROM PUBLIC;

-- private.http_idempotency_scope
CREATE OR REPLACE FUNCTION private.http_idempotency_scope()
 RETURNS text
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT CASE WHEN coalesce(private.jwt_sub(), '') <> ''
                THEN private.request_role() || ':claims:' || private.http_idempotency_claims_digest()
           END
$function$;
ALTER FUNCTION private.http_idempotency_scope() OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.http_idempotency_scope() IS
$$The Idempotency-Key scope of a caller identified by a sub claim, or NULL.

'<request role>:claims:<digest>', the digest covering every claim but exp, iat, nbf and jti (private.http_idempotency_claims_digest). NULL when the token has no sub: private.http_idempotency_claim then scopes an anonymous request by the request itself, and refuses any other caller with 400 idempotency_key_requires_sub.$$;
REVOKE ALL ON FUNCTION private.http_idempotency_scope() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.http_idempotency_scope() TO pgrpc_api;

-- pgrpc_http.http_idempotency_claim
CREATE OR REPLACE FUNCTION pgrpc_http.http_idempotency_claim(p_key text, p_request_hash text)
 RETURNS TABLE(state text, response_status integer, response_headers jsonb, response_body text)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET lock_timeout TO '10s'
AS $function$
#variable_conflict use_column
DECLARE
    v_scope text := private.http_idempotency_scope();
    v_row private.http_idempotency_keys;
    -- How long a duplicate waits for a request in flight with its key
    -- before 409: pgrpc.idempotency_wait (ALTER ROLE or ALTER DATABASE …
    -- SET), else the 10 s of the SET clause, which also restores the
    -- caller's lock_timeout when this function returns.
    v_wait text := nullif(pg_catalog.current_setting('pgrpc.idempotency_wait', true), '');
BEGIN
    IF v_wait IS NOT NULL THEN
        PERFORM pg_catalog.set_config('lock_timeout', v_wait, true);
    END IF;
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

    IF v_scope IS NULL THEN
        IF NOT private.caller_is_anonymous() THEN
            RAISE SQLSTATE 'PT400' USING
                MESSAGE = 'idempotency_key_requires_sub',
                DETAIL = format('An Idempotency-Key needs a sub claim to tell callers apart, and this request, as %s, has none.',
                                private.request_role()),
                HINT = 'Issue the token with a sub naming the caller (the service''s name, say), or send the request without Idempotency-Key.';
        END IF;
        -- Anonymous: only the same request reaches the same key.
        v_scope := private.request_role() || ':request:'
            || pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
                   private.http_idempotency_claims_digest() || ':' || p_request_hash, 'UTF8')), 'hex');
    END IF;
    -- Where http_idempotency_store finds an anonymous claim, whose scope it
    -- cannot recompute without the request hash. A locator only: the store
    -- also checks that this transaction inserted the row.
    PERFORM pg_catalog.set_config('pgrpc.idempotency_scope', v_scope, true);

    -- A request in flight with this key holds its uncommitted row until
    -- its transaction ends: a duplicate's INSERT waits on that row's
    -- transaction, lock_timeout at most, then gets 409, as
    -- draft-ietf-httpapi-idempotency-key-header answers a request retried
    -- while the first is still being processed. The wait is on the row of
    -- this scope and key only, which no other caller can write or lock
    -- (no advisory lock: any login could take one and hold it).
    BEGIN
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
    EXCEPTION WHEN lock_not_available THEN
        RAISE SQLSTATE 'PGRST' USING
            MESSAGE = json_build_object(
                'code', 'idempotency_key_in_use',
                'message', 'idempotency_key_in_use',
                'details', format('A request with idempotency key %s is still in flight after %s.',
                                  p_key, pg_catalog.current_setting('lock_timeout')),
                'hint', 'Retry the same request with the same key: once the first request ends, it replays its answer.')::text,
            DETAIL = json_build_object(
                'status', 409,
                'headers', json_build_object('Retry-After', '1'))::text;
    END;

    RAISE SQLSTATE 'PT409' USING
        MESSAGE = 'idempotency_key_in_use',
        DETAIL = format('Idempotency key %s kept changing under concurrent requests.', p_key),
        HINT = 'Retry the request.';
END
$function$;
ALTER FUNCTION pgrpc_http.http_idempotency_claim(text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION pgrpc_http.http_idempotency_claim(text,text) IS
$$Claims an Idempotency-Key for the current transaction, or returns the response stored under it.

Called by the proxy inside the request's transaction, before the function. state is claimed (this transaction holds the key until it commits or rolls back; the other columns are null) or replay (a response was stored for the same request: return it with Idempotent-Replayed: true). The same key with another request hash raises 422 idempotency_key_reused (PT422); a key that is empty or over 255 characters raises 400 invalid_idempotency_key. Keys are scoped to the caller, so that a replay only reaches a caller who could have made the original call: a token with a sub by the request role and every claim but exp, iat, nbf and jti; an anonymous request by the request role, its claims and the request hash (so anonymous callers never block or see one another); any other token without sub is refused with 400 idempotency_key_requires_sub. Keys live for the idempotency_ttl setting; an expired key counts as absent. A concurrent duplicate blocks until the holder ends, then replays or claims; past lock_timeout (10 s, or the pgrpc.idempotency_wait setting of the role or database) it raises 409 idempotency_key_in_use with Retry-After: 1, the IETF draft's answer for a request in flight.$$;
REVOKE ALL ON FUNCTION pgrpc_http.http_idempotency_claim(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrpc_http.http_idempotency_claim(text,text) TO pgrpc_anon, pgrpc_user, pgrpc_service;

-- private.http_idempotency_row_is_own
CREATE OR REPLACE FUNCTION private.http_idempotency_row_is_own(p_xmin xid)
 RETURNS boolean
 LANGUAGE sql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    -- A row this statement can see whose inserting transaction is still in
    -- progress can only be this transaction's own (another's uncommitted
    -- rows are invisible). Its xmin is the top-level xid or a subxid, which
    -- is newer (age < 0): its full xid8 shares the top's epoch, or the next
    -- one if the 32-bit counter wrapped in between.
    SELECT p_xmin = pg_current_xact_id()::xid
        OR (age(p_xmin) < 0
            AND pg_xact_status((
                  (((pg_current_xact_id()::text::bigint >> 32)
                    + CASE WHEN p_xmin::text::bigint >= pg_current_xact_id()::xid::text::bigint THEN 0 ELSE 1 END)
                   << 32) + p_xmin::text::bigint)::text::xid8) = 'in progress')
$function$;
ALTER FUNCTION private.http_idempotency_row_is_own(xid) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.http_idempotency_row_is_own(xid) IS
$$Whether a visible row with this xmin was inserted by the current transaction or one of its subtransactions.

Used by pgrpc_http.http_idempotency_store for anonymous claims, which the claim inserts inside an exception block (a subtransaction).$$;
REVOKE ALL ON FUNCTION private.http_idempotency_row_is_own(xid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.http_idempotency_row_is_own(xid) TO pgrpc_api;

-- pgrpc_http.http_idempotency_store
CREATE OR REPLACE FUNCTION pgrpc_http.http_idempotency_store(p_key text, p_response_status integer, p_response_headers jsonb, p_response_body text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_identity text := private.http_idempotency_scope();
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

    -- A caller with a sub: its scope is recomputed from its claims. An
    -- anonymous caller: the scope its claim used, and the row must be one
    -- this very transaction (or one of its subtransactions: the claim
    -- inserts inside an exception block) inserted, so a scope set by anything
    -- else in the transaction reaches no other request's row.
    UPDATE private.http_idempotency_keys AS k
    SET response_status = p_response_status,
        response_headers = p_response_headers,
        response_body = p_response_body
    WHERE k.scope = coalesce(v_identity, nullif(current_setting('pgrpc.idempotency_scope', true), ''))
      AND k.key = p_key
      AND k.response_status IS NULL
      AND (v_identity IS NOT NULL OR private.http_idempotency_row_is_own(k.xmin));
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'idempotency_key_not_claimed',
            DETAIL = format('No claim without a stored response exists for idempotency key %s in this scope.', p_key),
            HINT = 'Call private.http_idempotency_claim in the same transaction first; a response is stored once.';
    END IF;
END
$function$;
ALTER FUNCTION pgrpc_http.http_idempotency_store(text,integer,jsonb,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION pgrpc_http.http_idempotency_store(text,integer,jsonb,text) IS
$$Stores the response under the Idempotency-Key this transaction claimed.

Called by the proxy after the function succeeded and before COMMIT, in the caller's scope (the same one private.http_idempotency_claim used; for an anonymous request, only a row this transaction claimed). p_response_headers is a JSON object or, as the response.headers setting holds them, an array of one-key objects. Write-once: a second store, or a store without a claim, raises 409 idempotency_key_not_claimed.$$;
REVOKE ALL ON FUNCTION pgrpc_http.http_idempotency_store(text,integer,jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrpc_http.http_idempotency_store(text,integer,jsonb,text) TO pgrpc_anon, pgrpc_user, pgrpc_service;

-- private.http_idempotency_claims_digest
CREATE OR REPLACE FUNCTION private.http_idempotency_claims_digest()
 RETURNS text
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT pg_catalog.encode(
        pg_catalog.sha256(pg_catalog.convert_to(
            (private.claims() - ARRAY['exp', 'iat', 'nbf', 'jti'])::text, 'UTF8')),
        'hex')
$function$;
ALTER FUNCTION private.http_idempotency_claims_digest() OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.http_idempotency_claims_digest() IS
$$The SHA-256 (hex) of the request's JWT claims minus exp, iat, nbf and jti.

Canonical: the claims as jsonb text, so key order and whitespace do not matter. Two tokens of the same identity that differ only in their lifetime or token id have the same digest; any other difference gives another digest.$$;
REVOKE ALL ON FUNCTION private.http_idempotency_claims_digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.http_idempotency_claims_digest() TO pgrpc_api;
