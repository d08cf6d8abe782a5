-- Module task_management: task-management connections, tickets and their links to suggestions.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.task_management_connections, private.tickets, private.ticket_suggestions

-- private.jira_cloud_metadata_problem
CREATE OR REPLACE FUNCTION private.jira_cloud_metadata_problem(p_metadata jsonb)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
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
$function$;
ALTER FUNCTION private.jira_cloud_metadata_problem(jsonb) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.jira_cloud_metadata_problem(jsonb) IS
$$What is wrong with jira_cloud connection metadata, or NULL when it is {cloudId: uuid, scopes?: string[≤100] of ≤256 chars} with no other key.$$;
REVOKE ALL ON FUNCTION private.jira_cloud_metadata_problem(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.jira_cloud_metadata_problem(jsonb) TO pgrpc_api, pgrpc_admin;

-- private.task_management_metadata_problem
CREATE OR REPLACE FUNCTION private.task_management_metadata_problem(p_provider text, p_metadata jsonb)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE p_provider
        WHEN 'jira_cloud' THEN private.jira_cloud_metadata_problem(p_metadata)
        ELSE 'no metadata schema is defined for provider ' || coalesce(quote_literal(p_provider), 'NULL')
    END
$function$;
ALTER FUNCTION private.task_management_metadata_problem(text,jsonb) OWNER TO pgrpc_migrator;
COMMENT ON FUNCTION private.task_management_metadata_problem(text,jsonb) IS
$$What is wrong with a connection's metadata for its provider, or NULL when it is valid.$$;
REVOKE ALL ON FUNCTION private.task_management_metadata_problem(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.task_management_metadata_problem(text,jsonb) TO pgrpc_api, pgrpc_admin;

-- private.check_task_management_metadata
CREATE OR REPLACE FUNCTION private.check_task_management_metadata(p_provider text, p_metadata jsonb)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
AS $function$
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
$function$;
ALTER FUNCTION private.check_task_management_metadata(text,jsonb) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.check_task_management_metadata(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.check_task_management_metadata(text,jsonb) TO pgrpc_api, pgrpc_admin;

-- private.tg_task_management_connections__check_transition
CREATE OR REPLACE FUNCTION private.tg_task_management_connections__check_transition()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_task_management_connections__check_transition() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_task_management_connections__check_transition() FROM PUBLIC;

-- private.tg_task_management_connections__emit_status_changed
CREATE OR REPLACE FUNCTION private.tg_task_management_connections__emit_status_changed()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_task_management_connections__emit_status_changed() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_task_management_connections__emit_status_changed() FROM PUBLIC;

-- private.tg_tickets__check_opportunity
CREATE OR REPLACE FUNCTION private.tg_tickets__check_opportunity()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_tickets__check_opportunity() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_tickets__check_opportunity() FROM PUBLIC;

-- private.tg_tickets__emit_created
CREATE OR REPLACE FUNCTION private.tg_tickets__emit_created()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION private.tg_tickets__emit_created() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_tickets__emit_created() FROM PUBLIC;

-- private.tg_ticket_suggestions__check_link
CREATE OR REPLACE FUNCTION private.tg_ticket_suggestions__check_link()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_ticket_suggestions__check_link() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_ticket_suggestions__check_link() FROM PUBLIC;

-- private.tg_ticket_suggestions__delete_only_by_cascade
CREATE OR REPLACE FUNCTION private.tg_ticket_suggestions__delete_only_by_cascade()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;
ALTER FUNCTION private.tg_ticket_suggestions__delete_only_by_cascade() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_ticket_suggestions__delete_only_by_cascade() FROM PUBLIC;

-- admin.delete_task_management_connection
CREATE OR REPLACE FUNCTION admin.delete_task_management_connection(connection_id uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION admin.delete_task_management_connection(uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.delete_task_management_connection(uuid) IS
$$Hard-deletes a task-management connection with its tickets and their suggestion links.

The delete cascades: connection, then its tickets, then their ticket_suggestions (the only way a link ever leaves). The linked suggestions become free to be ticketed again. No event is emitted. An unknown id is 404 not_found. Returns {connection_id, tickets_deleted, ticket_suggestions_deleted}. For psql operators (pgrpc_admin).$$;
REVOKE ALL ON FUNCTION admin.delete_task_management_connection(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.delete_task_management_connection(uuid) TO pgrpc_admin;

-- api.connect_task_management
CREATE OR REPLACE FUNCTION api.connect_task_management(organization_id uuid, provider text, external_instance_id text, instance_url text, display_name text, metadata jsonb, connected_by text DEFAULT NULL::text)
 RETURNS api.task_management_connection
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.connect_task_management(uuid,text,text,text,text,jsonb,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.connect_task_management(uuid,text,text,text,text,jsonb,text) IS
$$Connects an organization to a task-management instance, or re-authorizes it.

provider is jira_cloud. instance_url must be an absolute https URL with a host (else 400 invalid_url). metadata is required and validated per provider; for jira_cloud it is {"cloudId": "<uuid>", "scopes": ["..."]} with scopes optional (≤100 strings of ≤256 chars) and no other key (else 400 invalid_metadata, DETAIL names the field). connected_by defaults to the JWT sub and never changes afterwards.
If a connection to the same instance (organization, provider, external_instance_id) exists and is not disconnected, this is a re-auth: display_name, instance_url and metadata are updated, error_message is cleared and the status becomes active. A disconnected connection is terminal: a new row is created instead.
An organization has at most one active connection per provider: connecting a second instance while another is active is 409 active_connection_exists. An unknown organization is 404 not_found. Returns the connection: {id, organization_id, provider, status, external_instance_id, instance_url, display_name, connected_by, metadata, last_used_at, error_message, created_at, updated_at}. Callers: service.$$;
REVOKE ALL ON FUNCTION api.connect_task_management(uuid,text,text,text,text,jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.connect_task_management(uuid,text,text,text,text,jsonb,text) TO pgrpc_service;

-- api.active_task_management_connection
CREATE OR REPLACE FUNCTION api.active_task_management_connection(organization_id uuid, provider text)
 RETURNS api.task_management_connection
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.active_task_management_connection(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.active_task_management_connection(uuid,text) IS
$$The organization's active connection for a provider.

Returns the connection (the fields connect_task_management returns), or 404 not_found when there is none. A user may only ask about its own org_id (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;
REVOKE ALL ON FUNCTION api.active_task_management_connection(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.active_task_management_connection(uuid,text) TO pgrpc_user, pgrpc_service;

-- api.set_connection_status
CREATE OR REPLACE FUNCTION api.set_connection_status(connection_id uuid, status text, error_message text DEFAULT NULL::text)
 RETURNS api.task_management_connection
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.set_connection_status(uuid,text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.set_connection_status(uuid,text,text) IS
$$Moves a connection to another status.

status is active, disabled, requires_reauth, error or disconnected. Allowed: active to any other status; disabled, requires_reauth and error to active or disconnected; disconnected is terminal. Anything else is 409 invalid_transition (DETAIL names both statuses); keeping the same status is allowed and only updates error_message. error_message is replaced by the given value (default null, which clears it).
Entering requires_reauth, error or disabled emits task_management.connection_status_changed in the same transaction. Becoming active while another connection of the organization and provider is active is 409 active_connection_exists; an unknown id is 404 not_found. Returns the connection (the fields connect_task_management returns). Callers: service.$$;
REVOKE ALL ON FUNCTION api.set_connection_status(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.set_connection_status(uuid,text,text) TO pgrpc_service;

-- api.disconnect_task_management
CREATE OR REPLACE FUNCTION api.disconnect_task_management(connection_id uuid)
 RETURNS api.task_management_connection
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.disconnect_task_management(uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.disconnect_task_management(uuid) IS
$$Disconnects a task-management connection for good.

disconnected is terminal: the row stays (its tickets keep their history) but can never become active again; connecting the same instance later creates a new connection. Disconnecting twice is harmless. A user may only disconnect its own organization's connections (else 403 forbidden); an unknown id is 404 not_found. Returns the connection (the fields connect_task_management returns). Callers: service, user.$$;
REVOKE ALL ON FUNCTION api.disconnect_task_management(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.disconnect_task_management(uuid) TO pgrpc_user, pgrpc_service;

-- api.create_ticket
CREATE OR REPLACE FUNCTION api.create_ticket(connection_id uuid, external_ticket_id text, ticket_key text, ticket_url text, suggestion_ids uuid[] DEFAULT '{}'::uuid[], opportunity_id uuid DEFAULT NULL::uuid, ticket_status text DEFAULT NULL::text, created_by text DEFAULT NULL::text)
 RETURNS api.ticket
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_connection private.task_management_connections;
    v_ticket api.ticket;
    v_suggestions uuid[];
    v_missing uuid[];
    v_taken text;
    v_linked integer;
    v_created_by text := coalesce(create_ticket.created_by, private.jwt_sub());
BEGIN
    IF array_ndims(create_ticket.suggestion_ids) > 1 THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_suggestion_ids',
            DETAIL = format('suggestion_ids must be a one-dimensional array, got %s dimensions.', array_ndims(create_ticket.suggestion_ids)),
            HINT = 'Pass a flat JSON array of suggestion ids.';
    END IF;
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
    SET CONSTRAINTS private._900_emit_created DEFERRED;
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

    -- ticket.created is written at commit by the tickets' _900_emit_created
    -- trigger, with the links inserted above.
    RETURN v_ticket;
END
$function$;
ALTER FUNCTION api.create_ticket(uuid,text,text,text,uuid[],uuid,text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.create_ticket(uuid,text,text,text,uuid[],uuid,text,text) IS
$$Records a ticket created in the task-management tool and links it to suggestions.

The connection must be active (else 409 connection_not_active). Every suggestion in suggestion_ids is linked at most once, ever: if any is already linked to a ticket, the call is 409 suggestion_already_ticketed and nothing is created (no ticket, no link). Concurrent calls for one suggestion give one ticket and 409 for the others. Unknown suggestions, opportunity or connection are 404 not_found; suggestions and opportunity must belong to the connection's organization (else 403 forbidden).
ticket_url must be an absolute http(s) URL with a host (400 invalid_url); ticket_provider is the connection's provider; created_by defaults to the JWT sub, and a user may only create tickets as itself. (connection_id, external_ticket_id) is unique (409 on a duplicate).
Sets the connection's last_used_at. ticket.created (the ticket and its sorted suggestion_ids) is emitted by a trigger at commit, in the same transaction, exactly once per ticket. A user may only use its own organization's connections (403 forbidden). Returns the ticket: {id, connection_id, organization_id, opportunity_id, external_ticket_id, ticket_key, ticket_url, ticket_status, ticket_provider, created_by, created_at, updated_at}. Callers: service, user.$$;
REVOKE ALL ON FUNCTION api.create_ticket(uuid,text,text,text,uuid[],uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_ticket(uuid,text,text,text,uuid[],uuid,text,text) TO pgrpc_user, pgrpc_service;

-- api.ticket_for_suggestion
CREATE OR REPLACE FUNCTION api.ticket_for_suggestion(suggestion_id uuid)
 RETURNS api.ticket
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.ticket_for_suggestion(uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.ticket_for_suggestion(uuid) IS
$$The ticket a suggestion is linked to, or null.

Returns the ticket (the fields create_ticket returns), or null when the suggestion has no ticket (or does not exist). A user may only ask about suggestions of its own organization (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;
REVOKE ALL ON FUNCTION api.ticket_for_suggestion(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.ticket_for_suggestion(uuid) TO pgrpc_user, pgrpc_service;

-- api.tickets_for_opportunity
CREATE OR REPLACE FUNCTION api.tickets_for_opportunity(opportunity_id uuid)
 RETURNS SETOF api.ticket
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.tickets_for_opportunity(uuid) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.tickets_for_opportunity(uuid) IS
$$The tickets of an opportunity, oldest first.

A ticket belongs to an opportunity when it was created for it (opportunity_id) or links one of its suggestions. Returns an array of tickets (the fields create_ticket returns), empty when there is none (or the opportunity does not exist). A user may only ask about its own organization's opportunities (else 403 forbidden). Read-only: answers GET. Callers: service, user.$$;
REVOKE ALL ON FUNCTION api.tickets_for_opportunity(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.tickets_for_opportunity(uuid) TO pgrpc_user, pgrpc_service;

-- api.update_ticket_status
CREATE OR REPLACE FUNCTION api.update_ticket_status(ticket_id uuid, ticket_status text)
 RETURNS api.ticket
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;
ALTER FUNCTION api.update_ticket_status(uuid,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION api.update_ticket_status(uuid,text) IS
$$Records a ticket's status as last seen in the task-management tool.

ticket_status is the tool's own status name (free text, not blank); null clears it. Only ticket_status changes: the ticket's key, external id, provider and creator are write-once. An unknown id is 404 not_found. Returns the ticket (the fields create_ticket returns). Callers: service (the sync).$$;
REVOKE ALL ON FUNCTION api.update_ticket_status(uuid,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.update_ticket_status(uuid,text) TO pgrpc_service;
