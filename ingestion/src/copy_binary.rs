//! PostgreSQL's binary COPY format, as the initial copy reads it: the stream's framing
//! (header, rows of length-prefixed fields, trailer) and the values of the types read in
//! their binary form (see `PgColumn::copy_expr`).

use crate::value::{
    ColumnBuilder, DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY,
    as_str,
};
use crate::{IngestError, Result};

impl ColumnBuilder {
    /// Appends a value in PostgreSQL's binary send format, for the types the initial copy
    /// reads in binary (see `PgColumn::copy_expr`): integers, floats, bool, bytea, date,
    /// time, timestamps, uuid, and text-like types (whose binary form is their text).
    /// Infinities and times past Iceberg's range map as their text does (ADR 0007).
    pub fn append_binary(&mut self, v: &[u8]) -> Result<(), String> {
        let bad = |what: &str| format!("{what} in binary ({} bytes)", v.len());
        match self {
            Self::Bool(b) => match v {
                [0] => b.append_value(false),
                [1] => b.append_value(true),
                _ => return Err(bad("not a boolean")),
            },
            Self::Int32(b) => b.append_value(match v.len() {
                2 => i16::from_be_bytes(be(v)?) as i32,
                4 => i32::from_be_bytes(be(v)?),
                _ => return Err(bad("not an integer")),
            }),
            Self::Int64(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            // Every NaN as the one its text `NaN` parses to: keys and equality must agree
            // with the stream, and PostgreSQL stores NaNs of either sign.
            Self::Float32(b) => b.append_value(match f32::from_be_bytes(be(v)?) {
                x if x.is_nan() => f32::NAN,
                x => x,
            }),
            Self::Float64(b) => b.append_value(match f64::from_be_bytes(be(v)?) {
                x if x.is_nan() => f64::NAN,
                x => x,
            }),
            Self::Utf8(b) => b.append_value(as_str(v)?),
            Self::Binary(b) => b.append_value(v),
            Self::Date(b) => b.append_value(match i32::from_be_bytes(be(v)?) {
                i32::MAX => DATE_INFINITY,
                i32::MIN => DATE_NEG_INFINITY,
                // Days since 2000-01-01; PostgreSQL's last date stays within i32 from 1970.
                d => d
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or_else(|| bad("a date out of range"))?,
            }),
            Self::Time(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Self::Timestamp(b, _) => b.append_value(match i64::from_be_bytes(be(v)?) {
                i64::MAX => TIMESTAMP_INFINITY,
                i64::MIN => TIMESTAMP_NEG_INFINITY,
                // Microseconds since 2000-01-01 UTC; past Iceberg's last time: its infinity.
                t => t
                    .checked_add(i64::from(PG_EPOCH_DAYS) * 86_400_000_000)
                    .unwrap_or(TIMESTAMP_INFINITY),
            }),
            Self::Uuid(b) => b
                .append_value(<[u8; 16]>::try_from(v).map_err(|_| bad("not a uuid"))?)
                .map_err(|e| e.to_string())?,
            Self::Decimal(..) | Self::List { .. } => {
                return Err("numeric and array values are read as text".to_string());
            }
        }
        Ok(())
    }
}

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// A fixed-width big-endian value's bytes, or an error naming the width found.
fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(v).map_err(|_| format!("{} bytes where {N} were expected", v.len()))
}

/// The signature a binary COPY starts with.
pub(crate) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Reads PostgreSQL's binary COPY format: a header (signature, flags, extension), then per
/// row a field count and each field's length (-1: NULL) and bytes, then a trailer (-1).
pub(crate) struct BinaryCopy<'a> {
    table: &'a str,
    fields: usize,
    header: bool,
    pub(crate) ended: bool,
    spans: Vec<Option<(usize, usize)>>,
}

impl<'a> BinaryCopy<'a> {
    pub(crate) fn new(table: &'a str, fields: usize) -> Self {
        Self {
            table,
            fields,
            header: false,
            ended: false,
            spans: Vec::with_capacity(fields),
        }
    }

    fn bad(&self, what: impl std::fmt::Display) -> IngestError {
        IngestError::Protocol(format!("{}: binary COPY {what}", self.table))
    }

    /// Hands every complete row of `data` to `row` (the bytes, and each field's span);
    /// returns how many bytes were used (the rest is the start of an incomplete row).
    pub(crate) fn rows(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&[u8], &[Option<(usize, usize)>]) -> Result<()>,
    ) -> Result<usize> {
        let mut at = 0;
        if !self.header {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(self.bad("output lacks its signature"));
            }
            // Bits 16-31 of the flags are critical (16: rows carry OIDs): a reader must not
            // go on past one it does not expect.
            let flags = u32::from_be_bytes(be4(&data[11..15]));
            if flags >> 16 != 0 {
                return Err(self.bad(format_args!("header has critical flags {flags:#x}")));
            }
            let ext = u32::from_be_bytes(be4(&data[15..19])) as usize;
            if data.len() < 19 + ext {
                return Ok(0);
            }
            at = 19 + ext;
            self.header = true;
        }
        while !self.ended && data.len() >= at + 2 {
            let count = i16::from_be_bytes([data[at], data[at + 1]]);
            if count == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if count as usize != self.fields {
                return Err(self.bad(format_args!(
                    "row has {count} fields, table has {}",
                    self.fields
                )));
            }
            let mut p = at + 2;
            self.spans.clear();
            let complete = loop {
                if self.spans.len() == self.fields {
                    break true;
                }
                if data.len() < p + 4 {
                    break false;
                }
                let len = i32::from_be_bytes(be4(&data[p..p + 4]));
                p += 4;
                if len == -1 {
                    self.spans.push(None);
                    continue;
                }
                if len < 0 {
                    return Err(self.bad(format_args!("field length {len}")));
                }
                let end = p + len as usize;
                if data.len() < end {
                    break false;
                }
                self.spans.push(Some((p, end)));
                p = end;
            };
            if !complete {
                break;
            }
            row(data, &self.spans)?;
            at = p;
        }
        Ok(at)
    }
}

fn be4(v: &[u8]) -> [u8; 4] {
    [v[0], v[1], v[2], v[3]]
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;

    use super::*;
    use crate::source::PgKind;

    /// A value read in binary (as the copy reads it) equals the same value read as text
    /// (as the stream sends it), infinities and PostgreSQL's epoch included.
    #[test]
    fn binary_values_read_as_their_text() {
        let same = |kind: PgKind, dt: DataType, bin: &[u8], text: &[u8]| {
            let mut a = ColumnBuilder::new(&kind, &dt);
            let mut b = ColumnBuilder::new(&kind, &dt);
            a.append_binary(bin).unwrap();
            b.append_text(text).unwrap();
            assert_eq!(
                a.finish().to_data(),
                b.finish().to_data(),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        };
        let date = DataType::Date32;
        same(
            PgKind::Date,
            date.clone(),
            &0i32.to_be_bytes(),
            b"2000-01-01",
        );
        same(
            PgKind::Date,
            date.clone(),
            &(-10_957i32).to_be_bytes(),
            b"1970-01-01",
        );
        same(
            PgKind::Date,
            date.clone(),
            &i32::MAX.to_be_bytes(),
            b"infinity",
        );
        same(PgKind::Date, date, &i32::MIN.to_be_bytes(), b"-infinity");
        let ts = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
        let day = 86_400_000_000i64;
        same(
            PgKind::Timestamp,
            ts.clone(),
            &(day + 1).to_be_bytes(),
            b"2000-01-02 00:00:00.000001",
        );
        same(
            PgKind::Timestamp,
            ts.clone(),
            &i64::MAX.to_be_bytes(),
            b"infinity",
        );
        same(PgKind::Timestamp, ts, &i64::MIN.to_be_bytes(), b"-infinity");
        // Past Iceberg's last microsecond: its infinity, as the text of such a time maps.
        let late = i64::MAX - 1;
        let mut b = ColumnBuilder::new(&PgKind::Timestamp, &DataType::Int64);
        b.append_binary(&late.to_be_bytes()).unwrap();
        let got = b.finish();
        assert_eq!(
            got.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            TIMESTAMP_INFINITY
        );
        same(PgKind::Int2, DataType::Int32, &(-2i16).to_be_bytes(), b"-2");
        same(
            PgKind::Float8,
            DataType::Float64,
            &1.5f64.to_be_bytes(),
            b"1.5",
        );
        // A NaN of the other sign (0 * 'inf' on x86) reads as the text's NaN.
        same(
            PgKind::Float8,
            DataType::Float64,
            &(-f64::NAN).to_be_bytes(),
            b"NaN",
        );
        same(
            PgKind::Float4,
            DataType::Float32,
            &(-f32::NAN).to_be_bytes(),
            b"NaN",
        );
        same(PgKind::Bool, DataType::Boolean, &[1], b"t");
        same(
            PgKind::Time,
            DataType::Time64(arrow::datatypes::TimeUnit::Microsecond),
            &(3_600_000_000i64).to_be_bytes(),
            b"01:00:00",
        );
        let mut b = ColumnBuilder::new(&PgKind::Int8, &DataType::Int64);
        let err = b.append_binary(&[0, 1]).unwrap_err();
        assert!(err.contains("2 bytes where 8"), "{err}");
    }

    /// A binary COPY stream of two rows (a NULL in the second), cut at every byte: the same
    /// rows come out whatever the cut.
    #[test]
    fn reads_binary_copy_rows_across_any_cut() {
        let mut stream = Vec::new();
        stream.extend_from_slice(SIGNATURE);
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(&4u32.to_be_bytes());
        stream.extend_from_slice(b"skip");
        for (a, b) in [(Some(&b"one"[..]), Some(&b"x"[..])), (None, Some(&b""[..]))] {
            stream.extend_from_slice(&2i16.to_be_bytes());
            for f in [a, b] {
                match f {
                    None => stream.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        stream.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        stream.extend_from_slice(v);
                    }
                }
            }
        }
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        let want: Vec<Vec<Option<Vec<u8>>>> = vec![
            vec![Some(b"one".to_vec()), Some(b"x".to_vec())],
            vec![None, Some(Vec::new())],
        ];
        for cut in 0..=stream.len() {
            let mut reader = BinaryCopy::new("t", 2);
            let mut got = Vec::new();
            let mut carry = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                carry.extend_from_slice(chunk);
                let used = reader
                    .rows(&carry, |data, spans| {
                        got.push(
                            spans
                                .iter()
                                .map(|s| s.map(|(a, b)| data[a..b].to_vec()))
                                .collect::<Vec<_>>(),
                        );
                        Ok(())
                    })
                    .unwrap();
                carry.drain(..used);
            }
            assert!(reader.ended, "cut {cut}");
            assert!(carry.is_empty(), "cut {cut}");
            assert_eq!(got, want, "cut {cut}");
        }
    }

    #[test]
    fn refuses_a_row_of_another_width() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&[0; 8]);
        stream.extend_from_slice(&3i16.to_be_bytes());
        let err = BinaryCopy::new("t", 2)
            .rows(&stream, |_, _| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("3 fields"), "{err}");
    }

    /// Rows with OIDs (a critical header flag) and field lengths below -1 are refused, not
    /// read as shifted fields or NULLs.
    #[test]
    fn refuses_critical_flags_and_negative_lengths() {
        let mut oids = SIGNATURE.to_vec();
        oids.extend_from_slice(&(1u32 << 16).to_be_bytes());
        oids.extend_from_slice(&0u32.to_be_bytes());
        let err = BinaryCopy::new("t", 1)
            .rows(&oids, |_, _| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("critical flags"), "{err}");

        let mut bad = SIGNATURE.to_vec();
        bad.extend_from_slice(&[0; 8]);
        bad.extend_from_slice(&1i16.to_be_bytes());
        bad.extend_from_slice(&(-2i32).to_be_bytes());
        let err = BinaryCopy::new("t", 1)
            .rows(&bad, |_, _| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("field length -2"), "{err}");
    }
}
