-- wrk script for the write RPC of scripts/bench: every request is
-- POST with an empty JSON object (the function's defaults apply).
-- The Authorization header comes from wrk's -H option.
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
