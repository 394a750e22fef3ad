//! What a Flight SQL ticket or prepared-statement handle carries (this server's own
//! layout, checked when it comes back), and whether a call asks for a consistent read.

use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use tonic::{Request, Status};

use super::status;
use crate::{Result, ServingError};

/// A statement as a ticket or prepared-statement handle carries it: the SQL, whether it
/// reads consistently and, once bound, one row of parameters as an Arrow IPC stream.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Handle {
    pub(super) sql: String,
    pub(super) params: Option<Vec<u8>>,
    pub(super) consistent: bool,
}

/// Marks a handle this server made (and its layout's version).
const HANDLE_MAGIC: &[u8; 4] = b"BVq1";
/// The same layout, for a consistent read.
const CONSISTENT_HANDLE_MAGIC: &[u8; 4] = b"BVc1";

/// The call header asking for a consistent read (`true` or `false`).
pub const CONSISTENT_HEADER: &str = "x-bitvelocity-consistent";

/// Whether `request` asks for a consistent read (`None`: it does not say, and a handle's
/// own choice stands). The header's last value counts: clients such as ADBC add a value
/// each time the option is set instead of replacing it.
#[allow(clippy::result_large_err)]
pub(super) fn wants_consistent<T>(request: &Request<T>) -> Result<Option<bool>, Status> {
    match request
        .metadata()
        .get_all(CONSISTENT_HEADER)
        .iter()
        .next_back()
    {
        None => Ok(None),
        Some(v) => match v.to_str().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Ok("true" | "on" | "1") => Ok(Some(true)),
            Ok("false" | "off" | "0") => Ok(Some(false)),
            _ => Err(Status::invalid_argument(format!(
                "{CONSISTENT_HEADER} takes true or false"
            ))),
        },
    }
}

impl Handle {
    pub(super) fn encode(&self) -> Vec<u8> {
        let params = self.params.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(8 + self.sql.len() + params.len());
        out.extend_from_slice(if self.consistent {
            CONSISTENT_HANDLE_MAGIC
        } else {
            HANDLE_MAGIC
        });
        out.extend_from_slice(&(self.sql.len() as u32).to_le_bytes());
        out.extend_from_slice(self.sql.as_bytes());
        out.extend_from_slice(params);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || ServingError::BadRequest("not a statement handle of this server".into());
        let (consistent, rest) = match bytes.strip_prefix(HANDLE_MAGIC) {
            Some(rest) => (false, rest),
            None => (
                true,
                bytes
                    .strip_prefix(CONSISTENT_HANDLE_MAGIC)
                    .ok_or_else(bad)?,
            ),
        };
        let (len, rest) = rest.split_at_checked(4).ok_or_else(bad)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
        let (sql, params) = rest.split_at_checked(len).ok_or_else(bad)?;
        let sql = std::str::from_utf8(sql).map_err(|_| bad())?.to_string();
        let params = (!params.is_empty()).then(|| params.to_vec());
        Ok(Self {
            sql,
            params,
            consistent,
        })
    }

    /// The bound parameters as values, `$1` first.
    pub(super) fn params(&self) -> Result<Vec<ScalarValue>> {
        let Some(ipc) = &self.params else {
            return Ok(Vec::new());
        };
        let bad =
            |e: &dyn std::fmt::Display| ServingError::BadRequest(format!("bound parameters: {e}"));
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(|e| bad(&e))?;
        let mut rows = Vec::new();
        for batch in reader {
            rows.push(batch.map_err(|e| bad(&e))?);
        }
        let row = parameter_row(&rows)?;
        Ok(row)
    }
}

/// The one row of parameters in `batches` as values, `$1` first.
pub(super) fn parameter_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total != 1 {
        return Err(ServingError::BadRequest(format!(
            "bind exactly one row of parameters to a query (got {total})"
        )));
    }
    let batch = batches
        .iter()
        .find(|b| b.num_rows() == 1)
        .expect("one row among the batches");
    batch
        .columns()
        .iter()
        .map(|c| {
            ScalarValue::try_from_array(c, 0)
                .map_err(|e| ServingError::BadRequest(format!("bound parameters: {e}")))
        })
        .collect()
}

/// One batch as an Arrow IPC stream.
pub(super) fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The handle in `bytes`, reading consistently when the call's header says so or, without
/// the header, when the handle was made to.
#[allow(clippy::result_large_err)]
pub(super) fn handle_from<T>(bytes: &[u8], request: &Request<T>) -> Result<Handle, Status> {
    let mut handle = Handle::decode(bytes).map_err(status)?;
    handle.consistent = wants_consistent(request)?.unwrap_or(handle.consistent);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_handle_round_trips_and_foreign_bytes_are_refused() {
        let plain = Handle {
            sql: "SELECT 1".into(),
            params: None,
            consistent: false,
        };
        assert_eq!(Handle::decode(&plain.encode()).unwrap(), plain);
        let consistent = Handle {
            consistent: true,
            ..plain.clone()
        };
        assert_eq!(Handle::decode(&consistent.encode()).unwrap(), consistent);
        assert_ne!(consistent.encode(), plain.encode());
        let batch = RecordBatch::try_from_iter([(
            "$1",
            Arc::new(arrow::array::Int64Array::from(vec![7])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let bound = Handle {
            sql: "SELECT $1".into(),
            params: Some(ipc_bytes(&batch).unwrap()),
            consistent: true,
        };
        let back = Handle::decode(&bound.encode()).unwrap();
        assert_eq!(back, bound);
        assert_eq!(back.params().unwrap(), vec![ScalarValue::Int64(Some(7))]);
        for bad in [
            &b""[..],
            b"BVq1",
            b"BVq1\xff\xff\xff\xffSELECT",
            b"XXXX\x01\x00\x00\x00S",
        ] {
            assert!(Handle::decode(bad).is_err(), "{bad:?}");
        }
        // Garbage where the parameters go is a bad request, not a panic.
        let junk = Handle {
            sql: "SELECT $1".into(),
            params: Some(b"not arrow".to_vec()),
            consistent: false,
        };
        assert!(Handle::decode(&junk.encode()).unwrap().params().is_err());
    }
}
