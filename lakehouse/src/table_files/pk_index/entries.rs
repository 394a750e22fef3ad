//! The index's storage: key → rows in hash tables split into shards, with keys stored
//! compactly (the values of fixed-width key columns without their null bytes) wherever the
//! key allows.
//!
//! Why shards: one hash table of tens of millions of entries doubles in one step, holding
//! the old and the new table at once (1.5 times its size for a moment, the peak of a large
//! copy). 256 tables of a 256th each grow one at a time, so the index's peak is its size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Loc;

/// A fast, randomly seeded hash for the index's maps (keys come from the source: not
/// attacker-chosen in a way SipHash would defend against better than a random seed).
pub(crate) type Hasher = foldhash::fast::RandomState;

/// Number of shards (a power of two).
const SHARDS: usize = 256;

/// Which shard holds a hash: bits the tables themselves do not use (they take a bucket from
/// the low bits and a tag from the top seven).
fn shard(hash: u64) -> usize {
    (hash >> 40) as usize & (SHARDS - 1)
}

/// Key → live rows, for one key representation. A key has its single row in `one`, or, in a
/// table keyed by all its columns where equal rows repeat, several rows in `many`.
#[derive(Debug)]
pub(super) struct Entries<K> {
    one: Vec<HashTable<(K, Loc)>>,
    many: HashMap<K, Vec<Loc>, Hasher>,
    hasher: Hasher,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            one: (0..SHARDS).map(|_| HashTable::new()).collect(),
            many: HashMap::default(),
            hasher: Hasher::default(),
        }
    }
}

impl<K: Hash + Eq> Entries<K> {
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get<Q>(&self, key: &Q) -> Vec<Loc>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let h = self.hash(key);
        if let Some((_, l)) = self.one[shard(h)].find(h, |(k, _)| k.borrow() == key) {
            return vec![*l];
        }
        self.many.get(key).cloned().unwrap_or_default()
    }

    /// Removes every row of `key`; returns how many it had.
    fn take(&mut self, key: &K, h: u64) -> usize {
        match self.one[shard(h)].find_entry(h, |(k, _)| k == key) {
            Ok(e) => {
                e.remove();
                1
            }
            Err(_) => self.many.remove(key).map_or(0, |v| v.len()),
        }
    }

    fn insert_one(&mut self, key: K, loc: Loc, h: u64) {
        let hasher = &self.hasher;
        self.one[shard(h)].insert_unique(h, (key, loc), |(k, _)| hasher.hash_one(k));
    }

    /// Replaces the rows of `key`; returns how many it had.
    pub(super) fn set(&mut self, key: K, mut locs: Vec<Loc>) -> usize {
        let h = self.hash(&key);
        let removed = self.take(&key, h);
        match locs.len() {
            0 => {}
            1 => self.insert_one(key, locs[0], h),
            _ => {
                locs.shrink_to_fit();
                self.many.insert(key, locs);
            }
        }
        removed
    }

    pub(super) fn push(&mut self, key: K, loc: Loc) {
        if !self.many.is_empty()
            && let Some(v) = self.many.get_mut(&key)
        {
            v.push(loc);
            return;
        }
        let h = self.hash(&key);
        let hasher = &self.hasher;
        match self.one[shard(h)].entry(h, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(e) => {
                let ((key, first), _) = e.remove();
                self.many.insert(key, vec![first, loc]);
            }
            Entry::Vacant(e) => {
                e.insert((key, loc));
            }
        }
    }

    /// Removes row `loc` of `key`; false when the key does not have it.
    pub(super) fn remove(&mut self, key: &K, loc: Loc) -> bool
    where
        K: Clone,
    {
        let h = self.hash(key);
        if let Ok(e) = self.one[shard(h)].find_entry(h, |(k, l)| k == key && *l == loc) {
            e.remove();
            return true;
        }
        let Some(v) = self.many.get_mut(key) else {
            return false;
        };
        let Some(i) = v.iter().position(|l| *l == loc) else {
            return false;
        };
        v.remove(i);
        if v.len() == 1 {
            let last = v[0];
            self.many.remove(key);
            self.insert_one(key.clone(), last, h);
        }
        true
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &[Loc])> + Send + '_
    where
        K: Sync,
    {
        self.one
            .iter()
            .flat_map(|t| t.iter().map(|(k, l)| (k, std::slice::from_ref(l))))
            .chain(self.many.iter().map(|(k, v)| (k, v.as_slice())))
    }

    /// Bytes of the hash tables (each bucket: key, rows, one control byte) and row lists.
    pub(super) fn table_bytes(&self) -> usize {
        // `capacity` is 7/8 of the buckets (a power of two) from 8 buckets up.
        let buckets = |cap: usize| match cap {
            0 => 0,
            1..=3 => 4,
            4..=7 => 8,
            c => (c * 8).div_ceil(7).next_power_of_two(),
        };
        let one: usize = self
            .one
            .iter()
            .map(|t| buckets(t.capacity()) * (std::mem::size_of::<(K, Loc)>() + 1))
            .sum();
        let many = buckets(self.many.capacity()) * (std::mem::size_of::<(K, Vec<Loc>)>() + 1)
            + self
                .many
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<Loc>())
                .sum::<usize>();
        one + many
    }
}

/// How a key of fixed-width columns is stored compactly: the encoded width of each column
/// (its null byte, then its value). A key with a null in it has no compact form.
#[derive(Debug, Clone)]
pub(super) struct Compact {
    widths: Vec<usize>,
    encoded: usize,
}

/// A key's row encoding rebuilt from its compact form, on the stack.
pub(super) struct Expanded {
    bytes: [u8; 2 * WIDEST],
    len: usize,
}

impl AsRef<[u8]> for Expanded {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The widest compact key (bytes of values without null bytes).
pub(super) const WIDEST: usize = 16;

/// The null byte the row encoding gives a present value (`arrow::row`, nulls first).
const PRESENT: u8 = 1;

impl Compact {
    /// The compact layout of keys whose columns encode to `widths` bytes each (null byte
    /// included), if their values fit `WIDEST` bytes.
    pub(super) fn new(widths: Vec<usize>) -> Option<Self> {
        let values: usize = widths.iter().map(|w| w - 1).sum();
        (values <= WIDEST && widths.iter().all(|&w| w >= 2)).then(|| Self {
            encoded: widths.iter().sum(),
            widths,
        })
    }

    /// Bytes of the values alone.
    pub(super) fn values(&self) -> usize {
        self.encoded - self.widths.len()
    }

    /// The values of `key` (a row encoding of this layout) without their null bytes; none
    /// when the key has a null or another shape.
    pub(super) fn pack<const N: usize>(&self, key: &[u8]) -> Option<[u8; N]> {
        if key.len() != self.encoded {
            return None;
        }
        let mut out = [0u8; N];
        let (mut from, mut to) = (0, 0);
        for &w in &self.widths {
            if key[from] != PRESENT {
                return None;
            }
            out[to..to + w - 1].copy_from_slice(&key[from + 1..from + w]);
            from += w;
            to += w - 1;
        }
        Some(out)
    }

    /// The row encoding of a packed key.
    pub(super) fn unpack(&self, packed: &[u8]) -> Expanded {
        let mut out = Expanded {
            bytes: [0u8; 2 * WIDEST],
            len: self.encoded,
        };
        let (mut from, mut to) = (0, 0);
        for &w in &self.widths {
            out.bytes[to] = PRESENT;
            out.bytes[to + 1..to + w].copy_from_slice(&packed[from..from + w - 1]);
            from += w - 1;
            to += w;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pos: u32) -> Loc {
        Loc { file: 1, pos }
    }

    /// A key with two rows moves to `many`; losing one moves it back to `one`, where a
    /// later push finds it again; a row the key lacks is not removed.
    #[test]
    fn a_key_moves_between_one_and_many_rows() {
        let mut e: Entries<[u8; 8]> = Entries::default();
        let k = 42u64.to_le_bytes();
        e.push(k, loc(1));
        assert!(e.many.is_empty());
        e.push(k, loc(2));
        assert_eq!(e.many.len(), 1);
        assert_eq!(e.get(&k), vec![loc(1), loc(2)]);

        assert!(!e.remove(&k, loc(3)), "a row the key does not have");
        assert!(e.remove(&k, loc(1)));
        assert!(
            e.many.is_empty(),
            "one row left: back in the single-row tables"
        );
        assert_eq!(e.get(&k), vec![loc(2)]);
        assert!(!e.remove(&k, loc(1)), "removed twice");

        e.push(k, loc(4));
        assert_eq!(e.get(&k), vec![loc(2), loc(4)]);
        assert_eq!(e.set(k, vec![loc(5)]), 2);
        assert!(e.many.is_empty());
        assert!(e.remove(&k, loc(5)));
        assert!(e.get(&k).is_empty());
        assert_eq!(e.iter().count(), 0);
    }
}
