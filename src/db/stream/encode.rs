//! A streamed answer's body as its rows come: a JSON array as `json_agg`
//! writes it, NDJSON lines, or PostgREST's CSV, each row's text copied as
//! PostgreSQL sent it.

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Row;

use super::{StreamFormat, CHUNK_BYTES};

/// A text column's bytes as PostgreSQL sent them (UTF-8, the connection's
/// client encoding): copied into the body as they are, without the UTF-8
/// check of `&str` on every row.
struct Text<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Text<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> Result<Text<'a>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Text(raw))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }
}

/// The body of a streamed answer, as the buffered statement builds it:
/// `json_agg`'s array, NDJSON lines, or PostgREST's CSV.
pub(super) struct Encoder {
    format: StreamFormat,
    pub(super) buf: BytesMut,
    pub(super) rows: i64,
}

impl Encoder {
    pub(super) fn new(format: StreamFormat) -> Encoder {
        Encoder {
            format,
            buf: BytesMut::with_capacity(CHUNK_BYTES + 4096),
            rows: 0,
        }
    }

    pub(super) fn push(&mut self, row: &Row) {
        let text: &[u8] = row
            .try_get::<_, Option<Text>>(0)
            .ok()
            .flatten()
            .map_or(b"null", |t| t.0);
        match self.format {
            StreamFormat::Json { sep_newline } => {
                match (self.rows, sep_newline) {
                    (0, _) => self.buf.put_u8(b'['),
                    (_, true) => self.buf.put_slice(b", \n "),
                    (_, false) => self.buf.put_slice(b", "),
                }
                self.buf.put_slice(text);
            }
            StreamFormat::Ndjson => {
                self.buf.put_slice(text);
                self.buf.put_u8(b'\n');
            }
            StreamFormat::Csv => {
                if self.rows == 0 {
                    let header: Option<&str> = row.try_get(1).ok().flatten();
                    self.buf.put_slice(header.unwrap_or("").as_bytes());
                }
                self.buf.put_u8(b'\n');
                self.buf.put_slice(text);
            }
        }
        self.rows += 1;
    }

    pub(super) fn finish(&mut self) {
        match self.format {
            StreamFormat::Json { .. } if self.rows == 0 => self.buf.put_slice(b"[]"),
            StreamFormat::Json { .. } => self.buf.put_u8(b']'),
            StreamFormat::Ndjson => {}
            StreamFormat::Csv if self.rows == 0 => self.buf.put_u8(b'\n'),
            StreamFormat::Csv => {}
        }
    }
}
