//! `consort.SharedCache`: a mapping in shared memory that many processes use at once, over
//! one consort-cache file.
//!
//! Keys and values go through `codec` (a tagged encoding, pickle for the rest; `bytes`
//! values stored as they are with `raw_bytes=True`). A hit keeps the GIL (it never waits: the
//! read is lock-free); every write releases it (`Holder::write`), since it may wait for
//! another process's shard lock or recover a dead writer's half-done operation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use consort_cache::{Config, Insert};
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::codec::{self, Buf};
use crate::errors::to_py;
use crate::function::SharedCachedFunction;
use crate::holder::{Holder, OnMismatch};

/// Caches under this many entries are one shard: one SIEVE order over all their entries
/// (warp_cache's `max_size` semantics), where a few writer locks would buy little.
pub(crate) const ONE_SHARD_BELOW: usize = 2048;

/// The shards asked of consort-cache for a cache of `capacity` (which then uses the largest
/// number up to it that divides the capacity, so the capacity is exact).
pub(crate) fn shards_for(capacity: usize, requested: usize) -> usize {
    if capacity < ONE_SHARD_BELOW {
        1
    } else {
        requested
    }
}

/// Longest key or value the package accepts, in bytes (consort-cache's limit).
pub(crate) const MAX_ITEM: i64 = 1 << 24;

/// A mapping in shared memory, shared by every process that opens the same name.
///
/// ``SharedCache(name, capacity)`` opens the cache ``name`` (the file
/// ``<dir>/<name>.cache``), creating it if it does not exist. Every process that opens the
/// same name in the same directory sees the same entries. Reads are lock-free and keep the
/// GIL; writes release it while they may wait for another process.
///
/// Keys and values: ``None``, ``bool``, ``int`` (any size), ``float``, ``str`` (lone
/// surrogates included), ``bytes`` and tuples of them have a fixed binary encoding, so
/// ``1``, ``1.0`` and ``True`` are three keys and a key means the same in every process
/// whatever ``PYTHONHASHSEED`` is; anything else is pickled (types are taken exactly: an
/// ``IntEnum`` member is pickled, and is not the key ``1``). With ``raw_bytes=True``,
/// values must be ``bytes`` and are stored as they are.
///
/// Eviction is SIEVE; ``capacity`` is exactly the number of entries that fit (a cache of
/// fewer than 2,048 entries is one shard, with one eviction order over all its entries).
///
/// Args:
///     name: 1 to 128 characters of ``[A-Za-z0-9._-]``, not starting with ``.``.
///     capacity: how many entries fit, 1 to 2**30.
///     max_key: the longest encoded key, in bytes.
///     max_value: the longest encoded value, in bytes.
///     ttl: seconds an entry lives unless ``set`` gives it another TTL; ``None``: forever.
///     dir: the directory of the cache file (default: :func:`default_dir`); it must be a
///         0700 directory of this user's, and is created so if it does not exist.
///     recreate: replace an existing cache of this name that was made with other
///         parameters (other processes see theirs retired and reopen). Without it, such a
///         cache raises :class:`CacheMismatchError`.
///     raw_bytes: store ``bytes`` values as they are, without encoding.
///     shards: the most independent writer locks to spread keys over (a cache under
///         2,048 entries is one shard; a larger one uses the largest number up to this
///         that divides ``capacity``).
///
/// Raises:
///     ValueError: a bad name or argument (the message names it and its bound).
///     CacheMismatchError: the cache exists with other parameters.
///     PermissionError: the directory or file is not private to this user.
///
#[pyclass(frozen, module = "consort", name = "SharedCache")]
pub(crate) struct SharedCache {
    holder: Arc<Holder>,
    raw_bytes: bool,
}

/// A TTL in seconds from Python: `None`, or a finite number above 0.
pub(crate) fn parse_ttl(what: &str, ttl: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(ttl) = ttl.filter(|ttl| !ttl.is_none()) else {
        return Ok(None);
    };
    let seconds: f64 = ttl.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a number of seconds or None, not {}",
            type_name(ttl)
        ))
    })?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{what} must be a positive, finite number of seconds or None (got {seconds})"
        )));
    }
    Duration::try_from_secs_f64(seconds)
        .map(Some)
        .map_err(|_| PyValueError::new_err(format!("{what} is too large (got {seconds})")))
}

/// An integer argument in `min..=max`, or a `ValueError` naming the bound.
pub(crate) fn bounded(what: &str, value: i64, min: i64, max: i64) -> PyResult<usize> {
    if value < min {
        return Err(PyValueError::new_err(format!(
            "{what} must be >= {min} (got {value})"
        )));
    }
    if value > max {
        return Err(PyValueError::new_err(format!(
            "{what} must be <= {max} (got {value})"
        )));
    }
    Ok(value as usize)
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string())
}

#[pymethods]
impl SharedCache {
    #[new]
    #[pyo3(signature = (name, capacity, max_key=512, max_value=4096, ttl=None, dir=None, *, recreate=false, raw_bytes=false, shards=8))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        capacity: i64,
        max_key: i64,
        max_value: i64,
        ttl: Option<&Bound<'_, PyAny>>,
        dir: Option<PathBuf>,
        recreate: bool,
        raw_bytes: bool,
        shards: i64,
    ) -> PyResult<SharedCache> {
        let name: String = name.extract().map_err(|_| {
            PyTypeError::new_err(format!("name must be a str, not {}", type_name(name)))
        })?;
        let capacity = bounded("capacity", capacity, 1, 1 << 30)?;
        let config = Config {
            capacity,
            shards: shards_for(capacity, bounded("shards", shards, 1, 4096)?),
            max_key: bounded("max_key", max_key, 1, MAX_ITEM)?,
            max_value: bounded("max_value", max_value, 1, MAX_ITEM)?,
            default_ttl: parse_ttl("ttl", ttl)?,
            // Resolved now, so a reopen after a fork finds the same file whatever the
            // environment says by then.
            dir: Some(dir.unwrap_or_else(consort_cache::default_dir)),
        };
        let on_mismatch = if recreate {
            OnMismatch::Recreate
        } else {
            OnMismatch::Raise
        };
        let holder = Holder::open(py, name, config, on_mismatch)?;
        Ok(SharedCache {
            holder: Arc::new(holder),
            raw_bytes,
        })
    }

    /// The cache's name.
    #[getter]
    fn name(&self) -> &str {
        &self.holder.name
    }

    /// How many entries fit, exactly.
    #[getter]
    fn capacity(&self) -> usize {
        self.holder.config.capacity
    }

    /// Longest encoded key in bytes.
    #[getter]
    fn max_key(&self) -> usize {
        self.holder.config.max_key
    }

    /// Longest encoded value in bytes.
    #[getter]
    fn max_value(&self) -> usize {
        self.holder.config.max_value
    }

    /// The default TTL in seconds, or None.
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.holder.config.default_ttl.map(|ttl| ttl.as_secs_f64())
    }

    /// Whether `bytes` values are stored as they are (and only `bytes` may be stored).
    #[getter]
    fn raw_bytes(&self) -> bool {
        self.raw_bytes
    }

    /// The cache file.
    #[getter]
    fn path(&self, py: Python<'_>) -> PyResult<PathBuf> {
        Ok(self.holder.cache(py)?.path().to_path_buf())
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.holder.is_closed()
    }

    fn __getitem__<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.lookup(key)?
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.store(key, value, None)
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.remove(key)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = key.py();
        let mut buf = Buf::new();
        codec::encode(py, key, &mut buf)?;
        let cache = self.holder.cache(py)?;
        if buf.len() > cache.max_key() {
            return Ok(false);
        }
        Ok(cache
            .get_with(buf.as_slice(), |_| ())
            .map_err(to_py)?
            .is_some())
    }

    /// The entries `get` would find: the expired ones still stored are removed first
    /// (under each shard's lock, with the GIL released), so a count costs a pass over the
    /// cache's slots.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.holder.write(py, |cache| {
            cache.purge_expired(usize::MAX)?;
            Ok(cache.stats().len as usize)
        })
    }

    /// The value of `key`, or `default` when it has none (or it expired).
    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        Ok(match self.lookup(key)? {
            Some(value) => value,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    /// Stores `value` under `key`; `ttl` (seconds) overrides the cache's default TTL.
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = parse_ttl("ttl", ttl)?;
        self.store(key, value, ttl)
    }

    /// Removes `key` and returns its value; `default` (if given) when it has none, else
    /// `KeyError`.
    #[pyo3(signature = (key, *default))]
    fn pop<'py>(
        &self,
        key: &Bound<'py, PyAny>,
        default: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if default.len() > 1 {
            return Err(PyTypeError::new_err(format!(
                "pop expected at most 2 arguments, got {}",
                default.len() + 1
            )));
        }
        if let Some(value) = self.lookup(key)? {
            // Removed only if still there: a concurrent pop of the same key by another
            // process may win, and then the value we read is still the one that was stored.
            self.remove(key)?;
            return Ok(value);
        }
        match default.len() {
            0 => Err(PyKeyError::new_err(key.clone().unbind())),
            _ => default.get_item(0),
        }
    }

    /// Removes every entry (each shard atomically).
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.holder.write(py, |cache| cache.clear())
    }

    /// Counters summed over every process that used the cache, and its fill: a dict with
    /// `hits`, `misses`, `inserts`, `evictions`, `expirations`, `recoveries`,
    /// `oversize_skips` (of its `memoize` functions), `len`, `capacity`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.holder.cache(py)?.stats();
        let dict = PyDict::new(py);
        dict.set_item("hits", stats.hits)?;
        dict.set_item("misses", stats.misses)?;
        dict.set_item("inserts", stats.inserts)?;
        dict.set_item("evictions", stats.evictions)?;
        dict.set_item("expirations", stats.expirations)?;
        dict.set_item("recoveries", stats.recoveries)?;
        dict.set_item("oversize_skips", stats.oversize_skips)?;
        dict.set_item("len", stats.len)?;
        dict.set_item("capacity", stats.capacity)?;
        Ok(dict)
    }

    /// Zeroes the hit and miss counters of every process (under every shard lock).
    fn reset_stats(&self, py: Python<'_>) -> PyResult<()> {
        self.holder.write(py, |cache| cache.reset_counters())
    }

    /// Checks every structural invariant of every shard (under each shard's lock); returns
    /// a dict with `shards`, `live` and `free`.
    ///
    /// Raises `CacheCorruptError` naming what is wrong.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let report = self.holder.write(py, |cache| {
            cache.check_headers()?;
            cache.check_invariants()
        })?;
        let dict = PyDict::new(py);
        dict.set_item("shards", report.shards)?;
        dict.set_item("live", report.live)?;
        dict.set_item("free", report.free)?;
        Ok(dict)
    }

    /// Pickles as the arguments that open it again (by name, in the same directory), so a
    /// cache passed to a `multiprocessing` spawn child is reopened there.
    fn __getnewargs_ex__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        let config = &self.holder.config;
        let args = (
            &self.holder.name,
            config.capacity,
            config.max_key,
            config.max_value,
            config.default_ttl.map(|ttl| ttl.as_secs_f64()),
            config.dir.clone(),
        )
            .into_pyobject(py)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("raw_bytes", self.raw_bytes)?;
        kwargs.set_item("shards", config.shards)?;
        Ok((args, kwargs))
    }

    /// Refuses every later call and lets go of the file's mapping and fd (now, or when a
    /// call still using them ends); the file stays (other processes keep using it).
    fn close(&self, py: Python<'_>) {
        self.holder.close(py);
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.holder.close(_exc.py());
        false
    }

    /// A decorator that caches a function's results in this cache, under keys made of the
    /// function's qualified name and its arguments; `ttl` (seconds) for its entries.
    #[pyo3(signature = (ttl=None))]
    fn memoize(&self, ttl: Option<&Bound<'_, PyAny>>) -> PyResult<Memoize> {
        Ok(Memoize {
            holder: self.holder.clone(),
            ttl: parse_ttl("ttl", ttl)?,
        })
    }

    fn __repr__(&self) -> String {
        let config = &self.holder.config;
        let ttl = config
            .default_ttl
            .map_or_else(|| "None".to_owned(), |ttl| format!("{}", ttl.as_secs_f64()));
        format!(
            "SharedCache('{}', capacity={}, max_key={}, max_value={}, ttl={ttl})",
            self.holder.name, config.capacity, config.max_key, config.max_value
        )
    }
}

impl SharedCache {
    fn lookup<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = key.py();
        let mut buf = Buf::new();
        codec::encode(py, key, &mut buf)?;
        let cache = self.holder.cache(py)?;
        if buf.len() > cache.max_key() {
            return Ok(None);
        }
        let raw = self.raw_bytes;
        let found = cache
            .get_with(buf.as_slice(), |bytes| {
                if raw {
                    Ok(PyBytes::new(py, bytes).into_any())
                } else {
                    codec::decode(py, bytes)
                }
            })
            .map_err(to_py)?;
        found.transpose()
    }

    fn store(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
    ) -> PyResult<()> {
        let py = key.py();
        let mut key_buf = Buf::new();
        codec::encode(py, key, &mut key_buf)?;
        let mut value_buf = Buf::new();
        let value_bytes: &[u8] = if self.raw_bytes {
            value
                .cast::<PyBytes>()
                .map_err(|_| {
                    PyTypeError::new_err(format!(
                        "this SharedCache stores raw bytes (raw_bytes=True): the value must be \
                         bytes, not {}",
                        type_name(value)
                    ))
                })?
                .as_bytes()
        } else {
            codec::encode(py, value, &mut value_buf)?;
            value_buf.as_slice()
        };
        let config = &self.holder.config;
        if key_buf.len() > config.max_key {
            return Err(PyValueError::new_err(format!(
                "the key is {} bytes encoded, more than this cache's max_key = {}",
                key_buf.len(),
                config.max_key
            )));
        }
        if value_bytes.len() > config.max_value {
            return Err(PyValueError::new_err(format!(
                "the value is {} bytes encoded, more than this cache's max_value = {}",
                value_bytes.len(),
                config.max_value
            )));
        }
        let key_bytes = key_buf.as_slice();
        let done = self.holder.insert(py, key_bytes, value_bytes, ttl)?;
        debug_assert_ne!(done, Insert::Oversize, "sizes were checked above");
        Ok(())
    }

    fn remove(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = key.py();
        let mut buf = Buf::new();
        codec::encode(py, key, &mut buf)?;
        if buf.len() > self.holder.config.max_key {
            return Ok(false);
        }
        let key_bytes = buf.as_slice();
        self.holder.write(py, |cache| cache.remove(key_bytes))
    }
}

/// What `SharedCache.memoize(ttl)` returns: applied to a function, caches its results in
/// the cache.
#[pyclass(frozen, module = "consort")]
pub(crate) struct Memoize {
    holder: Arc<Holder>,
    ttl: Option<Duration>,
}

#[pymethods]
impl Memoize {
    fn __call__(&self, py: Python<'_>, function: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let prefix = qualified_name(&function)?;
        let mut buf = Buf::new();
        codec::encode(
            py,
            &pyo3::types::PyString::new(py, &prefix).into_any(),
            &mut buf,
        )?;
        let made = SharedCachedFunction::over(
            function.unbind(),
            self.holder.clone(),
            self.ttl,
            buf.as_slice().into(),
        )?;
        crate::function::instantiate(py, made)
    }
}

/// `module.qualname` of a function (what its keys are prefixed with).
pub(crate) fn qualified_name(function: &Bound<'_, PyAny>) -> PyResult<String> {
    let part = |attr: &str| -> String {
        function
            .getattr(attr)
            .and_then(|value| value.extract::<String>())
            .unwrap_or_else(|_| "?".to_owned())
    };
    if !function.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "memoize decorates a callable, not a {}",
            type_name(function)
        )));
    }
    Ok(format!("{}.{}", part("__module__"), part("__qualname__")))
}
