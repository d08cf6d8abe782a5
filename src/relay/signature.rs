//! The signature of each delivery: `t=<unix seconds>,v1=<hex HMAC-SHA256
//! of "<t>.<body>">`, so a receiver can check the sender and refuse old
//! replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The value of the signature header for `body` sent at `timestamp`:
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
/// Signing the timestamp lets a receiver refuse old replays.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a signature header against `body`; returns its timestamp when the
/// signature is valid (the receiver then decides how old is too old).
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8]) -> Option<i64> {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => signature = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (timestamp, signature) = (timestamp?, signature?);
    mac(secret, timestamp, body)
        .verify_slice(&signature)
        .ok()
        .map(|()| timestamp)
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_and_secret() {
        let header = signature_header(
            b"secret-secret-secret-secret-1234",
            1_700_000_000,
            b"{\"id\":1}",
        );
        assert_eq!(
            verify_signature(b"secret-secret-secret-secret-1234", &header, b"{\"id\":1}"),
            Some(1_700_000_000)
        );
        assert_eq!(
            verify_signature(b"secret-secret-secret-secret-1234", &header, b"{\"id\":2}"),
            None
        );
        assert_eq!(
            verify_signature(b"another-secret-another-secret-12", &header, b"{\"id\":1}"),
            None
        );
        assert_eq!(verify_signature(b"k", "garbage", b""), None);
    }
}
