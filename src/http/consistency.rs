//! Read-your-writes on the HTTP side: the WAL position a read sends back
//! (header `X-Pgrpc-Lsn` or cookie `pgrpc_lsn`), and the one a write's
//! response carries (docs/replicas.md).

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::db::lsn::Lsn;
use crate::error::{Fault, Pgrst};

pub const LSN_HEADER: &str = "x-pgrpc-lsn";
pub const LSN_COOKIE: &str = "pgrpc_lsn";

/// A WAL position the client sent that is not one.
#[derive(Debug, thiserror::Error)]
#[error("Invalid WAL position in {source_name}")]
pub struct InvalidLsn {
    source_name: &'static str,
    value: String,
}

impl Fault for InvalidLsn {
    fn pgrst(&self) -> Pgrst {
        Pgrst::InvalidLsn
    }
    fn details(&self) -> Option<String> {
        let shown: String = self.value.chars().take(64).collect();
        Some(format!("{shown:?} is not a WAL position"))
    }
    fn hint(&self) -> Option<String> {
        Some("Send back the X-Pgrpc-Lsn of a write's response as it was given (for example 0/16B3748), or nothing".into())
    }
}

/// The WAL position a read asks for: the later of the header and the
/// cookie when both are sent; none when neither is.
pub fn requested_lsn(headers: &HeaderMap) -> Result<Option<Lsn>, InvalidLsn> {
    let mut wanted: Option<Lsn> = None;
    let mut want = |lsn: Lsn| wanted = Some(wanted.map_or(lsn, |w| w.max(lsn)));
    for value in headers.get_all(LSN_HEADER) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        want(text.parse().map_err(|_| InvalidLsn {
            source_name: "the X-Pgrpc-Lsn header",
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })?);
    }
    for (_, v) in super::request::cookie_pairs(headers).filter(|(name, _)| *name == LSN_COOKIE) {
        want(v.parse().map_err(|_| InvalidLsn {
            source_name: "the pgrpc_lsn cookie",
            value: v.to_string(),
        })?);
    }
    Ok(wanted)
}

/// The `X-Pgrpc-Lsn` response header for a write's WAL position.
pub fn lsn_header(lsn: Lsn) -> (HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&lsn.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0/0"));
    (HeaderName::from_static(LSN_HEADER), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        h
    }

    #[test]
    fn header_and_cookie_give_the_later_position() {
        assert_eq!(requested_lsn(&HeaderMap::new()).ok(), Some(None));
        let h = headers(&[("x-pgrpc-lsn", "0/10")]);
        assert_eq!(requested_lsn(&h).ok(), Some(Some(Lsn(0x10))));
        let h = headers(&[("cookie", "a=1; pgrpc_lsn=1/0; b=2")]);
        assert_eq!(requested_lsn(&h).ok(), Some(Some(Lsn(1 << 32))));
        let h = headers(&[("x-pgrpc-lsn", "0/FF"), ("cookie", "pgrpc_lsn=0/10")]);
        assert_eq!(requested_lsn(&h).ok(), Some(Some(Lsn(0xff))));
    }

    #[test]
    fn a_malformed_position_is_refused_naming_where_it_came_from() {
        let e = requested_lsn(&headers(&[("x-pgrpc-lsn", "yesterday")])).expect_err("bad");
        assert!(e.to_string().contains("X-Pgrpc-Lsn"), "{e}");
        let e = requested_lsn(&headers(&[("cookie", "pgrpc_lsn=1/2/3")])).expect_err("bad");
        assert!(e.to_string().contains("pgrpc_lsn"), "{e}");
        let e = requested_lsn(&headers(&[("x-pgrpc-lsn", "")])).expect_err("bad");
        assert_eq!(e.pgrst(), Pgrst::InvalidLsn);
    }
}
