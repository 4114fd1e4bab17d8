//! The crate's one error type: every fallible operation of every layer returns it.

use std::io;
use std::path::PathBuf;

use crate::layout::PARTICIPANTS;

/// What can go wrong; every variant names the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cache name is not 1 to 128 characters of `[A-Za-z0-9._-]` starting with no `.`.
    #[error("invalid cache name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A configuration value is out of range.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(&'static str),
    /// The existing cache was made with other parameters (use
    /// [`Cache::recreate`](crate::Cache::recreate)).
    #[error("cache {path} exists with {field} = {existing}, not {requested}")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        existing: u64,
        requested: u64,
    },
    /// The directory or file is not private to this user (owner, mode, or a symlink).
    #[error("{path} is not private to this user: {reason}")]
    NotPrivate { path: PathBuf, reason: String },
    /// The file is not a cache of this layout version, or its bytes are inconsistent.
    #[error("cache {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    /// Another process recreated the cache; open it again to use the new one.
    #[error("cache {0} was recreated by another process; open it again")]
    Retired(PathBuf),
    /// All participant slots are taken by live handles.
    #[error("cache {0} has {PARTICIPANTS} open handles already")]
    TooManyHandles(PathBuf),
    /// The handle was opened by the parent of this forked process; open it again here.
    #[error("a cache handle cannot be used across fork(); open the cache again in the child")]
    Forked,
    /// No cache of that name exists.
    #[error("no cache {0}")]
    NotFound(PathBuf),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
