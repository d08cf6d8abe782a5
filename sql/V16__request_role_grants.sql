-- Grants as a PostgREST database has them: the authenticator needs no
-- privilege on any exposed schema, and the request roles none on private.
--
-- The proxy now parses every call inside the request's transaction, after
-- the role switch, as PostgREST does, so USAGE is checked for the request
-- role, never for the authenticator. The Idempotency-Key helpers that the
-- proxy itself calls (V10, V12) move from private to pgrpc_http, a schema of
-- their own that the request roles may use and that holds nothing else; the
-- DDL guard of V15 protects it like private.

CREATE SCHEMA pgrpc_http AUTHORIZATION pgrpc_migrator;
REVOKE ALL ON SCHEMA pgrpc_http FROM PUBLIC;
COMMENT ON SCHEMA pgrpc_http IS
$$The proxy's own helpers for the Idempotency-Key header (SPEC 2.3): http_idempotency_claim and http_idempotency_store. Never exposed over HTTP; the request roles may only execute these two.$$;

ALTER FUNCTION private.http_idempotency_claim(text, text) SET SCHEMA pgrpc_http;
ALTER FUNCTION private.http_idempotency_store(text, integer, jsonb, text) SET SCHEMA pgrpc_http;

GRANT USAGE ON SCHEMA pgrpc_http TO pgrpc_anon, pgrpc_user, pgrpc_service;

REVOKE USAGE ON SCHEMA api, private FROM pgrpc_authenticator;
REVOKE USAGE ON SCHEMA private FROM pgrpc_anon, pgrpc_user, pgrpc_service;
