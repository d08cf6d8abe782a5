//! Media types, as PostgREST 12/13 handles them for RPC: the `Accept`
//! header (q values and specificity, as wai's `parseHttpAccept` sorts
//! them) and the request body's `Content-Type`, as plain values. Content
//! negotiation against a routine and the SQL of each handler live in
//! `negotiate`, which reads the function cache; this module reads nothing
//! of it.

use hyper::header::HeaderValue;

/// One media type, as PostgREST's `MediaType` decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json` (and `application/vnd.pgrst.array+json`).
    Json,
    /// `application/vnd.pgrst.array+json;nulls=stripped`.
    ArrayStripped,
    /// `application/vnd.pgrst.object+json`, optionally `;nulls=stripped`.
    Object {
        stripped: bool,
    },
    GeoJson,
    Csv,
    /// `application/x-ndjson`: one JSON value per line (pgrpc's own).
    Ndjson,
    TextPlain,
    TextXml,
    OpenApi,
    UrlEncoded,
    OctetStream,
    /// `*/*`.
    Any,
    /// Anything else: the lowercase `type/subtype` (for matching) and the
    /// text as sent (for messages).
    Other {
        essence: String,
        raw: String,
    },
}

impl MediaType {
    /// Decodes one media range (`type/subtype;param=value`), case
    /// insensitively. Text that is not of that form stays `Other`.
    pub fn parse(text: &str) -> MediaType {
        let raw = text.trim();
        let mut parts = raw.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let stripped = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("nulls")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("stripped")
            })
        });
        match essence.as_str() {
            "application/json" => MediaType::Json,
            "application/geo+json" => MediaType::GeoJson,
            "text/csv" => MediaType::Csv,
            "application/x-ndjson" => MediaType::Ndjson,
            "text/plain" => MediaType::TextPlain,
            "text/xml" => MediaType::TextXml,
            "application/openapi+json" => MediaType::OpenApi,
            "application/x-www-form-urlencoded" => MediaType::UrlEncoded,
            "application/octet-stream" => MediaType::OctetStream,
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                MediaType::Object { stripped }
            }
            "application/vnd.pgrst.array+json" | "application/vnd.pgrst.array" => {
                if stripped {
                    MediaType::ArrayStripped
                } else {
                    MediaType::Json
                }
            }
            "*/*" => MediaType::Any,
            _ => MediaType::Other {
                essence,
                raw: raw.to_string(),
            },
        }
    }

    /// The media type as PostgREST writes it (`toMime`), for messages.
    pub fn mime(&self) -> &str {
        match self {
            MediaType::Json => "application/json",
            MediaType::ArrayStripped => "application/vnd.pgrst.array+json;nulls=stripped",
            MediaType::Object { stripped: false } => "application/vnd.pgrst.object+json",
            MediaType::Object { stripped: true } => {
                "application/vnd.pgrst.object+json;nulls=stripped"
            }
            MediaType::GeoJson => "application/geo+json",
            MediaType::Csv => "text/csv",
            MediaType::Ndjson => "application/x-ndjson",
            MediaType::TextPlain => "text/plain",
            MediaType::TextXml => "text/xml",
            MediaType::OpenApi => "application/openapi+json",
            MediaType::UrlEncoded => "application/x-www-form-urlencoded",
            MediaType::OctetStream => "application/octet-stream",
            MediaType::Any => "*/*",
            MediaType::Other { raw, .. } => raw,
        }
    }

    /// What a handler's media type is matched on: the canonical type for
    /// the known ones, the lowercase `type/subtype` for the others.
    pub fn key(&self) -> &str {
        match self {
            MediaType::Other { essence, .. } => essence,
            other => other.mime(),
        }
    }

    /// The `Content-Type` of a response of this type (`toContentType`):
    /// `; charset=utf-8` except for octet-stream and custom types.
    pub fn content_type(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::Json => "application/json; charset=utf-8",
            MediaType::ArrayStripped => {
                "application/vnd.pgrst.array+json;nulls=stripped; charset=utf-8"
            }
            MediaType::Object { stripped: false } => {
                "application/vnd.pgrst.object+json; charset=utf-8"
            }
            MediaType::Object { stripped: true } => {
                "application/vnd.pgrst.object+json;nulls=stripped; charset=utf-8"
            }
            MediaType::GeoJson => "application/geo+json; charset=utf-8",
            MediaType::Csv => "text/csv; charset=utf-8",
            MediaType::Ndjson => "application/x-ndjson; charset=utf-8",
            MediaType::TextPlain => "text/plain; charset=utf-8",
            MediaType::TextXml => "text/xml; charset=utf-8",
            MediaType::OpenApi => "application/openapi+json; charset=utf-8",
            MediaType::UrlEncoded => "application/x-www-form-urlencoded; charset=utf-8",
            MediaType::OctetStream => "application/octet-stream",
            MediaType::Any => "*/*",
            MediaType::Other { raw, .. } => {
                return HeaderValue::from_str(raw)
                    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
            }
        })
    }
}

/// The `Accept` header as PostgREST reads it (wai's `parseHttpAccept`):
/// spaces removed, each range's `;q=` and what follows it dropped, then a
/// stable sort by q value and specificity (parameters count for, `*` against),
/// highest first. No header is `*/*`; a blank one counts as none.
pub fn parse_accept(header: Option<&[u8]>) -> Vec<MediaType> {
    // What most clients send, without parsing.
    match header {
        None | Some(b"*/*") => return vec![MediaType::Any],
        Some(b"application/json") => return vec![MediaType::Json],
        _ => {}
    }
    let text = header
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_default();
    if text.trim().is_empty() {
        return vec![MediaType::Any];
    }
    let mut ranges: Vec<(String, f64, i64)> = text
        .split(',')
        .map(|range| {
            let compact: String = range.chars().filter(|c| *c != ' ').collect();
            let (media, q) = match compact.find(";q=") {
                Some(at) => {
                    let q_text = compact[at + 3..].split(';').next().unwrap_or("");
                    (compact[..at].to_string(), read_q(q_text))
                }
                None => (compact, 1.0),
            };
            let specificity = media.matches(';').count() as i64 - media.matches('*').count() as i64;
            (media, q, specificity)
        })
        .collect();
    ranges.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.2.cmp(&a.2))
    });
    ranges
        .into_iter()
        .map(|(m, _, _)| MediaType::parse(&m))
        .collect()
}

/// A q value as Haskell's `reads` takes it: a leading number, else 1.
fn read_q(text: &str) -> f64 {
    let end = text
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == 'E' || *c == '-'))
        .map_or(text.len(), |(i, _)| i);
    let number = &text[..end];
    if !number.starts_with(|c: char| c.is_ascii_digit()) {
        return 1.0;
    }
    number.parse::<f64>().unwrap_or(1.0)
}

/// The raw media type of a base type that is passed and answered as its
/// bare value: `text` as `text/plain`, `xml` as `text/xml`, `bytea` as
/// `application/octet-stream` (true: the value is bytes).
pub fn raw_media(type_sql: &str) -> Option<(MediaType, bool)> {
    match type_sql {
        "text" => Some((MediaType::TextPlain, false)),
        "xml" => Some((MediaType::TextXml, false)),
        "bytea" => Some((MediaType::OctetStream, true)),
        _ => None,
    }
}

/// How a request body is read, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A JSON object or array (also for a GET's query string).
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `text/plain`: the whole body to a single unnamed `text` parameter.
    Text,
    /// `text/xml`: the whole body to a single unnamed `xml` parameter.
    Xml,
    /// `application/octet-stream`: the whole body to a single unnamed `bytea` parameter.
    Bytea,
}

impl BodyKind {
    /// A body passed whole, as the single unnamed parameter of its type.
    pub fn is_raw(self) -> bool {
        matches!(self, BodyKind::Text | BodyKind::Xml | BodyKind::Bytea)
    }

    /// Whether a single unnamed parameter of `type_sql` receives such a body
    /// (PostgREST's `hasSingleUnnamedParam`).
    pub fn fits(self, type_sql: &str) -> bool {
        matches!(
            (self, type_sql),
            (BodyKind::Json, "json" | "jsonb")
                | (BodyKind::Text, "text")
                | (BodyKind::Xml, "xml")
                | (BodyKind::Bytea, "bytea")
        )
    }

    /// The parameter type named in PGRST202's details for a raw body.
    pub fn param_type(self) -> &'static str {
        match self {
            BodyKind::Text => "text",
            BodyKind::Xml => "xml",
            BodyKind::Bytea => "bytea",
            BodyKind::Json | BodyKind::Form => "json/jsonb",
        }
    }

    /// Part of the `Idempotency-Key` request hash.
    pub fn hash_form(self) -> &'static str {
        match self {
            // Form bodies hash as the JSON object they become, as before
            // raw bodies existed.
            BodyKind::Json | BodyKind::Form => "",
            BodyKind::Text => "<text",
            BodyKind::Xml => "<xml",
            BodyKind::Bytea => "<bytea",
        }
    }
}

/// The body kind of a `Content-Type` (none is JSON), or the media type
/// PostgREST refuses with "Content-Type not acceptable".
pub fn body_kind(content_type: Option<&[u8]>) -> Result<BodyKind, String> {
    let Some(ct) = content_type else {
        return Ok(BodyKind::Json);
    };
    let text = String::from_utf8_lossy(ct);
    if text.trim().is_empty() {
        return Ok(BodyKind::Json);
    }
    match MediaType::parse(&text) {
        // `*/*` is taken as JSON, as this proxy always has.
        MediaType::Json | MediaType::Any => Ok(BodyKind::Json),
        MediaType::UrlEncoded => Ok(BodyKind::Form),
        MediaType::TextPlain => Ok(BodyKind::Text),
        MediaType::TextXml => Ok(BodyKind::Xml),
        MediaType::OctetStream => Ok(BodyKind::Bytea),
        other => Err(other.mime().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mimes(header: &str) -> Vec<String> {
        parse_accept(Some(header.as_bytes()))
            .iter()
            .map(|m| m.mime().to_string())
            .collect()
    }

    #[test]
    fn accept_is_sorted_by_q_then_specificity_stably() {
        assert_eq!(
            mimes("text/csv;q=0.5, application/json;q=0.9"),
            ["application/json", "text/csv"]
        );
        assert_eq!(
            mimes("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            [
                "text/html",
                "application/xhtml+xml",
                "application/xml",
                "*/*"
            ]
        );
        assert_eq!(mimes("*/*, text/csv"), ["text/csv", "*/*"]);
        assert_eq!(mimes("text/*, text/csv"), ["text/csv", "text/*"]);
        assert_eq!(
            mimes("application/vnd.pgrst.object+json;nulls=stripped"),
            ["application/vnd.pgrst.object+json;nulls=stripped"]
        );
        assert_eq!(
            mimes("ApplicatIon/vnd.PgRsT.object"),
            ["application/vnd.pgrst.object+json"]
        );
        assert_eq!(mimes(""), ["*/*"]);
        assert_eq!(parse_accept(None), vec![MediaType::Any]);
        assert_eq!(read_q("0.5"), 0.5);
        assert_eq!(read_q("x"), 1.0);
        assert_eq!(read_q("0"), 0.0);
    }

    #[test]
    fn content_types_carry_a_charset_except_binary_and_custom() {
        assert_eq!(MediaType::Csv.content_type(), "text/csv; charset=utf-8");
        assert_eq!(
            MediaType::OctetStream.content_type(),
            "application/octet-stream"
        );
        assert_eq!(MediaType::parse("text/html").content_type(), "text/html");
        for m in [
            MediaType::Json,
            MediaType::ArrayStripped,
            MediaType::Object { stripped: false },
            MediaType::Object { stripped: true },
            MediaType::GeoJson,
            MediaType::Csv,
            MediaType::Ndjson,
            MediaType::TextPlain,
            MediaType::TextXml,
            MediaType::OpenApi,
            MediaType::UrlEncoded,
        ] {
            assert_eq!(m.content_type(), format!("{}; charset=utf-8", m.mime()));
        }
        assert_eq!(
            MediaType::parse("Application/JSON").content_type(),
            "application/json; charset=utf-8"
        );
    }

    #[test]
    fn body_kinds_follow_the_content_type() {
        assert_eq!(body_kind(None), Ok(BodyKind::Json));
        assert_eq!(
            body_kind(Some(b"application/json; charset=utf-8")),
            Ok(BodyKind::Json)
        );
        assert_eq!(body_kind(Some(b"text/plain")), Ok(BodyKind::Text));
        assert_eq!(body_kind(Some(b"TEXT/XML")), Ok(BodyKind::Xml));
        assert_eq!(
            body_kind(Some(b"application/octet-stream")),
            Ok(BodyKind::Bytea)
        );
        assert_eq!(body_kind(Some(b"image/png")), Err("image/png".to_string()));
        assert!(BodyKind::Json.fits("jsonb") && !BodyKind::Text.fits("json"));
    }
}
