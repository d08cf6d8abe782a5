//! Content negotiation for a call: the `Accept` list (`media`) against
//! the built-in handlers (JSON, the `vnd.pgrst` forms, CSV) and the custom
//! ones the catalog declares (a domain named for a media type as a
//! function's return type, or as the final type of an aggregate). The SQL
//! that turns a call's rows into the body of the chosen handler is
//! `statement`'s: negotiation builds no SQL.
//!
//! Media types only ever select SQL built from the catalog: no request
//! text is spliced into a statement. `media` (the types and their parsing)
//! depends on nothing here, so the function cache (`db::schema`) can use it
//! and this module can read the cache.

use hyper::header::HeaderValue;

use crate::db::schema::{MediaAggregate, Routine, SchemaCache};
use crate::media::{raw_media, MediaType};

/// How the call's rows become the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// `json_agg` of the rows (a scalar or composite: its JSON).
    Json,
    /// The same with `json_strip_nulls`.
    JsonStripped,
    /// `application/vnd.pgrst.object+json`: exactly one row, as an object.
    Single { stripped: bool },
    /// `text/csv`: a header line of column names, then one line per row.
    Csv,
    /// `application/x-ndjson`: each row's JSON, each followed by a newline.
    Ndjson,
    /// The function returns a domain named for the media type: its value
    /// is the body, as bytes for a domain over `bytea`, else as text.
    Domain { bytea: bool },
    /// An aggregate whose final type is a domain named for the media type.
    Aggregate(MediaAggregate),
}

/// The outcome of content negotiation: how to build the body, and its
/// media type.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub handler: Handler,
    pub media: MediaType,
}

impl Negotiated {
    pub fn json() -> Negotiated {
        Negotiated {
            handler: Handler::Json,
            media: MediaType::Json,
        }
    }

    /// Exactly one row is required (406 `PGRST116` otherwise).
    pub fn singular(&self) -> bool {
        matches!(self.handler, Handler::Single { .. })
    }

    /// A JSON body: a NULL result is `null`, not an empty body.
    pub fn is_json(&self) -> bool {
        matches!(
            self.handler,
            Handler::Json | Handler::JsonStripped | Handler::Single { .. }
        )
    }

    /// The body needs the rows in a CTE of their own (CSV reads the first
    /// row for its header).
    pub fn needs_rows(&self) -> bool {
        self.handler == Handler::Csv
    }

    pub fn content_type(&self) -> HeaderValue {
        self.media.content_type()
    }

    /// The response form in the `Idempotency-Key` request hash: `json` and
    /// `object` as before media types, else the media type.
    pub fn hash_form(&self) -> &str {
        match (&self.handler, &self.media) {
            (Handler::Json, MediaType::Json) => "json",
            (Handler::Single { stripped: false }, _) => "object",
            (_, media) => media.mime(),
        }
    }
}

/// PGRST107: no handler serves any of the accepted media types.
#[derive(Debug, Clone)]
pub struct NotAcceptable(pub Vec<String>);

/// Picks the handler for the first accepted media type that `routine` can
/// be served as (PostgREST's `negotiateContent`): the vendored JSON forms
/// always; with the default `select`, the routine's own media domain
/// (`*/*` answering every type), then an aggregate over its row type;
/// then aggregates over `anyelement`; then the built-in JSON and CSV.
pub fn negotiate(
    accepts: &[MediaType],
    routine: &Routine,
    cache: &SchemaCache,
    default_select: bool,
) -> Result<Negotiated, NotAcceptable> {
    for mt in accepts {
        let found = match mt {
            MediaType::Object { stripped } => Some(Negotiated {
                handler: Handler::Single {
                    stripped: *stripped,
                },
                media: mt.clone(),
            }),
            MediaType::ArrayStripped => Some(Negotiated {
                handler: Handler::JsonStripped,
                media: mt.clone(),
            }),
            _ => lookup(mt, routine, cache, default_select),
        };
        if let Some(n) = found {
            return Ok(n);
        }
    }
    Err(NotAcceptable(
        accepts.iter().map(|m| m.mime().to_string()).collect(),
    ))
}

fn lookup(
    mt: &MediaType,
    routine: &Routine,
    cache: &SchemaCache,
    default_select: bool,
) -> Option<Negotiated> {
    let key = mt.key();
    if default_select {
        // The `*/*` handlers of this function (its return type, or an
        // aggregate over its row type) answer every media type.
        let own = routine.media.as_ref();
        if let Some(m) = own.filter(|m| m.media == MediaType::Any) {
            return Some(Negotiated {
                handler: Handler::Domain { bytea: m.bytea },
                media: MediaType::OctetStream,
            });
        }
        if let Some(agg) = routine
            .row_type
            .and_then(|oid| cache.media_aggregate(oid, "*/*"))
        {
            return Some(aggregate(agg));
        }
        if let Some(m) = own.filter(|m| m.media.key() == key) {
            return Some(Negotiated {
                handler: Handler::Domain { bytea: m.bytea },
                media: m.media.clone(),
            });
        }
        if let Some(agg) = routine
            .row_type
            .and_then(|oid| cache.media_aggregate(oid, key))
        {
            return Some(aggregate(agg));
        }
    }
    if let Some(agg) = cache.media_aggregate(0, key) {
        return Some(aggregate(agg));
    }
    // A function returning `text`, `xml` or `bytea` itself answers in the
    // raw media type of that type, as PostgREST did up to version 11 and
    // issue 13 asks (PostgREST 12/13 answer 406 and need a domain).
    if routine.shape == crate::db::schema::Shape::Scalar && routine.media.is_none() {
        if let Some((raw, bytea)) = raw_media(&routine.return_type).filter(|(m, _)| m == mt) {
            return Some(Negotiated {
                handler: Handler::Domain { bytea },
                media: raw,
            });
        }
    }
    match mt {
        MediaType::Json | MediaType::Any => Some(Negotiated::json()),
        MediaType::Csv => Some(Negotiated {
            handler: Handler::Csv,
            media: MediaType::Csv,
        }),
        MediaType::Ndjson => Some(Negotiated {
            handler: Handler::Ndjson,
            media: MediaType::Ndjson,
        }),
        _ => None,
    }
}

fn aggregate(agg: &MediaAggregate) -> Negotiated {
    let media = match MediaType::parse(&agg.media) {
        MediaType::Any => MediaType::OctetStream,
        other => other,
    };
    Negotiated {
        handler: Handler::Aggregate(agg.clone()),
        media,
    }
}
