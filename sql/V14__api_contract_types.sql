-- api functions return contract types, not private rows (SPEC §1, §4).
--
-- Until V14, 23 api functions returned the row type of a private table, or a
-- composite type kept in private, so their HTTP answer was whatever columns
-- that table had: find_active_idempotency_key handed out the lease_token
-- that operators may not even read, and adding an internal column would
-- have changed the API. Each one now returns a composite type of schema api
-- listing the contract fields of SPEC §4, filled from an explicit column
-- list, so a new private column changes nothing a caller sees. Changing a
-- type below is changing the HTTP contract, and takes a migration.
--
-- Where SPEC §4 names the fields, the type has exactly those:
-- token_balance answers {total, used, remaining}, and token_balances one
-- {token_type, total, used, remaining} per token type. The key that
-- find_active_idempotency_key answers has no lease_token: only
-- idempotency_begin hands a lease out, to the caller that then holds it.
-- Where SPEC §4 says "the row", "the connection" or "the ticket", the type
-- has the columns it lists for that table, created_at and updated_at
-- included; a player keeps its contract_token, which the service emails
-- (§4.7).
--
-- CREATE OR REPLACE cannot change a return type, so each function is
-- dropped and created again with the same arguments and defaults (the HTTP
-- contract), logic, volatility, SECURITY DEFINER, pinned search_path, owner
-- (pgrpc_api), comment and EXECUTE grants. Nothing depends on them: no view
-- or function references them in pg_depend, and no SQL body calls them.
--
-- The types are owned by pgrpc_api, like the functions that return them:
-- it cannot log in and only a superuser can become it, so no login can
-- alter a contract. USAGE on a type is PUBLIC by default, and naming one
-- still needs USAGE on schema api, which V1 grants per role.
--
-- The private composite types that only these functions used are dropped;
-- private.token_balance and private.receive_feed_item stay, as the result
-- types of the private helpers balance_of, consume_token and
-- legacy_receives.

SET LOCAL ROLE pgrpc_api;

-- Contract types ----------------------------------------------------------

CREATE TYPE api.organization AS (
    id uuid,
    name text,
    plan text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.site AS (
    id uuid,
    organization_id uuid,
    base_url text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.opportunity AS (
    id uuid,
    site_id uuid,
    type text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.suggestion AS (
    id uuid,
    opportunity_id uuid,
    status text,
    data jsonb,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.token_counter AS (
    site_id uuid,
    token_type text,
    cycle text,
    total integer,
    used integer,
    remaining integer
);

CREATE TYPE api.balance AS (
    total integer,
    used integer,
    remaining integer
);

CREATE TYPE api.token_type_balance AS (
    token_type text,
    total integer,
    used integer,
    remaining integer
);

CREATE TYPE api.suggestion_grant AS (
    suggestion_id uuid,
    token_type text,
    cycle text,
    granted_at timestamptz,
    newly_granted boolean
);

CREATE TYPE api.site_token_usage AS (
    organization_id uuid,
    site_id uuid,
    base_url text,
    token_type text,
    cycle text,
    total integer,
    used integer,
    remaining integer,
    updated_at timestamptz
);

CREATE TYPE api.task_management_connection AS (
    id uuid,
    organization_id uuid,
    provider text,
    status text,
    external_instance_id text,
    instance_url text,
    display_name text,
    connected_by text,
    metadata jsonb,
    last_used_at timestamptz,
    error_message text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.ticket AS (
    id uuid,
    connection_id uuid,
    organization_id uuid,
    opportunity_id uuid,
    external_ticket_id text,
    ticket_key text,
    ticket_url text,
    ticket_status text,
    ticket_provider text,
    created_by text,
    created_at timestamptz,
    updated_at timestamptz
);

-- No lease_token: the lease is the credential of the worker that holds it,
-- handed out by idempotency_begin only.
CREATE TYPE api.idempotency_key AS (
    id uuid,
    organization_id uuid,
    key text,
    endpoint text,
    request_hash text,
    status text,
    lease_expires_at timestamptz,
    response_status integer,
    response_body jsonb,
    created_at timestamptz,
    expires_at timestamptz
);

CREATE TYPE api.team AS (
    id uuid,
    tenant_id bigint,
    name text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.parent AS (
    id uuid,
    tenant_id bigint,
    name text,
    email text,
    created_at timestamptz,
    updated_at timestamptz
);

-- contract_token is returned by create_player only: the service emails it
-- to the parent (SPEC §4.7).
CREATE TYPE api.player AS (
    id uuid,
    tenant_id bigint,
    team_id uuid,
    parent_id uuid,
    name text,
    contract_token text,
    contract_status text,
    signed_at timestamptz,
    signature_ref text,
    created_at timestamptz,
    updated_at timestamptz
);

CREATE TYPE api.receive_finalization AS (
    reservation_id uuid,
    newly_created boolean
);

CREATE TYPE api.receive_feed_item AS (
    reservation_id uuid,
    created_at timestamptz,
    file_count integer,
    total_bytes bigint,
    sender_label text,
    sender_ip inet,
    unread boolean
);

COMMENT ON TYPE api.organization IS 'What create_organization returns.';
COMMENT ON TYPE api.site IS 'What create_site returns.';
COMMENT ON TYPE api.opportunity IS 'What create_opportunity returns.';
COMMENT ON TYPE api.suggestion IS 'What create_suggestion returns.';
COMMENT ON TYPE api.token_counter IS 'What consume_token returns: one counter after the spend.';
COMMENT ON TYPE api.balance IS 'What token_balance returns.';
COMMENT ON TYPE api.token_type_balance IS 'One element of what token_balances returns.';
COMMENT ON TYPE api.suggestion_grant IS 'What grant_suggestion returns.';
COMMENT ON TYPE api.site_token_usage IS 'One element of what site_tokens returns.';
COMMENT ON TYPE api.task_management_connection IS
    'A task-management connection, as connect_task_management, active_task_management_connection, set_connection_status and disconnect_task_management return it.';
COMMENT ON TYPE api.ticket IS
    'A ticket, as create_ticket, ticket_for_suggestion, tickets_for_opportunity and update_ticket_status return it.';
COMMENT ON TYPE api.idempotency_key IS
    'What find_active_idempotency_key returns: the key without its lease_token.';
COMMENT ON TYPE api.team IS 'What create_team returns.';
COMMENT ON TYPE api.parent IS 'What create_parent returns.';
COMMENT ON TYPE api.player IS 'What create_player returns, contract_token included.';
COMMENT ON TYPE api.receive_finalization IS 'What finalize_receive returns.';
COMMENT ON TYPE api.receive_feed_item IS 'One element of what recent_receives returns.';

-- Organizations (V3) ------------------------------------------------------

DROP FUNCTION api.create_organization(text, text);
CREATE FUNCTION api.create_organization(name text, plan text)
RETURNS api.organization
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.organizations (name, plan)
    VALUES (create_organization.name, create_organization.plan)
    RETURNING id, name, plan, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_organization(text, text) IS
$$Creates an organization.

plan is free, freemium or paid; whether an organization's tokens are metered follows from its plan's allowances, never from its id. Returns the new organization: {id, name, plan, created_at, updated_at}.$$;

DROP FUNCTION api.create_site(uuid, text);
CREATE FUNCTION api.create_site(organization_id uuid, base_url text)
RETURNS api.site
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.sites (organization_id, base_url)
    VALUES (create_site.organization_id, create_site.base_url)
    RETURNING id, organization_id, base_url, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_site(uuid, text) IS
$$Creates a site of an organization.

base_url must be an http(s) URL. An unknown organization is a 409 foreign-key error. Returns the new site: {id, organization_id, base_url, created_at, updated_at}.$$;

DROP FUNCTION api.create_opportunity(uuid, text);
CREATE FUNCTION api.create_opportunity(site_id uuid, type text)
RETURNS api.opportunity
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.opportunities (site_id, type)
    VALUES (create_opportunity.site_id, create_opportunity.type)
    RETURNING id, site_id, type, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_opportunity(uuid, text) IS
$$Creates an opportunity on a site.

type is the opportunity type (for example broken-backlinks); it maps to a token type through private.token_types. Returns the new opportunity: {id, site_id, type, created_at, updated_at}.$$;

DROP FUNCTION api.create_suggestion(uuid, jsonb, text);
CREATE FUNCTION api.create_suggestion(opportunity_id uuid, data jsonb, status text DEFAULT 'NEW')
RETURNS api.suggestion
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.suggestions (opportunity_id, data, status)
    VALUES (create_suggestion.opportunity_id, create_suggestion.data, create_suggestion.status)
    RETURNING id, opportunity_id, status, data, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_suggestion(uuid, jsonb, text) IS
$$Creates a suggestion for an opportunity.

data must be a JSON object; status is one of NEW, APPROVED, SKIPPED, FIXED, OUTDATED (default NEW). Returns the new suggestion: {id, opportunity_id, status, data, created_at, updated_at}.$$;

GRANT EXECUTE ON FUNCTION
    api.create_organization(text, text),
    api.create_site(uuid, text),
    api.create_opportunity(uuid, text),
    api.create_suggestion(uuid, jsonb, text)
TO pgrpc_service;

-- Tokens and grants (V4) --------------------------------------------------

DROP FUNCTION api.consume_token(uuid, text, text);
CREATE FUNCTION api.consume_token(site_id uuid, token_type text, cycle text DEFAULT NULL)
RETURNS api.token_counter
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cycle text := private.check_cycle(consume_token.cycle);
    v_org uuid;
    v_counter private.token_balance;
BEGIN
    PERFORM private.check_token_type(consume_token.token_type);
    IF private.cycle_end(v_cycle) <= clock_timestamp() THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'cycle_closed',
            DETAIL = format('Cycle %s has ended; tokens can no longer be spent in it.', v_cycle),
            HINT = 'Omit cycle to spend in the current UTC month.';
    END IF;
    v_org := private.site_organization(consume_token.site_id);
    PERFORM private.require_metered_plan(v_org);
    v_counter := private.consume_token(consume_token.site_id, consume_token.token_type, v_cycle);
    RETURN ROW(v_counter.site_id, v_counter.token_type, v_counter.cycle,
               v_counter.total, v_counter.used, v_counter.remaining)::api.token_counter;
END
$$;

COMMENT ON FUNCTION api.consume_token(uuid, text, text) IS
$$Spends one token of a site for a cycle.

Returns {site_id, token_type, cycle, total, used, remaining} after the spend. cycle is a UTC month YYYY-MM (default: the current one). The cycle's counter is created on first use from the allowance of the organization's plan (private.token_allowances); the spend itself is one conditional UPDATE (used < total), so concurrent callers never over-spend. Errors: 429 tokens_exhausted with Retry-After = seconds until the next cycle; 404 not_found for an unknown site; 400 invalid_cycle, cycle_closed (a past month) or unknown_token_type; 409 plan_not_token_metered when the plan has no allowances. Callable by pgrpc_service.$$;

DROP FUNCTION api.token_balance(uuid, text, text);
CREATE FUNCTION api.token_balance(site_id uuid, token_type text, cycle text DEFAULT NULL)
RETURNS api.balance
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cycle text := private.check_cycle(token_balance.cycle);
    v_balance private.token_balance;
BEGIN
    PERFORM private.check_token_type(token_balance.token_type);
    PERFORM private.require_org_access(private.site_organization(token_balance.site_id));
    v_balance := private.balance_of(token_balance.site_id, token_balance.token_type, v_cycle);
    RETURN ROW(v_balance.total, v_balance.used, v_balance.remaining)::api.balance;
END
$$;

COMMENT ON FUNCTION api.token_balance(uuid, text, text) IS
$$A site's balance of one token type for a cycle.

Returns {total, used, remaining}; cycle defaults to the current UTC month. A cycle without a counter yet reports the plan's allowance with nothing used, and no row is created (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle or unknown_token_type, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;

DROP FUNCTION api.token_balances(uuid, text);
CREATE FUNCTION api.token_balances(site_id uuid, cycle text DEFAULT NULL)
RETURNS SETOF api.token_type_balance
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cycle text := private.check_cycle(token_balances.cycle);
BEGIN
    PERFORM private.require_org_access(private.site_organization(token_balances.site_id));
    RETURN QUERY
        SELECT b.token_type, b.total, b.used, b.remaining
        FROM private.token_types tt
        CROSS JOIN LATERAL private.balance_of(token_balances.site_id, tt.token_type, v_cycle) AS b
        ORDER BY tt.token_type;
END
$$;

COMMENT ON FUNCTION api.token_balances(uuid, text) IS
$$A site's balances of every token type for a cycle.

Returns an array with one {token_type, total, used, remaining} per token type, ordered by token_type; cycle defaults to the current UTC month. Creates no row (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;

DROP FUNCTION api.grant_suggestion(uuid, text);
CREATE FUNCTION api.grant_suggestion(suggestion_id uuid, granted_by text DEFAULT NULL)
RETURNS api.suggestion_grant
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_granted_by text := coalesce(grant_suggestion.granted_by, private.jwt_sub());
    v_suggestion private.suggestions;
    v_opportunity private.opportunities;
    v_site private.sites;
    v_grant private.suggestion_grants;
    v_token_type text;
    v_required text[];
    v_missing text[];
    v_cycle text;
BEGIN
    IF v_granted_by IS NULL OR btrim(v_granted_by) = '' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'granted_by_required',
            DETAIL = 'Neither granted_by nor the token''s sub claim names who grants the suggestion.',
            HINT = 'Pass granted_by, or call with a token that carries a sub claim.';
    END IF;

    -- The suggestion row lock serializes every grant of this suggestion: a
    -- second caller waits here, then finds the first one's grant below.
    -- FOR NO KEY UPDATE (the key does not change) leaves FK checks of rows
    -- that reference the suggestion (ticket links, the grant itself)
    -- unblocked: they take FOR KEY SHARE, which does not conflict with it.
    SELECT s.* INTO v_suggestion
    FROM private.suggestions s
    WHERE s.id = grant_suggestion.suggestion_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no suggestion %s.', grant_suggestion.suggestion_id),
            HINT = 'Check the suggestion id.';
    END IF;

    SELECT g.* INTO v_grant
    FROM private.suggestion_grants g
    WHERE g.suggestion_id = grant_suggestion.suggestion_id;
    IF FOUND THEN
        RETURN ROW(v_grant.suggestion_id, v_grant.token_type, v_grant.cycle, v_grant.granted_at, false)
            ::api.suggestion_grant;
    END IF;

    SELECT o.* INTO v_opportunity FROM private.opportunities o WHERE o.id = v_suggestion.opportunity_id;
    SELECT s.* INTO v_site FROM private.sites s WHERE s.id = v_opportunity.site_id;

    -- 1. The organization's plan meters tokens.
    PERFORM private.require_metered_plan(v_site.organization_id);

    -- 2. The suggestion is NEW and complete.
    IF v_suggestion.status <> 'NEW' THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'suggestion_not_new',
            DETAIL = format('Suggestion %s has status %s; only NEW suggestions are granted.',
                            v_suggestion.id, v_suggestion.status),
            HINT = 'Grant suggestions before they are approved, skipped, fixed or outdated.';
    END IF;

    SELECT tt.token_type INTO v_token_type
    FROM private.token_types tt WHERE tt.opportunity_type = v_opportunity.type;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT422' USING
            MESSAGE = 'opportunity_type_not_mapped',
            DETAIL = format('Opportunity type %L maps to no token type.', v_opportunity.type),
            HINT = 'An operator maps it in private.token_types (with its rule in private.suggestion_completeness).';
    END IF;

    SELECT c.required_keys INTO v_required
    FROM private.suggestion_completeness c WHERE c.opportunity_type = v_opportunity.type;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT422' USING
            MESSAGE = 'suggestion_incomplete',
            DETAIL = format('No completeness rule is defined for opportunity type %L.', v_opportunity.type),
            HINT = 'An operator adds a row to private.suggestion_completeness (an empty required_keys accepts every suggestion).';
    END IF;

    SELECT array_agg(k ORDER BY k) INTO v_missing
    FROM unnest(v_required) AS k
    WHERE NOT (v_suggestion.data ? k)
       OR jsonb_typeof(v_suggestion.data -> k) = 'null'
       OR (jsonb_typeof(v_suggestion.data -> k) = 'string' AND btrim(v_suggestion.data ->> k) = '');
    IF v_missing IS NOT NULL THEN
        RAISE SQLSTATE 'PT422' USING
            MESSAGE = 'suggestion_incomplete',
            DETAIL = format('Suggestion %s lacks %s, required for %s.',
                            v_suggestion.id, array_to_string(v_missing, ', '), v_opportunity.type),
            HINT = 'Fill the missing keys of the suggestion''s data, then grant it again.';
    END IF;

    -- 3. Spend one token of the mapped type in the current cycle. Raises 429
    -- and rolls back everything when exhausted.
    v_cycle := private.current_cycle();
    PERFORM private.consume_token(v_site.id, v_token_type, v_cycle);

    -- 4. Write the grant. Its _900_emit_outbox trigger emits
    -- suggestion.granted in this transaction.
    INSERT INTO private.suggestion_grants (suggestion_id, site_id, token_type, cycle, granted_by)
    VALUES (v_suggestion.id, v_site.id, v_token_type, v_cycle, v_granted_by)
    RETURNING * INTO v_grant;

    RETURN ROW(v_grant.suggestion_id, v_grant.token_type, v_grant.cycle, v_grant.granted_at, true)
        ::api.suggestion_grant;
END
$$;

COMMENT ON FUNCTION api.grant_suggestion(uuid, text) IS
$$Grants a suggestion, spending one token of its site.

Returns {suggestion_id, token_type, cycle, granted_at, newly_granted}. In one transaction: (1) the organization's plan must meter tokens, else 409 plan_not_token_metered; (2) the suggestion must be NEW, else 409 suggestion_not_new, and complete per private.suggestion_completeness, else 422 suggestion_incomplete; (3) one token of the type mapped from the opportunity type (private.token_types) is spent in the current UTC month, else 429 tokens_exhausted with Retry-After; (4) the write-once grant is inserted, and its trigger emits a suggestion.granted outbox event. Idempotent: an existing grant is returned with newly_granted=false and no token is spent; concurrent calls for one suggestion are serialized on the suggestion row (FOR NO KEY UPDATE) and spend exactly one token. granted_by defaults to the JWT sub (400 granted_by_required if neither is set); an unknown suggestion is 404 not_found; an unmapped opportunity type is 422 opportunity_type_not_mapped. The suggestion's status is not changed. Callable by pgrpc_service.$$;

DROP FUNCTION api.site_tokens(uuid, text);
CREATE FUNCTION api.site_tokens(organization_id uuid DEFAULT NULL, cycle text DEFAULT NULL)
RETURNS SETOF api.site_token_usage
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF site_tokens.cycle IS NOT NULL THEN
        PERFORM private.check_cycle(site_tokens.cycle);
    END IF;
    RETURN QUERY
        SELECT s.organization_id, s.id, s.base_url, t.token_type, t.cycle,
               t.total, t.used, t.total - t.used, t.updated_at
        FROM private.tokens t
        JOIN private.sites s ON s.id = t.site_id
        WHERE (site_tokens.organization_id IS NULL OR s.organization_id = site_tokens.organization_id)
          AND (site_tokens.cycle IS NULL OR t.cycle = site_tokens.cycle)
        ORDER BY s.organization_id, s.id, t.cycle DESC, t.token_type;
END
$$;

COMMENT ON FUNCTION api.site_tokens(uuid, text) IS
$$Every site's token counters, for reporting.

Returns an array of {organization_id, site_id, base_url, token_type, cycle, total, used, remaining, updated_at}, one per counter that exists, optionally limited to one organization and one cycle (null: all). Sites without a counter in a cycle have spent nothing in it. 400 invalid_cycle for a malformed cycle. STABLE. Callable by pgrpc_service and pgrpc_admin.$$;

GRANT EXECUTE ON FUNCTION
    api.consume_token(uuid, text, text),
    api.grant_suggestion(uuid, text)
TO pgrpc_service;

GRANT EXECUTE ON FUNCTION
    api.token_balance(uuid, text, text),
    api.token_balances(uuid, text)
TO pgrpc_service, pgrpc_user;

GRANT EXECUTE ON FUNCTION api.site_tokens(uuid, text) TO pgrpc_service, pgrpc_admin;

-- Task management (V5) ----------------------------------------------------

DROP FUNCTION api.connect_task_management(uuid, text, text, text, text, jsonb, text);
CREATE FUNCTION api.connect_task_management(
    organization_id uuid,
    provider text,
    external_instance_id text,
    instance_url text,
    display_name text,
    metadata jsonb,
    connected_by text DEFAULT NULL
)
RETURNS api.task_management_connection
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Parameters are always written qualified (connect_task_management.x), so
-- bare names in ON CONFLICT (...) are the table's columns.
#variable_conflict use_column
DECLARE
    v_row api.task_management_connection;
    v_constraint text;
    v_active uuid;
BEGIN
    PERFORM private.require_org_access(connect_task_management.organization_id);
    IF NOT EXISTS (SELECT 1 FROM private.organizations AS o
                   WHERE o.id = connect_task_management.organization_id) THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no organization %s.', connect_task_management.organization_id),
            HINT = 'Create the organization with create_organization first.';
    END IF;

    BEGIN
        -- A live connection to the same instance is re-authorized in place;
        -- a disconnected one is left alone and a new row is created.
        INSERT INTO private.task_management_connections AS c
            (organization_id, provider, status, external_instance_id, instance_url,
             display_name, connected_by, metadata)
        VALUES
            (connect_task_management.organization_id,
             connect_task_management.provider,
             'active',
             connect_task_management.external_instance_id,
             connect_task_management.instance_url,
             connect_task_management.display_name,
             coalesce(connect_task_management.connected_by, private.jwt_sub()),
             connect_task_management.metadata)
        ON CONFLICT (organization_id, provider, external_instance_id) WHERE status <> 'disconnected'
        DO UPDATE SET
            display_name = EXCLUDED.display_name,
            instance_url = EXCLUDED.instance_url,
            metadata = EXCLUDED.metadata,
            status = 'active',
            error_message = NULL
        RETURNING c.id, c.organization_id, c.provider, c.status, c.external_instance_id,
                  c.instance_url, c.display_name, c.connected_by, c.metadata, c.last_used_at,
                  c.error_message, c.created_at, c.updated_at
        INTO v_row;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
        IF v_constraint IS DISTINCT FROM 'task_management_connections_one_active' THEN
            RAISE;
        END IF;
        SELECT c.id INTO v_active FROM private.task_management_connections AS c
        WHERE c.organization_id = connect_task_management.organization_id
          AND c.provider = connect_task_management.provider
          AND c.status = 'active';
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'active_connection_exists',
            DETAIL = format('Organization %s already has an active %s connection %s to another instance.',
                            connect_task_management.organization_id, connect_task_management.provider,
                            coalesce(v_active::text, '(just created)')),
            HINT = 'Disconnect or disable that connection first (disconnect_task_management, set_connection_status).';
    END;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.connect_task_management(uuid, text, text, text, text, jsonb, text) IS
$$Connects an organization to a task-management instance, or re-authorizes it.

provider is jira_cloud. instance_url must be an absolute https URL with a host (else 400 invalid_url). metadata is required and validated per provider; for jira_cloud it is {"cloudId": "<uuid>", "scopes": ["..."]} with scopes optional (≤100 strings of ≤256 chars) and no other key (else 400 invalid_metadata, DETAIL names the field). connected_by defaults to the JWT sub and never changes afterwards.
If a connection to the same instance (organization, provider, external_instance_id) exists and is not disconnected, this is a re-auth: display_name, instance_url and metadata are updated, error_message is cleared and the status becomes active. A disconnected connection is terminal: a new row is created instead.
An organization has at most one active connection per provider: connecting a second instance while another is active is 409 active_connection_exists. An unknown organization is 404 not_found. Returns the connection: {id, organization_id, provider, status, external_instance_id, instance_url, display_name, connected_by, metadata, last_used_at, error_message, created_at, updated_at}. Callers: service.$$;

DROP FUNCTION api.active_task_management_connection(uuid, text);
CREATE FUNCTION api.active_task_management_connection(organization_id uuid, provider text)
RETURNS api.task_management_connection
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row api.task_management_connection;
BEGIN
    PERFORM private.require_org_access(active_task_management_connection.organization_id);
    SELECT c.id, c.organization_id, c.provider, c.status, c.external_instance_id,
           c.instance_url, c.display_name, c.connected_by, c.metadata, c.last_used_at,
           c.error_message, c.created_at, c.updated_at
    INTO v_row
    FROM private.task_management_connections AS c
    WHERE c.organization_id = active_task_management_connection.organization_id
      AND c.provider = active_task_management_connection.provider
      AND c.status = 'active';
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('Organization %s has no active %s connection.',
                            active_task_management_connection.organization_id,
                            active_task_management_connection.provider),
            HINT = 'Connect one with connect_task_management, or re-authorize the existing one.';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.active_task_management_connection(uuid, text) IS
$$The organization's active connection for a provider.

Returns the connection (the fields connect_task_management returns), or 404 not_found when there is none. A user may only ask about its own org_id (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

DROP FUNCTION api.set_connection_status(uuid, text, text);
CREATE FUNCTION api.set_connection_status(connection_id uuid, status text, error_message text DEFAULT NULL)
RETURNS api.task_management_connection
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row api.task_management_connection;
    v_constraint text;
BEGIN
    BEGIN
        UPDATE private.task_management_connections AS c
        SET status = set_connection_status.status,
            error_message = set_connection_status.error_message
        WHERE c.id = set_connection_status.connection_id
        RETURNING c.id, c.organization_id, c.provider, c.status, c.external_instance_id,
                  c.instance_url, c.display_name, c.connected_by, c.metadata, c.last_used_at,
                  c.error_message, c.created_at, c.updated_at
        INTO v_row;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
        IF v_constraint IS DISTINCT FROM 'task_management_connections_one_active' THEN
            RAISE;
        END IF;
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'active_connection_exists',
            DETAIL = format('Connection %s cannot become active: its organization already has an active connection for that provider.',
                            set_connection_status.connection_id),
            HINT = 'Disconnect or disable the other connection first.';
    END;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no task-management connection %s.', set_connection_status.connection_id),
            HINT = 'active_task_management_connection finds an organization''s connection.';
    END IF;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.set_connection_status(uuid, text, text) IS
$$Moves a connection to another status.

status is active, disabled, requires_reauth, error or disconnected. Allowed: active to any other status; disabled, requires_reauth and error to active or disconnected; disconnected is terminal. Anything else is 409 invalid_transition (DETAIL names both statuses); keeping the same status is allowed and only updates error_message. error_message is replaced by the given value (default null, which clears it).
Entering requires_reauth, error or disabled emits task_management.connection_status_changed in the same transaction. Becoming active while another connection of the organization and provider is active is 409 active_connection_exists; an unknown id is 404 not_found. Returns the connection (the fields connect_task_management returns). Callers: service.$$;

DROP FUNCTION api.disconnect_task_management(uuid);
CREATE FUNCTION api.disconnect_task_management(connection_id uuid)
RETURNS api.task_management_connection
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
    v_row api.task_management_connection;
BEGIN
    SELECT c.organization_id INTO v_org
    FROM private.task_management_connections AS c
    WHERE c.id = disconnect_task_management.connection_id;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no task-management connection %s.', disconnect_task_management.connection_id),
            HINT = 'active_task_management_connection finds an organization''s connection.';
    END IF;
    PERFORM private.require_org_access(v_org);

    UPDATE private.task_management_connections AS c
    SET status = 'disconnected'
    WHERE c.id = disconnect_task_management.connection_id
    RETURNING c.id, c.organization_id, c.provider, c.status, c.external_instance_id,
              c.instance_url, c.display_name, c.connected_by, c.metadata, c.last_used_at,
              c.error_message, c.created_at, c.updated_at
    INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.disconnect_task_management(uuid) IS
$$Disconnects a task-management connection for good.

disconnected is terminal: the row stays (its tickets keep their history) but can never become active again; connecting the same instance later creates a new connection. Disconnecting twice is harmless. A user may only disconnect its own organization's connections (else 403 forbidden); an unknown id is 404 not_found. Returns the connection (the fields connect_task_management returns). Callers: service, user.$$;

DROP FUNCTION api.create_ticket(uuid, text, text, text, uuid[], uuid, text, text);
CREATE FUNCTION api.create_ticket(
    connection_id uuid,
    external_ticket_id text,
    ticket_key text,
    ticket_url text,
    suggestion_ids uuid[] DEFAULT '{}',
    opportunity_id uuid DEFAULT NULL,
    ticket_status text DEFAULT NULL,
    created_by text DEFAULT NULL
)
RETURNS api.ticket
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_connection private.task_management_connections;
    v_ticket api.ticket;
    v_suggestions uuid[];
    v_missing uuid[];
    v_taken text;
    v_linked integer;
    v_created_by text := coalesce(create_ticket.created_by, private.jwt_sub());
BEGIN
    -- The row lock keeps the connection active until this ticket commits
    -- (a concurrent disconnect waits for it, then applies).
    SELECT c.* INTO v_connection
    FROM private.task_management_connections AS c
    WHERE c.id = create_ticket.connection_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no task-management connection %s.', create_ticket.connection_id),
            HINT = 'active_task_management_connection finds an organization''s connection.';
    END IF;
    PERFORM private.require_org_access(v_connection.organization_id);
    IF private.request_role() = 'pgrpc_user'
       AND v_created_by IS DISTINCT FROM private.jwt_sub() THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = format('A user may only create tickets as itself (%s), not as %s.',
                            coalesce(private.jwt_sub(), 'no sub'), v_created_by),
            HINT = 'Leave created_by empty: it defaults to the token''s sub.';
    END IF;
    IF v_connection.status <> 'active' THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'connection_not_active',
            DETAIL = format('Connection %s is %s, not active.', v_connection.id, v_connection.status),
            HINT = CASE WHEN v_connection.status = 'disconnected'
                        THEN 'Connect again with connect_task_management and use the new connection.'
                        ELSE 'Re-authorize with connect_task_management, or set the status back to active.'
                   END;
    END IF;

    -- Sorted and distinct: every caller locks suggestions in the same
    -- order, so two tickets racing for overlapping sets cannot deadlock.
    SELECT coalesce(array_agg(DISTINCT s ORDER BY s), '{}') INTO v_suggestions
    FROM unnest(coalesce(create_ticket.suggestion_ids, '{}')) AS s
    WHERE s IS NOT NULL;

    SELECT array_agg(s ORDER BY s) INTO v_missing
    FROM unnest(v_suggestions) AS s
    WHERE NOT EXISTS (SELECT 1 FROM private.suggestions AS x WHERE x.id = s);
    IF v_missing IS NOT NULL THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no suggestion %s.', array_to_string(v_missing, ', ')),
            HINT = 'Pass only existing suggestion ids.';
    END IF;
    IF create_ticket.opportunity_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM private.opportunities AS o WHERE o.id = create_ticket.opportunity_id) THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no opportunity %s.', create_ticket.opportunity_id),
            HINT = 'Pass an existing opportunity id, or none.';
    END IF;

    -- The ticket.created trigger must run at commit, after the links below
    -- exist, even if the caller made constraints IMMEDIATE.
    SET CONSTRAINTS private._900_emit_outbox DEFERRED;
    INSERT INTO private.tickets AS t
        (connection_id, organization_id, opportunity_id, external_ticket_id, ticket_key,
         ticket_url, ticket_status, ticket_provider, created_by)
    VALUES
        (v_connection.id, v_connection.organization_id, create_ticket.opportunity_id,
         create_ticket.external_ticket_id, create_ticket.ticket_key, create_ticket.ticket_url,
         create_ticket.ticket_status, v_connection.provider, v_created_by)
    RETURNING t.id, t.connection_id, t.organization_id, t.opportunity_id, t.external_ticket_id,
              t.ticket_key, t.ticket_url, t.ticket_status, t.ticket_provider, t.created_by,
              t.created_at, t.updated_at
    INTO v_ticket;

    -- All or nothing: a suggestion already linked (before, or by a
    -- concurrent call that committed first) is skipped here, and the
    -- shortfall aborts the whole call, the ticket included.
    WITH linked AS (
        INSERT INTO private.ticket_suggestions (ticket_id, suggestion_id, opportunity_id)
        SELECT v_ticket.id, x.id, x.opportunity_id
        FROM private.suggestions AS x
        JOIN unnest(v_suggestions) AS s(id) ON s.id = x.id
        ORDER BY x.id
        ON CONFLICT (suggestion_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO v_linked FROM linked;

    IF v_linked < cardinality(v_suggestions) THEN
        SELECT string_agg(format('%s (ticket %s)', ts.suggestion_id, ts.ticket_id), ', ' ORDER BY ts.suggestion_id)
        INTO v_taken
        FROM private.ticket_suggestions AS ts
        WHERE ts.suggestion_id = ANY (v_suggestions)
          AND ts.ticket_id <> v_ticket.id;
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'suggestion_already_ticketed',
            DETAIL = format('Already linked to a ticket: %s. Nothing was created.', coalesce(v_taken, 'a suggestion')),
            HINT = 'ticket_for_suggestion returns the existing ticket; leave that suggestion out.';
    END IF;

    UPDATE private.task_management_connections AS c
    SET last_used_at = clock_timestamp()
    WHERE c.id = v_connection.id;

    -- ticket.created is written at commit by the tickets' _900_emit_outbox
    -- trigger, with the links inserted above.
    RETURN v_ticket;
END
$$;

COMMENT ON FUNCTION api.create_ticket(uuid, text, text, text, uuid[], uuid, text, text) IS
$$Records a ticket created in the task-management tool and links it to suggestions.

The connection must be active (else 409 connection_not_active). Every suggestion in suggestion_ids is linked at most once, ever: if any is already linked to a ticket, the call is 409 suggestion_already_ticketed and nothing is created (no ticket, no link). Concurrent calls for one suggestion give one ticket and 409 for the others. Unknown suggestions, opportunity or connection are 404 not_found; suggestions and opportunity must belong to the connection's organization (else 403 forbidden).
ticket_url must be an absolute http(s) URL with a host (400 invalid_url); ticket_provider is the connection's provider; created_by defaults to the JWT sub, and a user may only create tickets as itself. (connection_id, external_ticket_id) is unique (409 on a duplicate).
Sets the connection's last_used_at. ticket.created (the ticket and its sorted suggestion_ids) is emitted by a trigger at commit, in the same transaction, exactly once per ticket. A user may only use its own organization's connections (403 forbidden). Returns the ticket: {id, connection_id, organization_id, opportunity_id, external_ticket_id, ticket_key, ticket_url, ticket_status, ticket_provider, created_by, created_at, updated_at}. Callers: service, user.$$;

DROP FUNCTION api.ticket_for_suggestion(uuid);
CREATE FUNCTION api.ticket_for_suggestion(suggestion_id uuid)
RETURNS api.ticket
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
    v_ticket api.ticket;
BEGIN
    SELECT si.organization_id INTO v_org
    FROM private.suggestions AS s
    JOIN private.opportunities AS o ON o.id = s.opportunity_id
    JOIN private.sites AS si ON si.id = o.site_id
    WHERE s.id = ticket_for_suggestion.suggestion_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM private.require_org_access(v_org);

    SELECT t.id, t.connection_id, t.organization_id, t.opportunity_id, t.external_ticket_id,
           t.ticket_key, t.ticket_url, t.ticket_status, t.ticket_provider, t.created_by,
           t.created_at, t.updated_at
    INTO v_ticket
    FROM private.ticket_suggestions AS ts
    JOIN private.tickets AS t ON t.id = ts.ticket_id
    WHERE ts.suggestion_id = ticket_for_suggestion.suggestion_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN v_ticket;
END
$$;

COMMENT ON FUNCTION api.ticket_for_suggestion(uuid) IS
$$The ticket a suggestion is linked to, or null.

Returns the ticket (the fields create_ticket returns), or null when the suggestion has no ticket (or does not exist). A user may only ask about suggestions of its own organization (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

DROP FUNCTION api.tickets_for_opportunity(uuid);
CREATE FUNCTION api.tickets_for_opportunity(opportunity_id uuid)
RETURNS SETOF api.ticket
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
BEGIN
    SELECT si.organization_id INTO v_org
    FROM private.opportunities AS o
    JOIN private.sites AS si ON si.id = o.site_id
    WHERE o.id = tickets_for_opportunity.opportunity_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM private.require_org_access(v_org);

    RETURN QUERY
        SELECT t.id, t.connection_id, t.organization_id, t.opportunity_id, t.external_ticket_id,
               t.ticket_key, t.ticket_url, t.ticket_status, t.ticket_provider, t.created_by,
               t.created_at, t.updated_at
        FROM private.tickets AS t
        WHERE t.opportunity_id = tickets_for_opportunity.opportunity_id
           OR EXISTS (SELECT 1 FROM private.ticket_suggestions AS ts
                      WHERE ts.ticket_id = t.id
                        AND ts.opportunity_id = tickets_for_opportunity.opportunity_id)
        ORDER BY t.created_at, t.id;
END
$$;

COMMENT ON FUNCTION api.tickets_for_opportunity(uuid) IS
$$The tickets of an opportunity, oldest first.

A ticket belongs to an opportunity when it was created for it (opportunity_id) or links one of its suggestions. Returns an array of tickets (the fields create_ticket returns), empty when there is none (or the opportunity does not exist). A user may only ask about its own organization's opportunities (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

DROP FUNCTION api.update_ticket_status(uuid, text);
CREATE FUNCTION api.update_ticket_status(ticket_id uuid, ticket_status text)
RETURNS api.ticket
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ticket api.ticket;
BEGIN
    UPDATE private.tickets AS t
    SET ticket_status = update_ticket_status.ticket_status
    WHERE t.id = update_ticket_status.ticket_id
    RETURNING t.id, t.connection_id, t.organization_id, t.opportunity_id, t.external_ticket_id,
              t.ticket_key, t.ticket_url, t.ticket_status, t.ticket_provider, t.created_by,
              t.created_at, t.updated_at
    INTO v_ticket;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no ticket %s.', update_ticket_status.ticket_id),
            HINT = 'ticket_for_suggestion and tickets_for_opportunity find tickets.';
    END IF;
    RETURN v_ticket;
END
$$;

COMMENT ON FUNCTION api.update_ticket_status(uuid, text) IS
$$Records a ticket's status as last seen in the task-management tool.

ticket_status is the tool's own status name (free text, not blank); null clears it. Only ticket_status changes: the ticket's key, external id, provider and creator are write-once. An unknown id is 404 not_found. Returns the ticket (the fields create_ticket returns). Callers: service (the sync).$$;

GRANT EXECUTE ON FUNCTION
    api.connect_task_management(uuid, text, text, text, text, jsonb, text),
    api.set_connection_status(uuid, text, text),
    api.update_ticket_status(uuid, text)
TO pgrpc_service;

GRANT EXECUTE ON FUNCTION
    api.active_task_management_connection(uuid, text),
    api.disconnect_task_management(uuid),
    api.create_ticket(uuid, text, text, text, uuid[], uuid, text, text),
    api.ticket_for_suggestion(uuid),
    api.tickets_for_opportunity(uuid)
TO pgrpc_service, pgrpc_user;

-- Idempotency keys (V6) ---------------------------------------------------

DROP FUNCTION api.find_active_idempotency_key(uuid, text);
CREATE FUNCTION api.find_active_idempotency_key(organization_id uuid, key text)
RETURNS api.idempotency_key
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

COMMENT ON FUNCTION api.find_active_idempotency_key(uuid, text) IS
$$Looks up an idempotency key.

Returns {id, organization_id, key, endpoint, request_hash, status, lease_expires_at, response_status, response_body, created_at, expires_at}, or null when the key is absent or expired. The lease_token is never returned: only idempotency_begin hands it out, to the caller that then holds the lease. Read-only: callable with GET.$$;

GRANT EXECUTE ON FUNCTION api.find_active_idempotency_key(uuid, text) TO pgrpc_service;

-- Contracts (V8) ----------------------------------------------------------

DROP FUNCTION api.create_team(bigint, text);
CREATE FUNCTION api.create_team(tenant_id bigint, name text)
RETURNS api.team
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.teams (tenant_id, name)
    VALUES (create_team.tenant_id, create_team.name)
    RETURNING id, tenant_id, name, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_team(bigint, text) IS
$$Creates a team of a tenant.

tenant_id is a positive bigint; name must not be blank. Returns the new team: {id, tenant_id, name, created_at, updated_at}.$$;

DROP FUNCTION api.create_parent(bigint, text, text);
CREATE FUNCTION api.create_parent(tenant_id bigint, name text, email text)
RETURNS api.parent
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.parents (tenant_id, name, email)
    VALUES (create_parent.tenant_id, create_parent.name, create_parent.email)
    RETURNING id, tenant_id, name, email, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_parent(bigint, text, text) IS
$$Creates a parent (the contract signer) of a tenant.

email receives the contract link. Returns the new parent: {id, tenant_id, name, email, created_at, updated_at}.$$;

DROP FUNCTION api.create_player(bigint, uuid, text, uuid);
CREATE FUNCTION api.create_player(tenant_id bigint, team_id uuid, name text, parent_id uuid DEFAULT NULL)
RETURNS api.player
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO private.players (tenant_id, team_id, name, parent_id)
    VALUES (create_player.tenant_id, create_player.team_id, create_player.name, create_player.parent_id)
    RETURNING id, tenant_id, team_id, parent_id, name, contract_token, contract_status,
              signed_at, signature_ref, created_at, updated_at
$$;

COMMENT ON FUNCTION api.create_player(bigint, uuid, text, uuid) IS
$$Creates a player with a pending contract; the result includes its contract_token.

Returns {id, tenant_id, team_id, parent_id, name, contract_token, contract_status, signed_at, signature_ref, created_at, updated_at}. The token (32 random bytes from pgcrypto, base64url) is generated by the database; it is the credential of the signing link, so send it only to the parent. The team and the parent must belong to tenant_id (else 409, foreign key). A player without a parent can be created but not signed.$$;

GRANT EXECUTE ON FUNCTION
    api.create_team(bigint, text),
    api.create_parent(bigint, text, text),
    api.create_player(bigint, uuid, text, uuid)
TO pgrpc_service;

-- Receive feed (V9) -------------------------------------------------------

DROP FUNCTION api.finalize_receive(uuid, text, integer, bigint, inet, text);
CREATE FUNCTION api.finalize_receive(
    reservation_id uuid,
    owner_email text,
    file_count integer,
    total_bytes bigint,
    sender_ip inet DEFAULT NULL,
    sender_label text DEFAULT NULL
)
RETURNS api.receive_finalization
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner text := lower(btrim(finalize_receive.owner_email));
    v_existing_owner text;
BEGIN
    IF finalize_receive.reservation_id IS NULL THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_reservation_id',
            DETAIL = 'reservation_id is null.',
            HINT = 'Pass the reservation''s uuid.';
    END IF;

    -- The entry's _900_emit_outbox trigger emits receive.finalized; this
    -- flag (for the legacy migration only) must not silence it, whatever
    -- the caller set.
    PERFORM pg_catalog.set_config('pgrpc.receive_legacy_migration', 'off', true);
    INSERT INTO private.receive_feed_entries AS e
        (reservation_id, owner_email, file_count, total_bytes, sender_label, sender_ip)
    VALUES (finalize_receive.reservation_id, v_owner, finalize_receive.file_count,
            finalize_receive.total_bytes, finalize_receive.sender_label, finalize_receive.sender_ip)
    ON CONFLICT DO NOTHING;

    IF FOUND THEN
        INSERT INTO private.receive_unread (reservation_id, owner_email)
        VALUES (finalize_receive.reservation_id, v_owner);
        RETURN ROW(finalize_receive.reservation_id, true)::api.receive_finalization;
    END IF;

    -- A duplicate: this statement sees the committed winner.
    SELECT e.owner_email INTO v_existing_owner
    FROM private.receive_feed_entries AS e
    WHERE e.reservation_id = finalize_receive.reservation_id;
    IF v_existing_owner IS DISTINCT FROM v_owner THEN
        RAISE SQLSTATE 'PT409' USING MESSAGE = 'reservation_owner_mismatch',
            DETAIL = format('Reservation %s was finalized for another mailbox, not %s.',
                            finalize_receive.reservation_id, v_owner),
            HINT = 'A reservation belongs to one mailbox; check the reservation id.';
    END IF;
    RETURN ROW(finalize_receive.reservation_id, false)::api.receive_finalization;
END
$$;

COMMENT ON FUNCTION api.finalize_receive(uuid, text, integer, bigint, inet, text) IS
$$Records a finalized receive in its owner's feed, once per reservation.

Returns {reservation_id, newly_created}. The first call for a reservation inserts the entry and an unread marker, and the entry's trigger emits one receive.finalized event (payload reservation_id, owner_email, created_at, file_count, total_bytes, sender_label; never the IP), all in one transaction. A repeat, concurrent or not, changes nothing and returns newly_created false; a repeat naming another mailbox is 409 reservation_owner_mismatch. owner_email is stored lowercased; file_count and total_bytes must be non-negative (400).$$;

DROP FUNCTION api.recent_receives(text, integer, timestamptz, uuid);
CREATE FUNCTION api.recent_receives(
    owner_email text,
    max_entries integer DEFAULT 20,
    before_created_at timestamptz DEFAULT NULL,
    before_reservation_id uuid DEFAULT NULL
)
RETURNS SETOF api.receive_feed_item
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_owner text := lower(btrim(recent_receives.owner_email));
    v_before_at timestamptz := coalesce(recent_receives.before_created_at, 'infinity'::timestamptz);
    v_before_id uuid := coalesce(recent_receives.before_reservation_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid);
    v_ip_cutoff timestamptz := clock_timestamp() - private.receive_ip_retention();
BEGIN
    PERFORM private.require_mailbox_access(v_owner);
    IF recent_receives.max_entries IS NULL OR recent_receives.max_entries NOT BETWEEN 1 AND 200 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_max_entries',
            DETAIL = format('max_entries must be between 1 and 200, got %s.', coalesce(recent_receives.max_entries::text, 'null')),
            HINT = 'Ask for at most 200 entries and page with before_created_at and before_reservation_id.';
    END IF;
    IF (recent_receives.before_created_at IS NULL) <> (recent_receives.before_reservation_id IS NULL) THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_cursor',
            DETAIL = 'before_created_at and before_reservation_id must be given together.',
            HINT = 'Pass the created_at and reservation_id of the last entry of the previous page, or neither.';
    END IF;

    RETURN QUERY
    WITH current_entries AS (
        SELECT e.reservation_id, e.created_at, e.file_count, e.total_bytes, e.sender_label, e.sender_ip,
               EXISTS (SELECT 1 FROM private.receive_unread AS u
                       WHERE u.reservation_id = e.reservation_id) AS unread
        FROM private.receive_feed_entries AS e
        WHERE e.owner_email = v_owner
          AND (e.created_at, e.reservation_id) < (v_before_at, v_before_id)
        ORDER BY e.created_at DESC, e.reservation_id DESC
        LIMIT recent_receives.max_entries
    ),
    legacy_entries AS (
        -- Not yet migrated; a reservation that already has an entry (of
        -- any owner) is shown from the entry only.
        SELECT g.reservation_id, g.created_at, g.file_count, g.total_bytes, g.sender_label, g.sender_ip, g.unread
        FROM private.legacy_recent_receives AS l
        CROSS JOIN LATERAL private.legacy_receives(l.entries) AS g
        WHERE l.owner_email = v_owner
          AND (g.created_at, g.reservation_id) < (v_before_at, v_before_id)
          AND NOT EXISTS (SELECT 1 FROM private.receive_feed_entries AS e
                          WHERE e.reservation_id = g.reservation_id)
    )
    SELECT x.reservation_id, x.created_at, x.file_count, x.total_bytes, x.sender_label,
           CASE WHEN x.created_at >= v_ip_cutoff THEN x.sender_ip END,
           x.unread
    FROM (SELECT * FROM current_entries UNION ALL SELECT * FROM legacy_entries) AS x
    ORDER BY x.created_at DESC, x.reservation_id DESC
    LIMIT recent_receives.max_entries;
END
$$;

COMMENT ON FUNCTION api.recent_receives(text, integer, timestamptz, uuid) IS
$$Lists a mailbox's receive feed, newest first, one keyset page at a time.

Each item: {reservation_id, created_at, file_count, total_bytes, sender_label, sender_ip, unread}. max_entries is 1..200 (else 400 invalid_max_entries). For the next page pass the last item's created_at and reservation_id as before_created_at and before_reservation_id (both or neither, else 400 invalid_cursor). sender_ip is null once the entry is older than the receive_ip_retention setting, whether or not the scrub has run. Entries still in the legacy array are included, once each. A pgrpc_user may read only the mailbox of its email claim (403 forbidden).$$;

GRANT EXECUTE ON FUNCTION api.finalize_receive(uuid, text, integer, bigint, inet, text) TO pgrpc_service;
GRANT EXECUTE ON FUNCTION api.recent_receives(text, integer, timestamptz, uuid) TO pgrpc_service, pgrpc_user;

RESET ROLE;

-- The private result types that nothing returns any more, dropped by the
-- migrating superuser whichever role owns them now.
DROP TYPE private.suggestion_grant_result;
DROP TYPE private.site_token_usage;
DROP TYPE private.receive_finalization;
