//! Reading the function cache from pg_catalog: the exposed routines with
//! their parameters, result shape and media-type domain, the roles the
//! authenticator may assume and their settings, the media-type aggregates,
//! and which routines each role may execute.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio_postgres::GenericClient;

use super::{
    Column, MediaAggregate, MediaDomain, NameMap, Naming, Param, RoleSettings, Routine,
    SchemaCache, Shape, Volatility,
};

impl SchemaCache {
    pub async fn load<C: GenericClient>(
        client: &C,
        schemas: &[String],
    ) -> Result<Self, tokio_postgres::Error> {
        let rows = client.query(CATALOG_SQL, &[&schemas]).await?;
        let mut routines: NameMap<NameMap<Vec<Arc<Routine>>>> = NameMap::default();
        for row in rows {
            let oid: u32 = row.get("oid");
            let schema: String = row.get("schema");
            let name: String = row.get("name");
            let names: Vec<String> = row.get("arg_names");
            let types: Vec<String> = row.get("arg_types");
            let modes: Vec<String> = row.get("arg_modes");
            let n_defaults: i32 = row.get("n_defaults");
            let volatility = match row.get::<_, String>("volatility").as_str() {
                "i" => Volatility::Immutable,
                "s" => Volatility::Stable,
                _ => Volatility::Volatile,
            };
            let retset: bool = row.get("retset");
            let composite: bool = row.get("returns_composite");
            let is_void: bool = row.get("returns_void");
            let return_type: String = row.get("return_type");
            let description: Option<String> = row.get("description");
            let config: Vec<(String, String)> = row
                .get::<_, Vec<String>>("config")
                .into_iter()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();

            let attr_names: Vec<String> = row.get("attr_names");
            let attr_types: Vec<String> = row.get("attr_types");
            // The OUT, INOUT and TABLE parameters name the result's columns.
            let outs: Vec<Column> = modes
                .iter()
                .enumerate()
                .filter(|(_, mode)| matches!(mode.as_str(), "o" | "b" | "t"))
                .map(|(i, _)| Column {
                    name: names.get(i).cloned().unwrap_or_default(),
                    type_sql: types.get(i).cloned().unwrap_or_default(),
                })
                .collect();
            let naming = if !attr_names.is_empty() || composite {
                Naming::Row
            } else if outs.len() == 1 && !outs[0].name.is_empty() {
                Naming::OutParam
            } else {
                Naming::Bare
            };
            let mut columns: Vec<Column> = Vec::new();
            if !attr_names.is_empty() {
                for (name, type_sql) in attr_names.into_iter().zip(attr_types) {
                    columns.push(Column { name, type_sql });
                }
            } else if naming != Naming::Bare {
                columns = outs;
            } else {
                columns.push(Column {
                    name: name.clone(),
                    type_sql: return_type.clone(),
                });
            }
            let mut params: Vec<Param> = Vec::new();
            for (i, mode) in modes.iter().enumerate() {
                if matches!(mode.as_str(), "i" | "b" | "v") {
                    params.push(Param {
                        name: names.get(i).cloned().unwrap_or_default(),
                        type_sql: types.get(i).cloned().unwrap_or_default(),
                        has_default: false,
                        variadic: mode == "v",
                    });
                }
            }
            let n_in = params.len();
            let n_defaults = usize::try_from(n_defaults).unwrap_or(0).min(n_in);
            for p in params.iter_mut().skip(n_in - n_defaults) {
                p.has_default = true;
            }
            // More than 64 parameters cannot be masked; such routines are
            // not exposed.
            if params.len() > 64 {
                continue;
            }
            let takes_body = params.len() == 1
                && params[0].name.is_empty()
                && matches!(
                    params[0].type_sql.as_str(),
                    "json" | "jsonb" | "text" | "xml" | "bytea"
                );
            let media = row
                .get::<_, Option<String>>("media_type")
                .map(|name| MediaDomain {
                    media: crate::media::MediaType::parse(&name),
                    bytea: row.get("media_bytea"),
                });
            let row_type: Option<u32> = row.get("row_type");
            // Unnamed parameters cannot be passed by name; routines with
            // them are callable only through the single-body form.
            if !takes_body && params.iter().any(|p| p.name.is_empty()) {
                continue;
            }
            let shape = if retset {
                Shape::SetOf
            } else if is_void {
                Shape::Void
            } else if naming != Naming::Bare {
                Shape::Composite
            } else {
                Shape::Scalar
            };
            routines
                .entry(schema.clone())
                .or_default()
                .entry(name.clone())
                .or_default()
                .push(Arc::new(Routine {
                    oid,
                    schema,
                    name,
                    params,
                    volatility,
                    shape,
                    naming,
                    return_type,
                    columns,
                    takes_body,
                    media,
                    row_type,
                    description,
                    config,
                    sql_cache: RwLock::new(HashMap::new()),
                }));
        }
        let roles: HashSet<String> = client
            .query(ROLES_SQL, &[])
            .await?
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let mut role_settings: HashMap<String, RoleSettings> = HashMap::new();
        for row in client.query(ROLE_SETTINGS_SQL, &[]).await? {
            let role: String = row.get(0);
            let entries: Vec<String> = row.get(1);
            let settings = role_settings.entry(role).or_default();
            for entry in entries {
                let Some((name, value)) = entry.split_once('=') else {
                    continue;
                };
                // A database-specific value comes later and replaces the
                // cluster-wide one.
                match settings.names.iter().position(|n| n == name) {
                    Some(i) => settings.values[i] = value.to_string(),
                    None => {
                        settings.names.push(name.to_string());
                        settings.values.push(value.to_string());
                    }
                }
            }
        }
        let role_settings = role_settings
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let mut media_aggregates: HashMap<u32, HashMap<String, MediaAggregate>> = HashMap::new();
        for row in client.query(MEDIA_AGGREGATES_SQL, &[&schemas]).await? {
            let media: String = row.get("media");
            let key = crate::media::MediaType::parse(&media).key().to_string();
            let arg: u32 = row.get("arg_type");
            let agg = MediaAggregate {
                func_sql: row.get("func_sql"),
                target_sql: row.get("target_sql"),
                media,
                bytea: row.get("bytea"),
            };
            let oid = if agg.target_sql.is_some() { arg } else { 0 };
            media_aggregates.entry(oid).or_default().insert(key, agg);
        }
        let oids: Vec<u32> = routines
            .values()
            .flat_map(|by_name| by_name.values().flatten())
            .map(|r| r.oid)
            .collect();
        let role_list: Vec<&str> = roles.iter().map(String::as_str).collect();
        let mut executable: HashMap<String, HashSet<u32>> = HashMap::new();
        for row in client.query(EXECUTABLE_SQL, &[&role_list, &oids]).await? {
            executable.insert(row.get(0), row.get::<_, Vec<u32>>(1).into_iter().collect());
        }
        Ok(SchemaCache {
            routines,
            roles,
            role_settings,
            timezones: tokio::sync::OnceCell::new(),
            media_aggregates,
            executable,
        })
    }
}

/// A domain is a media type when its name is `type/subtype` (RFC 6838
/// characters) or `*/*`: PostgREST's test, in both queries below.
const CATALOG_SQL: &str = r#"
WITH RECURSIVE dom(oid, base) AS (
  SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
  UNION ALL
  SELECT dom.oid, t.typbasetype FROM dom JOIN pg_catalog.pg_type t ON t.oid = dom.base WHERE t.typtype = 'd'
),
media AS (
  SELECT t.oid, t.typname::text AS name, (d.base = 'bytea'::regtype) AS bytea
  FROM pg_catalog.pg_type t
  JOIN dom d ON d.oid = t.oid
  JOIN pg_catalog.pg_type b ON b.oid = d.base AND b.typtype <> 'd'
  WHERE (t.typname ~* '^[A-Za-z0-9.-]+/[A-Za-z0-9.\+-]+$' OR t.typname = '*/*')
)
SELECT p.oid::oid AS oid,
       n.nspname::text AS schema,
       p.proname::text AS name,
       coalesce(p.proargnames::text[], '{}') AS arg_names,
       array(SELECT format_type(t.typ, NULL)
             FROM unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY AS t(typ, i)
             ORDER BY t.i) AS arg_types,
       coalesce(p.proargmodes::text[],
                array_fill('i'::text, ARRAY[cardinality(p.proargtypes::oid[])])) AS arg_modes,
       p.pronargdefaults::int AS n_defaults,
       p.provolatile::text AS volatility,
       p.proretset AS retset,
       (rt.typtype = 'c'
        OR (p.prorettype = 'record'::regtype
            AND coalesce('o' = ANY(p.proargmodes::text[]) OR 'b' = ANY(p.proargmodes::text[])
                         OR 't' = ANY(p.proargmodes::text[]), false))) AS returns_composite,
       (p.prorettype = 'void'::regtype) AS returns_void,
       format_type(p.prorettype, NULL) AS return_type,
       array(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rt.typrelid AND rt.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS attr_names,
       array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rt.typrelid AND rt.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS attr_types,
       obj_description(p.oid, 'pg_proc') AS description,
       coalesce(p.proconfig, '{}') AS config,
       CASE WHEN NOT p.proretset THEN m.name END AS media_type,
       coalesce(m.bytea, false) AS media_bytea,
       CASE WHEN rt.typtype = 'c' AND EXISTS (
              SELECT 1 FROM pg_catalog.pg_class c
              WHERE c.oid = rt.typrelid AND c.relkind IN ('r', 'v', 'm', 'f', 'p'))
            THEN rt.oid END AS row_type
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_type rt ON rt.oid = p.prorettype
LEFT JOIN media m ON m.oid = p.prorettype
WHERE n.nspname = ANY($1)
  AND p.prokind = 'f'
  AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
ORDER BY p.oid
"#;

/// What `Prefer: timezone=` accepts, as PostgREST reads it.
pub const TIMEZONES_SQL: &str = "SELECT name FROM pg_catalog.pg_timezone_names";

/// Aggregates of one argument, in the exposed schemas, whose final type is
/// a media-type domain, over a table's or view's row type or `anyelement`
/// (PostgREST's media handlers).
const MEDIA_AGGREGATES_SQL: &str = r#"
WITH RECURSIVE dom(oid, base) AS (
  SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
  UNION ALL
  SELECT dom.oid, t.typbasetype FROM dom JOIN pg_catalog.pg_type t ON t.oid = dom.base WHERE t.typtype = 'd'
)
SELECT quote_ident(pn.nspname) || '.' || quote_ident(p.proname) AS func_sql,
       a.oid::oid AS arg_type,
       CASE WHEN a.oid <> 'anyelement'::regtype
            THEN quote_ident(an.nspname) || '.' || quote_ident(a.typname) END AS target_sql,
       t.typname::text AS media,
       (d.base = 'bytea'::regtype) AS bytea
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_aggregate g ON g.aggfnoid = p.oid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_type t ON t.oid = p.prorettype
JOIN dom d ON d.oid = t.oid
JOIN pg_catalog.pg_type b ON b.oid = d.base AND b.typtype <> 'd'
JOIN pg_catalog.pg_type a ON a.oid = p.proargtypes[0]
JOIN pg_catalog.pg_namespace an ON an.oid = a.typnamespace
WHERE pn.nspname = ANY($1)
  AND p.pronargs = 1
  AND (t.typname ~* '^[A-Za-z0-9.-]+/[A-Za-z0-9.\+-]+$' OR t.typname = '*/*')
  AND (a.oid = 'anyelement'::regtype
       OR a.oid IN (SELECT c.reltype FROM pg_catalog.pg_class c
                    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')))
ORDER BY p.oid
"#;

/// For each role of `$1`, the routines of `$2` it may call.
const EXECUTABLE_SQL: &str = r#"
SELECT r.rolname::text, array_agg(p.oid)
FROM pg_catalog.pg_roles r
CROSS JOIN pg_catalog.pg_proc p
WHERE r.rolname::text = ANY($1) AND p.oid = ANY($2)
  AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE')
  AND pg_catalog.has_schema_privilege(r.oid, p.pronamespace, 'USAGE')
GROUP BY r.rolname
"#;

const ROLES_SQL: &str = r#"
SELECT r.rolname::text
FROM pg_catalog.pg_roles r
WHERE pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
  AND r.rolname <> current_user
  AND NOT r.rolsuper
  AND NOT r.rolbypassrls
"#;

/// Settings of the roles the authenticator may assume, cluster-wide ones
/// first, then this database's.
const ROLE_SETTINGS_SQL: &str = r#"
SELECT r.rolname::text, s.setconfig
FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
WHERE s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                            WHERE d.datname = current_database()))
  AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
  AND r.rolname <> current_user
ORDER BY r.rolname, s.setdatabase
"#;
