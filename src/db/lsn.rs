//! `Lsn`: a WAL position, written as PostgreSQL writes `pg_lsn`
//! (`16/B374D848`: the high and low 32 bits in hex). The primary's position
//! after a write's COMMIT is what a read sends back (`X-Pgrpc-Lsn`) to be
//! served only by a replica that has replayed it.

/// `SELECT` of the WAL position a node holds, as text, and whether it is
/// in recovery: replayed on a standby (a promoted replica is still fine to
/// read from); on a primary, the insert position, not `pg_current_wal_lsn()`
/// (what has been written out), because under `synchronous_commit = off` a
/// COMMIT's record may not be written yet. See [`Lsn::record_end`] for the
/// one adjustment a primary's insert position needs.
macro_rules! wal_position {
    () => {
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn() \
         ELSE pg_catalog.pg_current_wal_insert_lsn() END::text, \
         pg_catalog.pg_is_in_recovery()"
    };
}
pub(crate) use wal_position;

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A server's WAL page and segment sizes (fixed when it was built and
/// initialized), for [`Lsn::record_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalLayout {
    pub block: u64,
    pub segment: u64,
}

impl WalLayout {
    /// The page header's size, and the longer one that starts a segment.
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;

    pub const SQL: &'static str = "SELECT pg_catalog.current_setting('wal_block_size'), \
         (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size')";

    /// Reads the layout by a simple query (nothing prepared).
    pub async fn read(client: &tokio_postgres::Client) -> Result<WalLayout, tokio_postgres::Error> {
        let messages = client.simple_query(Self::SQL).await?;
        let row = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        });
        let number = |i: usize| {
            row.and_then(|r| r.get(i))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|n| *n > Self::LONG_HEADER)
        };
        // Defaults of a stock build; only used if the server hides them.
        Ok(WalLayout {
            block: number(0).unwrap_or(8192),
            segment: number(1).unwrap_or(16 * 1024 * 1024),
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL position (expected two hex numbers of up to 8 digits, as 16/B374D848)")]
pub struct BadLsn;

impl FromStr for Lsn {
    type Err = BadLsn;

    fn from_str(s: &str) -> Result<Lsn, BadLsn> {
        let (high, low) = s.trim().split_once('/').ok_or(BadLsn)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadLsn);
            }
            u32::from_str_radix(part, 16).map_err(|_| BadLsn)
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

impl Lsn {
    /// A primary's insert position taken back to where a standby's replay
    /// of the last record ends. When that record ended exactly at a page
    /// or segment end (as after a WAL switch), the insert position sits
    /// past the next page's header, which replay never reaches while no
    /// record follows: an idle primary's position would never be replayed.
    /// Computed here, not in SQL, where it tripled the cost of COMMIT's
    /// message.
    pub fn record_end(self, layout: WalLayout) -> Lsn {
        let in_segment = self.0 % layout.segment;
        if in_segment == WalLayout::LONG_HEADER {
            Lsn(self.0 - WalLayout::LONG_HEADER)
        } else if in_segment > layout.block && self.0 % layout.block == WalLayout::SHORT_HEADER {
            Lsn(self.0 - WalLayout::SHORT_HEADER)
        } else {
            self
        }
    }

    /// A position from the `wal_position` query's row: the primary's taken
    /// back to a record's end, a standby's as it is.
    pub fn from_position_row(
        row: &tokio_postgres::SimpleQueryRow,
        layout: Option<WalLayout>,
    ) -> Option<(Lsn, bool)> {
        let lsn: Lsn = row.get(0)?.parse().ok()?;
        let recovering = row.get(1) == Some("t");
        let lsn = match layout {
            Some(layout) if !recovering => lsn.record_end(layout),
            _ => lsn,
        };
        Some((lsn, recovering))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_as_postgresql_does() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(lsn.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn(0)));
        assert_eq!(
            "ffffffff/ffffffff".parse::<Lsn>().map(|l| l.to_string()),
            Ok("FFFFFFFF/FFFFFFFF".to_string())
        );
        assert!("0/1".parse::<Lsn>().ok() < "1/0".parse::<Lsn>().ok());
    }

    // Only a position right after a page or segment header moves back; any other stays.
    #[test]
    fn record_end_takes_a_position_past_a_header_back_to_the_boundary() {
        let layout = WalLayout {
            block: 8192,
            segment: 16 << 20,
        };
        let seg = 5u64 << 24;
        assert_eq!(Lsn(seg + 40).record_end(layout), Lsn(seg));
        assert_eq!(
            Lsn(seg + 3 * 8192 + 24).record_end(layout),
            Lsn(seg + 3 * 8192)
        );
        for same in [
            seg + 24,
            seg + 48,
            seg + 8192 + 40,
            seg + 8192 + 32,
            seg + 100_000,
        ] {
            assert_eq!(Lsn(same).record_end(layout), Lsn(same), "{same:#x}");
        }
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "12345",
            "1/2/3",
            "123456789/0",
            "g/0",
            "+1/0",
            "1 /0",
            "-0/1",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(BadLsn), "{bad:?}");
        }
    }
}
