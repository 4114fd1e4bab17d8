//! Tidiness of the source tree, checked as rust-analyzer's `xtask/src/tidy.rs` does it:
//! every `.rs` file of the repository opens with a `//!` header saying what the file is
//! and why it exists (STYLE.md, "Modules and files").

use std::path::{Path, PathBuf};

use consort_tests::workspace_root;

use super::watchdog;

#[test]
fn every_rust_file_opens_with_a_module_header() {
    let _watchdog = watchdog("every_rust_file_opens_with_a_module_header");
    let root = workspace_root();
    let mut files = Vec::new();
    collect_rust_files(&root, &mut files);
    // A walk that went wrong would find nothing and pass: it must at least find this file.
    let this_file = root.join("tests/it/tidy.rs");
    assert!(
        files.contains(&this_file),
        "the walk from {} missed {}",
        root.display(),
        this_file.display()
    );
    let mut offenders: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let problem = header_problem(path)?;
            let relative = path.strip_prefix(&root).unwrap_or(path);
            Some(format!("  {}: {problem}", relative.display()))
        })
        .collect();
    offenders.sort();
    assert!(
        offenders.is_empty(),
        "{} of {} .rs files do not open with a `//!` header (STYLE.md, section 3: what the \
         module is, and why it exists):\n{}",
        offenders.len(),
        files.len(),
        offenders.join("\n")
    );
}

/// Every `.rs` file under `dir`, skipping hidden folders (`.git`, `.venv`) and build
/// output (`target`, `target-*`). Symbolic links are not followed.
fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|err| panic!("read {}: {err}", dir.display()));
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|err| panic!("stat {}: {err}", entry.path().display()));
        if file_type.is_dir() {
            if !name.starts_with('.') && !name.starts_with("target") {
                collect_rust_files(&entry.path(), files);
            }
        } else if file_type.is_file() && name.ends_with(".rs") {
            files.push(entry.path());
        }
    }
}

/// Why `path` does not open with a `//!` line, if it does not.
fn header_problem(path: &Path) -> Option<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => return Some(format!("cannot be read as UTF-8 text: {err}")),
    };
    match text.lines().next() {
        Some(line) if line.starts_with("//!") => None,
        Some(line) => Some(format!("opens with {line:?}")),
        None => Some("is empty".to_owned()),
    }
}
