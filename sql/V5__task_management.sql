-- Task-management connections, tickets and the append-only link from a
-- ticket to the suggestions it covers (SPEC §4.3).
--
-- Every rule sits in the database, so no caller can skip it:
-- - provider, status, instance_url and metadata are CHECKed on every write;
--   metadata has no default and is validated per provider;
-- - the status state machine is a trigger (409 invalid_transition);
-- - write-once columns are refused by a trigger and by column privileges;
-- - a ticket's provider and organization are its connection's, by a
--   composite foreign key;
-- - ticket_suggestions is append-only: no UPDATE, no TRUNCATE, and a DELETE
--   only through the cascade from its ticket;
-- - status changes that need attention emit an outbox event from a trigger;
-- - every ticket emits exactly one ticket.created, from a trigger that fires
--   at commit, however the row was inserted.

SET LOCAL ROLE pgrpc_owner;

-- Validators -----------------------------------------------------------------
--
-- Each rule has a pure "problem" function (NULL when the value is fine, else
-- a sentence saying what is wrong), which an operator can run over existing
-- rows, and a CHECK wrapper that raises PT400 with a stable key and that
-- sentence as DETAIL, so a caller gets a 400 that says which field is wrong.
-- They are total: no input makes them fail with anything but their own error.

-- What is wrong with p_url as an absolute URL with a host, using one of
-- p_schemes (lowercase)? Strict RFC 3986 characters only: no spaces,
-- backslashes, quotes or raw non-ASCII, and no credentials in the authority
-- (https://good.example@evil.example is refused).
CREATE FUNCTION private.url_problem(p_url text, p_schemes text[])
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    WITH parts AS (
        SELECT regexp_match(p_url, '^([A-Za-z][A-Za-z0-9+.-]*):(//([^/?#]*))?([^?#]*)(\?[^#]*)?(#.*)?$') AS m
    ), authority AS (
        SELECT m,
               lower(m[1]) AS scheme,
               m[3] AS auth,
               regexp_match(m[3], '^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(:(.*))?$') AS hp
        FROM parts
    )
    SELECT CASE
        WHEN p_url IS NULL THEN NULL
        WHEN length(p_url) > 2048 THEN
            'is ' || length(p_url) || ' characters long; at most 2048 are allowed'
        WHEN p_url !~ '^[]A-Za-z0-9._~:/?#[@!$&''()*+,;=%-]*$' THEN
            'contains characters not allowed in a URL (spaces, quotes, backslashes, control or non-ASCII characters); percent-encode them'
        WHEN m IS NULL THEN
            'is not an absolute URL: it has no scheme'
        WHEN NOT (scheme = ANY (p_schemes)) THEN
            'must use the ' || array_to_string(p_schemes, ' or ') || ' scheme, not ' || scheme
        WHEN m[2] IS NULL THEN
            'is not an absolute URL with a host: it has no //host part'
        WHEN auth LIKE '%@%' THEN
            'must not carry credentials (user@ or user:password@) before the host'
        WHEN hp IS NULL THEN
            'has an invalid host ' || quote_literal(left(auth, 100))
        WHEN hp[1] = '' THEN
            'has no host'
        WHEN hp[1] NOT LIKE '[%'
             AND (length(hp[1]) > 253
                  OR hp[1] !~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$') THEN
            'has an invalid host ' || quote_literal(left(hp[1], 100))
        WHEN hp[2] IS NOT NULL
             AND CASE WHEN hp[3] ~ '^[0-9]{1,5}$' THEN hp[3]::integer NOT BETWEEN 1 AND 65535 ELSE true END THEN
            'has an invalid port ' || quote_literal(left(hp[3], 20))
    END
    FROM authority
$$;

COMMENT ON FUNCTION private.url_problem(text, text[]) IS
$$What is wrong with a URL, or NULL when it is an absolute URL with a host and one of the given schemes.$$;

-- CHECK wrapper: raises PT400 invalid_url naming the column.
CREATE FUNCTION private.check_url(p_url text, p_column text, p_schemes text[])
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
DECLARE
    v_problem text := private.url_problem(p_url, p_schemes);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_url',
            DETAIL = p_column || ' ' || quote_literal(left(p_url, 200)) || ' ' || v_problem || '.',
            HINT = 'Use an absolute ' || array_to_string(p_schemes, ' or ') || ' URL with a host, such as https://example.atlassian.net.';
    END IF;
    RETURN true;
END
$$;

-- What is wrong with jira_cloud metadata?
-- Shape: {"cloudId": "<uuid>", "scopes": ["<≤256 chars>", ... ≤100]}, scopes
-- optional, no other key. Element checks look only at arrays, so a wrong
-- type anywhere gives a sentence, never a jsonb function error.
CREATE FUNCTION private.jira_cloud_metadata_problem(p_metadata jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    WITH m AS (
        SELECT p_metadata AS md,
               CASE WHEN jsonb_typeof(p_metadata -> 'scopes') = 'array'
                    THEN p_metadata -> 'scopes' ELSE '[]'::jsonb END AS scopes
    )
    SELECT CASE
        WHEN md IS NULL THEN
            'metadata is required'
        WHEN jsonb_typeof(md) <> 'object' THEN
            'metadata must be a JSON object, got ' || jsonb_typeof(md)
        WHEN EXISTS (SELECT 1 FROM jsonb_object_keys(md) AS k WHERE k NOT IN ('cloudId', 'scopes')) THEN
            'metadata has unknown key(s) '
            || (SELECT string_agg(quote_literal(left(k, 64)), ', ' ORDER BY k)
                FROM jsonb_object_keys(md) AS k WHERE k NOT IN ('cloudId', 'scopes'))
            || '; only cloudId and scopes are allowed'
        WHEN NOT md ? 'cloudId' THEN
            'metadata.cloudId is required'
        WHEN jsonb_typeof(md -> 'cloudId') <> 'string' THEN
            'metadata.cloudId must be a string holding a UUID, got ' || jsonb_typeof(md -> 'cloudId')
        WHEN (md ->> 'cloudId') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            'metadata.cloudId must be a UUID, got ' || quote_literal(left(md ->> 'cloudId', 64))
        WHEN md ? 'scopes' AND jsonb_typeof(md -> 'scopes') <> 'array' THEN
            'metadata.scopes must be an array of strings, got ' || jsonb_typeof(md -> 'scopes')
        WHEN jsonb_array_length(scopes) > 100 THEN
            'metadata.scopes has ' || jsonb_array_length(scopes) || ' items; at most 100 are allowed'
        WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(scopes) AS e WHERE jsonb_typeof(e) <> 'string') THEN
            (SELECT 'metadata.scopes[' || (i - 1) || '] must be a string, got ' || jsonb_typeof(e)
             FROM jsonb_array_elements(scopes) WITH ORDINALITY AS x(e, i)
             WHERE jsonb_typeof(e) <> 'string' ORDER BY i LIMIT 1)
        WHEN EXISTS (SELECT 1 FROM jsonb_array_elements_text(scopes) AS e WHERE length(e) > 256) THEN
            (SELECT 'metadata.scopes[' || (i - 1) || '] is ' || length(e) || ' characters long; at most 256 are allowed'
             FROM jsonb_array_elements_text(scopes) WITH ORDINALITY AS x(e, i)
             WHERE length(e) > 256 ORDER BY i LIMIT 1)
    END
    FROM m
$$;

COMMENT ON FUNCTION private.jira_cloud_metadata_problem(jsonb) IS
$$What is wrong with jira_cloud connection metadata, or NULL when it is {cloudId: uuid, scopes?: string[≤100] of ≤256 chars} with no other key.$$;

-- Dispatch on provider. A provider without a metadata schema has no valid
-- metadata, so adding a provider to the CHECK without a validator fails.
CREATE FUNCTION private.task_management_metadata_problem(p_provider text, p_metadata jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    SELECT CASE p_provider
        WHEN 'jira_cloud' THEN private.jira_cloud_metadata_problem(p_metadata)
        ELSE 'no metadata schema is defined for provider ' || coalesce(quote_literal(p_provider), 'NULL')
    END
$$;

COMMENT ON FUNCTION private.task_management_metadata_problem(text, jsonb) IS
$$What is wrong with a connection's metadata for its provider, or NULL when it is valid.$$;

-- CHECK wrapper: raises PT400 invalid_metadata with the problem as DETAIL.
CREATE FUNCTION private.check_task_management_metadata(p_provider text, p_metadata jsonb)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
DECLARE
    v_problem text := private.task_management_metadata_problem(p_provider, p_metadata);
BEGIN
    IF v_problem IS NOT NULL THEN
        RAISE SQLSTATE 'PT400' USING
            MESSAGE = 'invalid_metadata',
            DETAIL = v_problem || '.',
            HINT = 'For jira_cloud, metadata is {"cloudId": "<uuid>", "scopes": ["<scope>", ...]}; scopes is optional and no other key is allowed.';
    END IF;
    RETURN true;
END
$$;

-- Tables ---------------------------------------------------------------------

CREATE TABLE private.task_management_connections (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES private.organizations (id) ON DELETE CASCADE,
    provider text NOT NULL,
    status text NOT NULL DEFAULT 'active',
    external_instance_id text NOT NULL,
    instance_url text NOT NULL,
    display_name text NOT NULL,
    connected_by text NOT NULL,
    metadata jsonb NOT NULL,  -- no default: {} is not valid metadata
    last_used_at timestamptz,
    error_message text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- CHECKs run in name order: provider_known comes before
    -- provider_metadata_valid, so an unknown provider is reported as such.
    CONSTRAINT task_management_connections_provider_known CHECK (provider IN ('jira_cloud')),
    CONSTRAINT task_management_connections_provider_metadata_valid
        CHECK (private.check_task_management_metadata(provider, metadata)),
    CONSTRAINT task_management_connections_status_known
        CHECK (status IN ('active', 'disabled', 'requires_reauth', 'error', 'disconnected')),
    CONSTRAINT task_management_connections_instance_url_is_https
        CHECK (private.check_url(instance_url, 'instance_url', ARRAY['https'])),
    CONSTRAINT task_management_connections_external_instance_id_not_blank CHECK (btrim(external_instance_id) <> ''),
    CONSTRAINT task_management_connections_display_name_not_blank CHECK (btrim(display_name) <> ''),
    CONSTRAINT task_management_connections_connected_by_not_blank CHECK (btrim(connected_by) <> ''),
    -- Target of the tickets' composite foreign key: a ticket's organization
    -- and provider are its connection's.
    CONSTRAINT task_management_connections_id_org_provider_key UNIQUE (id, organization_id, provider)
);

-- At most one active connection per organization and provider.
CREATE UNIQUE INDEX task_management_connections_one_active
    ON private.task_management_connections (organization_id, provider)
    WHERE status = 'active';

-- At most one live (not disconnected) connection per instance: connecting to
-- it again is a re-auth of that row (ON CONFLICT arbiter).
CREATE UNIQUE INDEX task_management_connections_one_live_per_instance
    ON private.task_management_connections (organization_id, provider, external_instance_id)
    WHERE status <> 'disconnected';

CREATE TABLE private.tickets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    connection_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    opportunity_id uuid REFERENCES private.opportunities (id) ON DELETE SET NULL,
    external_ticket_id text NOT NULL,
    ticket_key text NOT NULL,
    ticket_url text NOT NULL,
    ticket_status text,  -- set later by a sync
    ticket_provider text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- One foreign key carries the cascade and makes ticket_provider and
    -- organization_id equal to the connection's: a pure database rule.
    CONSTRAINT tickets_connection_fkey
        FOREIGN KEY (connection_id, organization_id, ticket_provider)
        REFERENCES private.task_management_connections (id, organization_id, provider)
        ON DELETE CASCADE,
    CONSTRAINT tickets_ticket_url_is_http_url CHECK (private.check_url(ticket_url, 'ticket_url', ARRAY['https', 'http'])),
    CONSTRAINT tickets_external_ticket_id_not_blank CHECK (btrim(external_ticket_id) <> ''),
    CONSTRAINT tickets_ticket_key_not_blank CHECK (btrim(ticket_key) <> ''),
    CONSTRAINT tickets_ticket_status_not_blank CHECK (btrim(ticket_status) <> ''),
    CONSTRAINT tickets_created_by_not_blank CHECK (btrim(created_by) <> ''),
    CONSTRAINT tickets_one_per_external_ticket UNIQUE (connection_id, external_ticket_id)
);
CREATE INDEX tickets_opportunity_id_idx ON private.tickets (opportunity_id);
CREATE INDEX tickets_organization_id_idx ON private.tickets (organization_id);

CREATE TABLE private.ticket_suggestions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ticket_id uuid NOT NULL REFERENCES private.tickets (id) ON DELETE CASCADE,
    -- NO ACTION, not CASCADE: deleting a ticketed suggestion is refused, so
    -- rows leave only with their ticket. Deferred to commit so that deleting
    -- a whole organization, which removes the suggestions and the tickets
    -- along two cascade paths in unspecified order, still works.
    suggestion_id uuid NOT NULL
        REFERENCES private.suggestions (id) DEFERRABLE INITIALLY DEFERRED,
    opportunity_id uuid NOT NULL
        REFERENCES private.opportunities (id) DEFERRABLE INITIALLY DEFERRED,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Each suggestion is linked at most once, ever.
    CONSTRAINT ticket_suggestions_suggestion_id_key UNIQUE (suggestion_id)
);
CREATE INDEX ticket_suggestions_ticket_id_idx ON private.ticket_suggestions (ticket_id);
CREATE INDEX ticket_suggestions_opportunity_id_idx ON private.ticket_suggestions (opportunity_id);

-- Triggers: connections ------------------------------------------------------

-- BEFORE UPDATE: the status state machine.
--   active                          -> any other status
--   disabled, requires_reauth, error -> active or disconnected
--   disconnected                    -> nothing (terminal)
-- Keeping the same status is not a transition. An unknown target status is
-- left to the status_known CHECK (400).
CREATE FUNCTION private.tg_task_management_connections__check_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_allowed boolean := CASE OLD.status
        WHEN 'active' THEN true
        WHEN 'disabled' THEN NEW.status IN ('active', 'disconnected')
        WHEN 'requires_reauth' THEN NEW.status IN ('active', 'disconnected')
        WHEN 'error' THEN NEW.status IN ('active', 'disconnected')
        ELSE false
    END;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NEW.status IN ('active', 'disabled', 'requires_reauth', 'error', 'disconnected')
       AND NOT v_allowed THEN
        RAISE SQLSTATE 'PT409' USING
            MESSAGE = 'invalid_transition',
            DETAIL = format('Connection %s cannot go from %s to %s.', OLD.id, OLD.status, NEW.status),
            HINT = CASE WHEN OLD.status = 'disconnected'
                        THEN 'disconnected is terminal: call connect_task_management to create a new connection.'
                        ELSE 'From disabled, requires_reauth or error a connection can only become active or disconnected.'
                   END;
    END IF;
    RETURN NEW;
END
$$;

-- AFTER UPDATE OF status, entering requires_reauth, error or disabled:
-- emit task_management.connection_status_changed in the same transaction,
-- whoever made the change.
CREATE FUNCTION private.tg_task_management_connections__emit_status_changed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM private.outbox_emit(
        'task_management_connection',
        NEW.id::text,
        'task_management.connection_status_changed',
        jsonb_build_object(
            'connection_id', NEW.id,
            'organization_id', NEW.organization_id,
            'provider', NEW.provider,
            'external_instance_id', NEW.external_instance_id,
            'previous_status', OLD.status,
            'status', NEW.status,
            'error_message', NEW.error_message,
            'changed_at', NEW.updated_at));
    RETURN NULL;
END
$$;

CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.task_management_connections
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'organization_id', 'provider', 'external_instance_id', 'connected_by', 'created_at');
CREATE TRIGGER _150_check_transition BEFORE UPDATE OF status ON private.task_management_connections
    FOR EACH ROW EXECUTE FUNCTION private.tg_task_management_connections__check_transition();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.task_management_connections
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE TRIGGER _900_emit_outbox AFTER UPDATE OF status ON private.task_management_connections
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('requires_reauth', 'error', 'disabled'))
    EXECUTE FUNCTION private.tg_task_management_connections__emit_status_changed();

-- Triggers: tickets ----------------------------------------------------------

-- BEFORE INSERT OR UPDATE OF opportunity_id: a ticket's opportunity belongs
-- to the ticket's organization.
CREATE FUNCTION private.tg_tickets__check_opportunity()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_org uuid;
BEGIN
    IF NEW.opportunity_id IS NOT NULL THEN
        SELECT si.organization_id INTO v_org
        FROM private.opportunities AS o
        JOIN private.sites AS si ON si.id = o.site_id
        WHERE o.id = NEW.opportunity_id;
        -- A missing opportunity is left to the foreign key.
        IF FOUND AND v_org IS DISTINCT FROM NEW.organization_id THEN
            RAISE SQLSTATE 'PT403' USING
                MESSAGE = 'forbidden',
                DETAIL = format('Opportunity %s belongs to another organization than the ticket''s connection.',
                                NEW.opportunity_id),
                HINT = 'Link a ticket only to opportunities of its connection''s organization.';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- AFTER INSERT, deferred to commit: emit ticket.created, once per ticket,
-- whoever inserted the row (create_ticket, or a psql operator).
--
-- The payload lists the ticket's suggestion_ids, and the links are inserted
-- after the ticket row (they reference it), so the event is written at
-- commit, when the links are there: a DEFERRABLE INITIALLY DEFERRED
-- constraint trigger. api.create_ticket sets it DEFERRED itself, so a
-- caller's SET CONSTRAINTS ALL IMMEDIATE cannot make it fire before the
-- links exist. Ticket fields are the row as inserted (NEW); a ticket
-- deleted again before commit emits nothing. A rolled-back transaction runs
-- no deferred trigger, so it leaves no event.
--
-- SECURITY DEFINER: at commit, current_user is the caller again (the
-- request role), not pgrpc_api, and the caller may neither read the links
-- nor write the outbox.
CREATE FUNCTION private.tg_tickets__emit_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM private.tickets AS t WHERE t.id = NEW.id) THEN
        RETURN NULL;
    END IF;
    PERFORM private.outbox_emit(
        'ticket',
        NEW.id::text,
        'ticket.created',
        jsonb_build_object(
            'ticket_id', NEW.id,
            'connection_id', NEW.connection_id,
            'organization_id', NEW.organization_id,
            'opportunity_id', NEW.opportunity_id,
            'external_ticket_id', NEW.external_ticket_id,
            'ticket_key', NEW.ticket_key,
            'ticket_url', NEW.ticket_url,
            'ticket_status', NEW.ticket_status,
            'ticket_provider', NEW.ticket_provider,
            'created_by', NEW.created_by,
            'suggestion_ids', (SELECT coalesce(jsonb_agg(ts.suggestion_id ORDER BY ts.suggestion_id), '[]'::jsonb)
                               FROM private.ticket_suggestions AS ts
                               WHERE ts.ticket_id = NEW.id),
            'created_at', NEW.created_at));
    RETURN NULL;
END
$$;

CREATE TRIGGER _100_write_once BEFORE UPDATE ON private.tickets
    FOR EACH ROW EXECUTE FUNCTION private.tg_write_once(
        'id', 'connection_id', 'organization_id', 'external_ticket_id', 'ticket_key',
        'ticket_provider', 'created_by', 'created_at');
CREATE TRIGGER _150_check_opportunity BEFORE INSERT OR UPDATE OF opportunity_id ON private.tickets
    FOR EACH ROW EXECUTE FUNCTION private.tg_tickets__check_opportunity();
CREATE TRIGGER _200_updated_at BEFORE UPDATE ON private.tickets
    FOR EACH ROW EXECUTE FUNCTION private.tg_set_updated_at();
CREATE CONSTRAINT TRIGGER _900_emit_outbox AFTER INSERT ON private.tickets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION private.tg_tickets__emit_created();

-- Triggers: ticket_suggestions -----------------------------------------------

-- BEFORE INSERT: opportunity_id is the suggestion's, and the suggestion
-- belongs to the ticket's organization.
CREATE FUNCTION private.tg_ticket_suggestions__check_link()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_opportunity uuid;
    v_suggestion_org uuid;
    v_ticket_org uuid;
BEGIN
    SELECT s.opportunity_id, si.organization_id INTO v_opportunity, v_suggestion_org
    FROM private.suggestions AS s
    JOIN private.opportunities AS o ON o.id = s.opportunity_id
    JOIN private.sites AS si ON si.id = o.site_id
    WHERE s.id = NEW.suggestion_id;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no suggestion %s.', NEW.suggestion_id),
            HINT = 'Link only existing suggestions.';
    END IF;

    IF NEW.opportunity_id IS NULL THEN
        NEW.opportunity_id := v_opportunity;
    ELSIF NEW.opportunity_id <> v_opportunity THEN
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation',
            MESSAGE = 'ticket_suggestion_opportunity_mismatch',
            DETAIL = format('Suggestion %s belongs to opportunity %s, not %s.',
                            NEW.suggestion_id, v_opportunity, NEW.opportunity_id),
            HINT = 'Leave opportunity_id empty: it is taken from the suggestion.';
    END IF;

    SELECT organization_id INTO v_ticket_org FROM private.tickets WHERE id = NEW.ticket_id;
    IF FOUND AND v_ticket_org IS DISTINCT FROM v_suggestion_org THEN
        RAISE SQLSTATE 'PT403' USING
            MESSAGE = 'forbidden',
            DETAIL = format('Suggestion %s belongs to another organization than the ticket''s connection.',
                            NEW.suggestion_id),
            HINT = 'Link a ticket only to suggestions of its connection''s organization.';
    END IF;
    RETURN NEW;
END
$$;

-- BEFORE DELETE: a link leaves only through the cascade from its ticket.
-- During the cascade the ticket is already gone; any other DELETE finds it.
CREATE FUNCTION private.tg_ticket_suggestions__delete_only_by_cascade()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM private.tickets WHERE id = OLD.ticket_id) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = 'append_only',
            DETAIL = format('Ticket suggestion %s can only be removed by deleting ticket %s (or its connection).',
                            OLD.id, OLD.ticket_id),
            HINT = 'Use admin.delete_task_management_connection; links are never removed one by one.';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER _100_forbid_update BEFORE UPDATE ON private.ticket_suggestions
    FOR EACH ROW EXECUTE FUNCTION private.tg_forbid('append_only');
CREATE TRIGGER _100_forbid_truncate BEFORE TRUNCATE ON private.ticket_suggestions
    FOR EACH STATEMENT EXECUTE FUNCTION private.tg_forbid('append_only');
CREATE TRIGGER _110_delete_only_by_cascade BEFORE DELETE ON private.ticket_suggestions
    FOR EACH ROW EXECUTE FUNCTION private.tg_ticket_suggestions__delete_only_by_cascade();
CREATE TRIGGER _150_check_link BEFORE INSERT ON private.ticket_suggestions
    FOR EACH ROW EXECUTE FUNCTION private.tg_ticket_suggestions__check_link();

-- Privileges of pgrpc_api: what its functions need and nothing more. No
-- UPDATE on write-once columns, nothing but SELECT and INSERT on the
-- append-only link table; DELETE on connections only, for the admin delete
-- (tickets and links follow by cascade, which runs as the table owner).
GRANT EXECUTE ON FUNCTION
    private.url_problem(text, text[]),
    private.check_url(text, text, text[]),
    private.jira_cloud_metadata_problem(jsonb),
    private.task_management_metadata_problem(text, jsonb),
    private.check_task_management_metadata(text, jsonb)
TO pgrpc_api, pgrpc_admin;

GRANT SELECT, INSERT, DELETE ON private.task_management_connections TO pgrpc_api;
GRANT UPDATE (status, instance_url, display_name, metadata, last_used_at, error_message)
    ON private.task_management_connections TO pgrpc_api;
GRANT SELECT, INSERT ON private.tickets TO pgrpc_api;
GRANT UPDATE (ticket_status) ON private.tickets TO pgrpc_api;
GRANT SELECT, INSERT ON private.ticket_suggestions TO pgrpc_api;

-- Functions run by pgrpc_api -------------------------------------------------

SET LOCAL ROLE pgrpc_api;

CREATE FUNCTION api.connect_task_management(
    organization_id uuid,
    provider text,
    external_instance_id text,
    instance_url text,
    display_name text,
    metadata jsonb,
    connected_by text DEFAULT NULL
)
RETURNS private.task_management_connections
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Parameters are always written qualified (connect_task_management.x), so
-- bare names in ON CONFLICT (...) are the table's columns.
#variable_conflict use_column
DECLARE
    v_row private.task_management_connections;
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
        RETURNING c.* INTO v_row;
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
An organization has at most one active connection per provider: connecting a second instance while another is active is 409 active_connection_exists. An unknown organization is 404 not_found. Returns the connection. Callers: service.$$;

CREATE FUNCTION api.active_task_management_connection(organization_id uuid, provider text)
RETURNS private.task_management_connections
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row private.task_management_connections;
BEGIN
    PERFORM private.require_org_access(active_task_management_connection.organization_id);
    SELECT c.* INTO v_row
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

Returns the connection, or 404 not_found when there is none. A user may only ask about its own org_id (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

CREATE FUNCTION api.set_connection_status(connection_id uuid, status text, error_message text DEFAULT NULL)
RETURNS private.task_management_connections
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row private.task_management_connections;
    v_constraint text;
BEGIN
    BEGIN
        UPDATE private.task_management_connections AS c
        SET status = set_connection_status.status,
            error_message = set_connection_status.error_message
        WHERE c.id = set_connection_status.connection_id
        RETURNING c.* INTO v_row;
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
Entering requires_reauth, error or disabled emits task_management.connection_status_changed in the same transaction. Becoming active while another connection of the organization and provider is active is 409 active_connection_exists; an unknown id is 404 not_found. Returns the connection. Callers: service.$$;

CREATE FUNCTION api.disconnect_task_management(connection_id uuid)
RETURNS private.task_management_connections
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
    v_row private.task_management_connections;
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
    RETURNING c.* INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION api.disconnect_task_management(uuid) IS
$$Disconnects a task-management connection for good.

disconnected is terminal: the row stays (its tickets keep their history) but can never become active again; connecting the same instance later creates a new connection. Disconnecting twice is harmless. A user may only disconnect its own organization's connections (else 403 forbidden); an unknown id is 404 not_found. Returns the connection. Callers: service, user.$$;

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
RETURNS private.tickets
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_connection private.task_management_connections;
    v_ticket private.tickets;
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
    RETURNING t.* INTO v_ticket;

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
Sets the connection's last_used_at. ticket.created (the ticket and its sorted suggestion_ids) is emitted by a trigger at commit, in the same transaction, exactly once per ticket. A user may only use its own organization's connections (403 forbidden). Returns the ticket. Callers: service, user.$$;

CREATE FUNCTION api.ticket_for_suggestion(suggestion_id uuid)
RETURNS private.tickets
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
    v_ticket private.tickets;
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

    SELECT t.* INTO v_ticket
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

Returns null when the suggestion has no ticket (or does not exist). A user may only ask about suggestions of its own organization (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

CREATE FUNCTION api.tickets_for_opportunity(opportunity_id uuid)
RETURNS SETOF private.tickets
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
        SELECT t.*
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

A ticket belongs to an opportunity when it was created for it (opportunity_id) or links one of its suggestions. Returns an array, empty when there is none (or the opportunity does not exist). A user may only ask about its own organization's opportunities (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;

CREATE FUNCTION api.update_ticket_status(ticket_id uuid, ticket_status text)
RETURNS private.tickets
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ticket private.tickets;
BEGIN
    UPDATE private.tickets AS t
    SET ticket_status = update_ticket_status.ticket_status
    WHERE t.id = update_ticket_status.ticket_id
    RETURNING t.* INTO v_ticket;
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

ticket_status is the tool's own status name (free text, not blank); null clears it. Only ticket_status changes: the ticket's key, external id, provider and creator are write-once. An unknown id is 404 not_found. Returns the ticket. Callers: service (the sync).$$;

CREATE FUNCTION admin.delete_task_management_connection(connection_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tickets bigint;
    v_links bigint;
BEGIN
    SELECT count(*) INTO v_tickets
    FROM private.tickets AS t WHERE t.connection_id = delete_task_management_connection.connection_id;
    SELECT count(*) INTO v_links
    FROM private.ticket_suggestions AS ts
    JOIN private.tickets AS t ON t.id = ts.ticket_id
    WHERE t.connection_id = delete_task_management_connection.connection_id;

    DELETE FROM private.task_management_connections AS c
    WHERE c.id = delete_task_management_connection.connection_id;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING
            MESSAGE = 'not_found',
            DETAIL = format('There is no task-management connection %s.', delete_task_management_connection.connection_id),
            HINT = 'SELECT id, organization_id, status FROM private.task_management_connections lists them.';
    END IF;
    RETURN jsonb_build_object(
        'connection_id', delete_task_management_connection.connection_id,
        'tickets_deleted', v_tickets,
        'ticket_suggestions_deleted', v_links);
END
$$;

COMMENT ON FUNCTION admin.delete_task_management_connection(uuid) IS
$$Hard-deletes a task-management connection with its tickets and their suggestion links.

The delete cascades: connection, then its tickets, then their ticket_suggestions (the only way a link ever leaves). The linked suggestions become free to be ticketed again. No event is emitted. An unknown id is 404 not_found. Returns {connection_id, tickets_deleted, ticket_suggestions_deleted}. For psql operators (pgrpc_admin).$$;

-- Who may call what -----------------------------------------------------------

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

GRANT EXECUTE ON FUNCTION admin.delete_task_management_connection(uuid) TO pgrpc_admin;
