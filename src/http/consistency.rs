//! Read-your-writes on the HTTP side: the WAL position a read sends back
//! (header `X-Pgrpc-Lsn` or cookie `pgrpc_lsn`), and the one a write's
//! response carries (docs/replicas.md).

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::debug;

use crate::db::lsn::Lsn;
use crate::db::pool::Pool;
use crate::db::replica::Replica;
use crate::error::{Fault, Pgrst};

pub const LSN_HEADER: HeaderName = HeaderName::from_static("x-pgrpc-lsn");
pub const LSN_COOKIE: &str = "pgrpc_lsn";

/// A WAL position the client sent that is not one, or one further ahead
/// than the primary has ever written.
#[derive(Debug, thiserror::Error)]
pub enum InvalidLsn {
    #[error("Invalid WAL position in {source_name}")]
    Malformed {
        source_name: &'static str,
        value: String,
    },
    #[error("WAL position ahead of the primary")]
    Ahead { sent: Lsn, primary: Lsn },
}

impl Fault for InvalidLsn {
    fn pgrst(&self) -> Pgrst {
        Pgrst::InvalidLsn
    }
    fn details(&self) -> Option<String> {
        Some(match self {
            InvalidLsn::Malformed { value, .. } => {
                let shown: String = value.chars().take(64).collect();
                format!("{shown:?} is not a WAL position")
            }
            InvalidLsn::Ahead { sent, primary } => format!(
                "X-Pgrpc-Lsn {sent} is past the primary's current position {primary}: no replica can replay it"
            ),
        })
    }
    fn hint(&self) -> Option<String> {
        Some("Send back the X-Pgrpc-Lsn of a write's response as it was given (for example 0/16B3748), or nothing".into())
    }
}

/// The WAL positions a read sends back: the header's (a malformed one is
/// refused) and the cookie's (a malformed one is ignored: a browser sends
/// every cookie of the site, whoever set it, and one bad cookie must not
/// break every call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requested {
    pub header: Option<Lsn>,
    pub cookie: Option<Lsn>,
}

impl Requested {
    /// The later of the two, which the read waits for.
    pub fn lsn(self) -> Option<Lsn> {
        match (self.header, self.cookie) {
            (Some(h), Some(c)) => Some(h.max(c)),
            (h, c) => h.or(c),
        }
    }
}

/// The WAL positions of the header and the cookie (the latest of each when
/// repeated); none when neither is sent.
pub fn requested(headers: &HeaderMap) -> Result<Requested, InvalidLsn> {
    let mut out = Requested::default();
    for value in headers.get_all(LSN_HEADER) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        let lsn: Lsn = text.parse().map_err(|_| InvalidLsn::Malformed {
            source_name: "the X-Pgrpc-Lsn header",
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })?;
        out.header = Some(out.header.map_or(lsn, |h| h.max(lsn)));
    }
    for (_, v) in super::request::cookie_pairs(headers).filter(|(name, _)| *name == LSN_COOKIE) {
        match v.parse::<Lsn>() {
            Ok(lsn) => out.cookie = Some(out.cookie.map_or(lsn, |c| c.max(lsn))),
            Err(_) => {
                let shown: String = v.chars().take(64).collect();
                debug!(value = %shown, "ignoring a pgrpc_lsn cookie that is not a WAL position");
            }
        }
    }
    Ok(out)
}

/// The WAL position a read asks for: the later of the header and the
/// cookie when both are sent; none when neither is. A malformed header is
/// refused, a malformed cookie ignored.
pub fn requested_lsn(headers: &HeaderMap) -> Result<Option<Lsn>, InvalidLsn> {
    requested(headers).map(Requested::lsn)
}

/// [`requested_lsn`], and with a replica, a position no replica can ever
/// replay is caught before any wait: past the primary's own current
/// position (known from the probe's samples, or asked of the primary when
/// the position is newer than the last sample). Such a header is refused
/// with 400; such a cookie is ignored, as a malformed one is.
pub async fn checked_lsn(
    headers: &HeaderMap,
    replica: Option<&Replica>,
    primary: &Pool,
) -> Result<Option<Lsn>, InvalidLsn> {
    let mut wanted = requested(headers)?;
    let Some(replica) = replica else {
        return Ok(wanted.lsn());
    };
    if let Some(sent) = wanted.header {
        if let Err(primary) = replica.not_ahead(sent, primary).await {
            return Err(InvalidLsn::Ahead { sent, primary });
        }
    }
    if let Some(sent) = wanted.cookie {
        if let Err(at) = replica.not_ahead(sent, primary).await {
            debug!(cookie = %sent, primary = %at, "ignoring a pgrpc_lsn cookie ahead of the primary");
            wanted.cookie = None;
        }
    }
    Ok(wanted.lsn())
}

/// The `X-Pgrpc-Lsn` response header for a write's WAL position.
pub fn lsn_header(lsn: Lsn) -> (HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&lsn.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0/0"));
    (LSN_HEADER, value)
}

/// The `pgrpc_lsn` cookie for a write's WAL position (`PGRPC_LSN_COOKIE`):
/// a browser sends it back with its next reads, which then see the write,
/// with no client code. Not readable by scripts, sent on same-site
/// navigation and requests, for every path.
pub fn lsn_cookie(lsn: Lsn) -> (HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&format!(
        "{LSN_COOKIE}={lsn}; Path=/; HttpOnly; SameSite=Lax"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("pgrpc_lsn=0/0; Path=/; HttpOnly; SameSite=Lax"));
    (hyper::header::SET_COOKIE, value)
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

    // A malformed header is refused, naming it; a malformed cookie is ignored, and a good one beside it counts.
    #[test]
    fn a_malformed_header_is_refused_and_a_malformed_cookie_ignored() {
        let e = requested_lsn(&headers(&[("x-pgrpc-lsn", "yesterday")])).expect_err("bad");
        assert!(e.to_string().contains("X-Pgrpc-Lsn"), "{e}");
        let e = requested_lsn(&headers(&[("x-pgrpc-lsn", "")])).expect_err("bad");
        assert_eq!(e.pgrst(), Pgrst::InvalidLsn);
        let h = headers(&[("cookie", "pgrpc_lsn=1/2/3")]);
        assert_eq!(requested_lsn(&h).ok(), Some(None));
        let h = headers(&[("cookie", "pgrpc_lsn=junk; pgrpc_lsn=0/20")]);
        assert_eq!(requested_lsn(&h).ok(), Some(Some(Lsn(0x20))));
        let h = headers(&[("x-pgrpc-lsn", "0/10"), ("cookie", "pgrpc_lsn=%%")]);
        assert_eq!(requested_lsn(&h).ok(), Some(Some(Lsn(0x10))));
    }

    // The cookie a write sets: its position, for every path, out of scripts' reach, same-site only.
    #[test]
    fn the_cookie_carries_the_position_httponly_and_samesite_lax() {
        let (name, value) = lsn_cookie(Lsn((0x16 << 32) | 0xB374_D848));
        assert_eq!(name, hyper::header::SET_COOKIE);
        assert_eq!(
            value.to_str().ok(),
            Some("pgrpc_lsn=16/B374D848; Path=/; HttpOnly; SameSite=Lax")
        );
    }
}
