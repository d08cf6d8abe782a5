//! `PGRPC_JWT_ROLE_CLAIM_KEY`: where in the claims the role is, written in
//! PostgREST's JSPath (its `jwt-role-claim-key` up to v14): `.role`,
//! `.app_metadata.role`, `."https://example.com/role"`, `.roles[0]`, and a
//! final filter that picks the first matching string of an array,
//! `.roles[?(@ == "admin")]` (also `!=`, `^==` starts with, `==^` ends
//! with, `*==` contains).

use serde_json::Value;

/// A parsed role claim key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleClaimKey(Vec<Step>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    Filter(Match, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Equals,
    NotEquals,
    StartsWith,
    EndsWith,
    Contains,
}

impl Match {
    fn accepts(self, candidate: &str, operand: &str) -> bool {
        match self {
            Match::Equals => candidate == operand,
            Match::NotEquals => candidate != operand,
            Match::StartsWith => candidate.starts_with(operand),
            Match::EndsWith => candidate.ends_with(operand),
            Match::Contains => candidate.contains(operand),
        }
    }
}

impl RoleClaimKey {
    /// Parses a JSPath; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<RoleClaimKey, String> {
        let mut rest = text;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if matches!(steps.last(), Some(Step::Filter(..))) {
                return Err(format!("a filter must come last, found {rest:?} after it"));
            }
            let (step, after) = if let Some(r) = rest.strip_prefix('.') {
                parse_key(r)?
            } else if let Some(r) = rest.strip_prefix("[?(") {
                parse_filter(r)?
            } else if let Some(r) = rest.strip_prefix('[') {
                parse_index(r)?
            } else if rest.starts_with('$') && steps.is_empty() {
                return Err(format!(
                    "{text:?} is RFC 9535 JSON Path; write PostgREST's JSPath, as .role"
                ));
            } else {
                return Err(format!(
                    "expected '.key', '[index]' or '[?(@ == \"value\")]' at {rest:?}"
                ));
            };
            steps.push(step);
            rest = after;
        }
        if steps.is_empty() {
            return Err("empty path; the default is .role".into());
        }
        Ok(RoleClaimKey(steps))
    }

    /// The value the path leads to in `claims`, if any.
    pub fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        let mut at = claims;
        for step in &self.0 {
            at = match (step, at) {
                (Step::Key(k), Value::Object(o)) => o.get(k)?,
                (Step::Index(i), Value::Array(a)) => a.get(*i)?,
                (Step::Filter(m, operand), Value::Array(a)) => a
                    .iter()
                    .find(|v| v.as_str().is_some_and(|s| m.accepts(s, operand)))?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// `name` (letters, digits, `_`, `$`, `@`) or `"any text but quotes"`.
fn parse_key(text: &str) -> Result<(Step, &str), String> {
    if let Some(quoted) = text.strip_prefix('"') {
        let (key, rest) = quoted
            .split_once('"')
            .ok_or_else(|| format!("unterminated quoted key at {text:?}"))?;
        return Ok((Step::Key(key.to_string()), rest));
    }
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '$' | '@')))
        .unwrap_or(text.len());
    if end == 0 {
        return Err(format!(
            "expected a key after '.' at {text:?} (quote keys with other characters: .\"my-key\")"
        ));
    }
    Ok((Step::Key(text[..end].to_string()), &text[end..]))
}

fn parse_index(text: &str) -> Result<(Step, &str), String> {
    let (digits, rest) = text
        .split_once(']')
        .ok_or_else(|| format!("unterminated index at {text:?}"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("array index must be digits, found {digits:?}"));
    }
    let index = digits
        .parse()
        .map_err(|_| format!("array index {digits} is too large"))?;
    Ok((Step::Index(index), rest))
}

/// `@ <op> "operand")]`, after the `[?(`.
fn parse_filter(text: &str) -> Result<(Step, &str), String> {
    let bad = || format!("expected a filter like [?(@ == \"value\")] at {text:?}");
    let body = text.strip_prefix('@').ok_or_else(bad)?.trim_start();
    // Longest operators first: "==^" before "==".
    let (op, body) = [
        ("==^", Match::EndsWith),
        ("==", Match::Equals),
        ("!=", Match::NotEquals),
        ("^==", Match::StartsWith),
        ("*==", Match::Contains),
    ]
    .into_iter()
    .find_map(|(token, op)| body.strip_prefix(token).map(|b| (op, b)))
    .ok_or_else(bad)?;
    let quoted = body.trim_start().strip_prefix('"').ok_or_else(bad)?;
    let (operand, rest) = quoted.split_once('"').ok_or_else(bad)?;
    let rest = rest.strip_prefix(")]").ok_or_else(bad)?;
    Ok((Step::Filter(op, operand.to_string()), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(path: &str, claims: Value) -> Option<Value> {
        RoleClaimKey::parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .find(&claims)
            .cloned()
    }

    // Every documented JSPath form finds the role where PostgREST would.
    #[test]
    fn documented_paths_find_the_role() {
        assert_eq!(find(".role", json!({"role": "a"})), Some(json!("a")));
        assert_eq!(
            find(".app_metadata.role", json!({"app_metadata": {"role": "a"}})),
            Some(json!("a"))
        );
        assert_eq!(
            find(
                ".\"https://example.com/role\"",
                json!({"https://example.com/role": "a"})
            ),
            Some(json!("a"))
        );
        assert_eq!(
            find(
                ".postgrest.roles[1]",
                json!({"postgrest": {"roles": ["x", "a"]}})
            ),
            Some(json!("a"))
        );
        assert_eq!(
            find(
                ".\"https://www.example.com/role\".key",
                json!({"https://www.example.com/role": {"key": "a"}})
            ),
            Some(json!("a"))
        );
        let roles = json!({"roles": [1, "other", "author"]});
        for path in [
            ".roles[?(@ == \"author\")]",
            ".roles[?(@ != \"other\")]",
            ".roles[?(@ ^== \"aut\")]",
            ".roles[?(@ ==^ \"hor\")]",
            ".roles[?(@ *== \"utho\")]",
            ".roles[?(@==\"author\")]",
        ] {
            assert_eq!(find(path, roles.clone()), Some(json!("author")), "{path}");
        }
    }

    // A path that leads nowhere finds nothing rather than failing.
    #[test]
    fn missing_paths_find_nothing() {
        assert_eq!(find(".role", json!({})), None);
        assert_eq!(find(".a.role", json!({"a": "x"})), None);
        assert_eq!(find(".roles[3]", json!({"roles": ["a"]})), None);
        assert_eq!(find(".roles[0]", json!({"roles": {"0": "a"}})), None);
        assert_eq!(find(".roles[?(@ == \"z\")]", json!({"roles": ["a"]})), None);
    }

    // Malformed paths are refused at startup with a reason.
    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "",
            "role",
            ".",
            "..role",
            ".a-b",
            ".\"open",
            ".roles[",
            ".roles[x]",
            ".roles[-1]",
            ".roles[?(@ = \"a\")]",
            ".roles[?(@ == a)]",
            ".roles[?(@ == \"a\")].x",
            "$.role",
        ] {
            assert!(
                RoleClaimKey::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
