-- Module nonces: single-use OAuth nonces.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.oauth_nonces, private.oauth_nonce_consumptions

-- private.tg_oauth_nonces__guard_delete
CREATE OR REPLACE FUNCTION private.tg_oauth_nonces__guard_delete()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_user = 'pgrpc_api'
       OR (TG_TABLE_NAME = 'oauth_nonces'
           AND OLD.organization_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM private.organizations o WHERE o.id = OLD.organization_id)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'append_only',
        DETAIL = format('DELETE on %I.%I is not allowed: rows leave only by consumption or by the sweep.',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME),
        HINT = 'Use api.consume_oauth_nonce or admin.sweep_oauth_nonces().';
END
$function$;
ALTER FUNCTION private.tg_oauth_nonces__guard_delete() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_oauth_nonces__guard_delete() FROM PUBLIC;

-- api.issue_oauth_nonce
CREATE OR REPLACE FUNCTION api.issue_oauth_nonce(organization_id uuid DEFAULT NULL::uuid, ttl_seconds integer DEFAULT 600, OUT nonce text, OUT expires_at timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_max interval := private.setting_interval('oauth_nonce_max_ttl');
BEGIN
    IF issue_oauth_nonce.ttl_seconds IS NULL OR issue_oauth_nonce.ttl_seconds < 1
       OR make_interval(secs => issue_oauth_nonce.ttl_seconds) > v_max THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_ttl',
            DETAIL = format('ttl_seconds must be between 1 and %s, got %s.',
                            extract(epoch FROM v_max)::bigint,
                            coalesce(issue_oauth_nonce.ttl_seconds::text, 'null')),
            HINT = 'The default, 600, gives the user ten minutes to finish the OAuth flow.';
    END IF;
    IF issue_oauth_nonce.organization_id IS NOT NULL THEN
        PERFORM private.require_org_access(issue_oauth_nonce.organization_id);
    END IF;

    -- 32 random bytes, base64url without padding: 43 characters.
    INSERT INTO private.oauth_nonces AS n (nonce, organization_id, expires_at)
    VALUES (translate(encode(public.gen_random_bytes(32), 'base64'), E'+/=\n', '-_'),
            issue_oauth_nonce.organization_id,
            clock_timestamp() + make_interval(secs => issue_oauth_nonce.ttl_seconds))
    RETURNING n.nonce, n.expires_at INTO nonce, expires_at;
END
$function$;
ALTER FUNCTION api.issue_oauth_nonce(uuid,integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.issue_oauth_nonce(uuid,integer) IS
$$Issues a single-use OAuth nonce.

Returns {nonce, expires_at}. The nonce is 32 random bytes from pgcrypto, base64url-encoded without padding (43 characters, safe in URLs). ttl_seconds (default 600) must be between 1 and the oauth_nonce_max_ttl setting (400 invalid_ttl otherwise). organization_id is optional; an unknown organization is a 409 foreign-key error.$$;
REVOKE ALL ON FUNCTION api.issue_oauth_nonce(uuid,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.issue_oauth_nonce(uuid,integer) TO pgrpc_service;

-- api.consume_oauth_nonce
CREATE OR REPLACE FUNCTION api.consume_oauth_nonce(nonce text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
DECLARE
    v_hash bytea;
    v_org uuid;
    v_expires_at timestamptz;
    v_replay private.oauth_nonce_consumptions;
BEGIN
    IF consume_oauth_nonce.nonce IS NULL OR consume_oauth_nonce.nonce = '' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_nonce',
            DETAIL = 'The nonce is missing or empty.',
            HINT = 'Pass the nonce string that issue_oauth_nonce returned.';
    END IF;
    -- Only strings shaped like an issued nonce are looked up. This also
    -- refuses most non-strings: a JSON number or boolean reaches a text
    -- parameter as its text ('123', 'true'), which is not 43+ base64url
    -- characters.
    IF consume_oauth_nonce.nonce !~ '^[A-Za-z0-9_-]{43,255}$' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_nonce',
            DETAIL = format('A nonce is 43 to 255 base64url characters; got %s characters that are not.',
                            char_length(consume_oauth_nonce.nonce)),
            HINT = 'Pass the nonce string that issue_oauth_nonce returned.';
    END IF;

    v_hash := pg_catalog.sha256(pg_catalog.convert_to(consume_oauth_nonce.nonce, 'UTF8'));

    -- The single statement that decides: concurrent consumers queue on the
    -- row lock, and all but the first find the row gone.
    DELETE FROM private.oauth_nonces n
    WHERE n.nonce = consume_oauth_nonce.nonce
      AND n.expires_at > clock_timestamp()
    RETURNING n.organization_id, n.expires_at INTO v_org, v_expires_at;

    IF FOUND THEN
        INSERT INTO private.oauth_nonce_consumptions AS c (nonce_hash, organization_id, consumed_at, expires_at)
        VALUES (v_hash, v_org, clock_timestamp(),
                greatest(v_expires_at, clock_timestamp() + private.setting_interval('oauth_nonce_replay_window')))
        ON CONFLICT (nonce_hash) DO NOTHING;
        RETURN true;
    END IF;

    -- Unknown, expired or already used. A fresh statement sees a concurrent
    -- winner's committed record, so a racing loser is reported as a replay.
    SELECT * INTO v_replay
    FROM private.oauth_nonce_consumptions c
    WHERE c.nonce_hash = v_hash AND c.expires_at > clock_timestamp();
    IF FOUND THEN
        PERFORM private.outbox_emit(
            'oauth_nonce', pg_catalog.encode(v_hash, 'hex'), 'security.oauth_nonce_replayed',
            jsonb_build_object(
                'nonce_sha256', pg_catalog.encode(v_hash, 'hex'),
                'organization_id', v_replay.organization_id,
                'consumed_at', v_replay.consumed_at,
                'replayed_at', clock_timestamp(),
                'request_role', private.request_role(),
                'sub', private.jwt_sub()));
    END IF;
    RETURN false;
END
$function$;
ALTER FUNCTION api.consume_oauth_nonce(text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.consume_oauth_nonce(text) IS
$$Consumes an OAuth nonce: true exactly once, and only before it expires.

Returns false for an unknown, expired or already used nonce; of many concurrent consumers exactly one gets true. Expiry is checked against clock_timestamp(), so a long transaction cannot consume a nonce that has expired meanwhile. A second use of a consumed nonce (within the oauth_nonce_replay_window setting, and at least until the nonce would have expired) emits the outbox event security.oauth_nonce_replayed, keyed by the nonce's SHA-256, and still returns false. An empty nonce, or one that is not 43 to 255 base64url characters (which also catches JSON numbers and booleans), is 400 invalid_nonce.$$;
REVOKE ALL ON FUNCTION api.consume_oauth_nonce(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.consume_oauth_nonce(text) TO pgrpc_service;

-- admin.sweep_oauth_nonces
CREATE OR REPLACE FUNCTION admin.sweep_oauth_nonces()
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_count integer;
BEGIN
    DELETE FROM private.oauth_nonces n WHERE n.expires_at <= clock_timestamp();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    DELETE FROM private.oauth_nonce_consumptions c WHERE c.expires_at <= clock_timestamp();
    RETURN v_count;
END
$function$;
ALTER FUNCTION admin.sweep_oauth_nonces() OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.sweep_oauth_nonces() IS
$$Deletes expired OAuth nonces.

Returns the number of expired nonces deleted. Also deletes expired consumed-nonce records (private.oauth_nonce_consumptions), which are not counted. Expired nonces already fail consumption, so sweeping only reclaims space; run it from cron.$$;
REVOKE ALL ON FUNCTION admin.sweep_oauth_nonces() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.sweep_oauth_nonces() TO pgrpc_admin;
