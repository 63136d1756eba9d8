//! The modules of every crate import one another without circles: among
//! the modules of one directory (the children of one parent), none reaches
//! back to itself through `super::` (or, at a crate's root, `crate::`)
//! imports. A child using its parent's items is not an edge here (that is
//! how Rust modules share), and test modules are left out. A circle makes
//! two modules one unit that cannot be read, tested or moved apart; when
//! this fails, move what both need into a leaf module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATE_SOURCES: [&str; 7] = [
    "api/src",
    "certs/src",
    "control-plane/src",
    "data-plane/src",
    "data-plane/plan/src",
    "meshctl/src",
    "tests/src",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A module's source without comment lines and without its tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// All the code of a module: its file, or its directory's files.
fn module_code(dir: &Path, name: &str) -> String {
    let file = dir.join(format!("{name}.rs"));
    if file.exists() {
        let mut out = code(&file);
        // A `name.rs` may have children in `name/`.
        if dir.join(name).is_dir() {
            out.push_str(&tree_code(&dir.join(name)));
        }
        return out;
    }
    tree_code(&dir.join(name))
}

fn tree_code(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&tree_code(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&code(&path));
        }
    }
    out
}

/// The identifiers that follow `prefix` in `code`, including those in a
/// `prefix{a, b::c}` group.
fn referenced(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                out.insert(ident(part.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The sibling modules of `dir` (a crate root or a module directory).
fn siblings(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let module_dir = path.is_dir() && path.join("mod.rs").exists();
        let module_file = path.extension().is_some_and(|e| e == "rs")
            && !["mod", "lib", "main"].contains(&name.as_str());
        if module_dir || module_file {
            out.insert(name);
        }
    }
    out
}

/// Every circle among the siblings of `dir` and of the directories below.
fn circles(dir: &Path, crate_root: bool, found: &mut Vec<String>) {
    let modules = siblings(dir);
    let prefix = if crate_root { "crate::" } else { "super::" };
    let graph: BTreeMap<&String, BTreeSet<String>> = modules
        .iter()
        .map(|m| {
            let uses = referenced(&module_code(dir, m), prefix)
                .into_iter()
                .filter(|d| d != m && modules.contains(d))
                .collect();
            (m, uses)
        })
        .collect();
    for start in &modules {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in &graph[&at] {
                if next == start {
                    found.push(format!(
                        "{}: {} -> {start}",
                        dir.display(),
                        path.join(" -> ")
                    ));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            circles(&path, false, found);
        }
    }
}

#[test]
fn no_module_imports_itself_back_through_its_siblings() {
    let mut found = Vec::new();
    for src in CRATE_SOURCES {
        circles(&repo().join(src), true, &mut found);
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    write("a.rs", "use crate::b::B;\n");
    write("b.rs", "use crate::{c::C, x};\n");
    write("c.rs", "// use crate::a::A; (a comment)\npub struct C;\n");
    let mut found = Vec::new();
    circles(dir.path(), true, &mut found);
    assert!(found.is_empty(), "{found:?}");
    write("c.rs", "pub struct C(crate::a::A);\n");
    circles(dir.path(), true, &mut found);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].ends_with("a -> b -> c -> a"), "{found:?}");
}
