//! The `Prefer` header (RFC 7240) as PostgREST 13 reads it for RPC: what a
//! request states ([`Preferences`], parsed by `http`), what of it applies
//! to one call ([`Applied`], decided by `plan` with the function cache and
//! `PGRPC_TX_END`), and the `Preference-Applied` header that lists it.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// `Prefer`, parsed once: a lookup by `&str` parses the name each time.
pub const PREFER: HeaderName = HeaderName::from_static("prefer");

/// `PGRPC_TX_END`, as PostgREST's `db-tx-end`: how transactions end, and
/// whether `Prefer: tx=commit|rollback` may change that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TxEnd {
    #[default]
    Commit,
    CommitAllowOverride,
    Rollback,
    RollbackAllowOverride,
}

impl TxEnd {
    fn allows_override(self) -> bool {
        matches!(
            self,
            TxEnd::CommitAllowOverride | TxEnd::RollbackAllowOverride
        )
    }
    fn rolls_back(self) -> bool {
        matches!(self, TxEnd::Rollback | TxEnd::RollbackAllowOverride)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    Commit,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Strict,
    Lenient,
}

/// Preferences PostgREST knows that take one of a fixed set of values.
/// `resolution`, `return` and `missing` concern tables: known, so never
/// invalid, but they do not apply to a function call.
const FIXED: &[&str] = &[
    "resolution=merge-duplicates",
    "resolution=ignore-duplicates",
    "return=representation",
    "return=minimal",
    "return=headers-only",
    "count=exact",
    "count=planned",
    "count=estimated",
    "tx=commit",
    "tx=rollback",
    "missing=default",
    "missing=null",
    "handling=strict",
    "handling=lenient",
];

/// What the `Prefer` headers of a request state: every item of every
/// `Prefer` header, comma-separated, trimmed, in order. Where a preference
/// is stated twice, the first counts, as in PostgREST.
#[derive(Debug, Clone, Default)]
pub struct Preferences {
    items: Vec<String>,
}

impl Preferences {
    pub fn from_headers(headers: &HeaderMap) -> Preferences {
        let items = headers
            .get_all(PREFER)
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        Preferences { items }
    }

    fn first(&self, prefix: &str) -> Option<&str> {
        self.items.iter().find_map(|p| p.strip_prefix(prefix))
    }

    fn first_of(&self, values: &[&str]) -> Option<&str> {
        self.items
            .iter()
            .map(String::as_str)
            .find(|p| values.contains(p))
    }

    /// `count=exact|planned|estimated`.
    pub fn count(&self) -> bool {
        self.first_of(&["count=exact", "count=planned", "count=estimated"])
            .is_some()
    }

    /// The time zone asked for, if any (valid or not).
    pub fn timezone(&self) -> Option<&str> {
        self.first("timezone=")
    }

    /// Decides what applies to a call. `known_zone` tells whether a time
    /// zone is one of `pg_timezone_names`. With `handling=strict`, any
    /// item that is unknown or invalid (a time zone PostgreSQL does not
    /// know, a `max-affected` that is not an integer) is an error.
    pub fn apply(
        &self,
        tx_end: TxEnd,
        known_zone: impl Fn(&str) -> bool,
    ) -> Result<Applied, InvalidPreferences> {
        let handling = match self.first_of(&["handling=strict", "handling=lenient"]) {
            Some("handling=strict") => Some(Handling::Strict),
            Some(_) => Some(Handling::Lenient),
            None => None,
        };
        let strict = handling == Some(Handling::Strict);
        let valid = |p: &String| {
            FIXED.contains(&p.as_str())
                || p.strip_prefix("timezone=").is_some_and(&known_zone)
                || p.strip_prefix("max-affected=")
                    .is_some_and(|n| n.parse::<i64>().is_ok())
        };
        let invalid: Vec<String> = self.items.iter().filter(|p| !valid(p)).cloned().collect();
        if strict && !invalid.is_empty() {
            return Err(InvalidPreferences(invalid));
        }
        let tx = if tx_end.allows_override() {
            match self.first_of(&["tx=commit", "tx=rollback"]) {
                Some("tx=commit") => Some(Tx::Commit),
                Some(_) => Some(Tx::Rollback),
                None => None,
            }
        } else {
            None
        };
        let rollback = match tx {
            Some(tx) => tx == Tx::Rollback,
            None => tx_end.rolls_back(),
        };
        Ok(Applied {
            count: self.count(),
            tx,
            handling,
            timezone: self
                .timezone()
                .filter(|tz| known_zone(tz))
                .map(str::to_string),
            // As PostgREST: max-affected needs handling=strict.
            max_affected: self
                .first("max-affected=")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|_| strict),
            rollback,
        })
    }
}

/// `handling=strict` with preferences that are unknown or invalid, as sent.
#[derive(Debug)]
pub struct InvalidPreferences(pub Vec<String>);

/// The preferences that apply to one call.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// `count=…`: answered with an exact count.
    pub count: bool,
    /// `tx=…`, when `PGRPC_TX_END` allows it to override.
    pub tx: Option<Tx>,
    pub handling: Option<Handling>,
    /// A time zone of `pg_timezone_names`, for the transaction's `TimeZone`.
    pub timezone: Option<String>,
    /// The most rows the call may return (with `handling=strict` only).
    pub max_affected: Option<i64>,
    /// The transaction ends with ROLLBACK: `tx=rollback`, or
    /// `PGRPC_TX_END=rollback…` without `tx=commit`.
    pub rollback: bool,
}

impl Applied {
    /// `Preference-Applied`, in PostgREST's order and format
    /// (`count=exact, tx=rollback, handling=strict, timezone=UTC,
    /// max-affected=5`); empty when nothing applied.
    pub fn header_text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.count {
            parts.push("count=exact".into());
        }
        match self.tx {
            Some(Tx::Commit) => parts.push("tx=commit".into()),
            Some(Tx::Rollback) => parts.push("tx=rollback".into()),
            None => {}
        }
        match self.handling {
            Some(Handling::Strict) => parts.push("handling=strict".into()),
            Some(Handling::Lenient) => parts.push("handling=lenient".into()),
            None => {}
        }
        if let Some(tz) = &self.timezone {
            parts.push(format!("timezone={tz}"));
        }
        if let Some(n) = self.max_affected {
            parts.push(format!("max-affected={n}"));
        }
        parts.join(", ")
    }

    pub fn header(&self) -> Option<HeaderValue> {
        let text = self.header_text();
        if text.is_empty() {
            return None;
        }
        HeaderValue::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(values: &[&str]) -> Preferences {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", v.parse().expect("header value"));
        }
        Preferences::from_headers(&h)
    }

    fn zone(tz: &str) -> bool {
        tz == "UTC" || tz == "America/Los_Angeles"
    }

    #[test]
    fn lists_and_headers_combine_and_the_first_of_each_counts() {
        let p = prefs(&["handling=strict, tx=rollback", "tx=commit,count=planned"]);
        let a = p.apply(TxEnd::CommitAllowOverride, zone).expect("valid");
        assert_eq!(a.tx, Some(Tx::Rollback));
        assert!(a.rollback && a.count);
        assert_eq!(a.header_text(), "count=exact, tx=rollback, handling=strict");
    }

    #[test]
    fn strict_lists_every_invalid_item_in_order() {
        let p = prefs(&[
            "handling=strict",
            "something, else",
            "timezone=Jupiter/Red_Spot, max-affected=x, return=minimal",
        ]);
        let e = p.apply(TxEnd::Commit, zone).expect_err("invalid");
        assert_eq!(
            e.0,
            vec![
                "something",
                "else",
                "timezone=Jupiter/Red_Spot",
                "max-affected=x"
            ]
        );
        let lenient = prefs(&["anything, timezone=Jupiter/Red_Spot, max-affected=3"]);
        let a = lenient.apply(TxEnd::Commit, zone).expect("lenient");
        assert_eq!((a.timezone.as_deref(), a.max_affected), (None, None));
        assert_eq!(a.header_text(), "");
    }

    #[test]
    fn tx_applies_only_where_the_setting_allows_it() {
        let p = prefs(&["tx=rollback"]);
        let a = p.apply(TxEnd::Commit, zone).expect("valid");
        assert_eq!((a.tx, a.rollback), (None, false));
        let a = prefs(&[]).apply(TxEnd::Rollback, zone).expect("valid");
        assert!(a.rollback);
        let a = prefs(&["tx=commit"])
            .apply(TxEnd::RollbackAllowOverride, zone)
            .expect("valid");
        assert_eq!((a.tx, a.rollback), (Some(Tx::Commit), false));
        let a = prefs(&["tx=commit"])
            .apply(TxEnd::Rollback, zone)
            .expect("valid");
        assert_eq!((a.tx, a.rollback), (None, true));
    }

    #[test]
    fn max_affected_and_timezone_apply_as_postgrest_applies_them() {
        let a = prefs(&["handling=strict, max-affected=5, timezone=UTC"])
            .apply(TxEnd::Commit, zone)
            .expect("valid");
        assert_eq!(a.max_affected, Some(5));
        assert_eq!(
            a.header_text(),
            "handling=strict, timezone=UTC, max-affected=5"
        );
        let a = prefs(&["max-affected=5, timezone=America/Los_Angeles"])
            .apply(TxEnd::Commit, zone)
            .expect("valid");
        assert_eq!(a.max_affected, None);
        assert_eq!(a.header_text(), "timezone=America/Los_Angeles");
    }
}
