//! The shared backend's hot path: a callable that wraps a function and a shared cache, and
//! answers a call from the cache when it can.
//!
//! `__call__(*args, **kwargs)` encodes the arguments in Rust (`codec::encode_call`, on the
//! stack for small keys), reads the cache lock-free with the GIL held, and decodes a hit
//! straight into Python objects; a miss calls the function, encodes the result and stores it
//! (the GIL released while the write may wait). An entry whose key or value is over the
//! cache's limits is computed, returned and counted in `oversize_skips`, never stored.
//! Built to be what `consort.cache(backend="shared")` and the warp_cache compatibility
//! module stand on: the constructor takes warp_cache 0.7's `SharedCachedFunction`
//! arguments, and `cache_info()` returns its `SharedCacheInfo`.

use std::sync::Arc;
use std::time::Duration;

use consort_cache::Config;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::codec::{self, Buf};
use crate::errors::to_py;
use crate::holder::{Holder, OnMismatch};
use crate::shared::{bounded, parse_ttl, qualified_name, shards_for, MAX_ITEM};

/// The largest `max_size` of the shared backend (warp_cache's bound too).
pub(crate) const MAX_SIZE: u64 = 1 << 30;

/// A function whose results are cached in shared memory, for every process.
///
/// The shared backend's hot path: the arguments are encoded in Rust (the same encoding as
/// :class:`SharedCache` keys; keyword arguments sorted by name), a hit is decoded without
/// pickle for the built-in types, and a miss calls the function and stores its result.
/// A result whose encoded key or value is over ``max_key_size`` or ``max_value_size`` is
/// returned and counted in ``oversize_skips``, never stored.
///
/// The cache is named ``shm_name``, or after the function's ``module.qualname``
/// (:func:`derived_name`); one with other parameters (size, key and value limits, TTL) is
/// replaced, since a memo is disposable.
///
/// Args:
///     fn_obj: the function.
///     max_size: how many results fit, 1 to 2**30 (``ValueError("max_size must be >= 1
///         ...")`` / ``"max_size must be <= 1073741824 ..."`` otherwise).
///     ttl: seconds a result lives; ``None``: until evicted.
///     max_key_size: the longest encoded key, in bytes.
///     max_value_size: the longest encoded result, in bytes.
///     shm_name: the cache's name.
///     dir: the directory of the cache file (default: :func:`default_dir`).
///
#[pyclass(frozen, dict, weakref, module = "consort")]
pub(crate) struct SharedCachedFunction {
    function: Py<PyAny>,
    holder: Arc<Holder>,
    /// TTL of the entries it stores (`None`: the cache's default).
    ttl: Option<Duration>,
    /// Put before every key (a memo in a `SharedCache` shared with other functions).
    prefix: Box<[u8]>,
}

/// What `cache_info()` returns (warp_cache 0.7's `SharedCacheInfo`, field for field).
#[pyclass(frozen, module = "consort", get_all)]
pub(crate) struct SharedCacheInfo {
    /// Hits, summed over every process of the cache.
    hits: u64,
    /// Misses, summed over every process of the cache.
    misses: u64,
    /// The capacity, exactly as asked.
    max_size: usize,
    /// Entries stored now.
    current_size: usize,
    /// Results computed but not stored because the key or value was over its limit.
    oversize_skips: u64,
}

#[pymethods]
impl SharedCacheInfo {
    fn __repr__(&self) -> String {
        format!(
            "SharedCacheInfo(hits={}, misses={}, max_size={}, current_size={}, oversize_skips={})",
            self.hits, self.misses, self.max_size, self.current_size, self.oversize_skips
        )
    }
}

#[pymethods]
impl SharedCachedFunction {
    #[new]
    #[pyo3(signature = (fn_obj, max_size, ttl=None, max_key_size=512, max_value_size=4096, shm_name=None, *, dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        fn_obj: Bound<'_, PyAny>,
        max_size: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        max_key_size: i64,
        max_value_size: i64,
        shm_name: Option<String>,
        dir: Option<std::path::PathBuf>,
    ) -> PyResult<SharedCachedFunction> {
        let capacity = max_size_arg(max_size)?;
        let max_key = bounded("max_key_size", max_key_size, 1, MAX_ITEM)?;
        let max_value = bounded("max_value_size", max_value_size, 1, MAX_ITEM)?;
        let default_ttl = parse_ttl("ttl", ttl)?;
        let name = match shm_name {
            Some(name) => name,
            None => derived_name(&qualified_name(&fn_obj)?),
        };
        let config = Config {
            capacity,
            max_key,
            max_value,
            default_ttl,
            dir: Some(dir.unwrap_or_else(consort_cache::default_dir)),
            shards: shards_for(capacity, Config::default().shards),
        };
        // A memo is disposable: other parameters than the existing file's replace it.
        let holder = Holder::open(py, name, config, OnMismatch::Recreate)?;
        SharedCachedFunction::over(fn_obj.unbind(), Arc::new(holder), None, Box::new([]))
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let mut key = Buf::new();
        self.key(py, args, kwargs, &mut key)?;
        // The limits are the cache's own: one that another process recreated with others
        // is followed, limits included.
        let cache = self.holder.cache(py)?;
        if key.len() > cache.max_key() {
            cache.count_oversize();
            return Ok(self.function.bind(py).call(args, kwargs)?.unbind());
        }
        if let Some(value) = lookup(py, &cache, &key)? {
            return Ok(value);
        }
        let result = self.function.bind(py).call(args, kwargs)?;
        self.store(py, &key, &result)?;
        Ok(result.unbind())
    }

    /// The cached result for these arguments, or None (the function is not called).
    #[pyo3(signature = (*args, **kwargs))]
    fn get(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        Ok(self._probe(py, args, kwargs)?.1)
    }

    /// `(True, value)` for a cached result, `(False, None)` otherwise: tells a cached None
    /// from a miss.
    #[pyo3(signature = (*args, **kwargs))]
    fn _probe(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(bool, Option<Py<PyAny>>)> {
        let mut key = Buf::new();
        self.key(py, args, kwargs, &mut key)?;
        // An oversize key is looked up too: consort-cache counts it a miss (as warp_cache).
        let cache = self.holder.cache(py)?;
        Ok(match lookup(py, &cache, &key)? {
            Some(value) => (true, Some(value)),
            None => (false, None),
        })
    }

    /// Adds one hit (`True`) or one miss (`False`) to this process's counts: the async
    /// wrapper counts a call that waited for another's result as one hit, whether or not
    /// that result could be stored.
    fn _record(&self, py: Python<'_>, hit: bool) -> PyResult<()> {
        self.holder.cache(py)?.count(hit);
        Ok(())
    }

    /// Stores `value` as the result for these arguments (skipped, and counted, when over
    /// the limits).
    #[pyo3(signature = (value, *args, **kwargs))]
    fn set(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mut key = Buf::new();
        self.key(py, args, kwargs, &mut key)?;
        let cache = self.holder.cache(py)?;
        if key.len() > cache.max_key() {
            cache.count_oversize();
            return Ok(());
        }
        self.store(py, &key, value)
    }

    /// Hits, misses and oversize skips of every process, the capacity, the fill.
    fn cache_info(&self, py: Python<'_>) -> PyResult<SharedCacheInfo> {
        let stats = self.holder.cache(py)?.stats();
        Ok(SharedCacheInfo {
            hits: stats.hits,
            misses: stats.misses,
            max_size: stats.capacity as usize,
            current_size: stats.len as usize,
            oversize_skips: stats.oversize_skips,
        })
    }

    /// Removes every entry and zeroes the hit, miss and oversize counts, for every process (for a
    /// function of `SharedCache.memoize`: the whole cache's, other functions' included).
    fn cache_clear(&self, py: Python<'_>) -> PyResult<()> {
        self.holder.write(py, |cache| {
            cache.clear()?;
            cache.reset_counters()
        })?;
        Ok(())
    }

    /// A method when looked up through an instance (as `functools.lru_cache` wrappers
    /// are): `obj.f(x)` calls `f(obj, x)`.
    fn __get__(
        slf: Bound<'_, Self>,
        instance: Option<Bound<'_, PyAny>>,
        owner: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = owner;
        crate::memory::bind_method(slf.into_any(), instance)
    }

    /// The name of the shared cache (its file is `<name>.cache`).
    #[getter]
    fn shm_name(&self) -> &str {
        &self.holder.name
    }

    /// The cache file.
    #[getter]
    fn cache_path(&self, py: Python<'_>) -> PyResult<std::path::PathBuf> {
        Ok(self.holder.cache(py)?.path().to_path_buf())
    }
}

impl SharedCachedFunction {
    /// Wraps `function` over an open cache.
    pub(crate) fn over(
        function: Py<PyAny>,
        holder: Arc<Holder>,
        ttl: Option<Duration>,
        prefix: Box<[u8]>,
    ) -> PyResult<SharedCachedFunction> {
        Ok(SharedCachedFunction {
            function,
            holder,
            ttl,
            prefix,
        })
    }

    #[inline]
    fn key(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        key: &mut Buf,
    ) -> PyResult<()> {
        if !self.prefix.is_empty() {
            key.push(&self.prefix);
        }
        codec::encode_call(py, args, kwargs, key)
    }

    fn store(&self, py: Python<'_>, key: &Buf, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut encoded = Buf::new();
        codec::encode(py, value, &mut encoded)?;
        if encoded.len() > self.holder.cache(py)?.max_value() {
            self.holder.cache(py)?.count_oversize();
            return Ok(());
        }
        let (key, value, ttl) = (key.as_slice(), encoded.as_slice(), self.ttl);
        self.holder.insert(py, key, value, ttl)?;
        Ok(())
    }
}

/// A lock-free read of `key`, decoded.
#[inline]
fn lookup(py: Python<'_>, cache: &consort_cache::Cache, key: &Buf) -> PyResult<Option<Py<PyAny>>> {
    match cache
        .get_with(key.as_slice(), |bytes| codec::decode(py, bytes))
        .map_err(to_py)?
    {
        Some(value) => Ok(Some(value?.unbind())),
        None => Ok(None),
    }
}

/// `max_size` as warp_cache checks it, with its messages.
fn max_size_arg(max_size: &Bound<'_, PyAny>) -> PyResult<usize> {
    let value: i128 = max_size.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "max_size must be an int, not {}",
            crate::shared::type_name(max_size)
        ))
    })?;
    if value < 1 {
        return Err(PyValueError::new_err(
            "max_size must be >= 1 for the shared backend",
        ));
    }
    if value > i128::from(MAX_SIZE) {
        return Err(PyValueError::new_err(format!(
            "max_size must be <= {MAX_SIZE} for the shared backend (got {value})"
        )));
    }
    Ok(value as usize)
}

/// A cache name for a function's `module.qualname`, valid for consort-cache
/// (`[A-Za-z0-9._-]`, at most 128, not starting with `.`): the name with every other
/// character (`<locals>`'s brackets, a lambda's) made `_`, cut to 100 characters, then a
/// hash of the whole original name, so two names that read alike stay apart.
pub(crate) fn derived_name(qualified: &str) -> String {
    let mut readable: String = qualified
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if readable.starts_with('.') || readable.is_empty() {
        readable.insert(0, 'f');
    }
    let hash = xxhash_rust::xxh3::xxh3_64(qualified.as_bytes());
    format!("{readable}-{hash:016x}")
}
