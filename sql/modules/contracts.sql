-- Module contracts: parents, teams, players and signed contracts.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.parents, private.teams, private.players

-- private.tg_players__contract_transition
CREATE OR REPLACE FUNCTION private.tg_players__contract_transition()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF OLD.contract_status = 'signed' AND NEW.contract_status <> 'signed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation',
            MESSAGE = 'invalid_transition',
            DETAIL = format('The contract of player %s is signed and cannot go back to %s.',
                            OLD.id, NEW.contract_status),
            HINT = 'A signed contract is final.';
    END IF;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_players__contract_transition() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_players__contract_transition() FROM PUBLIC;

-- private.tg_players__emit_contract_signed
CREATE OR REPLACE FUNCTION private.tg_players__emit_contract_signed()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM private.outbox_emit(
        'player',
        NEW.id::text,
        'contract.signed',
        jsonb_build_object(
            'tenant_id', NEW.tenant_id,
            'player_id', NEW.id,
            'player_name', NEW.name,
            'team_id', NEW.team_id,
            'parent_id', NEW.parent_id));
    RETURN NULL;
END
$function$;
ALTER FUNCTION private.tg_players__emit_contract_signed() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_players__emit_contract_signed() FROM PUBLIC;

-- private.tg_players__keep_signed
CREATE OR REPLACE FUNCTION private.tg_players__keep_signed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'signed_contract_kept',
            DETAIL = 'TRUNCATE on private.players is not allowed: signed players must outlive their contract.signed events.',
            HINT = 'Delete pending players with DELETE; signed players are kept.';
    END IF;
    IF OLD.contract_status = 'signed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'signed_contract_kept',
            DETAIL = format('Player %s has a signed contract and cannot be deleted.', OLD.id),
            HINT = 'Signed players are kept: their contract.signed event refers to them.';
    END IF;
    RETURN OLD;
END
$function$;
ALTER FUNCTION private.tg_players__keep_signed() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_players__keep_signed() FROM PUBLIC;

-- private.tg_outbox__contract_signed_has_signed_player
CREATE OR REPLACE FUNCTION private.tg_outbox__contract_signed_has_signed_player()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- The format check comes first, in its own IF, so the cast never fails.
    IF NEW.aggregate_type = 'player'
       AND NEW.aggregate_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        IF EXISTS (SELECT 1 FROM private.players p
                   WHERE p.id = NEW.aggregate_id::uuid AND p.contract_status = 'signed') THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'contract_signed_without_signed_player',
        DETAIL = format('A contract.signed event for %s %s names no signed player.',
                        NEW.aggregate_type, NEW.aggregate_id),
        HINT = 'contract.signed is written by the database when a player''s contract becomes signed; sign the contract instead.';
END
$function$;
ALTER FUNCTION private.tg_outbox__contract_signed_has_signed_player() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_outbox__contract_signed_has_signed_player() FROM PUBLIC;

-- api.sign_contract
CREATE OR REPLACE FUNCTION api.sign_contract(contract_token text, signature_ref text, OUT player_id uuid, OUT signed_at timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_player private.players;
BEGIN
    IF sign_contract.signature_ref IS NULL OR btrim(sign_contract.signature_ref) = ''
       OR length(sign_contract.signature_ref) > 1024 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_signature_ref',
            DETAIL = 'signature_ref must be a non-empty reference of at most 1024 characters.',
            HINT = 'Pass the id of the stored signature.';
    END IF;

    -- The row lock serializes concurrent signings of one contract: the
    -- first signs, the others then see it signed.
    SELECT p.* INTO v_player
    FROM private.players AS p
    WHERE p.contract_token = sign_contract.contract_token
    FOR UPDATE;

    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING MESSAGE = 'contract_not_found',
            DETAIL = 'No contract matches this token.',
            HINT = 'Use the link from the most recent contract email.';
    END IF;
    IF v_player.contract_status = 'signed' THEN
        RAISE SQLSTATE 'PT409' USING MESSAGE = 'contract_already_signed',
            DETAIL = format('The contract of player %s was signed at %s.', v_player.id, v_player.signed_at),
            HINT = 'Nothing to do: the contract is already signed.';
    END IF;
    IF v_player.parent_id IS NULL THEN
        RAISE SQLSTATE 'PT422' USING MESSAGE = 'contract_missing_parent',
            DETAIL = format('Player %s has no parent to sign the contract.', v_player.id),
            HINT = 'The team must attach a parent to the player before the contract can be signed.';
    END IF;

    -- The _900_emit_outbox trigger writes contract.signed in this transaction.
    UPDATE private.players AS p
    SET contract_status = 'signed',
        signed_at = clock_timestamp(),
        signature_ref = sign_contract.signature_ref
    WHERE p.id = v_player.id
    RETURNING p.id, p.signed_at INTO sign_contract.player_id, sign_contract.signed_at;
END
$function$;
ALTER FUNCTION api.sign_contract(text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.sign_contract(text,text) IS
$$Signs a player's contract with the token from the emailed link; returns {player_id, signed_at}.

Callable without a JWT: the token is the credential. In one transaction the player is locked, checked and marked signed, and the database emits contract.signed with payload {tenant_id, player_id, player_name, team_id, parent_id}. Errors: 404 contract_not_found (unknown token), 409 contract_already_signed, 422 contract_missing_parent (nothing changes), 400 invalid_signature_ref.$$;
REVOKE ALL ON FUNCTION api.sign_contract(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.sign_contract(text,text) TO pgrpc_anon, pgrpc_service;

-- api.create_team
CREATE OR REPLACE FUNCTION api.create_team(tenant_id bigint, name text)
 RETURNS api.team
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.teams (tenant_id, name)
    VALUES (create_team.tenant_id, create_team.name)
    RETURNING id, tenant_id, name, created_at, updated_at
$function$;
ALTER FUNCTION api.create_team(bigint,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_team(bigint,text) IS
$$Creates a team of a tenant.

tenant_id is a positive bigint; name must not be blank. Returns the new team: {id, tenant_id, name, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_team(bigint,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_team(bigint,text) TO pgrpc_service;

-- api.create_parent
CREATE OR REPLACE FUNCTION api.create_parent(tenant_id bigint, name text, email text)
 RETURNS api.parent
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.parents (tenant_id, name, email)
    VALUES (create_parent.tenant_id, create_parent.name, create_parent.email)
    RETURNING id, tenant_id, name, email, created_at, updated_at
$function$;
ALTER FUNCTION api.create_parent(bigint,text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_parent(bigint,text,text) IS
$$Creates a parent (the contract signer) of a tenant.

email receives the contract link. Returns the new parent: {id, tenant_id, name, email, created_at, updated_at}.$$;
REVOKE ALL ON FUNCTION api.create_parent(bigint,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_parent(bigint,text,text) TO pgrpc_service;

-- api.create_player
CREATE OR REPLACE FUNCTION api.create_player(tenant_id bigint, team_id uuid, name text, parent_id uuid DEFAULT NULL::uuid)
 RETURNS api.player
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    INSERT INTO private.players (tenant_id, team_id, name, parent_id)
    VALUES (create_player.tenant_id, create_player.team_id, create_player.name, create_player.parent_id)
    RETURNING id, tenant_id, team_id, parent_id, name, contract_token, contract_status,
              signed_at, signature_ref, created_at, updated_at
$function$;
ALTER FUNCTION api.create_player(bigint,uuid,text,uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_player(bigint,uuid,text,uuid) IS
$$Creates a player with a pending contract; the result includes its contract_token.

Returns {id, tenant_id, team_id, parent_id, name, contract_token, contract_status, signed_at, signature_ref, created_at, updated_at}. The token (32 random bytes from pgcrypto, base64url) is generated by the database; it is the credential of the signing link, so send it only to the parent. The team and the parent must belong to tenant_id (else 409, foreign key). A player without a parent can be created but not signed.$$;
REVOKE ALL ON FUNCTION api.create_player(bigint,uuid,text,uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_player(bigint,uuid,text,uuid) TO pgrpc_service;
