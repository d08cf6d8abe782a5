-- Nobody but its owner reads private.outbox_aggregate_locks.
--
-- V17 granted SELECT on it to pgrpc_admin and pgrpc_owner, as on every
-- private table. It holds no fact an operator needs (one row per aggregate
-- that ever emitted, the outbox itself has them all), and SELECT lets a
-- login hold ACCESS SHARE on it for as long as its transaction lasts: a
-- migration's ALTER of the table would wait behind that login, and every
-- emitter (ROW SHARE, from the row lock) would queue behind the waiting
-- ALTER. Only private.outbox_lock_aggregate (SECURITY DEFINER, owner
-- pgrpc_migrator) touches the table; no other role holds any privilege on
-- it after this.
--
-- Runs as the migrating superuser; the REVOKE fires the DDL guard, which
-- refreshes its baseline.

REVOKE ALL ON private.outbox_aggregate_locks FROM pgrpc_admin, pgrpc_owner;

COMMENT ON TABLE private.outbox_aggregate_locks IS
$$One row per aggregate that has ever emitted an outbox event: the row private.outbox_emit locks so that, within an aggregate, id order is commit order.

Read, written and row-locked only by private.outbox_lock_aggregate (SECURITY DEFINER, owner pgrpc_migrator); no other role holds any privilege on it (V21), so no login can take these locks or hold the table against a migration. It grows with the number of aggregates (players, suggestions, connections, reservations, nonces replayed), not with the number of events; rows are never updated, so it does not bloat.$$;
