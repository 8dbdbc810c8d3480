//! No module of any crate of the workspace imports, directly or through
//! others, a module that imports it back (issue 10: the import circles
//! around the old `node.rs`). The graph is read from the sources: a module
//! is a file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`), and it depends on
//! every module it names by a `crate::` or `super::` path. The crate root
//! (`lib.rs`, `main.rs`) only declares and re-exports, and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> `["a", "b"]`; `src/a/mod.rs` -> `["a"]`; roots -> `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// The module paths a file names: `crate::a::b::Item` -> `a::b::Item`,
/// `super::x` -> the parent's `x`.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue; // e.g. `esc_crate::`, the inner `super::` of a chain
            }
            let mut path = base.clone();
            let mut s = rest;
            while let Some(t) = s.strip_prefix("super::") {
                path.pop();
                s = t;
            }
            loop {
                let seg: String = s
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if seg.is_empty() {
                    // `crate::{a, b}`: each group member is a path.
                    if let Some(group) = s.strip_prefix('{') {
                        let end = group.find('}').unwrap_or(group.len());
                        for member in group[..end].split(',') {
                            let m: String = member
                                .trim()
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            if !m.is_empty() {
                                let mut p = path.clone();
                                p.push(m);
                                out.push(p);
                            }
                        }
                    }
                    break;
                }
                path.push(seg.clone());
                s = &s[seg.len()..];
                match s.strip_prefix("::") {
                    Some(t) => s = t,
                    None => break,
                }
            }
            out.push(path);
        }
    }
    out
}

fn check_crate(src: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .filter(|(m, _)| !m.is_empty())
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, f) in &modules {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for r in references(m, &text) {
            // The longest prefix that is a module of this crate.
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| modules.contains_key(p));
            if let Some(t) = target {
                // A module may name its own descendants.
                if &t != m && !t.starts_with(m) {
                    edges.entry(m.clone()).or_default().insert(t);
                }
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Result<(), String> {
        match state.get(m) {
            Some(2) => return Ok(()),
            Some(1) => {
                let from = stack.iter().position(|s| s == m).unwrap_or(0);
                let cycle: Vec<String> = stack[from..]
                    .iter()
                    .chain(std::iter::once(m))
                    .map(|p| p.join("::"))
                    .collect();
                return Err(cycle.join(" -> "));
            }
            _ => {}
        }
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for t in edges.get(m).into_iter().flatten() {
            visit(t, edges, state, stack)?;
        }
        stack.pop();
        state.insert(m.clone(), 2);
        Ok(())
    }
    let mut state = BTreeMap::new();
    for m in modules.keys() {
        visit(m, &edges, &mut state, &mut Vec::new())
            .map_err(|c| format!("{}: import cycle {c}", src.display()))?;
    }
    Ok(())
}

#[test]
fn no_crate_has_an_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut crates = Vec::new();
    for dir in ["crates", "bins"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path().join("src").is_dir() {
                crates.push(e.path().join("src"));
            }
        }
    }
    assert!(
        crates.len() >= 10,
        "found the workspace's crates: {crates:?}"
    );
    let failures: Vec<String> = crates.iter().filter_map(|c| check_crate(c).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::c::Thing;").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod c;").unwrap();
    std::fs::write(
        src.join("b/c.rs"),
        "use crate::{a, b};\nfn f() { super::super::a::x(); }",
    )
    .unwrap();
    let e = check_crate(&src).unwrap_err();
    assert!(e.contains("a -> b::c -> a"), "{e}");
    std::fs::write(
        src.join("b/c.rs"),
        "// crate::a is named in a comment only\n",
    )
    .unwrap();
    check_crate(&src).unwrap();
}
