//! The worker's modules only point down: no top-level module of `worker/src` reaches, through
//! its `crate::<module>` references (use statements and paths, comments excluded), a module that
//! reaches it back. A cycle fails naming it ("a -> b -> a"), so a shared type goes into a module
//! below both (as the claimed job and its outcome live in `job`) instead of one side importing the
//! other. The layout itself is described at the top of worker/src/lib.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level module a file under `src` belongs to: `actions/http.rs` -> `actions`,
/// `job.rs` -> `job`; `None` for the crate roots (`lib.rs`, `main.rs`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (`//` to the end of the line: doc links such as
/// ``[`crate::tls`]`` name a module without depending on it). A `//` inside a string literal
/// cuts its line short too, which can only hide a reference, never invent one; the worker writes
/// no module path after a URL on the same line.
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` names as `crate::<module>`, including inside grouped imports
/// (`use crate::{a, b::C}`); `$crate::` (a macro's own crate) is not a module reference.
fn references(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if matches!(preceded, Some(c) if c == '$' || c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            // The group's top-level items: the identifier after `{` and after each `,` outside
            // nested braces.
            let mut depth = 0;
            let mut token_start = Some(0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => token_start = Some(i + 1),
                    _ => {}
                }
                if let Some(s) = token_start {
                    let name = ident(group[s..].trim_start());
                    if modules.contains(&name) {
                        found.insert(name);
                    }
                    token_start = None;
                }
            }
        } else {
            let name = ident(after);
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

/// Every cycle's first appearance in a depth-first walk, as "a -> b -> a".
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = path[at..].to_vec();
            // Start each cycle at its smallest module so one loop is reported once.
            let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            found.insert(cycle.join(" -> "));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut found = BTreeSet::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
}

#[test]
fn worker_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    assert!(
        modules.contains("config") && modules.contains("runner"),
        "the walk of {} found no worker modules: {modules:?}",
        src.display()
    );
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("readable source");
        let mut refs = references(&code(&text), &modules);
        refs.remove(&module);
        graph.entry(module).or_default().extend(refs);
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between the worker's modules (a shared type belongs in a module below both \
         sides):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let code = "use crate::a::X;\nuse crate::{b, c::{Y, Z}};\nlet _ = crate::d::f();\n$crate::a();";
    let want: BTreeSet<String> = modules.clone();
    assert_eq!(references(code, &modules), want);
    assert_eq!(references("$crate::a::f()", &modules), BTreeSet::new());
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("b".to_string(), ["a".to_string()].into()),
        ("a".to_string(), ["b".to_string()].into()),
    ]
    .into();
    assert_eq!(cycles(&graph), vec!["a -> b -> a".to_string()]);
}
