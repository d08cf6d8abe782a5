//! What a client asked for, as plain data: `http` builds it from the wire,
//! `plan` resolves it against the function cache.

use bytes::Bytes;
use hyper::Method;

use crate::media::{BodyKind, MediaType};
use crate::prefer::Preferences;
use crate::query::QueryOps;

/// One RPC request, parsed.
#[derive(Debug)]
pub struct ApiRequest {
    /// GET, HEAD or POST.
    pub method: Method,
    pub function: String,
    pub path: String,
    /// The profile: one of the exposed schemas.
    pub schema: String,
    pub args: Args,
    /// `select`, filters, `order`, `limit`, `offset` from the query string.
    pub ops: QueryOps,
    /// The `Range` header (GET and HEAD): first item and last, if any.
    pub range: Option<(i64, Option<i64>)>,
    /// `Prefer: count=exact` (or `planned`/`estimated`, answered exactly).
    pub count: bool,
    /// Every `Prefer` item; `plan` decides what applies.
    pub prefer: Preferences,
    /// A form body (`application/x-www-form-urlencoded`) as sent: read
    /// again when its pairs fill a VARIADIC parameter.
    pub form: Option<Bytes>,
    /// The raw query string, part of the `Idempotency-Key` request hash.
    pub query: String,
    /// The `Accept` header's media types, in PostgREST's order of
    /// preference (`*/*` when absent); `plan` negotiates against them.
    pub accept: Vec<MediaType>,
    pub idempotency_key: Option<String>,
    /// The raw `Authorization` header, checked by `auth`.
    pub authorization: Option<Vec<u8>>,
    /// The raw `apikey` header (supabase-js), read when there is no
    /// `Authorization` (`auth::api_keys`).
    pub apikey: Option<Vec<u8>>,
    /// Every header but `Cookie` as a JSON object, for `request.headers`.
    pub headers_json: String,
    /// The cookies as a JSON object, for `request.cookies`.
    pub cookies_json: String,
}

impl ApiRequest {
    /// POST writes; GET and HEAD run READ ONLY.
    pub fn is_write(&self) -> bool {
        self.method == Method::POST
    }
}

/// The arguments of one call.
#[derive(Debug)]
pub struct Args {
    /// The whole body as sent (for a single unnamed json parameter), or a
    /// raw body: `text/plain` and `text/xml` as text, `application/octet-stream`
    /// in base64.
    pub whole: String,
    /// Keys and JSON text of the argument object, when the body is an object
    /// (or an array whose first element is one).
    pub object: Option<(Vec<String>, String)>,
    /// How the body was sent (JSON for a GET's query string).
    pub kind: BodyKind,
}

impl Args {
    pub fn from_object(keys: Vec<String>, json: String) -> Args {
        Args {
            whole: json.clone(),
            object: Some((keys, json)),
            kind: BodyKind::Json,
        }
    }

    pub fn empty() -> Args {
        Args::from_object(Vec::new(), "{}".to_string())
    }

    /// A raw body (`text/plain`, `text/xml`, `application/octet-stream`):
    /// no argument keys, as PostgREST reads it, so it goes to the single
    /// unnamed parameter of its type (or to a function whose parameters
    /// all have defaults).
    pub fn raw(kind: BodyKind, whole: String) -> Args {
        Args {
            whole,
            object: Some((Vec::new(), "{}".to_string())),
            kind,
        }
    }
}
