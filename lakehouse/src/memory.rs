//! The memory the writers may hold (`--memory-limit`), split between their buffers.
//!
//! Nothing the ingester keeps grows with a table's size except silver's key index (see
//! [`crate::pk_index`] for its per-row cost): the initial copy commits in pieces, silver
//! spills a large source transaction to local scratch files, and silver's catch-up sorts
//! the change log within a bounded query pool that spills too.

use std::fmt;
use std::str::FromStr;

/// A memory limit in bytes, and the share each buffer gets of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: usize,
    copy_piece: Option<usize>,
    silver_pending: Option<usize>,
}

impl Default for MemoryBudget {
    /// 1 GiB: leaves room for the runtime and the key index in a 2 GiB container.
    fn default() -> Self {
        Self::new(1 << 30)
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes (at least 64 MiB: below that the buffers cannot work).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(64 << 20),
            copy_piece: None,
            silver_pending: None,
        }
    }

    /// Sets the copy's piece size instead of deriving it (tests use tiny pieces).
    pub fn with_copy_piece_bytes(mut self, bytes: usize) -> Self {
        self.copy_piece = Some(bytes);
        self
    }

    /// Sets silver's in-memory share instead of deriving it (tests make every commit spill).
    pub fn with_silver_pending_bytes(mut self, bytes: usize) -> Self {
        self.silver_pending = Some(bytes);
        self
    }

    /// The whole limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Change rows (Arrow bytes) the initial copy hands over before committing a piece.
    pub fn copy_piece_bytes(&self) -> usize {
        self.copy_piece.unwrap_or(self.limit / 4)
    }

    /// Change rows (Arrow bytes) silver keeps in memory per table before spilling them.
    pub fn silver_pending_bytes(&self) -> usize {
        self.silver_pending.unwrap_or(self.limit / 8)
    }

    /// Memory a query the ingester runs (silver's catch-up) may use before it spills.
    pub fn query_bytes(&self) -> usize {
        self.limit / 4
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.limit >> 20)
    }
}

/// A size that is not a number of bytes with an optional unit.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a size: write bytes or a number with KiB, MiB, GiB (or K, M, G, KB, MB, GB)")]
pub struct BadSize(String);

impl FromStr for MemoryBudget {
    type Err = BadSize;

    /// `1073741824`, `1024MiB`, `1GiB`, `1.5G`, `512M`.
    fn from_str(s: &str) -> Result<Self, BadSize> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| BadSize(s.to_string()))?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" | "kib" => 1024.0,
            "m" | "mb" | "mib" => 1024.0 * 1024.0,
            "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
            _ => return Err(BadSize(s.to_string())),
        };
        let bytes = num * mult;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(BadSize(s.to_string()));
        }
        Ok(Self::new(bytes as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!("1GiB".parse::<MemoryBudget>().unwrap().limit(), 1 << 30);
        assert_eq!("512M".parse::<MemoryBudget>().unwrap().limit(), 512 << 20);
        assert_eq!("1.5g".parse::<MemoryBudget>().unwrap().limit(), 3 << 29);
        assert_eq!(
            "134217728".parse::<MemoryBudget>().unwrap().limit(),
            128 << 20
        );
        // Too small a limit is raised to the floor the buffers need.
        assert_eq!("1k".parse::<MemoryBudget>().unwrap().limit(), 64 << 20);
        for bad in ["", "GiB", "12 parsecs", "-1G", "1..2M"] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad:?} parsed");
        }
    }
}
