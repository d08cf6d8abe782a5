-- Module tokens: token types, allowances, cycles, spending and suggestion grants.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.token_types, private.token_allowances, private.tokens, private.suggestion_grants

-- private.tg_tokens__spend_one_at_a_time
CREATE OR REPLACE FUNCTION private.tg_tokens__spend_one_at_a_time()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_tokens__spend_one_at_a_time() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_tokens__spend_one_at_a_time() FROM PUBLIC;

-- private.tg_tokens__delete_only_by_prune
CREATE OR REPLACE FUNCTION private.tg_tokens__delete_only_by_prune()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_tokens__delete_only_by_prune() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_tokens__delete_only_by_prune() FROM PUBLIC;

-- private.tg_suggestion_grants__delete_only_by_cascade
CREATE OR REPLACE FUNCTION private.tg_suggestion_grants__delete_only_by_cascade()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_suggestion_grants__delete_only_by_cascade() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_suggestion_grants__delete_only_by_cascade() FROM PUBLIC;

-- private.tg_suggestion_grants__emit_granted
CREATE OR REPLACE FUNCTION private.tg_suggestion_grants__emit_granted()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION private.tg_suggestion_grants__emit_granted() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_suggestion_grants__emit_granted() FROM PUBLIC;

-- private.current_cycle
CREATE OR REPLACE FUNCTION private.current_cycle()
 RETURNS text
 LANGUAGE sql
AS $function$
    SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM')
$function$;
ALTER FUNCTION private.current_cycle() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.current_cycle() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.current_cycle() TO pgrpc_api;

-- private.check_cycle
CREATE OR REPLACE FUNCTION private.check_cycle(p_cycle text)
 RETURNS text
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.check_cycle(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.check_cycle(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.check_cycle(text) TO pgrpc_api;

-- private.cycle_end
CREATE OR REPLACE FUNCTION private.cycle_end(p_cycle text)
 RETURNS timestamp with time zone
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT (make_date(substr(p_cycle, 1, 4)::integer, substr(p_cycle, 6, 2)::integer, 1)::timestamp
            + interval '1 month') AT TIME ZONE 'UTC'
$function$;
ALTER FUNCTION private.cycle_end(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.cycle_end(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.cycle_end(text) TO pgrpc_api;

-- private.check_token_type
CREATE OR REPLACE FUNCTION private.check_token_type(p_token_type text)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
BEGIN
    IF p_token_type IS NULL
       OR NOT EXISTS (SELECT 1 FROM private.token_types WHERE token_type = p_token_type) THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'unknown_token_type',
            DETAIL = format('There is no token type %L.', p_token_type),
            HINT = 'SELECT token_type FROM private.token_types lists them (for example alt_text).';
    END IF;
END
$function$;
ALTER FUNCTION private.check_token_type(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.check_token_type(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.check_token_type(text) TO pgrpc_api;

-- private.plan_meters_tokens
CREATE OR REPLACE FUNCTION private.plan_meters_tokens(p_plan text)
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
    SELECT EXISTS (SELECT 1 FROM private.token_allowances WHERE plan = p_plan)
$function$;
ALTER FUNCTION private.plan_meters_tokens(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.plan_meters_tokens(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.plan_meters_tokens(text) TO pgrpc_api;

-- private.require_metered_plan
CREATE OR REPLACE FUNCTION private.require_metered_plan(p_organization_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;
ALTER FUNCTION private.require_metered_plan(uuid) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.require_metered_plan(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.require_metered_plan(uuid) TO pgrpc_api;

-- private.site_allowance
CREATE OR REPLACE FUNCTION private.site_allowance(p_site_id uuid, p_token_type text)
 RETURNS integer
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;
ALTER FUNCTION private.site_allowance(uuid,text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.site_allowance(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.site_allowance(uuid,text) TO pgrpc_api;

-- private.balance_of
CREATE OR REPLACE FUNCTION private.balance_of(p_site_id uuid, p_token_type text, p_cycle text)
 RETURNS private.token_balance
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;
ALTER FUNCTION private.balance_of(uuid,text,text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.balance_of(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.balance_of(uuid,text,text) TO pgrpc_api;

-- private.consume_token
CREATE OR REPLACE FUNCTION private.consume_token(p_site_id uuid, p_token_type text, p_cycle text)
 RETURNS private.token_balance
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.consume_token(uuid,text,text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.consume_token(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.consume_token(uuid,text,text) TO pgrpc_api;

-- api.is_granted
CREATE OR REPLACE FUNCTION api.is_granted(suggestion_id uuid)
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.is_granted(uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.is_granted(uuid) IS
$$Whether a suggestion has been granted.

Returns true or false. Errors: 404 not_found for an unknown suggestion, 403 forbidden for a pgrpc_user outside its org_id. STABLE: answers GET. Callable by pgrpc_service and pgrpc_user.$$;
REVOKE ALL ON FUNCTION api.is_granted(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.is_granted(uuid) TO pgrpc_user, pgrpc_service;

-- admin.prune_token_cycles
CREATE OR REPLACE FUNCTION admin.prune_token_cycles(older_than interval DEFAULT '1 year 1 mon'::interval)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION admin.prune_token_cycles(interval) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.prune_token_cycles(interval) IS
$$Deletes old token counters.

Deletes every private.tokens row whose cycle started before the start of the current UTC month minus older_than (default 13 months: the current month and the 13 before it are kept) and returns the number of rows deleted. The current cycle is never pruned, past cycles cannot be spent in, and grants are not touched. This is the only way to delete a counter (besides deleting its site): a trigger refuses any other DELETE. 400 invalid_interval unless older_than is positive.$$;
REVOKE ALL ON FUNCTION admin.prune_token_cycles(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.prune_token_cycles(interval) TO pgrpc_admin;

-- admin.set_token_allowance
CREATE OR REPLACE FUNCTION admin.set_token_allowance(plan text, token_type text, per_cycle integer)
 RETURNS private.token_allowances
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION admin.set_token_allowance(text,text,integer) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.set_token_allowance(text,text,integer) IS
$$Sets how many tokens of a type a plan gets per cycle.

Inserts or updates the private.token_allowances row and returns it. Giving a plan its first allowance makes it token-metered. The new value applies to counters created from now on (the next cycle, or sites that have not spent in the current one); existing counters keep their total, which is write-once (a trigger refuses changing it). Plan must be free, freemium or paid and per_cycle >= 0 (400 otherwise); 400 unknown_token_type for an unknown type.$$;
REVOKE ALL ON FUNCTION admin.set_token_allowance(text,text,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.set_token_allowance(text,text,integer) TO pgrpc_admin;

-- admin.remove_token_allowance
CREATE OR REPLACE FUNCTION admin.remove_token_allowance(plan text, token_type text)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    DELETE FROM private.token_allowances a
    WHERE a.plan = remove_token_allowance.plan AND a.token_type = remove_token_allowance.token_type;
    RETURN FOUND;
END
$function$;
ALTER FUNCTION admin.remove_token_allowance(text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.remove_token_allowance(text,text) IS
$$Removes a plan's allowance of a token type.

Returns whether a row was deleted. A plan left without any allowance no longer meters tokens: grant_suggestion answers 409 plan_not_token_metered for its organizations. Existing counters are kept.$$;
REVOKE ALL ON FUNCTION admin.remove_token_allowance(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.remove_token_allowance(text,text) TO pgrpc_admin;

-- api.consume_token
CREATE OR REPLACE FUNCTION api.consume_token(site_id uuid, token_type text, cycle text DEFAULT NULL::text)
 RETURNS api.token_counter
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.consume_token(uuid,text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.consume_token(uuid,text,text) IS
$$Spends one token of a site for a cycle.

Returns {site_id, token_type, cycle, total, used, remaining} after the spend. cycle is a UTC month YYYY-MM (default: the current one). The cycle's counter is created on first use from the allowance of the organization's plan (private.token_allowances); the spend itself is one conditional UPDATE (used < total), so concurrent callers never over-spend. Errors: 429 tokens_exhausted with Retry-After = seconds until the next cycle; 404 not_found for an unknown site; 400 invalid_cycle, cycle_closed (a past month) or unknown_token_type; 409 plan_not_token_metered when the plan has no allowances. Callable by pgrpc_service.$$;
REVOKE ALL ON FUNCTION api.consume_token(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.consume_token(uuid,text,text) TO pgrpc_service;

-- api.token_balance
CREATE OR REPLACE FUNCTION api.token_balance(site_id uuid, token_type text, cycle text DEFAULT NULL::text)
 RETURNS api.balance
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_cycle text := private.check_cycle(token_balance.cycle);
    v_balance private.token_balance;
BEGIN
    PERFORM private.check_token_type(token_balance.token_type);
    PERFORM private.require_org_access(private.site_organization(token_balance.site_id));
    v_balance := private.balance_of(token_balance.site_id, token_balance.token_type, v_cycle);
    RETURN ROW(v_balance.total, v_balance.used, v_balance.remaining)::api.balance;
END
$function$;
ALTER FUNCTION api.token_balance(uuid,text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.token_balance(uuid,text,text) IS
$$A site's balance of one token type for a cycle.

Returns {total, used, remaining}; cycle defaults to the current UTC month. A cycle without a counter yet reports the plan's allowance with nothing used, and no row is created (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle or unknown_token_type, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;
REVOKE ALL ON FUNCTION api.token_balance(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.token_balance(uuid,text,text) TO pgrpc_user, pgrpc_service;

-- api.token_balances
CREATE OR REPLACE FUNCTION api.token_balances(site_id uuid, cycle text DEFAULT NULL::text)
 RETURNS SETOF api.token_type_balance
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.token_balances(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.token_balances(uuid,text) IS
$$A site's balances of every token type for a cycle.

Returns an array with one {token_type, total, used, remaining} per token type, ordered by token_type; cycle defaults to the current UTC month. Creates no row (STABLE: answers GET). Errors: 404 not_found, 400 invalid_cycle, 403 forbidden for a pgrpc_user outside its org_id. Callable by pgrpc_service and pgrpc_user.$$;
REVOKE ALL ON FUNCTION api.token_balances(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.token_balances(uuid,text) TO pgrpc_user, pgrpc_service;

-- api.grant_suggestion
CREATE OR REPLACE FUNCTION api.grant_suggestion(suggestion_id uuid, granted_by text DEFAULT NULL::text)
 RETURNS api.suggestion_grant
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.grant_suggestion(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.grant_suggestion(uuid,text) IS
$$Grants a suggestion, spending one token of its site.

Returns {suggestion_id, token_type, cycle, granted_at, newly_granted}. In one transaction: (1) the organization's plan must meter tokens, else 409 plan_not_token_metered; (2) the suggestion must be NEW, else 409 suggestion_not_new, and complete per private.suggestion_completeness, else 422 suggestion_incomplete; (3) one token of the type mapped from the opportunity type (private.token_types) is spent in the current UTC month, else 429 tokens_exhausted with Retry-After; (4) the write-once grant is inserted, and its trigger emits a suggestion.granted outbox event. Idempotent: an existing grant is returned with newly_granted=false and no token is spent; concurrent calls for one suggestion are serialized on the suggestion row (FOR NO KEY UPDATE) and spend exactly one token. granted_by defaults to the JWT sub (400 granted_by_required if neither is set); an unknown suggestion is 404 not_found; an unmapped opportunity type is 422 opportunity_type_not_mapped. The suggestion's status is not changed. Callable by pgrpc_service.$$;
REVOKE ALL ON FUNCTION api.grant_suggestion(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.grant_suggestion(uuid,text) TO pgrpc_service;

-- api.site_tokens
CREATE OR REPLACE FUNCTION api.site_tokens(organization_id uuid DEFAULT NULL::uuid, cycle text DEFAULT NULL::text)
 RETURNS SETOF api.site_token_usage
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.site_tokens(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.site_tokens(uuid,text) IS
$$Every site's token counters, for reporting.

Returns an array of {organization_id, site_id, base_url, token_type, cycle, total, used, remaining, updated_at}, one per counter that exists, optionally limited to one organization and one cycle (null: all). Sites without a counter in a cycle have spent nothing in it. 400 invalid_cycle for a malformed cycle. STABLE. Callable by pgrpc_service and pgrpc_admin.$$;
REVOKE ALL ON FUNCTION api.site_tokens(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.site_tokens(uuid,text) TO pgrpc_service, pgrpc_admin;
