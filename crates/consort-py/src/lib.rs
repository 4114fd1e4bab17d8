//! `consort._core`: consort's native module for Python (PyO3, abi3 from Python 3.10).
//!
//! The pure-Python package around it (`python/consort/`) gives it its face: docstrings,
//! re-exports, the fork hook's registration. Here, lowest first:
//!
//! - `errors`: consort-cache's errors as Python exceptions.
//! - `codec`: keys and values as bytes (a tagged encoding, pickle for the rest).
//! - `holder`: an open cache that reopens itself after a fork or a recreate.
//! - `shared`: `SharedCache`, the mapping.
//! - `function`: `SharedCachedFunction`, the decorator's hot path.
//! - `memory`: `CachedFunction`, the memory backend (an in-process SIEVE of Python objects).

mod errors;

mod codec;

mod holder;

mod function;
mod memory;
mod shared;

use pyo3::prelude::*;

/// consort's native module: the shared-memory cache.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<shared::SharedCache>()?;
    m.add_class::<shared::Memoize>()?;
    m.add_class::<function::SharedCachedFunction>()?;
    m.add("SharedCachedFunction", function::call_type(py)?)?;
    m.add_class::<function::SharedCacheInfo>()?;
    m.add_class::<memory::CachedFunction>()?;
    m.add("CachedFunction", memory::call_type(py)?)?;
    m.add_class::<memory::CacheInfo>()?;
    m.add("CacheError", py.get_type::<errors::CacheError>())?;
    m.add(
        "CacheCorruptError",
        py.get_type::<errors::CacheCorruptError>(),
    )?;
    m.add(
        "CacheMismatchError",
        py.get_type::<errors::CacheMismatchError>(),
    )?;
    m.add("MAX_SIZE", function::MAX_SIZE)?;
    m.add("MAX_HANDLES", consort_cache::MAX_HANDLES)?;
    m.add_function(wrap_pyfunction!(default_dir, m)?)?;
    m.add_function(wrap_pyfunction!(derived_name, m)?)?;
    m.add_function(wrap_pyfunction!(_sigbus_guard_reassert, m)?)?;
    m.add_function(wrap_pyfunction!(_sigbus_guard_step_aside, m)?)?;
    Ok(())
}

/// Puts consort's SIGBUS guard back on top after a SIGBUS handler was installed over it
/// (`faulthandler.enable` and `disable`, which `consort` wraps with these two).
#[pyfunction]
fn _sigbus_guard_reassert() {
    consort_cache::sigbus_guard_reassert();
}

/// Puts back the SIGBUS disposition consort's guard replaced, until the reassert.
#[pyfunction]
fn _sigbus_guard_step_aside() {
    consort_cache::sigbus_guard_step_aside();
}

/// The directory caches live in when none is given: `CONSORT_CACHE_DIR` when set, else
/// `/dev/shm/consort-cache-<uid>`.
#[pyfunction]
fn default_dir() -> std::path::PathBuf {
    consort_cache::default_dir()
}

/// The cache name the shared backend derives from a function's `module.qualname`.
#[pyfunction]
fn derived_name(qualified: &str) -> String {
    function::derived_name(qualified)
}
