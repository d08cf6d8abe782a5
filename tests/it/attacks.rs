//! The hostile corpus of the third attack review (issue 18): each break it
//! found, sent through real HTTP (or, for the SQL ones, through real login
//! roles) against a real PostgreSQL. Each test asserts the answer, that the
//! proxy is still up afterwards, and that nothing was written.
//!
//! Sections follow the layer where each rule belongs: client-input parsers,
//! the transport and process, the database's locks and roles, and the
//! commit path.

// ---------------------------------------------------------------------------
// Section: parsers (logic trees, fts operands, NUL bytes, cookies)
// ---------------------------------------------------------------------------

// (end of section: parsers)

// ---------------------------------------------------------------------------
// Section: transport (body read deadline, panics, metrics labels, reloads, GET /)
// ---------------------------------------------------------------------------

// (end of section: transport)

// ---------------------------------------------------------------------------
// Section: database (advisory locks, the api login rule)
// ---------------------------------------------------------------------------

// (end of section: database)

// ---------------------------------------------------------------------------
// Section: commit path (idempotency rows, response settings before COMMIT)
// ---------------------------------------------------------------------------

// (end of section: commit path)
