-- Module settings: runtime settings: typed readers and their validation.
--
-- The live definition of every function, trigger function and view of this
-- module. pgrpc migrate applies this file after the versioned migrations
-- (sql/V*.sql) whenever its checksum changed; edit it in place. A change
-- CREATE OR REPLACE cannot make (a return type, a parameter name) needs a
-- versioned migration that drops the function first. See
-- docs/sql-conventions.md.
-- tables: private.settings

-- private.tg_settings__validate
CREATE OR REPLACE FUNCTION private.tg_settings__validate()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_low boolean := false;
    v_high boolean := false;
BEGIN
    BEGIN
        IF NEW.value_type = 'interval' THEN
            v_low := NEW.min_value IS NOT NULL AND NEW.value::interval < NEW.min_value::interval;
            v_high := NEW.max_value IS NOT NULL AND NEW.value::interval > NEW.max_value::interval;
        ELSIF NEW.value_type = 'integer' THEN
            v_low := NEW.min_value IS NOT NULL AND NEW.value::bigint < NEW.min_value::bigint;
            v_high := NEW.max_value IS NOT NULL AND NEW.value::bigint > NEW.max_value::bigint;
        END IF;
        IF NEW.value_type = 'interval' AND NEW.value::interval <= interval '0' THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s must be a positive interval, got %L.', NEW.key, NEW.value),
                HINT = 'Use an interval such as ''30 days''.';
        ELSIF NEW.value_type = 'integer' AND NEW.value::integer <= 0 THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s must be a positive integer, got %L.', NEW.key, NEW.value),
                HINT = 'Use a whole number greater than zero.';
        END IF;
    EXCEPTION
        WHEN invalid_datetime_format OR invalid_text_representation
             OR numeric_value_out_of_range OR datetime_field_overflow
             OR interval_field_overflow THEN
            RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
                DETAIL = format('Setting %s expects a %s, got %L.', NEW.key, NEW.value_type, NEW.value),
                HINT = 'Check the value''s format.';
    END;
    IF v_low OR v_high THEN
        RAISE SQLSTATE 'PT400' USING MESSAGE = 'invalid_setting',
            DETAIL = format('Setting %s must lie between %s and %s, got %L.', NEW.key,
                            coalesce(NEW.min_value, '-infinity'), coalesce(NEW.max_value, 'infinity'), NEW.value),
            HINT = 'Choose a value within the bounds.';
    END IF;
    RETURN NEW;
END
$function$;
ALTER FUNCTION private.tg_settings__validate() OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.tg_settings__validate() FROM PUBLIC;

-- private.setting
CREATE OR REPLACE FUNCTION private.setting(p_key text)
 RETURNS text
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    v_value text;
BEGIN
    SELECT value INTO v_value FROM private.settings WHERE key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = 'setting_missing',
            DETAIL = format('private.settings has no row %L.', p_key),
            HINT = 'Run pgrpc migrate; settings are created by the migrations.';
    END IF;
    RETURN v_value;
END
$function$;
ALTER FUNCTION private.setting(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.setting(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.setting(text) TO pgrpc_api, pgrpc_admin;

-- private.setting_interval
CREATE OR REPLACE FUNCTION private.setting_interval(p_key text)
 RETURNS interval
 LANGUAGE sql
 STABLE
AS $function$
    SELECT private.setting(p_key)::interval
$function$;
ALTER FUNCTION private.setting_interval(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.setting_interval(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.setting_interval(text) TO pgrpc_api, pgrpc_admin;

-- private.setting_int
CREATE OR REPLACE FUNCTION private.setting_int(p_key text)
 RETURNS integer
 LANGUAGE sql
 STABLE
AS $function$
    SELECT private.setting(p_key)::integer
$function$;
ALTER FUNCTION private.setting_int(text) OWNER TO pgrpc_migrator;
REVOKE ALL ON FUNCTION private.setting_int(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION private.setting_int(text) TO pgrpc_api, pgrpc_admin;

-- admin.set_setting
CREATE OR REPLACE FUNCTION admin.set_setting(key text, value text)
 RETURNS private.settings
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v_row private.settings;
BEGIN
    UPDATE private.settings AS s SET value = set_setting.value
    WHERE s.key = set_setting.key
    RETURNING s.* INTO v_row;
    IF NOT FOUND THEN
        RAISE SQLSTATE 'PT404' USING MESSAGE = 'not_found',
            DETAIL = format('There is no setting named %L.', set_setting.key),
            HINT = 'SELECT key FROM private.settings lists the settings.';
    END IF;
    RETURN v_row;
END
$function$;
ALTER FUNCTION admin.set_setting(text,text) OWNER TO pgrpc_api;
COMMENT ON FUNCTION admin.set_setting(text,text) IS
$$Changes a tunable in private.settings.

The value is validated against the setting's type (a positive interval or a positive integer) and its bounds (min_value, max_value); an unknown key is not_found and a malformed or out-of-bounds value is invalid_setting.$$;
REVOKE ALL ON FUNCTION admin.set_setting(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin.set_setting(text,text) TO pgrpc_admin;
