//! consort's own Python worker, embedded in the binary: only `python3` (3.9+) is needed.
//!
//! The source (`python/consort_worker.py`) is written once to a private cache folder as
//! a module named after its content hash, and started with `python -c "import ...;
//! main()"`, so Python caches its bytecode and later starts skip compiling it. When no
//! cache folder is writable, the source is passed with `-c` instead.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The worker's Python source.
pub const SOURCE: &str = include_str!("python/consort_worker.py");

/// A recipe for a service running consort's Python worker with `python`.
pub fn service(python: impl AsRef<OsStr>) -> crate::ServiceBuilder {
    crate::Service::new(command(python))
}

/// The command that runs consort's Python worker with `python`.
///
/// Conda variables are removed from its environment, as appose-python does for its own.
pub fn command(python: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(python);
    match cached_module() {
        Ok((dir, module)) => {
            let dir = dir
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace('\'', "\\'");
            // Bytecode is cached for the worker's module even where the environment says
            // PYTHONDONTWRITEBYTECODE (compiling it costs more than the rest of the start);
            // the setting is restored before any script runs.
            command.arg("-c").arg(format!(
                "import sys; sys.path.insert(0, '{dir}'); b = sys.dont_write_bytecode; \
                 sys.dont_write_bytecode = False; import {module}; \
                 sys.dont_write_bytecode = b; del b; {module}.main()"
            ));
        }
        Err(err) => {
            tracing::debug!("no cache for the Python worker ({err}); passing its source with -c");
            command.arg("-c").arg(SOURCE);
        }
    }
    for var in crate::env::CONDA_VARS {
        command.env_remove(var);
    }
    command
}

/// The module name (content-addressed) and the private folder holding it.
fn cached_module() -> io::Result<(PathBuf, String)> {
    let module = format!("consort_worker_{}", crate::env::content_hash(SOURCE));
    let dir = cache_dir()?.join("python");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = dir.join(format!("{module}.py"));
    if std::fs::read(&path).ok().as_deref() != Some(SOURCE.as_bytes()) {
        write_atomically(&path, SOURCE.as_bytes())?;
    }
    Ok((dir, module))
}

fn cache_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CONSORT_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("consort"));
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("consort")),
        None => Err(io::Error::other("neither XDG_CACHE_HOME nor HOME is set")),
    }
}

/// Writes through a temporary file and a rename, so that a concurrent start never reads a
/// half-written module.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    drop(file);
    std::fs::rename(&tmp, path)
}
