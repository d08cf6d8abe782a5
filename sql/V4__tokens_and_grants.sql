-- Tokens and write-once grants: per-site, per-cycle freemium quotas that are
-- spent by one conditional UPDATE, and suggestion grants that, once written,
-- never change.
--
-- The rules the database keeps:
-- - a token budget is never over-spent: the spend is a single
--   UPDATE ... WHERE used < total, backed by the tokens_used_within_total
--   CHECK;
-- - a counter is never rewritten: its key and total are write-once, used
--   only grows one token per UPDATE, and a counter is deleted only by
--   admin.prune_token_cycles (past cycles) or with its site, never
--   truncated;
-- - token types and opportunity types are one mapping (private.token_types),
--   not two namespaces;
-- - whether a plan meters tokens is data: it does iff
--   private.token_allowances has rows for it;
-- - a grant is append-only and write-once (privileges and triggers); it
--   disappears only by cascade when its suggestion (or site) is purged;
-- - every grant, however it is written, emits one suggestion.granted event
--   (an AFTER INSERT trigger), in the same transaction.

SET LOCAL ROLE pgrpc_owner;

-- Reference data ---------------------------------------------------------------

CREATE TABLE private.token_types (
    token_type text PRIMARY KEY,
    opportunity_type text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT token_types_opportunity_type_unique UNIQUE (opportunity_type),
    CONSTRAINT token_types_token_type_is_snake_case CHECK (token_type ~ '^[a-z][a-z0-9_]*$'),
    CONSTRAINT token_types_opportunity_type_not_blank CHECK (btrim(opportunity_type) <> '')
);

COMMENT ON TABLE private.token_types IS
$$The single mapping between token types (broken_backlinks) and opportunity types (broken-backlinks).$$;

CREATE TABLE private.token_allowances (
    plan text NOT NULL,
    token_type text NOT NULL,
    per_cycle integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT token_allowances_pkey PRIMARY KEY (plan, token_type),
    CONSTRAINT token_allowances_plan_known CHECK (plan IN ('free', 'freemium', 'paid')),
    CONSTRAINT token_allowances_per_cycle_non_negative CHECK (per_cycle >= 0),
    CONSTRAINT token_allowances_token_type_exists FOREIGN KEY (token_type)
        REFERENCES private.token_types (token_type) ON UPDATE CASCADE
);

COMMENT ON TABLE private.token_allowances IS
$$Tokens per cycle for each plan and token type. A plan meters tokens iff it has rows here; change with admin.set_token_allowance.$$;

CREATE TABLE private.suggestion_completeness (
    opportunity_type text PRIMARY KEY,
    required_keys text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT suggestion_completeness_opportunity_type_exists FOREIGN KEY (opportunity_type)
        REFERENCES private.token_types (opportunity_type) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT suggestion_completeness_keys_not_null CHECK (array_position(required_keys, NULL) IS NULL),
    CONSTRAINT suggestion_completeness_keys_one_dimensional CHECK (array_ndims(required_keys) IS NULL OR array_ndims(required_keys) = 1)
);

COMMENT ON TABLE private.suggestion_completeness IS
$$When a suggestion of an opportunity type is complete: every required key is present in its data, not null and not a blank string. A type without a row here cannot be granted.$$;

-- Token counters ---------------------------------------------------------------

CREATE TABLE private.tokens (
    site_id uuid NOT NULL REFERENCES private.sites (id) ON DELETE CASCADE,
    token_type text NOT NULL,
    cycle text NOT NULL,
    total integer NOT NULL,
    used integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT tokens_pkey PRIMARY KEY (site_id, token_type, cycle),
    CONSTRAINT tokens_cycle_is_yyyy_mm CHECK (cycle ~ '^[1-9][0-9]{3}-(0[1-9]|1[0-2])$'),
    CONSTRAINT tokens_used_within_total CHECK (0 <= used AND used <= total),
    CONSTRAINT tokens_token_type_exists FOREIGN KEY (token_type)
        REFERENCES private.token_types (token_type) ON UPDATE CASCADE
);
CREATE INDEX tokens_cycle_idx ON private.tokens (cycle);

COMMENT ON TABLE private.tokens IS
$$One counter per site, token type and cycle (YYYY-MM, UTC), created lazily from the plan's allowance on first use; used only grows, by one conditional UPDATE.

The key and total are write-once; used changes only from n to n + 1; a counter is deleted only by admin.prune_token_cycles (cycles before the current one) or by cascade with its site; TRUNCATE is refused. Triggers enforce this for every role.$$;

-- BEFORE UPDATE (row): used changes only by one token at a time, upwards
-- (n -> n + 1), which is what the conditional spend does. A rewind or a
-- jump is refused for every role; the CHECK keeps used <= total.
CREATE FUNCTION private.tg_tokens__spend_one_at_a_time()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.used IS DISTINCT FROM OLD.used AND NEW.used IS DISTINCT FROM OLD.used + 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'used_only_grows',
            DETAIL = format('used of the %s counter of site %s in cycle %s can go from %s to %s only, not to %s.',
                            OLD.token_type, OLD.site_id, OLD.cycle, OLD.used, OLD.used + 1, NEW.used),
            HINT = 'Tokens are spent one at a time with api.consume_token; spent tokens are never given back.';
    END IF;
    RETURN NEW;
END
$$;

-- BEFORE DELETE (row) and BEFORE TRUNCATE (statement): a counter goes only
-- - with its site (an FK cascade: the site row is already gone), or
-- - through admin.prune_token_cycles, the SECURITY DEFINER function owned
--   by pgrpc_api (current_user = 'pgrpc_api' only inside such a function:
--   no login role can become pgrpc_api), and only for a cycle before the
--   current one, so a live budget can never be reset by deleting it.
CREATE FUNCTION private.tg_tokens__delete_only_by_prune()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND (
           NOT EXISTS (SELECT 1 FROM private.sites WHERE id = OLD.site_id)
        OR (current_user = 'pgrpc_api' AND OLD.cycle < private.current_cycle())) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = 'prune_only',
        DETAIL = CASE WHEN TG_OP = 'TRUNCATE'
                      THEN 'TRUNCATE on private.tokens is not allowed: it would reset every budget.'
                      ELSE format('The %s counter of site %s in cycle %s cannot be deleted directly.',
                                  OLD.token_type, OLD.site_id, OLD.cycle) END,
        HINT = 'Past cycles are removed by admin.prune_token_cycles; a counter also goes when its site is deleted.';
END
$$;

CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.tokens
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once('site_id', 'token_type', 'cycle', 'total', 'created_at');
CREATE TRIGGER _110_spend_one_at_a_time BEFORE UPDATE ON private.tokens
    FOR EACH ROW EXECUTE FUNCTION private.tg_tokens__spend_one_at_a_time();
CREATE TRIGGER _120_delete_only_by_prune BEFORE DELETE ON private.tokens
    FOR EACH ROW EXECUTE FUNCTION private.tg_tokens__delete_only_by_prune();
CREATE TRIGGER _120_forbid_truncate BEFORE TRUNCATE ON private.tokens
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_tokens__delete_only_by_prune();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.tokens
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.token_types
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.token_allowances
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.suggestion_completeness
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();

-- Grants: append-only, write-once ----------------------------------------------

CREATE TABLE private.suggestion_grants (
    suggestion_id uuid PRIMARY KEY REFERENCES private.suggestions (id) ON DELETE CASCADE,
    site_id uuid NOT NULL REFERENCES private.sites (id) ON DELETE CASCADE,
    token_type text NOT NULL,
    cycle text NOT NULL,
    granted_by text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT suggestion_grants_cycle_is_yyyy_mm CHECK (cycle ~ '^[1-9][0-9]{3}-(0[1-9]|1[0-2])$'),
    CONSTRAINT suggestion_grants_granted_by_not_blank CHECK (btrim(granted_by) <> ''),
    CONSTRAINT suggestion_grants_token_type_exists FOREIGN KEY (token_type)
        REFERENCES private.token_types (token_type)
);
CREATE INDEX suggestion_grants_site_id_idx ON private.suggestion_grants (site_id);

COMMENT ON TABLE private.suggestion_grants IS
$$One grant per suggestion, written by api.grant_suggestion. Append-only and write-once: no UPDATE, no TRUNCATE and no direct DELETE for any role; a grant goes only by cascade when its suggestion or site is purged. Every insert emits one suggestion.granted outbox event (trigger _900_emit_outbox).$$;

-- BEFORE DELETE (row): a grant may only go by an FK cascade. During the
-- cascade the parent row is already deleted and visible as gone; a direct
-- DELETE finds both parents still there and is refused.
CREATE FUNCTION private.tg_suggestion_grants__delete_only_by_cascade()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM private.suggestions WHERE id = OLD.suggestion_id)
       AND EXISTS (SELECT 1 FROM private.sites WHERE id = OLD.site_id) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'append_only',
            DETAIL = format('The grant of suggestion %s cannot be deleted while the suggestion exists.',
                            OLD.suggestion_id),
            HINT = 'Grants are permanent; a grant goes only when its suggestion is purged (DELETE FROM private.suggestions cascades).';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER _100_forbid_update BEFORE UPDATE ON private.suggestion_grants
    FOR EACH ROW EXECUTE FUNCTION private.tg_forbid('write_once');
CREATE TRIGGER _100_delete_only_by_cascade BEFORE DELETE ON private.suggestion_grants
    FOR EACH ROW EXECUTE FUNCTION private.tg_suggestion_grants__delete_only_by_cascade();
CREATE TRIGGER _100_forbid_truncate BEFORE TRUNCATE ON private.suggestion_grants
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_forbid('append_only');

-- AFTER INSERT (row): every grant, whoever writes it, emits
-- suggestion.granted in the same transaction. SECURITY DEFINER (owner
-- pgrpc_owner), so the event is written whatever the inserting role may do.
CREATE FUNCTION private.tg_suggestion_grants__emit_granted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_opportunity_id uuid;
    v_opportunity_type text;
    v_organization_id uuid;
BEGIN
    SELECT o.id, o.type, st.organization_id
    INTO v_opportunity_id, v_opportunity_type, v_organization_id
    FROM private.suggestions s
    JOIN private.opportunities o ON o.id = s.opportunity_id
    JOIN private.sites st ON st.id = NEW.site_id
    WHERE s.id = NEW.suggestion_id;

    PERFORM private.outbox_emit('suggestion', NEW.suggestion_id::text, 'suggestion.granted',
        jsonb_build_object(
            'suggestion_id', NEW.suggestion_id,
            'opportunity_id', v_opportunity_id,
            'opportunity_type', v_opportunity_type,
            'site_id', NEW.site_id,
            'organization_id', v_organization_id,
            'token_type', NEW.token_type,
            'cycle', NEW.cycle,
            'granted_by', NEW.granted_by,
            'granted_at', NEW.granted_at));
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION private.tg_suggestion_grants__emit_granted() FROM PUBLIC;

CREATE TRIGGER _900_emit_outbox AFTER INSERT ON private.suggestion_grants
    FOR EACH ROW EXECUTE FUNCTION private.tg_suggestion_grants__emit_granted();

-- Result shapes (composite types, so that each function answers one object) --

CREATE TYPE private.token_balance AS (
    site_id uuid,
    token_type text,
    cycle text,
    total integer,
    used integer,
    remaining integer
);

CREATE TYPE private.suggestion_grant_result AS (
    suggestion_id uuid,
    token_type text,
    cycle text,
    granted_at timestamptz,
    newly_granted boolean
);

CREATE TYPE private.site_token_usage AS (
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

-- Internal helpers ---------------------------------------------------------------

-- The current cycle: the UTC month of clock_timestamp(), as YYYY-MM.
CREATE FUNCTION private.current_cycle()
RETURNS text
LANGUAGE sql
VOLATILE
AS $$
    SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM')
$$;

-- Validates a cycle argument; NULL means the current cycle. Raises 400
-- invalid_cycle for anything but YYYY-MM with a month from 01 to 12.
CREATE FUNCTION private.check_cycle(p_cycle text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    IF p_cycle IS NULL THEN
        RETURN private.current_cycle();
    END IF;
    IF p_cycle !~ '^[1-9][0-9]{3}-(0[1-9]|1[0-2])$' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_cycle',
            DETAIL = format('Cycle %L is not a month in the form YYYY-MM.', p_cycle),
            HINT = 'Pass a UTC month such as 2025-01, or omit cycle for the current month.';
    END IF;
    RETURN p_cycle;
END
$$;

-- The first instant of the cycle after p_cycle, in UTC. Computed on
-- timestamp without time zone so the session's TimeZone cannot shift it.
CREATE FUNCTION private.cycle_end(p_cycle text)
RETURNS timestamptz
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT (make_date(substr(p_cycle, 1, 4)::integer, substr(p_cycle, 6, 2)::integer, 1)::timestamp
            + interval '1 month') AT TIME ZONE 'UTC'
$$;

-- Raises 400 unknown_token_type unless the token type exists.
CREATE FUNCTION private.check_token_type(p_token_type text)
RETURNS void
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    IF p_token_type IS NULL
       OR NOT EXISTS (SELECT 1 FROM private.token_types WHERE token_type = p_token_type) THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'unknown_token_type',
            DETAIL = format('There is no token type %L.', p_token_type),
            HINT = 'SELECT token_type FROM private.token_types lists them (for example alt_text).';
    END IF;
END
$$;

-- Whether a plan meters tokens: it does iff it has allowances.
CREATE FUNCTION private.plan_meters_tokens(p_plan text)
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM private.token_allowances WHERE plan = p_plan)
$$;

-- Raises 409 plan_not_token_metered unless the organization's plan has
-- allowances.
CREATE FUNCTION private.require_metered_plan(p_organization_id uuid)
RETURNS void
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_plan text;
BEGIN
    SELECT plan INTO v_plan FROM private.organizations WHERE id = p_organization_id;
    IF NOT private.plan_meters_tokens(v_plan) THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'plan_not_token_metered',
            DETAIL = format('Organization %s is on plan %L, which has no token allowances.',
                            p_organization_id, v_plan),
            HINT = 'Only plans with rows in private.token_allowances (freemium) spend tokens.';
    END IF;
END
$$;

-- The per-cycle allowance of a site's organization plan for a token type;
-- 0 when the plan has none.
-- PL/pgSQL rather than SQL: these run on every balance read and spend, and
-- PL/pgSQL keeps their plans for the session, where a SQL function called
-- from PL/pgSQL is planned again on every call.
CREATE FUNCTION private.site_allowance(p_site_id uuid, p_token_type text)
RETURNS integer
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_per_cycle integer;
BEGIN
    SELECT a.per_cycle INTO v_per_cycle
    FROM private.sites s
    JOIN private.organizations o ON o.id = s.organization_id
    JOIN private.token_allowances a ON a.plan = o.plan AND a.token_type = p_token_type
    WHERE s.id = p_site_id;
    RETURN coalesce(v_per_cycle, 0);
END
$$;

-- The balance of one counter without creating it: the stored row, or the
-- allowance with nothing used.
CREATE FUNCTION private.balance_of(p_site_id uuid, p_token_type text, p_cycle text)
RETURNS private.token_balance
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_total integer;
    v_used integer;
BEGIN
    SELECT t.total, t.used INTO v_total, v_used
    FROM private.tokens t
    WHERE t.site_id = p_site_id AND t.token_type = p_token_type AND t.cycle = p_cycle;
    IF NOT FOUND THEN
        v_total := private.site_allowance(p_site_id, p_token_type);
        v_used := 0;
    END IF;
    RETURN ROW(p_site_id, p_token_type, p_cycle, v_total, v_used, v_total - v_used)::private.token_balance;
END
$$;

-- Spends one token: creates the cycle's counter from the allowance if it is
-- missing (INSERT ... ON CONFLICT DO NOTHING), then one conditional UPDATE
-- (used < total). Row locking makes concurrent spenders queue on the counter
-- and re-check used < total on the latest version, so the budget is never
-- over-spent. Exhaustion raises 429 tokens_exhausted with Retry-After set to
-- the seconds until the next cycle. The caller has validated the token type
-- and cycle and checked the site exists and its plan is metered.
CREATE FUNCTION private.consume_token(p_site_id uuid, p_token_type text, p_cycle text)
RETURNS private.token_balance
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_row private.tokens;
    v_retry_after bigint;
BEGIN
    INSERT INTO private.tokens (site_id, token_type, cycle, total, used)
    VALUES (p_site_id, p_token_type, p_cycle, private.site_allowance(p_site_id, p_token_type), 0)
    ON CONFLICT (site_id, token_type, cycle) DO NOTHING;

    UPDATE private.tokens
    SET used = used + 1
    WHERE site_id = p_site_id AND token_type = p_token_type AND cycle = p_cycle
      AND used < total
    RETURNING * INTO v_row;

    IF NOT FOUND THEN
        v_retry_after := greatest(1, ceil(extract(epoch FROM private.cycle_end(p_cycle) - clock_timestamp())))::bigint;
        RAISE SQLSTATE 'PGRST' USING
            MESSAGE = json_build_object(
                'code', 'tokens_exhausted',
                'message', 'tokens_exhausted',
                'details', format('Site %s has used all its %s tokens of cycle %s.', p_site_id, p_token_type, p_cycle),
                'hint', format('The next cycle starts at %s UTC, in %s seconds.',
                               to_char(private.cycle_end(p_cycle) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                               v_retry_after))::text,
            DETAIL = json_build_object(
                'status', 429,
                'headers', json_build_object('Retry-After', v_retry_after::text))::text;
    END IF;

    RETURN ROW(v_row.site_id, v_row.token_type, v_row.cycle, v_row.total, v_row.used,
               v_row.total - v_row.used)::private.token_balance;
END
$$;

GRANT EXECUTE ON FUNCTION
    private.current_cycle(), private.check_cycle(text), private.cycle_end(text),
    private.check_token_type(text), private.plan_meters_tokens(text),
    private.require_metered_plan(uuid), private.site_allowance(uuid, text),
    private.balance_of(uuid, text, text), private.consume_token(uuid, text, text)
TO pgrpc_api;

GRANT SELECT ON private.token_types, private.suggestion_completeness TO pgrpc_api;
GRANT SELECT, INSERT, DELETE ON private.token_allowances TO pgrpc_api;
GRANT UPDATE (per_cycle) ON private.token_allowances TO pgrpc_api;
GRANT SELECT, INSERT, DELETE ON private.tokens TO pgrpc_api;
GRANT UPDATE (used) ON private.tokens TO pgrpc_api;
-- Append-only and write-once: INSERT and SELECT, nothing else.
GRANT SELECT, INSERT ON private.suggestion_grants TO pgrpc_api;

-- Seeds ------------------------------------------------------------------------

INSERT INTO private.token_types (token_type, opportunity_type) VALUES
    ('broken_backlinks', 'broken-backlinks'),
    ('alt_text', 'alt-text'),
    ('meta_tags', 'meta-tags');

INSERT INTO private.token_allowances (plan, token_type, per_cycle) VALUES
    ('freemium', 'broken_backlinks', 10),
    ('freemium', 'alt_text', 10),
    ('freemium', 'meta_tags', 10);

INSERT INTO private.suggestion_completeness (opportunity_type, required_keys) VALUES
    ('broken-backlinks', ARRAY['url_from', 'url_to']),
    ('alt-text', ARRAY['image_url', 'alt_text']),
    ('meta-tags', ARRAY['tag', 'value']);

-- RPC ----------------------------------------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.consume_token(site_id uuid, token_type text, cycle text DEFAULT NULL)
RETURNS private.token_balance
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cycle text := private.check_cycle(consume_token.cycle);
    v_org uuid;
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
    RETURN private.consume_token(consume_token.site_id, consume_token.token_type, v_cycle);
END
$$;

COMMENT ON FUNCTION api.consume_token(uuid, text, text) IS
$$Spends one token of a site for a cycle.

Returns {site_id, token_type, cycle, total, used, remaining} after the spend. cycle is a UTC month YYYY-MM (default: the current one). The cycle's counter is created on first use from the allowance of the organization's plan (private.token_allowances); the spend itself is one conditional UPDATE (used < total), so concurrent callers never over-spend. Errors: 429 tokens_exhausted with Retry-After = seconds until the next cycle; 404 not_found for an unknown site; 400 invalid_cycle, cycle_closed (a past month) or unknown_token_type; 409 plan_not_token_metered when the plan has no allowances. Callable by pgrpc_service.$$;

CREATE FUNCTION api.token_balance(site_id uuid, token_type text, cycle text DEFAULT NULL)
RETURNS private.token_balance
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cycle text := private.check_cycle(token_balance.cycle);
BEGIN
    PERFORM private.check_token_type(token_balance.token_type);
    PERFORM private.require_org_access(private.site_organization(token_balance.site_id));
    RETURN private.balance_of(token_balance.site_id, token_balance.token_type, v_cycle);
END
$$;

COMMENT ON FUNCTION api.token_balance(uuid, text, text) IS
$$A site's balance of one token type for a cycle.

Returns {site_id, token_type, cycle, total, used, remaining}; cycle defaults to the current UTC month. A cycle without a counter yet reports the plan's allowance with nothing used, and no row is created (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle or unknown_token_type, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;

CREATE FUNCTION api.token_balances(site_id uuid, cycle text DEFAULT NULL)
RETURNS SETOF private.token_balance
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
        SELECT b.*
        FROM private.token_types tt
        CROSS JOIN LATERAL private.balance_of(token_balances.site_id, tt.token_type, v_cycle) AS b
        ORDER BY tt.token_type;
END
$$;

COMMENT ON FUNCTION api.token_balances(uuid, text) IS
$$A site's balances of every token type for a cycle.

Returns an array with one {site_id, token_type, cycle, total, used, remaining} per token type, ordered by token_type; cycle defaults to the current UTC month. Creates no row (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;

CREATE FUNCTION api.grant_suggestion(suggestion_id uuid, granted_by text DEFAULT NULL)
RETURNS private.suggestion_grant_result
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
            ::private.suggestion_grant_result;
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
        ::private.suggestion_grant_result;
END
$$;

COMMENT ON FUNCTION api.grant_suggestion(uuid, text) IS
$$Grants a suggestion, spending one token of its site.

Returns {suggestion_id, token_type, cycle, granted_at, newly_granted}. In one transaction: (1) the organization's plan must meter tokens, else 409 plan_not_token_metered; (2) the suggestion must be NEW, else 409 suggestion_not_new, and complete per private.suggestion_completeness, else 422 suggestion_incomplete; (3) one token of the type mapped from the opportunity type (private.token_types) is spent in the current UTC month, else 429 tokens_exhausted with Retry-After; (4) the write-once grant is inserted, and its trigger emits a suggestion.granted outbox event. Idempotent: an existing grant is returned with newly_granted=false and no token is spent; concurrent calls for one suggestion are serialized on the suggestion row (FOR NO KEY UPDATE) and spend exactly one token. granted_by defaults to the JWT sub (400 granted_by_required if neither is set); an unknown suggestion is 404 not_found; an unmapped opportunity type is 422 opportunity_type_not_mapped. The suggestion's status is not changed. Callable by pgrpc_service.$$;

CREATE FUNCTION api.is_granted(suggestion_id uuid)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
BEGIN
    SELECT st.organization_id INTO v_org
    FROM private.suggestions s
    JOIN private.opportunities o ON o.id = s.opportunity_id
    JOIN private.sites st ON st.id = o.site_id
    WHERE s.id = is_granted.suggestion_id;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no suggestion %s.', is_granted.suggestion_id),
            HINT = 'Check the suggestion id.';
    END IF;
    PERFORM private.require_org_access(v_org);
    RETURN EXISTS (SELECT 1 FROM private.suggestion_grants g WHERE g.suggestion_id = is_granted.suggestion_id);
END
$$;

COMMENT ON FUNCTION api.is_granted(uuid) IS
$$Whether a suggestion has been granted.

Returns true or false. Errors: 404 not_found for an unknown suggestion, 403 forbidden for a pgrpc_user outside its org_id. STABLE: answers GET. Callable by pgrpc_service and pgrpc_user.$$;

CREATE FUNCTION api.site_tokens(organization_id uuid DEFAULT NULL, cycle text DEFAULT NULL)
RETURNS SETOF private.site_token_usage
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

-- Admin ----------------------------------------------------------------------------

CREATE FUNCTION admin.prune_token_cycles(older_than interval DEFAULT '13 months')
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cutoff text;
    v_deleted bigint;
BEGIN
    IF prune_token_cycles.older_than IS NULL OR prune_token_cycles.older_than <= interval '0' THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_interval',
            DETAIL = format('older_than must be a positive interval, got %L.', prune_token_cycles.older_than),
            HINT = 'For example ''13 months''.';
    END IF;
    -- Cycles that started before (start of the current UTC month - older_than).
    v_cutoff := to_char(date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') - prune_token_cycles.older_than,
                        'YYYY-MM');
    DELETE FROM private.tokens WHERE cycle < v_cutoff;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION admin.prune_token_cycles(interval) IS
$$Deletes old token counters.

Deletes every private.tokens row whose cycle started before the start of the current UTC month minus older_than (default 13 months: the current month and the 13 before it are kept) and returns the number of rows deleted. The current cycle is never pruned, past cycles cannot be spent in, and grants are not touched. This is the only way to delete a counter (besides deleting its site): a trigger refuses any other DELETE. 400 invalid_interval unless older_than is positive.$$;

CREATE FUNCTION admin.set_token_allowance(plan text, token_type text, per_cycle integer)
RETURNS private.token_allowances
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row private.token_allowances;
BEGIN
    PERFORM private.check_token_type(set_token_allowance.token_type);
    INSERT INTO private.token_allowances AS a (plan, token_type, per_cycle)
    VALUES (set_token_allowance.plan, set_token_allowance.token_type, set_token_allowance.per_cycle)
    ON CONFLICT ON CONSTRAINT token_allowances_pkey
    DO UPDATE SET per_cycle = excluded.per_cycle
    RETURNING a.* INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION admin.set_token_allowance(text, text, integer) IS
$$Sets how many tokens of a type a plan gets per cycle.

Inserts or updates the private.token_allowances row and returns it. Giving a plan its first allowance makes it token-metered. The new value applies to counters created from now on (the next cycle, or sites that have not spent in the current one); existing counters keep their total, which is write-once (a trigger refuses changing it). Plan must be free, freemium or paid and per_cycle >= 0 (400 otherwise); 400 unknown_token_type for an unknown type.$$;

CREATE FUNCTION admin.remove_token_allowance(plan text, token_type text)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM private.token_allowances a
    WHERE a.plan = remove_token_allowance.plan AND a.token_type = remove_token_allowance.token_type;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION admin.remove_token_allowance(text, text) IS
$$Removes a plan's allowance of a token type.

Returns whether a row was deleted. A plan left without any allowance no longer meters tokens: grant_suggestion answers 409 plan_not_token_metered for its organizations. Existing counters are kept.$$;

-- Who may call what -------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION
    api.consume_token(uuid, text, text),
    api.grant_suggestion(uuid, text)
TO pgrpc_service;

GRANT EXECUTE ON FUNCTION
    api.token_balance(uuid, text, text),
    api.token_balances(uuid, text),
    api.is_granted(uuid)
TO pgrpc_service, pgrpc_user;

GRANT EXECUTE ON FUNCTION api.site_tokens(uuid, text) TO pgrpc_service, pgrpc_admin;

GRANT EXECUTE ON FUNCTION
    admin.prune_token_cycles(interval),
    admin.set_token_allowance(text, text, integer),
    admin.remove_token_allowance(text, text)
TO pgrpc_admin;

RESET ROLE;
