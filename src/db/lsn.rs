//! `Lsn`: a WAL position, written as PostgreSQL writes `pg_lsn`
//! (`16/B374D848`: the high and low 32 bits in hex). The primary's position
//! after a write's COMMIT is what a read sends back (`X-Pgrpc-Lsn`) to be
//! served only by a replica that has replayed it.

/// `SELECT` of the WAL position a node holds, as text: replayed on a
/// standby (a promoted replica is still fine to read from); on a primary,
/// the insert position, not `pg_current_wal_lsn()` (what has been written
/// out), because under `synchronous_commit = off` a COMMIT's record may not
/// be written yet. An insert position just past a page header (the last
/// record ended exactly at a page or segment end, as after a WAL switch) is
/// taken back to the boundary, which is where a standby's replay of that
/// record ends: otherwise an idle primary's position could never be
/// reached.
macro_rules! wal_position {
    () => {
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn()::text \
         ELSE (SELECT (p.l - CASE WHEN p.o = 40 THEN 40 WHEN p.o % p.b = 24 AND p.o > p.b THEN 24 ELSE 0 END)::text \
               FROM (SELECT w.l, (pg_catalog.pg_walfile_name_offset(w.l)).file_offset AS o, \
                            pg_catalog.current_setting('wal_block_size')::int AS b \
                     FROM pg_catalog.pg_current_wal_insert_lsn() AS w(l)) AS p) END"
    };
}
pub(crate) use wal_position;

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

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
