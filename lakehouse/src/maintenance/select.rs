//! Which files one compaction run rewrites: a pure decision over file sizes, row counts and
//! deleted-row counts, so it can be tested without a table.
//!
//! A data file is worth rewriting when enough of it is deleted (every read pays for the
//! deleted rows and the delete files naming them) or when it is one of many small files of a
//! partition (every read pays a request and a footer per file). Each run rewrites at most
//! `max_rewrite_bytes` of data, the most deleted files first, so the data it reads and
//! writes is bounded whatever the table's size (what is left waits for the next run); it
//! still reads every live delete file once, so that part grows with the deletes not yet
//! compacted away.
//! A delete file goes when every data file it names is gone or rewritten; when too many
//! remain, they are merged into one per partition (a cheap rewrite of deletes only).

use std::collections::{HashMap, HashSet};

use iceberg::spec::Struct;

use super::MaintenanceOptions;

/// A partition of one partition spec: files of different ones are never written together.
pub(crate) type PartitionOf = (i32, Struct);

/// A live data file as compaction sees it.
#[derive(Debug, Clone)]
pub(crate) struct DataCandidate {
    /// Its partition.
    pub partition: PartitionOf,
    /// Bytes on storage.
    pub bytes: u64,
    /// Rows it holds.
    pub rows: u64,
    /// Rows of it that live delete files remove.
    pub deleted: u64,
}

impl DataCandidate {
    fn deleted_ratio(&self) -> f64 {
        if self.rows == 0 {
            1.0
        } else {
            self.deleted.min(self.rows) as f64 / self.rows as f64
        }
    }

    /// Bytes the rewrite reads: nothing for a file whose every row is deleted (it is only
    /// dropped).
    fn cost(&self) -> u64 {
        if self.deleted >= self.rows {
            0
        } else {
            self.bytes
        }
    }
}

/// A live position-delete file as compaction sees it.
#[derive(Debug, Clone)]
pub(crate) struct DeleteCandidate {
    /// Its partition.
    pub partition: PartitionOf,
    /// Numbers (into the data candidates) of the live data files it names (files it names
    /// that are no longer live are left out: its deletes of them do nothing).
    pub targets: HashSet<usize>,
}

/// What one run does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Data files (numbers into the candidates) to rewrite, grouped by partition.
    pub groups: Vec<(PartitionOf, Vec<usize>)>,
    /// Delete files (numbers into the delete candidates) dropped because every file they
    /// name is rewritten or gone.
    pub drop_deletes: Vec<usize>,
    /// Delete files merged into one new delete file per partition (their deletes of
    /// files not rewritten are carried over).
    pub merge_deletes: Vec<usize>,
}

impl Selection {
    /// Whether the run does nothing.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.drop_deletes.is_empty() && self.merge_deletes.is_empty()
    }

    /// The data files rewritten.
    pub fn rewritten(&self) -> impl Iterator<Item = usize> + '_ {
        self.groups
            .iter()
            .flat_map(|(_, files)| files.iter().copied())
    }
}

/// Decides one compaction run over `data` and `deletes` under `opts`.
pub(crate) fn select(
    data: &[DataCandidate],
    deletes: &[DeleteCandidate],
    opts: &MaintenanceOptions,
) -> Selection {
    // Files deleted enough, most deleted first; then small files of crowded partitions.
    let mut deleted: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].deleted > 0 && data[i].deleted_ratio() >= opts.delete_ratio)
        .collect();
    deleted.sort_by(|&a, &b| {
        data[b]
            .deleted_ratio()
            .total_cmp(&data[a].deleted_ratio())
            .then(a.cmp(&b))
    });
    let mut small: HashMap<&PartitionOf, Vec<usize>> = HashMap::new();
    for (i, f) in data.iter().enumerate() {
        if f.bytes < opts.small_file_bytes && f.deleted == 0 {
            small.entry(&f.partition).or_default().push(i);
        }
    }
    let mut small: Vec<Vec<usize>> = small
        .into_values()
        .filter(|files| files.len() >= opts.min_small_files.max(2))
        .collect();
    small.sort();

    let mut chosen: Vec<usize> = Vec::new();
    let mut spent: u64 = 0;
    let budget = opts.max_rewrite_bytes.max(1);
    for i in deleted {
        let cost = data[i].cost();
        if spent > 0 && spent.saturating_add(cost) > budget {
            continue; // a cheaper one (a wholly deleted file) may still fit
        }
        spent = spent.saturating_add(cost);
        chosen.push(i);
    }
    for files in small {
        // Smallest first, so a partly used budget still merges as many files as it can.
        let mut files = files;
        files.sort_by_key(|&i| (data[i].bytes, i));
        let mut taken = Vec::new();
        for i in files {
            if spent > 0 && spent.saturating_add(data[i].bytes) > budget {
                break;
            }
            spent = spent.saturating_add(data[i].bytes);
            taken.push(i);
        }
        if taken.len() >= 2 {
            chosen.extend(taken);
        } else {
            // One small file alone gains nothing: give its share back.
            spent -= taken.iter().map(|&i| data[i].bytes).sum::<u64>();
        }
    }

    let mut by_part: HashMap<&PartitionOf, Vec<usize>> = HashMap::new();
    for &i in &chosen {
        by_part.entry(&data[i].partition).or_default().push(i);
    }
    let mut groups: Vec<(PartitionOf, Vec<usize>)> = by_part
        .into_iter()
        .map(|(p, mut files)| {
            files.sort_unstable();
            (p.clone(), files)
        })
        .collect();
    groups.sort_by(|a, b| a.1.cmp(&b.1));

    let rewritten: HashSet<usize> = chosen.iter().copied().collect();
    let mut drop_deletes = Vec::new();
    let mut kept = Vec::new();
    for (d, del) in deletes.iter().enumerate() {
        if del.targets.iter().all(|t| rewritten.contains(t)) {
            drop_deletes.push(d);
        } else {
            kept.push(d);
        }
    }
    // Too many delete files left: merge them (per partition, only where there is more than one).
    let mut merge_deletes = Vec::new();
    if kept.len() >= opts.max_delete_files.max(2) {
        let mut per_part: HashMap<&PartitionOf, Vec<usize>> = HashMap::new();
        for &d in &kept {
            per_part.entry(&deletes[d].partition).or_default().push(d);
        }
        for files in per_part.into_values().filter(|f| f.len() > 1) {
            merge_deletes.extend(files);
        }
        merge_deletes.sort_unstable();
    }
    Selection {
        groups,
        drop_deletes,
        merge_deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn file(part: i32, mb: u64, rows: u64, deleted: u64) -> DataCandidate {
        DataCandidate {
            partition: (
                0,
                Struct::from_iter([Some(iceberg::spec::Literal::int(part))]),
            ),
            bytes: mb * MB,
            rows,
            deleted,
        }
    }

    fn del(part: i32, targets: &[usize]) -> DeleteCandidate {
        DeleteCandidate {
            partition: (
                0,
                Struct::from_iter([Some(iceberg::spec::Literal::int(part))]),
            ),
            targets: targets.iter().copied().collect(),
        }
    }

    fn opts() -> MaintenanceOptions {
        MaintenanceOptions {
            small_file_bytes: 32 * MB,
            min_small_files: 3,
            delete_ratio: 0.2,
            max_rewrite_bytes: 1024 * MB,
            max_delete_files: 4,
            ..MaintenanceOptions::default()
        }
    }

    #[test]
    fn a_file_is_rewritten_only_once_enough_of_it_is_deleted() {
        let data = [
            file(1, 100, 1000, 199),
            file(1, 100, 1000, 200),
            file(1, 100, 1000, 0),
        ];
        let deletes = [del(1, &[0, 1])];
        let s = select(&data, &deletes, &opts());
        assert_eq!(s.rewritten().collect::<Vec<_>>(), [1]);
        // The delete file still names file 0, which stays: it is kept.
        assert!(s.drop_deletes.is_empty());
        assert!(s.merge_deletes.is_empty());
    }

    #[test]
    fn a_delete_file_goes_once_every_file_it_names_is_rewritten() {
        let data = [
            file(1, 100, 1000, 500),
            file(1, 100, 1000, 300),
            file(1, 100, 1000, 10),
        ];
        let deletes = [del(1, &[0]), del(1, &[0, 1]), del(1, &[1, 2]), del(1, &[])];
        let s = select(&data, &deletes, &opts());
        assert_eq!(s.rewritten().collect::<Vec<_>>(), [0, 1]);
        // Naming only rewritten files, or only files already gone: dropped.
        assert_eq!(s.drop_deletes, [0, 1, 3]);
    }

    #[test]
    fn the_budget_bounds_a_run_most_deleted_first_and_wholly_deleted_files_are_free() {
        let data = [
            file(1, 600, 1000, 300),
            file(1, 600, 1000, 900),
            file(1, 600, 1000, 500),
            file(1, 900, 1000, 1000),
        ];
        let s = select(&data, &[], &opts());
        // 1 (90%) fits; 2 (50%) would exceed 1 GiB; 0 neither; 3 costs nothing to drop.
        assert_eq!(s.rewritten().collect::<Vec<_>>(), [1, 3]);
        // A single file larger than the budget is still taken, alone.
        let big = [file(1, 5000, 1000, 800)];
        assert_eq!(select(&big, &[], &opts()).rewritten().count(), 1);
    }

    #[test]
    fn small_files_are_merged_per_partition_only_when_crowded() {
        let data = [
            file(1, 1, 10, 0),
            file(1, 2, 10, 0),
            file(1, 3, 10, 0),
            file(2, 1, 10, 0),
            file(2, 1, 10, 0),
            file(2, 100, 10, 0),
        ];
        let s = select(&data, &[], &opts());
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].1, [0, 1, 2]);
        assert!(select(&data[3..], &[], &opts()).is_empty());
    }

    #[test]
    fn many_remaining_delete_files_are_merged_per_partition() {
        let data = [file(1, 100, 1000, 5), file(2, 100, 1000, 5)];
        let mut deletes: Vec<_> = (0..4).map(|_| del(1, &[0])).collect();
        deletes.push(del(2, &[1]));
        let s = select(&data, &deletes, &opts());
        assert!(s.groups.is_empty());
        // Partition 2 has one delete file: nothing to merge there.
        assert_eq!(s.merge_deletes, [0, 1, 2, 3]);
        assert!(select(&data, &deletes[..3], &opts()).is_empty());
    }
}
