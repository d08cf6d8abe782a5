-- Contracts: teams, parents and players, and the signing of a player's
-- contract through the link emailed to the parent.
--
-- The contract.signed event is written by a trigger on private.players, in
-- the same transaction as the status change, whoever makes the change
-- (sign_contract, or an operator in psql). So there is never a signed player
-- without exactly one event, nor an event without a signed player:
-- - a signed contract never goes back to pending, and a signed player is
--   never deleted (DELETE and TRUNCATE, cascaded ones included, are refused);
-- - private.outbox accepts a contract.signed event only for a signed player
--   that has none yet (a trigger, and a partial unique index), so nobody can
--   fabricate or duplicate one.

SET LOCAL ROLE pgrpc_owner;

CREATE TABLE private.teams (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT teams_tenant_id_positive CHECK (tenant_id > 0),
    CONSTRAINT teams_name_not_blank CHECK (btrim(name) <> ''),
    -- Target of the players' (tenant_id, team_id) foreign key.
    CONSTRAINT teams_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE private.parents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id bigint NOT NULL,
    name text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT parents_tenant_id_positive CHECK (tenant_id > 0),
    CONSTRAINT parents_name_not_blank CHECK (btrim(name) <> ''),
    CONSTRAINT parents_email_is_address CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 320),
    CONSTRAINT parents_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE private.players (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id bigint NOT NULL,
    team_id uuid NOT NULL,
    parent_id uuid,
    name text NOT NULL,
    -- The credential in the emailed link: 32 random bytes, base64url.
    contract_token text NOT NULL UNIQUE
        DEFAULT rtrim(translate(encode(public.gen_random_bytes(32), 'base64'), '+/', '-_'), '='),
    contract_status text NOT NULL DEFAULT 'pending',
    signed_at timestamptz,
    signature_ref text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT players_tenant_id_positive CHECK (tenant_id > 0),
    CONSTRAINT players_name_not_blank CHECK (btrim(name) <> ''),
    CONSTRAINT players_contract_status_known CHECK (contract_status IN ('pending', 'signed')),
    CONSTRAINT players_contract_token_is_strong CHECK (contract_token ~ '^[A-Za-z0-9_-]{43,}$'),
    CONSTRAINT players_signed_iff_signature CHECK (
        (contract_status = 'signed') = (signed_at IS NOT NULL AND signature_ref IS NOT NULL)),
    CONSTRAINT players_signed_has_parent CHECK (contract_status = 'pending' OR parent_id IS NOT NULL),
    CONSTRAINT players_signature_ref_length CHECK (signature_ref IS NULL OR length(signature_ref) BETWEEN 1 AND 1024),
    -- A player's team and parent belong to the player's tenant.
    CONSTRAINT players_team_same_tenant FOREIGN KEY (tenant_id, team_id)
        REFERENCES private.teams (tenant_id, id),
    CONSTRAINT players_parent_same_tenant FOREIGN KEY (tenant_id, parent_id)
        REFERENCES private.parents (tenant_id, id)
);
CREATE INDEX players_team_id_idx ON private.players (team_id);
CREATE INDEX players_parent_id_idx ON private.players (parent_id);

-- BEFORE UPDATE (row): a signed contract stays signed.
CREATE FUNCTION private.tg_players__contract_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- AFTER INSERT OR UPDATE (row): the moment a contract becomes signed, emit
-- contract.signed. SECURITY DEFINER (owner pgrpc_owner), so the event is
-- written whoever signs; the payload comes from the row, tenant included.
CREATE FUNCTION private.tg_players__emit_contract_signed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- BEFORE DELETE (row) and BEFORE TRUNCATE (statement): a signed player is
-- never removed, for any role, or its contract.signed event would be left
-- without it. A pending player may be deleted. TRUNCATE is refused outright
-- (it cannot look at rows), including the TRUNCATE ... CASCADE of teams or
-- parents, which fires this trigger on players too.
CREATE FUNCTION private.tg_players__keep_signed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

-- BEFORE INSERT (row) on private.outbox, for contract.signed only: the event
-- must name a signed player (aggregate player, id in canonical uuid form).
-- The partial unique index below makes it the player's only one. The
-- legitimate writer is the AFTER trigger on players, which runs once the row
-- is already signed, so it always passes.
CREATE FUNCTION private.tg_outbox__contract_signed_has_signed_player()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
$$;

CREATE TRIGGER _050_contract_signed_has_signed_player BEFORE INSERT ON private.outbox
    FOR EACH ROW
    WHEN (NEW.event_type = 'contract.signed')
    EXECUTE FUNCTION private.tg_outbox__contract_signed_has_signed_player();

-- At most one contract.signed event per player, whatever the path.
CREATE UNIQUE INDEX outbox_contract_signed_once_per_player ON private.outbox (aggregate_id)
    WHERE event_type = 'contract.signed';

CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.players
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'tenant_id', 'contract_token', 'signed_at', 'signature_ref', 'created_at');
CREATE TRIGGER _100_keep_signed BEFORE DELETE ON private.players
    FOR EACH ROW EXECUTE FUNCTION private.tg_players__keep_signed();
CREATE TRIGGER _100_forbid_truncate BEFORE TRUNCATE ON private.players
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_players__keep_signed();
CREATE TRIGGER _110_contract_transition BEFORE UPDATE OF contract_status ON private.players
    FOR EACH ROW EXECUTE FUNCTION private.tg_players__contract_transition();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.players
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _900_emit_outbox AFTER UPDATE OF contract_status ON private.players
    FOR EACH ROW
    WHEN (OLD.contract_status = 'pending' AND NEW.contract_status = 'signed')
    EXECUTE FUNCTION private.tg_players__emit_contract_signed();
CREATE TRIGGER _900_emit_outbox_on_insert AFTER INSERT ON private.players
    FOR EACH ROW
    WHEN (NEW.contract_status = 'signed')
    EXECUTE FUNCTION private.tg_players__emit_contract_signed();

CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.teams
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once('id', 'tenant_id', 'created_at');
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.teams
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.parents
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once('id', 'tenant_id', 'created_at');
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.parents
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();

REVOKE EXECUTE ON FUNCTION private.tg_players__emit_contract_signed() FROM PUBLIC;

-- pgrpc_api creates rows and signs: it may change only the signing columns.
GRANT SELECT, INSERT ON private.teams, private.parents, private.players TO pgrpc_api;
GRANT UPDATE (contract_status, signed_at, signature_ref) ON private.players TO pgrpc_api;

-- RPC -----------------------------------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.create_team(tenant_id bigint, name text)
RETURNS private.teams
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.teams (tenant_id, name)
    VALUES (create_team.tenant_id, create_team.name)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_team(bigint, text) IS
$$Creates a team of a tenant.

tenant_id is a positive bigint; name must not be blank. Returns the new row.$$;

CREATE FUNCTION api.create_parent(tenant_id bigint, name text, email text)
RETURNS private.parents
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.parents (tenant_id, name, email)
    VALUES (create_parent.tenant_id, create_parent.name, create_parent.email)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_parent(bigint, text, text) IS
$$Creates a parent (the contract signer) of a tenant.

email receives the contract link. Returns the new row.$$;

CREATE FUNCTION api.create_player(tenant_id bigint, team_id uuid, name text, parent_id uuid DEFAULT NULL)
RETURNS private.players
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.players (tenant_id, team_id, name, parent_id)
    VALUES (create_player.tenant_id, create_player.team_id, create_player.name, create_player.parent_id)
    RETURNING *
$$;

COMMENT ON FUNCTION api.create_player(bigint, uuid, text, uuid) IS
$$Creates a player with a pending contract; the row includes its contract_token.

The token (32 random bytes from pgcrypto, base64url) is generated by the database; it is the credential of the signing link, so send it only to the parent. The team and the parent must belong to tenant_id (else 409, foreign key). A player without a parent can be created but not signed.$$;

CREATE FUNCTION api.sign_contract(
    contract_token text,
    signature_ref text,
    OUT player_id uuid,
    OUT signed_at timestamptz
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.sign_contract(text, text) IS
$$Signs a player's contract with the token from the emailed link; returns {player_id, signed_at}.

Callable without a JWT: the token is the credential. In one transaction the player is locked, checked and marked signed, and the database emits contract.signed with payload {tenant_id, player_id, player_name, team_id, parent_id}. Errors: 404 contract_not_found (unknown token), 409 contract_already_signed, 422 contract_missing_parent (nothing changes), 400 invalid_signature_ref.$$;

-- Grants --------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION
    api.create_team(bigint, text),
    api.create_parent(bigint, text, text),
    api.create_player(bigint, uuid, text, uuid)
TO pgrpc_service;
GRANT EXECUTE ON FUNCTION api.sign_contract(text, text) TO pgrpc_anon, pgrpc_service;

RESET ROLE;
