//! Who may read and write which tables: globs over `namespace.table`, checked in one place
//! for every door.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::RoleConfig;

/// One grant pattern (`silver.*`, `*`, `gold.daily_revenue`).
#[derive(Debug, Clone)]
pub struct Glob(globset::Glob);

impl Glob {
    /// Parses a grant; `*` matches any run of characters, dots included.
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        GlobBuilder::new(pattern)
            .literal_separator(false)
            .case_insensitive(false)
            .build()
            .map(Glob)
    }
}

/// What one role may do.
#[derive(Debug, Clone)]
pub struct Grants {
    read: GlobSet,
    write: GlobSet,
    /// The namespace part of each read and write grant (`silver` of `silver.*`, `*` of `*`).
    read_namespaces: GlobSet,
    write_namespaces: GlobSet,
}

/// The part of a grant that names namespaces: up to its first dot (all of it without one).
fn namespace_part(pattern: &str) -> &str {
    pattern.split_once('.').map_or(pattern, |(ns, _)| ns)
}

impl Grants {
    /// The grants of `role` (its patterns were checked when the configuration was loaded).
    pub fn of(role: &RoleConfig) -> Result<Self, globset::Error> {
        let set = |patterns: &[String]| -> Result<GlobSet, globset::Error> {
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                b.add(Glob::new(p)?.0);
            }
            b.build()
        };
        let parts = |patterns: &[String]| -> Vec<String> {
            patterns
                .iter()
                .map(|p| namespace_part(p).to_string())
                .collect()
        };
        Ok(Self {
            read: set(&role.read)?,
            write: set(&role.write)?,
            read_namespaces: set(&parts(&role.read))?,
            write_namespaces: set(&parts(&role.write))?,
        })
    }

    /// Whether some grant may cover tables of `namespace`, so the namespace is shown to
    /// the role (REST catalog listings); its tables are still checked one by one.
    pub fn can_see_namespace(&self, namespace: &str) -> bool {
        self.read_namespaces.is_match(namespace) || self.write_namespaces.is_match(namespace)
    }

    /// Whether `namespace` may be created, changed or dropped: some write grant covers it.
    pub fn can_write_namespace(&self, namespace: &str) -> bool {
        self.write_namespaces.is_match(namespace)
    }

    /// Whether `table` (`namespace.table`) may be read.
    pub fn can_read(&self, table: &str) -> bool {
        self.read.is_match(table)
    }

    /// Whether `table` (`namespace.table`) may be created or written (REST catalog).
    pub fn can_write(&self, table: &str) -> bool {
        self.write.is_match(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(read: &[&str], write: &[&str]) -> Grants {
        Grants::of(&RoleConfig {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn globs_match_whole_names() {
        let g = grants(&["silver.*", "gold.daily_*"], &["sandbox.*"]);
        assert!(g.can_read("silver.orders"));
        assert!(g.can_read("gold.daily_revenue"));
        assert!(!g.can_read("gold.weekly_top"));
        assert!(!g.can_read("bronze.orders"));
        assert!(!g.can_read("xsilver.orders"), "anchored at the start");
        assert!(!g.can_read("Silver.orders"), "case matters");
        assert!(g.can_write("sandbox.t"));
        assert!(!g.can_write("silver.orders"));
        let all = grants(&["*"], &[]);
        assert!(all.can_read("bronze.orders") && all.can_read("a.b.c"));
        assert!(!all.can_write("sandbox.t"));
        let none = grants(&[], &[]);
        assert!(!none.can_read("silver.orders"));
        assert!(!none.can_see_namespace("silver"));
    }

    #[test]
    fn namespaces_follow_the_namespace_part_of_grants() {
        let g = grants(&["silver.*", "gold.daily_*"], &["sand*.t"]);
        assert!(g.can_see_namespace("silver") && g.can_see_namespace("gold"));
        assert!(
            g.can_see_namespace("sandbox"),
            "write grants show their namespaces"
        );
        assert!(!g.can_see_namespace("bronze"));
        assert!(
            !g.can_see_namespace("silverx"),
            "a namespace part matches whole names"
        );
        assert!(g.can_write_namespace("sandbox") && !g.can_write_namespace("silver"));
        let all = grants(&["*"], &["*"]);
        assert!(all.can_see_namespace("bronze") && all.can_write_namespace("anything"));
    }
}
