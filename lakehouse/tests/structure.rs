//! The crate's modules depend on each other in one direction only: no module reaches
//! (through `crate::` paths) a module that reaches it back. Read from the source itself, so a
//! new circle fails here rather than in a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Items `lib.rs` re-exports at the crate root, and the module each comes from.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("BronzeSink", "bronze"),
    ("MedallionSink", "medallion"),
    ("SilverSink", "silver"),
    ("ChangeLogSchema", "schema"),
    ("ColumnType", "schema"),
    ("SourceColumn", "schema"),
    ("ChangeSink", "sink"),
    ("DiscardSink", "sink"),
    ("TableProgress", "sink"),
    ("MemoryBudget", "memory"),
    ("LakehouseError", "error"),
    ("Result", "error"),
    ("Retry", "catalog"),
];

/// The module a source file belongs to (its top-level name as the crate exports it).
fn module_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [f] if f == "lib" => None,
        [f] => Some(f.clone()),
        // `write/`, `read/`, `table_files/` only group modules; their mod.rs declares them.
        [group, m] if ["write", "read", "table_files"].contains(&group.as_str()) => {
            (m != "mod").then(|| m.clone())
        }
        [group, m, ..] if ["write", "read", "table_files"].contains(&group.as_str()) => {
            Some(m.clone())
        }
        [m, ..] => Some(m.clone()),
        [] => None,
    }
}

/// The modules `text` names through `crate::` paths.
fn references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or("").to_string())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![rest[..end].to_string()]
        };
        for n in names.into_iter().filter(|n| !n.is_empty()) {
            let module = ROOT_ITEMS
                .iter()
                .find(|(item, _)| *item == n)
                .map(|(_, m)| m.to_string())
                .unwrap_or(n);
            out.insert(module);
        }
    }
    out
}

fn walk(dir: &Path, root: &Path, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, root, graph);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let Some(module) = module_of(path.strip_prefix(root).unwrap()) else {
                continue;
            };
            let refs = references(&std::fs::read_to_string(&path).unwrap());
            let edges = graph.entry(module.clone()).or_default();
            edges.extend(refs.into_iter().filter(|r| *r != module));
        }
    }
}

/// A circle through `start`, if any (as the modules along it).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                let mut found = path.clone();
                found.push(start.to_string());
                return Some(found);
            }
            if graph.contains_key(next) && seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    walk(&root, &root, &mut graph);
    // The walk must have found the crate's parts, or this test proves nothing.
    for m in [
        "bronze",
        "silver",
        "medallion",
        "query",
        "pk_index",
        "maintenance",
    ] {
        assert!(graph.contains_key(m), "module {m} not found: {graph:?}");
    }
    assert!(
        graph["medallion"].contains("bronze") && graph["silver"].contains("pk_index"),
        "references not read: {graph:?}"
    );
    let circles: Vec<Vec<String>> = graph.keys().filter_map(|m| circle(&graph, m)).collect();
    assert!(
        circles.is_empty(),
        "modules importing each other: {}",
        circles
            .iter()
            .map(|c| c.join(" → "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_reader_finds_braced_and_root_imports() {
    let refs = references(
        "use crate::{ChangeLogSchema, bronze::X, LakehouseError};\n// crate::silver\nlet x = crate::query::f();",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["bronze", "error", "query", "schema"]
    );
}
