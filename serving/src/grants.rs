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
    /// The write grants as written, for namespace-wide decisions.
    write_patterns: Vec<String>,
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
        Ok(Self {
            read: set(&role.read)?,
            write: set(&role.write)?,
            write_patterns: role.write.clone(),
        })
    }

    /// Whether `namespace` itself may be created, changed or dropped: only a grant of the
    /// whole namespace (`sandbox.*`, or `*`) allows it; a grant of some of its tables
    /// (`sandbox.alice_*`) does not.
    pub fn can_write_namespace(&self, namespace: &str) -> bool {
        self.write_patterns
            .iter()
            .any(|p| p == "*" || p.strip_suffix(".*") == Some(namespace))
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
        assert!(!none.can_write_namespace("sandbox"));
    }

    #[test]
    fn only_whole_namespace_grants_change_namespaces() {
        let g = grants(&["*"], &["sandbox.*", "team.alice_*", "{x,y}.*", "s*.*"]);
        assert!(g.can_write_namespace("sandbox"));
        assert!(
            !g.can_write_namespace("team"),
            "a grant of some tables is not the namespace"
        );
        assert!(!g.can_write_namespace("sandbox2") && !g.can_write_namespace("x"));
        assert!(g.can_write("team.alice_1") && g.can_write("x.t"));
        assert!(grants(&[], &["*"]).can_write_namespace("anything"));
    }
}
