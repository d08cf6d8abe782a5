-- NpgsqlRest's peer workload (its PerfomanceTests script), as scripts/bench
-- installs it: a set of `_records` rows of ten columns computed from five
-- parameters. For scripts/bench-instructions (SETUP_SQL=this file); it
-- lives only in the throwaway benchmark database, never in the api schema.
CREATE FUNCTION api.perf_test(_records int, _text_param text, _int_param int,
                              _ts_param timestamp, _bool_param bool)
RETURNS TABLE (id1 int, foo1 text, bar1 text, datetime1 timestamp,
               id2 int, foo2 text, bar2 text, datetime2 timestamp,
               long_foo_bar text, is_foobar bool)
LANGUAGE sql STABLE
AS $$
SELECT g + _int_param, 'foo_' || _text_param || '_' || g, 'bar' || g,
       _ts_param::date + make_interval(days => g),
       g + 1 + _int_param, 'foo_' || _text_param || '_' || (g + 1),
       'bar_' || _text_param || '_' || (g + 1),
       _ts_param::date + make_interval(days => g + 1),
       'long_foo_bar__' || _text_param || '_' || (g + 2),
       (g % 2)::boolean AND _bool_param
FROM generate_series(1, _records) AS g
$$;
GRANT EXECUTE ON FUNCTION api.perf_test(int, text, int, timestamp, bool) TO pgrpc_anon;
