//! The stages of `host/src/` import only what `docs/architecture.md` allows, and nothing below
//! the CLI reads the process environment or the working directory. Reads the source: a new
//! `use crate::…` that breaks the map fails here, naming the file and the import.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Data types every stage may use: they import no stage.
const DATA: &[&str] = &["config", "message", "bindings", "secrets", "metrics"];

/// What each stage may import besides [`DATA`] (docs/architecture.md, "may import").
fn allowed(stage: &str) -> Option<&'static [&'static str]> {
    Some(match stage {
        "cli" | "lib" | "main" => return None,
        "service" => &[
            "scheduler",
            "ledger",
            "transport",
            "codec",
            "registry",
            "router",
            "runtime",
        ],
        "scheduler" => &[],
        "ledger" => &["transport"],
        "transport" => &["codec"],
        "codec" => &[],
        // The docker backend trait and its label names, for discovery.
        "registry" => &["capabilities"],
        "router" => &[],
        "runtime" => &["capabilities"],
        "capabilities" => &[],
        "scripting" => &["runtime", "capabilities"],
        "config" | "message" | "bindings" | "secrets" | "metrics" => &[],
        other => panic!("{other} is not a stage of docs/architecture.md: add it there and here"),
    })
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (they sit at the end, in `mod tests`).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The modules a piece of code names as `crate::x` or `crate::{x, y::z}`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level items of the group: `{codec::{self, Format}, message::X}`.
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn every_stage_imports_only_what_the_map_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let stage = first.trim_end_matches(".rs").to_owned();
        let Some(may) = allowed(&stage) else {
            continue;
        };
        let code = code(file);
        for import in imports(&code) {
            // A stage's own modules, and the data types (which may also use each other:
            // config names message's entity kinds).
            if import == stage || DATA.contains(&import.as_str()) {
                continue;
            }
            if !may.contains(&import.as_str()) {
                wrong.push(format!(
                    "{}: {stage} imports crate::{import}",
                    rel.display()
                ));
            }
        }
        // Below the CLI, nothing reads the process environment or the working directory.
        for needle in ["std::env::var", "env::vars", "current_dir"] {
            if code.contains(needle) {
                wrong.push(format!("{}: {stage} reads `{needle}`", rel.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that docs/architecture.md forbids:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_nested_imports() {
    let found = imports(
        "use crate::{codec::{self, Format}, message::ManagerRequest};\nlet x = crate::runtime::Runtime::new();",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["codec", "message", "runtime"]
    );
    assert_eq!(allowed("capabilities"), Some(&[][..]));
    assert_eq!(allowed("ledger"), Some(&["transport"][..]));
}
