-- A fixture for scripts/bench-instructions' read case: a freemium
-- organization with one site of a fixed id, so that the request path can
-- name it:
--   SETUP_SQL=scripts/bench.d/site.sql scripts/bench-instructions \
--     '/rpc/token_balance?site_id=11111111-1111-4111-8111-111111111111&token_type=broken_backlinks' --token
-- Run as the superuser after the migrations (api.create_site draws its id).
INSERT INTO private.sites (id, organization_id, base_url)
SELECT '11111111-1111-4111-8111-111111111111', o.id, 'https://bench.example'
  FROM api.create_organization('bench', 'freemium') AS o;
