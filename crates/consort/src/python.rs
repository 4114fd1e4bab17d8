//! How Python workers are started: consort's own worker, embedded in the binary (only
//! `python3` 3.9+ is needed), and Appose's, from an installed `appose` package.
//!
//! consort's worker (`python/consort_worker.py`) is written once to a private cache folder
//! as a module named after its content hash, and started with `python -c "import ...;
//! main()"`, so Python caches its bytecode and later starts skip compiling it. When no
//! cache folder is writable, the source is passed with `-c` instead.
//!
//! Both commands remove the conda variables from the worker's environment, as
//! appose-python does ([`CONDA_VARS`]).
//!
//! # Boundary
//! A leaf: it builds commands and writes the cached module, and knows nothing of services
//! or environments (`service` and `env` call it).

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// consort's Python worker's source.
pub const CONSORT_WORKER_SOURCE: &str = include_str!("python/consort_worker.py");

/// The `-c` script that runs Appose's own Python worker.
pub const APPOSE_WORKER_SCRIPT: &str = "import appose.python_worker; appose.python_worker.main()";

/// The variables appose-python removes from a worker's environment (0.12.0), so that an
/// activated conda environment in the parent does not leak into the worker's.
pub const CONDA_VARS: [&str; 4] = [
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_SHLVL",
    "PYTHONEXECUTABLE",
];

/// The command that runs consort's Python worker with `python`.
pub fn consort_worker_command(python: impl AsRef<OsStr>) -> Command {
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
            command.arg("-c").arg(CONSORT_WORKER_SOURCE);
        }
    }
    remove_conda_vars(&mut command);
    command
}

/// The command that runs Appose's Python worker with `python` (`appose` must be installed
/// for it): `python -c "import appose.python_worker; appose.python_worker.main()"`.
pub fn appose_worker_command(python: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(python);
    command.arg("-c").arg(APPOSE_WORKER_SCRIPT);
    remove_conda_vars(&mut command);
    command
}

fn remove_conda_vars(command: &mut Command) {
    for var in CONDA_VARS {
        command.env_remove(var);
    }
}

/// A 64-bit FNV-1a hash, in hex: the content hash of consort's Python worker (in its cached
/// module's name), and of an environment's state (in its marker and name).
pub fn content_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The module name (content-addressed) and the private folder holding it.
fn cached_module() -> io::Result<(PathBuf, String)> {
    let module = format!("consort_worker_{}", content_hash(CONSORT_WORKER_SOURCE));
    let dir = cache_dir()?.join("python");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = dir.join(format!("{module}.py"));
    if std::fs::read(&path).ok().as_deref() != Some(CONSORT_WORKER_SOURCE.as_bytes()) {
        write_atomically(&path, CONSORT_WORKER_SOURCE.as_bytes())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_stable_and_sensitive() {
        assert_eq!(content_hash(""), "cbf29ce484222325");
        assert_eq!(content_hash("numpy"), content_hash("numpy"));
        assert_ne!(content_hash("numpy"), content_hash("numpz"));
    }
}
