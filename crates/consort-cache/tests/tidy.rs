//! The crate's source rules, checked like tests (as rust-analyzer's `xtask/src/tidy.rs`
//! does for its own): every `.rs` file opens with a `//!` header; a module of `src/` uses
//! only modules of lower layers; `unsafe` lives in `src/region.rs` only, each block under a
//! `// SAFETY:` comment; atomics, the mutex and the futex come from `src/sync.rs`.
//!
//! The checks read code lines with their `//` comments cut off; they are text checks, not a
//! parser, and say so in their messages when they fail.

use std::path::{Path, PathBuf};

/// The modules of `src/`, lowest layer first. A module may use modules of earlier entries
/// only; modules of one entry are peers and may not use each other. `lib` stands for the
/// crate root's own items (`crate::Cache`, `crate::Config`, ...).
const LAYERS: &[&[&str]] = &[
    &["fault"],
    &["sync"],
    &["layout"],
    &["region"],
    &["error"],
    &["handle"],
    &["lock"],
    &["journal"],
    &["check", "read", "write"],
    &["file"],
    &["lib"],
    &["torture"],
];

/// Modules that may name std's atomics, std's sync types, loom or the futex directly: the
/// switch itself, and two process-local users that are not shared memory.
const SYNC_USERS: &[&str] = &["sync", "fault", "torture"];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&crate_dir(), &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    files
}

/// A line without its `//` comment (text after `//` in a string literal would be cut too;
/// this crate has none that matters here).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

fn rank(name: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&name))
        .unwrap_or_else(|| panic!("module {name} is not in LAYERS: place it in a layer"))
}

/// The first path segment of every `crate::` path in `code`, e.g. `crate::{a, b::c}` gives
/// `a` and `b`; a segment that is not a module is a crate-root item, `lib`.
fn crate_references(code: &str) -> Vec<String> {
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').expect("a crate::{...} group on one line");
            names.extend(group[..end].split(',').map(|item| ident(item.trim())));
        } else {
            names.push(ident(rest));
        }
    }
    let modules: Vec<&str> = LAYERS
        .iter()
        .flat_map(|layer| layer.iter().copied())
        .collect();
    names
        .into_iter()
        .filter(|name| !name.is_empty())
        .map(|name| {
            if modules.contains(&name.as_str()) {
                name
            } else {
                "lib".to_owned()
            }
        })
        .collect()
}

/// The module a file of `src/` belongs to (`src/layout/tests.rs` is part of `layout`).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(crate_dir().join("src")).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    if first == "bin" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

#[test]
fn every_file_opens_with_a_module_header() {
    for path in all_rust_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a `//!` header saying what it is and why",
            path.display()
        );
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let mut checked = 0;
    for path in all_rust_files() {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            for used in crate_references(code(line)) {
                checked += 1;
                assert!(
                    used == module || rank(&used) < rank(&module),
                    "{}:{}: `{module}` uses `{used}`, which is not a lower layer (see LAYERS \
                     in tests/tidy.rs, a text check of `crate::` paths): {}",
                    path.display(),
                    number + 1,
                    line.trim()
                );
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} crate:: paths found: is the check reading code?"
    );
}

#[test]
fn lib_declares_the_modules_in_layer_order() {
    let text = std::fs::read_to_string(crate_dir().join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            let line = code(line).trim();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            line.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect();
    let ranks: Vec<usize> = declared.iter().map(|name| rank(name)).collect();
    let in_order = ranks.windows(2).all(|pair| pair[0] <= pair[1]);
    assert!(
        in_order,
        "src/lib.rs declares {declared:?}, not in LAYERS order"
    );
    let mut files: Vec<String> = all_rust_files()
        .iter()
        .filter_map(|path| module_of(path))
        .filter(|module| module != "lib")
        .collect();
    files.sort();
    files.dedup();
    let mut declared: Vec<String> = declared.iter().map(|name| name.to_string()).collect();
    declared.sort();
    assert_eq!(
        declared, files,
        "src/lib.rs must declare every module of src/"
    );
}

#[test]
fn unsafe_only_in_region_and_every_block_says_why() {
    let mut blocks = 0;
    // This file names the words it looks for.
    for path in all_rust_files()
        .into_iter()
        .filter(|path| !path.ends_with("tests/tidy.rs"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let is_region = path.ends_with("src/region.rs");
        for (number, line) in lines.iter().enumerate() {
            let code = code(line);
            let has_unsafe = code.match_indices("unsafe").any(|(at, _)| {
                let next = code[at + "unsafe".len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if code.contains("allow(unsafe_code)") || has_unsafe {
                assert!(
                    is_region,
                    "{}:{}: `unsafe` outside src/region.rs: {}",
                    path.display(),
                    number + 1,
                    line.trim()
                );
            }
            if has_unsafe {
                blocks += 1;
                let comment_above = lines[..number]
                    .iter()
                    .rev()
                    .take_while(|above| above.trim_start().starts_with("//"))
                    .any(|above| above.contains("// SAFETY: "));
                assert!(
                    comment_above,
                    "{}:{}: an `unsafe` block without a `// SAFETY:` comment right above it",
                    path.display(),
                    number + 1
                );
            }
        }
    }
    assert!(
        blocks >= 5,
        "only {blocks} unsafe blocks found: is the check reading code?"
    );
}

#[test]
fn atomics_come_from_the_sync_module() {
    let banned = [
        "std::sync::",
        "core::sync::",
        "loom::",
        "rustix::thread::futex",
    ];
    for path in all_rust_files() {
        let Some(module) = module_of(&path) else {
            continue;
        };
        if SYNC_USERS.contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            for name in banned {
                assert!(
                    !code(line).contains(name),
                    "{}:{}: `{name}` outside src/sync.rs: take it from crate::sync: {}",
                    path.display(),
                    number + 1,
                    line.trim()
                );
            }
        }
    }
}
