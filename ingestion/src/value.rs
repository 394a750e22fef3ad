//! PostgreSQL text values into Arrow columns.
//!
//! pgoutput (protocol 1) and `COPY ... TO STDOUT` both deliver values in each
//! type's text output format, so one parser serves the stream and the initial
//! copy. The replication and copy sessions pin `DateStyle=ISO`, `TimeZone=UTC`
//! and `bytea_output=hex`, which fixes the formats parsed here.

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, ListArray,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef};

use crate::source::PgKind;

/// Days from 0001-01-01 (proleptic Gregorian, day 1 of the CE) to 1970-01-01.
#[cfg(test)]
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_162;

/// Builds one Arrow column from text values of one PostgreSQL type.
#[derive(Debug)]
pub enum ColumnBuilder {
    /// bool
    Bool(BooleanBuilder),
    /// int2, int4
    Int32(Int32Builder),
    /// int8
    Int64(Int64Builder),
    /// float4
    Float32(Float32Builder),
    /// float8
    Float64(Float64Builder),
    /// numeric(p, s): precision and scale given
    Decimal(Decimal128Builder, u8, i8),
    /// text-like
    Utf8(StringBuilder),
    /// bytea
    Binary(LargeBinaryBuilder),
    /// date
    Date(Date32Builder),
    /// time
    Time(Time64MicrosecondBuilder),
    /// timestamp / timestamptz
    Timestamp(TimestampMicrosecondBuilder, bool),
    /// uuid
    Uuid(FixedSizeBinaryBuilder),
    /// one-dimensional arrays
    List {
        /// element field (with its field id metadata)
        field: FieldRef,
        /// element offsets
        offsets: Vec<i32>,
        /// list validity
        nulls: NullBufferBuilder,
        /// element builder
        child: Box<ColumnBuilder>,
    },
}

impl ColumnBuilder {
    /// A builder for values of `kind` producing arrays of `data_type` (from the table's Arrow schema).
    pub fn new(kind: &PgKind, data_type: &DataType) -> Self {
        match (kind, data_type) {
            (PgKind::Bool, _) => Self::Bool(BooleanBuilder::new()),
            (PgKind::Int2 | PgKind::Int4, _) => Self::Int32(Int32Builder::new()),
            (PgKind::Int8, _) => Self::Int64(Int64Builder::new()),
            (PgKind::Float4, _) => Self::Float32(Float32Builder::new()),
            (PgKind::Float8, _) => Self::Float64(Float64Builder::new()),
            (PgKind::Decimal { precision, scale }, _) => Self::Decimal(
                Decimal128Builder::new().with_data_type(DataType::Decimal128(*precision, *scale)),
                *precision,
                *scale,
            ),
            (PgKind::NumericText | PgKind::Text, _) => Self::Utf8(StringBuilder::new()),
            (PgKind::Bytea, _) => Self::Binary(LargeBinaryBuilder::new()),
            (PgKind::Date, _) => Self::Date(Date32Builder::new()),
            (PgKind::Time, _) => Self::Time(Time64MicrosecondBuilder::new()),
            (PgKind::Timestamp, _) => Self::Timestamp(TimestampMicrosecondBuilder::new(), false),
            (PgKind::TimestampTz, _) => Self::Timestamp(
                TimestampMicrosecondBuilder::new().with_timezone("+00:00"),
                true,
            ),
            (PgKind::Uuid, _) => Self::Uuid(FixedSizeBinaryBuilder::new(16)),
            (PgKind::Array(elem), DataType::List(field)) => Self::List {
                field: field.clone(),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                child: Box::new(ColumnBuilder::new(elem, field.data_type())),
            },
            (PgKind::Array(elem), other) => {
                // The lakehouse maps arrays to lists; anything else is a programming error
                // caught by the schema check, so fall back to the element's own layout.
                tracing::error!(?other, "array column without a list type");
                ColumnBuilder::new(elem, other)
            }
        }
    }

    /// Appends a null.
    pub fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, _, _) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
            Self::Uuid(b) => b.append_null(),
            Self::List { offsets, nulls, .. } => {
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    /// Appends a value given in PostgreSQL text output format.
    pub fn append_text(&mut self, v: &[u8]) -> Result<(), String> {
        let s = || String::from_utf8_lossy(v).into_owned();
        let bad = |what: &str| format!("{what} {:?}", String::from_utf8_lossy(v));
        match self {
            Self::Bool(b) => match v {
                b"t" => b.append_value(true),
                b"f" => b.append_value(false),
                _ => return Err(bad("not a boolean:")),
            },
            Self::Int32(b) => b.append_value(
                parse_int(v)
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| bad("not an integer:"))?,
            ),
            Self::Int64(b) => b.append_value(parse_int(v).ok_or_else(|| bad("not a bigint:"))?),
            Self::Float32(b) => {
                b.append_value(as_str(v)?.parse::<f32>().map_err(|_| bad("not a real:"))?)
            }
            Self::Float64(b) => b.append_value(
                as_str(v)?
                    .parse::<f64>()
                    .map_err(|_| bad("not a double:"))?,
            ),
            Self::Decimal(b, precision, scale) => {
                let x = if v == b"NaN" {
                    // ADR 0007: one past the largest value the column's precision holds.
                    decimal_nan(*precision)
                } else {
                    parse_decimal(v, *scale)
                        .ok_or_else(|| bad("not a decimal of its declared scale:"))?
                };
                b.append_value(x)
            }
            Self::Utf8(b) => b.append_value(as_str(v)?),
            Self::Binary(b) => b.append_value(parse_bytea(v).ok_or_else(|| bad("not hex bytea:"))?),
            Self::Date(b) => b.append_value(match v {
                b"infinity" => DATE_INFINITY,
                b"-infinity" => DATE_NEG_INFINITY,
                _ => parse_date(v).ok_or_else(|| bad("not a date:"))?,
            }),
            Self::Time(b) => b.append_value(parse_time(v).ok_or_else(|| bad("not a time:"))?),
            Self::Timestamp(b, tz) => b.append_value(match v {
                b"infinity" => TIMESTAMP_INFINITY,
                b"-infinity" => TIMESTAMP_NEG_INFINITY,
                _ => parse_timestamp(v, *tz).ok_or_else(|| bad("not a timestamp:"))?,
            }),
            Self::Uuid(b) => {
                let u = parse_uuid(v).ok_or_else(|| bad("not a uuid:"))?;
                b.append_value(u).map_err(|e| e.to_string())?
            }
            Self::List {
                offsets,
                nulls,
                child,
                ..
            } => {
                let n = parse_array(v, |elem| match elem {
                    None => {
                        child.append_null();
                        Ok(())
                    }
                    Some(e) => child.append_text(e),
                })
                .map_err(|e| format!("{e} in array {:?}", s()))?;
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last + n as i32);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    /// Takes the values appended so far as an array, leaving the builder empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, _, _) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b, _) => Arc::new(b.finish()),
            Self::Uuid(b) => Arc::new(b.finish()),
            Self::List {
                field,
                offsets,
                nulls,
                child,
            } => {
                let values = child.finish();
                let offs = std::mem::replace(offsets, vec![0]);
                let offs = OffsetBuffer::new(ScalarBuffer::from(offs));
                Arc::new(ListArray::new(field.clone(), offs, values, nulls.finish()))
            }
        }
    }
}

pub(crate) fn as_str(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| "value is not valid UTF-8".to_string())
}

/// Parses a decimal integer (with optional sign) without going through `str`.
fn parse_int(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut acc: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_sub((d - b'0') as i64)?;
    }
    if neg { Some(acc) } else { acc.checked_neg() }
}

fn parse_fixed_digits(v: &[u8]) -> Option<u32> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + (d - b'0') as u32)
    })
}

/// Parses PostgreSQL numeric text into an unscaled i128 at `scale`.
pub fn parse_decimal(v: &[u8], scale: i8) -> Option<i128> {
    let (neg, rest) = match v.first()? {
        b'-' => (true, &v[1..]),
        _ => (false, v),
    };
    let (int, frac) = match rest.iter().position(|&b| b == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if int.is_empty() || frac.len() > scale as usize {
        return None;
    }
    let mut acc: i128 = 0;
    for &d in int.iter().chain(frac) {
        if !d.is_ascii_digit() {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_add((d - b'0') as i128)?;
    }
    for _ in frac.len()..scale as usize {
        acc = acc.checked_mul(10)?;
    }
    Some(if neg { -acc } else { acc })
}

fn parse_bytea(v: &[u8]) -> Option<Vec<u8>> {
    let hex = v.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// `date 'infinity'` (ADR 0007): the largest Iceberg date, beyond PostgreSQL's last finite
/// date (5874897-12-31), and what DuckDB reads as `infinity`.
pub const DATE_INFINITY: i32 = i32::MAX;
/// `date '-infinity'`: DuckDB's `-infinity`, far before PostgreSQL's first date (4713 BC).
pub const DATE_NEG_INFINITY: i32 = -i32::MAX;
/// `timestamp 'infinity'` (ADR 0007): the largest Iceberg timestamp, DuckDB's `infinity`; also
/// finite PostgreSQL timestamps after Iceberg's last one (year 294247), which nothing else can hold.
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;
/// `timestamp '-infinity'`: DuckDB's `-infinity`, far before PostgreSQL's first timestamp.
pub const TIMESTAMP_NEG_INFINITY: i64 = -i64::MAX;

/// `numeric 'NaN'` in a `numeric(p, s)` column (ADR 0007): the unscaled value 10^p, one past
/// the largest value of the column's precision, so no ordinary value can equal it.
pub fn decimal_nan(precision: u8) -> i128 {
    10i128.pow(u32::from(precision.min(38)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year may be ≤ 0).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD[ BC]` → (days since epoch, rest of input).
fn parse_date_prefix(v: &[u8]) -> Option<(i64, &[u8])> {
    let dash = v.iter().position(|&b| b == b'-')?;
    let year = parse_fixed_digits(&v[..dash])? as i64;
    let rest = &v[dash + 1..];
    if rest.len() < 5 || rest[2] != b'-' {
        return None;
    }
    let month = parse_fixed_digits(&rest[..2])?;
    let day = parse_fixed_digits(&rest[3..5])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = &rest[5..];
    let bc = rest.ends_with(b" BC");
    let year = if bc { 1 - year } else { year };
    let rest = if bc { &rest[..rest.len() - 3] } else { rest };
    Some((days_from_civil(year, month, day), rest))
}

fn parse_date(v: &[u8]) -> Option<i32> {
    let (days, rest) = parse_date_prefix(v)?;
    if !rest.is_empty() {
        return None;
    }
    i32::try_from(days).ok()
}

/// `HH:MM:SS[.ffffff]` → (microseconds, rest).
fn parse_time_prefix(v: &[u8]) -> Option<(i64, &[u8])> {
    if v.len() < 8 || v[2] != b':' || v[5] != b':' {
        return None;
    }
    let h = parse_fixed_digits(&v[..2])? as i64;
    let m = parse_fixed_digits(&v[3..5])? as i64;
    let s = parse_fixed_digits(&v[6..8])? as i64;
    let mut micros = ((h * 60 + m) * 60 + s) * 1_000_000;
    let mut rest = &v[8..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 6 {
            return None;
        }
        let mut frac = parse_fixed_digits(&rest[1..1 + digits])? as i64;
        for _ in digits..6 {
            frac *= 10;
        }
        micros += frac;
        rest = &rest[1 + digits..];
    }
    Some((micros, rest))
}

fn parse_time(v: &[u8]) -> Option<i64> {
    match parse_time_prefix(v)? {
        (t, []) => Some(t),
        _ => None,
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f][+HH[:MM[:SS]]][ BC]` → microseconds since the Unix epoch (UTC for tz).
fn parse_timestamp(v: &[u8], tz: bool) -> Option<i64> {
    let bc = v.ends_with(b" BC");
    let body = if bc { &v[..v.len() - 3] } else { v };
    let space = body.iter().position(|&b| b == b' ')?;
    let (mut days, rest) = parse_date_prefix(&body[..space])?;
    if !rest.is_empty() {
        return None;
    }
    if bc {
        // parse_date_prefix saw no suffix on the date part: redo the year as BC.
        let (d, _) = parse_date_prefix(&[&body[..space], b" BC".as_slice()].concat())?;
        days = d;
    }
    let (micros, rest) = parse_time_prefix(&body[space + 1..])?;
    // i128: PostgreSQL's last years (to 294276 AD) lie beyond Iceberg's i64 microseconds.
    let mut total = i128::from(days) * 86_400_000_000 + i128::from(micros);
    if tz {
        let (sign, off) = match rest.first()? {
            b'+' => (1, &rest[1..]),
            b'-' => (-1, &rest[1..]),
            _ => return None,
        };
        let parts: Vec<&[u8]> = off.split(|&b| b == b':').collect();
        let mut secs = 0i64;
        for (i, p) in parts.iter().enumerate().take(3) {
            secs += parse_fixed_digits(p)? as i64 * [3600, 60, 1][i];
        }
        total -= i128::from(sign * secs * 1_000_000);
    } else if !rest.is_empty() {
        return None;
    }
    // A finite time after Iceberg's last one can only be held as its infinity (ADR 0007).
    Some(i64::try_from(total).unwrap_or(TIMESTAMP_INFINITY))
}

fn parse_uuid(v: &[u8]) -> Option<[u8; 16]> {
    let hex: Vec<u8> = v.iter().copied().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Walks a one-dimensional array literal (`{a,"b c",NULL}`), calling `each` per element.
/// Returns the element count.
pub fn parse_array(
    v: &[u8],
    mut each: impl FnMut(Option<&[u8]>) -> Result<(), String>,
) -> Result<usize, String> {
    // Arrays with non-default bounds print as `[0:2]={...}`.
    let v = match v.first() {
        Some(b'[') => {
            &v[v.iter()
                .position(|&b| b == b'=')
                .ok_or("bad array bounds")?
                + 1..]
        }
        _ => v,
    };
    let inner = v
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or_else(|| "array literal must be enclosed in braces".to_string())?;
    if inner.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    let mut i = 0;
    let mut scratch = Vec::new();
    loop {
        match inner.get(i) {
            Some(b'{') => return Err("multi-dimensional arrays are not supported".into()),
            Some(b'"') => {
                scratch.clear();
                i += 1;
                loop {
                    match inner.get(i) {
                        Some(b'\\') => {
                            scratch.push(*inner.get(i + 1).ok_or("dangling escape")?);
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            scratch.push(c);
                            i += 1;
                        }
                        None => return Err("unterminated quoted element".into()),
                    }
                }
                each(Some(&scratch))?;
            }
            _ => {
                let end = inner[i..]
                    .iter()
                    .position(|&b| b == b',')
                    .map(|p| i + p)
                    .unwrap_or(inner.len());
                let elem = &inner[i..end];
                if elem == b"NULL" {
                    each(None)?
                } else {
                    each(Some(elem))?
                }
                i = end;
            }
        }
        n += 1;
        match inner.get(i) {
            None => return Ok(n),
            Some(b',') => i += 1,
            Some(_) => return Err("unexpected character after array element".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Field, Int32Type};

    #[test]
    fn integers_and_decimals() {
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"12a"), None);
        assert_eq!(parse_decimal(b"-12.5", 2), Some(-1250));
        assert_eq!(parse_decimal(b"7", 3), Some(7000));
        assert_eq!(parse_decimal(b"1.234", 2), None);
        assert_eq!(parse_decimal(b"NaN", 2), None);
    }

    #[test]
    fn dates_times_timestamps() {
        assert_eq!(parse_date(b"1970-01-01"), Some(0));
        assert_eq!(parse_date(b"2000-03-01"), Some(11_017));
        assert_eq!(parse_date(b"0001-01-01"), Some(-UNIX_EPOCH_DAYS_FROM_CE));
        assert_eq!(
            parse_date(b"0001-12-31 BC"),
            Some(-UNIX_EPOCH_DAYS_FROM_CE - 1)
        );
        assert_eq!(parse_date(b"infinity"), None, "handled before parsing");
        assert_eq!(parse_time(b"24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time(b"01:02:03.5"), Some(3_723_500_000));
        assert_eq!(
            parse_timestamp(b"1970-01-01 00:00:01.000001", false),
            Some(1_000_001)
        );
        assert_eq!(parse_timestamp(b"1970-01-01 05:30:00+05:30", true), Some(0));
        assert_eq!(parse_timestamp(b"1970-01-01 00:00:00+00", true), Some(0));
        assert_eq!(parse_timestamp(b"1969-12-31 23:00:00-01", true), Some(0));
    }

    #[test]
    fn values_iceberg_cannot_hold_map_to_documented_sentinels() {
        let date = |text: &[u8]| {
            let mut b = ColumnBuilder::new(&PgKind::Date, &DataType::Date32);
            b.append_text(text).unwrap();
            b.finish()
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0)
        };
        assert_eq!(date(b"infinity"), DATE_INFINITY);
        assert_eq!(date(b"-infinity"), DATE_NEG_INFINITY);
        // PostgreSQL's finite extremes stay ordinary values, short of the sentinels.
        let last = date(b"5874897-12-31");
        let first = date(b"4714-11-24 BC");
        assert!(
            first > DATE_NEG_INFINITY && last < DATE_INFINITY,
            "{first} {last}"
        );
        let ts = |text: &[u8], tz: bool| {
            let mut b = ColumnBuilder::new(
                &if tz {
                    PgKind::TimestampTz
                } else {
                    PgKind::Timestamp
                },
                &DataType::Int64,
            );
            b.append_text(text).unwrap();
            b.finish()
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0)
        };
        assert_eq!(ts(b"infinity", false), TIMESTAMP_INFINITY);
        assert_eq!(ts(b"-infinity", true), TIMESTAMP_NEG_INFINITY);
        // Beyond Iceberg's last microsecond (year 294247) only infinity can hold it.
        assert_eq!(
            ts(b"294276-12-31 23:59:59.999999", false),
            TIMESTAMP_INFINITY
        );
        assert_eq!(ts(b"294276-12-31 23:59:59+00", true), TIMESTAMP_INFINITY);
        let first = ts(b"4714-11-24 00:00:00+00 BC", true);
        assert!(first > TIMESTAMP_NEG_INFINITY && first < -200_000_000_000_000_000);
        let mut b = ColumnBuilder::new(
            &PgKind::Decimal {
                precision: 6,
                scale: 2,
            },
            &DataType::Decimal128(6, 2),
        );
        b.append_text(b"NaN").unwrap();
        b.append_text(b"9999.99").unwrap();
        let d = b.finish();
        let d = d.as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(d.value(0), 1_000_000, "10^6: one past 9999.99");
        assert_eq!(d.value(1), 999_999);
        assert!(
            ColumnBuilder::new(&PgKind::Date, &DataType::Date32)
                .append_text(b"someday")
                .unwrap_err()
                .contains("not a date")
        );
    }

    #[test]
    fn bytea_and_uuid() {
        assert_eq!(parse_bytea(b"\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_bytea(b"00ff"), None);
        let u = parse_uuid(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(u[0], 0xa0);
        assert_eq!(u[15], 0x11);
    }

    #[test]
    fn arrays_with_quotes_nulls_and_bounds() {
        let mut got = Vec::new();
        let n = parse_array(br#"{a,"b c","d\"e",NULL,"NULL"}"#, |e| {
            got.push(e.map(|b| String::from_utf8_lossy(b).into_owned()));
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            got,
            vec![
                Some("a".into()),
                Some("b c".into()),
                Some("d\"e".into()),
                None,
                Some("NULL".into())
            ]
        );
        assert_eq!(parse_array(b"{}", |_| Ok(())).unwrap(), 0);
        assert_eq!(parse_array(b"[0:1]={1,2}", |_| Ok(())).unwrap(), 2);
        assert!(
            parse_array(b"{{1,2},{3,4}}", |_| Ok(()))
                .unwrap_err()
                .contains("multi-dimensional")
        );
    }

    #[test]
    fn list_builder_produces_list_array() {
        let field = Arc::new(Field::new("element", DataType::Int32, true));
        let mut b = ColumnBuilder::new(
            &PgKind::Array(Box::new(PgKind::Int4)),
            &DataType::List(field),
        );
        b.append_text(b"{1,2}").unwrap();
        b.append_null();
        b.append_text(b"{}").unwrap();
        let a = b.finish();
        let l = a.as_list::<i32>();
        assert_eq!(l.len(), 3);
        assert!(l.is_null(1));
        assert_eq!(
            l.value(0).as_primitive::<Int32Type>().values().to_vec(),
            vec![1, 2]
        );
    }
}
