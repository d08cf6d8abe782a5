//! The function cache: every routine of the exposed schemas, read from
//! pg_catalog with its parameters, defaults, volatility and result shape,
//! plus the roles the authenticator may assume. Request names are only ever
//! looked up here, never spliced into SQL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio_postgres::GenericClient;

/// How a routine's result becomes JSON (SPEC §2.2 item 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A single value: bare JSON.
    Scalar,
    /// A composite or OUT parameters: an object.
    Composite,
    /// SETOF or TABLE: an array.
    SetOf,
    /// void: 204 without a body.
    Void,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    /// `format_type` of the parameter, safe to splice (it comes from the catalog).
    pub type_sql: String,
    pub has_default: bool,
    pub variadic: bool,
}

/// One callable function.
#[derive(Debug)]
pub struct Routine {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// Input parameters (IN, INOUT, VARIADIC), in declaration order.
    pub params: Vec<Param>,
    pub volatility: Volatility,
    pub shape: Shape,
    pub return_type: String,
    /// A single unnamed json/jsonb parameter: receives the whole body.
    pub takes_body: bool,
    pub description: Option<String>,
    /// Generated call statements, keyed by the provided-argument mask and
    /// the singular flag.
    sql: RwLock<HashMap<(u64, bool), Arc<str>>>,
}

impl Routine {
    pub fn is_read_only(&self) -> bool {
        self.volatility != Volatility::Volatile
    }

    /// Bit i set: parameter i is provided. None when a key names no
    /// parameter or a required parameter is missing.
    pub fn match_keys<'a, I>(&self, keys: I) -> Option<u64>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut mask = 0u64;
        for key in keys {
            let idx = self.params.iter().position(|p| p.name == key)?;
            mask |= 1 << idx;
        }
        for (i, p) in self.params.iter().enumerate() {
            if !p.has_default && mask & (1 << i) == 0 {
                return None;
            }
        }
        Some(mask)
    }

    /// The call statement for the provided parameters; built once per
    /// (mask, singular) and reused, so prepared statements can be cached.
    pub fn call_sql(&self, mask: u64, singular: bool) -> Arc<str> {
        if let Ok(cache) = self.sql.read() {
            if let Some(sql) = cache.get(&(mask, singular)) {
                return sql.clone();
            }
        }
        let sql: Arc<str> = super::call::build_sql(self, mask, singular).into();
        if let Ok(mut cache) = self.sql.write() {
            cache.insert((mask, singular), sql.clone());
        }
        sql
    }

    /// `schema.name(a, b)` for messages.
    pub fn signature(&self) -> String {
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        format!("{}.{}({})", self.schema, self.name, names.join(", "))
    }
}

/// A loaded snapshot of the catalog. Replaced whole on reload.
#[derive(Debug, Default)]
pub struct SchemaCache {
    routines: HashMap<(String, String), Vec<Arc<Routine>>>,
    /// Roles the authenticator may SET ROLE to: members, not superusers,
    /// not BYPASSRLS.
    pub roles: HashSet<String>,
    /// Per-role settings (`ALTER ROLE … SET`, this database's over the
    /// cluster-wide ones). `SET ROLE` does not apply them, so every
    /// transaction applies its role's, as PostgREST does.
    pub role_settings: HashMap<String, Arc<RoleSettings>>,
}

/// One role's settings as two parallel arrays, ready to bind.
#[derive(Debug, Default)]
pub struct RoleSettings {
    pub names: Vec<String>,
    pub values: Vec<String>,
}

impl SchemaCache {
    /// The settings of `role`; empty when it has none.
    pub fn settings_of(&self, role: &str) -> Arc<RoleSettings> {
        self.role_settings.get(role).cloned().unwrap_or_default()
    }
}

impl SchemaCache {
    pub fn overloads(&self, schema: &str, name: &str) -> Option<&[Arc<Routine>]> {
        self.routines
            .get(&(schema.to_string(), name.to_string()))
            .map(Vec::as_slice)
    }

    /// Every routine of one schema, sorted by name (OpenAPI, hints).
    pub fn routines_in(&self, schema: &str) -> Vec<&Arc<Routine>> {
        let mut list: Vec<&Arc<Routine>> = self
            .routines
            .iter()
            .filter(|((s, _), _)| s == schema)
            .flat_map(|(_, v)| v.iter())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.oid.cmp(&b.oid)));
        list
    }

    pub fn routine_count(&self) -> usize {
        self.routines.values().map(Vec::len).sum()
    }

    /// The function name in `schema` closest to `name`, for a 404 hint.
    pub fn similar_name(&self, schema: &str, name: &str) -> Option<String> {
        let limit = (name.chars().count() / 3).max(2);
        self.routines
            .keys()
            .filter(|(s, _)| s == schema)
            .map(|(_, n)| (levenshtein(n, name), n))
            .filter(|(d, _)| *d <= limit)
            .min()
            .map(|(_, n)| n.clone())
    }

    pub async fn load<C: GenericClient>(
        client: &C,
        schemas: &[String],
    ) -> Result<Self, tokio_postgres::Error> {
        let rows = client.query(CATALOG_SQL, &[&schemas]).await?;
        let mut routines: HashMap<(String, String), Vec<Arc<Routine>>> = HashMap::new();
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
                && matches!(params[0].type_sql.as_str(), "json" | "jsonb");
            // Unnamed parameters cannot be passed by name; routines with
            // them are callable only through the single-body form.
            if !takes_body && params.iter().any(|p| p.name.is_empty()) {
                continue;
            }
            let shape = if retset {
                Shape::SetOf
            } else if is_void {
                Shape::Void
            } else if composite {
                Shape::Composite
            } else {
                Shape::Scalar
            };
            routines
                .entry((schema.clone(), name.clone()))
                .or_default()
                .push(Arc::new(Routine {
                    oid,
                    schema,
                    name,
                    params,
                    volatility,
                    shape,
                    return_type,
                    takes_body,
                    description,
                    sql: RwLock::new(HashMap::new()),
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
        Ok(SchemaCache {
            routines,
            roles,
            role_settings,
        })
    }
}

const CATALOG_SQL: &str = r#"
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
       obj_description(p.oid, 'pg_proc') AS description
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_type rt ON rt.oid = p.prorettype
WHERE n.nspname = ANY($1)
  AND p.prokind = 'f'
  AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
ORDER BY p.oid
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

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("version", "versoin"), 2);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("consume_token", "consume_token"), 0);
    }

    fn routine(params: Vec<(&str, bool)>) -> Routine {
        Routine {
            oid: 1,
            schema: "api".into(),
            name: "f".into(),
            params: params
                .into_iter()
                .map(|(n, d)| Param {
                    name: n.into(),
                    type_sql: "text".into(),
                    has_default: d,
                    variadic: false,
                })
                .collect(),
            volatility: Volatility::Volatile,
            shape: Shape::Scalar,
            return_type: "text".into(),
            takes_body: false,
            description: None,
            sql: RwLock::new(HashMap::new()),
        }
    }

    #[test]
    fn keys_must_cover_required_and_name_no_unknown_parameter() {
        let r = routine(vec![("a", false), ("b", true)]);
        assert_eq!(r.match_keys(["a"]), Some(0b01));
        assert_eq!(r.match_keys(["a", "b"]), Some(0b11));
        assert_eq!(r.match_keys(["b"]), None);
        assert_eq!(r.match_keys(["a", "zz"]), None);
    }
}
