//! The crate's modules form layers: no cycle between top-level modules, nor between the
//! submodules of one (a cycle is how a "pure" core quietly comes to depend on its edges).
//! Reads `src/` as text, so it needs nothing but the source; test code is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each non-test source file and its module path (`src/core/route.rs` → `["core", "route"]`).
fn source_files() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(&src).ok()?.with_extension("");
            let module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|c| c != "lib" && c != "main")
                .collect();
            // Test code may depend on anything.
            if module
                .iter()
                .any(|m| m == "tests" || m.ends_with("_tests") || m == "testing")
            {
                return None;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            Some((module, strip_tests_and_comments(&text)))
        })
        .collect()
}

/// The text without `//` comments and without the trailing `#[cfg(test)] mod … { … }`.
fn strip_tests_and_comments(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.ends_with('{'))
        {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module path the text refers to, absolute (`crate::a::b`, `super::c`, `self::d`,
/// and the items of `use crate::{a, b::c}` groups), as path segments.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    let ident = |from: usize| -> (String, usize) {
        let mut end = from;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        (text[from..end].to_string(), end)
    };
    // Reads a path (and a `{…}` group) starting at `at`, pushing each full path.
    fn read_tree(
        text: &str,
        mut at: usize,
        prefix: Vec<String>,
        refs: &mut Vec<Vec<String>>,
        ident: &dyn Fn(usize) -> (String, usize),
    ) -> usize {
        let bytes = text.as_bytes();
        let mut path = prefix;
        loop {
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if at < bytes.len() && bytes[at] == b'{' {
                at += 1;
                loop {
                    at = read_tree(text, at, path.clone(), refs, ident);
                    while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                        at += 1;
                    }
                    match bytes.get(at) {
                        Some(b',') => at += 1,
                        Some(b'}') => return at + 1,
                        _ => return at,
                    }
                    while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                        at += 1;
                    }
                    if bytes.get(at) == Some(&b'}') {
                        return at + 1;
                    }
                }
            }
            let (name, end) = ident(at);
            if name.is_empty() {
                refs.push(path);
                return at;
            }
            path.push(name);
            at = end;
            if text[at..].starts_with("::") {
                at += 2;
            } else {
                refs.push(path);
                return at;
            }
        }
    }
    for (root, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ("self::", module.to_vec()),
    ] {
        let mut from = 0;
        while let Some(found) = text[from..].find(root) {
            let start = from + found;
            // Not the tail of a longer path (`foo::super::`) or an identifier.
            let preceded = text[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            from = start + root.len();
            if preceded {
                continue;
            }
            read_tree(text, from, base.clone(), &mut refs, &ident);
        }
    }
    refs
}

/// A cycle in `graph`, if there is one, as the list of its nodes.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The dependency graphs: between top-level modules, and between the children of each.
fn graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let files = source_files();
    let known: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, text) in &files {
        let Some(top) = module.first() else { continue };
        for r in references(module, text) {
            let Some(other_top) = r.first() else { continue };
            if !known.iter().any(|k| k.first() == Some(other_top)) {
                continue; // an item of the crate root, not a module
            }
            if other_top != top {
                graphs
                    .entry("crate".into())
                    .or_default()
                    .entry(top.clone())
                    .or_default()
                    .insert(other_top.clone());
            } else if let (Some(a), Some(b)) = (module.get(1), r.get(1))
                && a != b
                && known.contains(&vec![top.clone(), b.clone()])
            {
                graphs
                    .entry(top.clone())
                    .or_default()
                    .entry(a.clone())
                    .or_default()
                    .insert(b.clone());
            }
        }
    }
    graphs
}

#[test]
fn modules_have_no_cycles() {
    let graphs = graphs();
    let crate_graph = &graphs["crate"];
    assert!(
        crate_graph.len() > 10,
        "the reader found too few modules to be trusted: {crate_graph:?}"
    );
    for (scope, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            panic!("module cycle in {scope}: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_core_depends_on_no_edge_and_no_config() {
    let graphs = graphs();
    let core = graphs["crate"].get("core").cloned().unwrap_or_default();
    let allowed: BTreeSet<String> = ["crypto", "secret"].map(String::from).into();
    assert!(
        core.is_subset(&allowed),
        "core may use only {allowed:?}, uses {core:?}"
    );
}

#[test]
fn the_reader_sees_cycles_and_use_groups() {
    let module = vec!["a".to_string(), "b".to_string()];
    let refs = references(
        &module,
        "use crate::{x::{y, z}, w};\nuse super::c::D;\nfn f() { crate::v::g(); foo::super::h; }",
    );
    let refs: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    for want in ["x::y", "x::z", "w", "a::c::D", "v::g"] {
        assert!(refs.contains(&want.to_string()), "{want} in {refs:?}");
    }
    assert!(!refs.iter().any(|r| r.contains('h')), "{refs:?}");
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let text = strip_tests_and_comments(
        "use crate::x; // crate::y\n#[cfg(test)]\nmod tests {\nuse crate::z;\n}\n",
    );
    assert!(text.contains("crate::x") && !text.contains("crate::y") && !text.contains("crate::z"));
}
