//! The user-defined types of the catalog (enums, domains, composites), read
//! for `pgrpc gen types`. The function cache (`db::schema`) names every
//! type by its `format_type` text; this reads those types keyed by the same
//! text, on the same connection, so that a routine's parameter and result
//! types resolve without a second routine reader. The server never loads it.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use super::schema::Column;

/// What a user-defined type is.
#[derive(Debug, Clone)]
pub enum TypeKind {
    /// `CREATE TYPE … AS ENUM`: its labels, in sort order.
    Enum(Vec<String>),
    /// `CREATE DOMAIN`: its base type, as `format_type` writes it.
    Domain(String),
    /// A composite: `CREATE TYPE … AS (…)` (`standalone`), or the row type
    /// of a table or view.
    Composite {
        columns: Vec<Column>,
        standalone: bool,
    },
}

#[derive(Debug, Clone)]
pub struct UserType {
    pub schema: String,
    pub name: String,
    pub kind: TypeKind,
}

/// Every enum, domain and composite of the database, by `format_type` text.
#[derive(Debug, Default)]
pub struct UserTypes {
    by_sql: HashMap<String, UserType>,
}

impl UserTypes {
    pub fn get(&self, type_sql: &str) -> Option<&UserType> {
        self.by_sql.get(type_sql)
    }

    /// The types declared in `schema`, sorted by name.
    pub fn in_schema(&self, schema: &str) -> Vec<&UserType> {
        let mut list: Vec<&UserType> = self
            .by_sql
            .values()
            .filter(|t| t.schema == schema)
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub async fn load<C: GenericClient>(client: &C) -> Result<Self, tokio_postgres::Error> {
        let mut by_sql = HashMap::new();
        for row in client.query(TYPES_SQL, &[]).await? {
            let kind = match row.get::<_, String>("kind").as_str() {
                "e" => TypeKind::Enum(row.get("labels")),
                "d" => TypeKind::Domain(row.get::<_, Option<String>>("base").unwrap_or_default()),
                _ => {
                    let names: Vec<String> = row.get("attr_names");
                    let types: Vec<String> = row.get("attr_types");
                    TypeKind::Composite {
                        columns: names
                            .into_iter()
                            .zip(types)
                            .map(|(name, type_sql)| Column { name, type_sql })
                            .collect(),
                        standalone: row.get("standalone"),
                    }
                }
            };
            by_sql.insert(
                row.get("type_sql"),
                UserType {
                    schema: row.get("schema"),
                    name: row.get("name"),
                    kind,
                },
            );
        }
        Ok(UserTypes { by_sql })
    }
}

/// Enums and domains of every schema; composites outside the system
/// schemas (whose row types no exposed function returns).
const TYPES_SQL: &str = r#"
SELECT format_type(t.oid, NULL) AS type_sql,
       n.nspname::text AS schema,
       t.typname::text AS name,
       t.typtype::text AS kind,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, NULL) END AS base,
       array(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
             WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) AS labels,
       array(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS attr_names,
       array(SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS attr_types,
       coalesce(c.relkind = 'c', false) AS standalone
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
WHERE t.typtype IN ('e', 'd')
   OR (t.typtype = 'c'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname !~ '^pg_toast')
"#;
