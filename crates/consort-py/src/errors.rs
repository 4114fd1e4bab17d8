//! consort-cache's errors as Python exceptions: each a builtin a Python user would catch
//! (`ValueError`, `PermissionError`, `OSError`, `FileNotFoundError`) or one of the package's
//! own (`CacheError`, a `RuntimeError`), with the Rust error's text as the message.

use consort_cache::Error;
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::{create_exception, PyErr};

create_exception!(
    consort,
    CacheError,
    PyRuntimeError,
    "A shared cache could not do what was asked (see the message)."
);
create_exception!(
    consort,
    CacheCorruptError,
    CacheError,
    "The cache file is corrupt or was truncated under this process; recreate the cache."
);
create_exception!(
    consort,
    CacheMismatchError,
    PyValueError,
    "A cache of this name exists with other parameters; pass recreate=True to replace it."
);

/// The Python exception for a consort-cache error.
pub(crate) fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::InvalidName { .. } | Error::InvalidConfig(_) => PyValueError::new_err(message),
        Error::Mismatch { .. } => CacheMismatchError::new_err(message),
        Error::NotPrivate { .. } => PyPermissionError::new_err(message),
        Error::Corrupt { .. } => CacheCorruptError::new_err(message),
        Error::NotFound(_) => PyFileNotFoundError::new_err(message),
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, message)),
            None => PyOSError::new_err(message),
        },
        _ => CacheError::new_err(message),
    }
}
