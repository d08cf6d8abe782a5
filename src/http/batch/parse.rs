//! The body of `POST /rpc`: a JSON array of `{"fn": …, "args": {…}}`,
//! parsed in one pass without building a tree of the arguments (each stays
//! raw text), bounded by the number of calls, and why a batch is refused
//! before any call is planned (`BatchError`).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Fault, Pgrst};

/// Why a batch is refused before any of its calls is planned.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("Invalid batch body")]
    Invalid(String),
    #[error("A batch may hold at most {0} calls")]
    TooManyCalls(usize),
    #[error("A batch takes no query string")]
    QueryString,
    #[error("The calls of a batch hoist different transaction settings")]
    SettingsDiffer(usize),
}

impl Fault for BatchError {
    fn pgrst(&self) -> Pgrst {
        match self {
            BatchError::Invalid(_) | BatchError::SettingsDiffer(_) => Pgrst::InvalidBody,
            BatchError::TooManyCalls(_) => Pgrst::BodyTooLarge,
            BatchError::QueryString => Pgrst::QueryParam,
        }
    }
    fn details(&self) -> Option<String> {
        match self {
            BatchError::Invalid(why) => Some(format!(
                "A batch is a JSON array of {{\"fn\": \"<function>\", \"args\": {{…}}}}: {why}"
            )),
            BatchError::QueryString => Some(
                "select, filters, order, limit and offset apply to a single call (/rpc/<function>), not to a batch".into(),
            ),
            BatchError::SettingsDiffer(i) => Some(format!(
                "Call {i} hoists other settings (its isolation level or PGRPC_HOISTED_TX_SETTINGS) than call 0; one transaction has one set"
            )),
            BatchError::TooManyCalls(_) => None,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            BatchError::TooManyCalls(_) => {
                Some("Send fewer calls, or raise PGRPC_MAX_BATCH_CALLS".into())
            }
            BatchError::SettingsDiffer(_) => Some("Send these calls in separate requests".into()),
            _ => None,
        }
    }
}

/// One call of a batch, as sent: the function's name (perhaps
/// schema-qualified) and its argument object as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCall {
    pub function: String,
    pub args: String,
}

/// One element of the array: exactly `fn` (a string) and, optionally,
/// `args`; any other key is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(rename = "fn")]
    function: String,
    #[serde(borrow, default, deserialize_with = "present")]
    args: Option<&'a RawValue>,
}

/// `args` as sent, `null` included (refused: it is not an object); only
/// an absent `args` is None.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Reads the array element by element and stops at the first element past
/// `max`, so a body of ten thousand calls costs a hundred-and-one.
struct Calls {
    max: usize,
    over: Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for &Calls {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &Calls {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of calls")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(A::Error::custom("too many calls"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Parses a batch body: a non-empty JSON array of at most `max` objects,
/// each with a non-empty string `fn` and an optional object `args` (absent:
/// no arguments), and no other key.
pub fn parse_batch(body: &str, max: usize) -> Result<Vec<BatchCall>, BatchError> {
    let calls = Calls {
        max,
        over: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_str(body);
    let parsed = (&calls)
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items));
    let items = match parsed {
        Ok(items) => items,
        Err(_) if calls.over.get() => return Err(BatchError::TooManyCalls(max)),
        Err(e) => return Err(BatchError::Invalid(e.to_string())),
    };
    if items.is_empty() {
        return Err(BatchError::Invalid("the array holds no call".into()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            // An object only: serde would also read a struct from an
            // array (`["f", {…}]`), a second syntax nobody asked for.
            let text = raw.get();
            if !text.trim_start().starts_with('{') {
                return Err(BatchError::Invalid(format!("call {i} is not an object")));
            }
            let item: Item = serde_json::from_str(text)
                .map_err(|e| BatchError::Invalid(format!("call {i}: {e}")))?;
            if item.function.is_empty() || item.function.contains('\0') {
                return Err(BatchError::Invalid(format!(
                    "call {i}: fn must name a function"
                )));
            }
            let args = match item.args.map(|raw| raw.get().trim()) {
                None => "{}".to_string(),
                Some(raw) if raw.starts_with('{') => raw.to_string(),
                Some(_) => {
                    return Err(BatchError::Invalid(format!(
                        "call {i}: args must be a JSON object"
                    )))
                }
            };
            Ok(BatchCall {
                function: item.function,
                args,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn a_batch_is_an_array_of_fn_and_args() {
        let calls = parse_batch(
            r#"[{"fn":"a","args":{"x":1}},{"fn":"api.b"},{"args":{},"fn":"c"}]"#,
            10,
        )
        .expect("batch");
        assert_eq!(
            calls,
            vec![
                BatchCall {
                    function: "a".into(),
                    args: r#"{"x":1}"#.into()
                },
                BatchCall {
                    function: "api.b".into(),
                    args: "{}".into()
                },
                BatchCall {
                    function: "c".into(),
                    args: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn malformed_batches_are_refused() {
        for body in [
            "",
            "{}",
            "[]",
            "[1]",
            r#"[{"fn":{"fn":"a"}}]"#,
            r#"[{"fn":1}]"#,
            r#"[{"fn":"a","args":[1]}]"#,
            r#"[{"fn":"a","args":"x"}]"#,
            r#"[{"fn":"a","extra":1}]"#,
            r#"[{"fn":"a","fn":"b"}]"#,
            r#"[{"fn":""}]"#,
            r#"[{"args":{}}]"#,
            r#"[{"fn":"a"}] x"#,
            r#"[["a", {}]]"#,
            r#"[{"fn":"a","args":null}]"#,
        ] {
            let e = ApiError::from(parse_batch(body, 10).expect_err(body));
            assert_eq!(
                (e.status.as_u16(), e.code.as_str()),
                (400, "PGRST102"),
                "{body}"
            );
        }
    }

    #[test]
    fn too_many_calls_are_413_and_parsing_stops() {
        let body = format!("[{}]", vec![r#"{"fn":"a"}"#; 10_000].join(","));
        let e = ApiError::from(parse_batch(&body, 100).expect_err("too many"));
        assert_eq!((e.status.as_u16(), e.code.as_str()), (413, "PGRPC413"));
        let ok = format!("[{}]", vec![r#"{"fn":"a"}"#; 100].join(","));
        assert_eq!(parse_batch(&ok, 100).expect("100 calls").len(), 100);
    }
}
