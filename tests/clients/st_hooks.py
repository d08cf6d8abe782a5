"""schemathesis hooks for tests/it/clients.rs.

pgrpc enforces its business rules in PostgreSQL, so a request the OpenAPI
document calls valid may still get a 4xx: an unknown token type (PT400), a
NULL where a column is NOT NULL (23502), a write under GET (25006), a range
past the end (PGRST103). schemathesis.toml therefore lets
positive_data_acceptance accept those statuses, and this check puts the
strictness back by the error's code: a schema-valid request must never be
refused as *malformed*, which is what a code outside BUSINESS means
(PGRST100 bad query string, PGRST102 bad body, PGRST202 no such function or
argument, 22P02 a value of the wrong type, 42703 an unknown column, ...).
"""

import json

import schemathesis

# Codes that answer what the request asked for, not how it was written.
BUSINESS_PREFIXES = ("PT", "23")
BUSINESS_CODES = {
    "25006",  # a VOLATILE function that writes, called with GET (READ ONLY)
    "42501",  # the role may not call this function
    "PGRST103",  # Range / offset past the rows there are
    "PGRST116",  # application/vnd.pgrst.object+json and not exactly one row
    "PGRST124",  # more rows than Prefer: max-affected allows
    "PGRST301",
    "PGRST302",
    "PGRST303",
}


@schemathesis.check
def valid_request_not_refused_as_malformed(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if not 400 <= response.status_code < 500:
        return None
    try:
        code = json.loads(response.content or b"null")["code"]
    except (ValueError, TypeError, KeyError):
        raise AssertionError(
            f"a {response.status_code} without the error body {{code,message,details,hint}}"
        )
    if code in BUSINESS_CODES or str(code).startswith(BUSINESS_PREFIXES):
        return None
    raise AssertionError(
        f"a schema-valid request was refused as malformed: {response.status_code} {code}: "
        f"{response.content[:300]!r}"
    )
