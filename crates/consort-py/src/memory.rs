//! The memory backend of `consort.cache`: an in-process SIEVE cache of Python objects.
//!
//! `CachedFunction(fn, max_size, ttl=None)` keeps the very objects it is given (no
//! serialization: a hit returns the object stored), keyed as `functools.lru_cache` keys
//! (Python `hash` and `==`: `1`, `1.0` and `True` are one key), with exactly `max_size`
//! entries and SIEVE eviction, as warp_cache 0.7's memory backend does apart from its
//! sharding (which makes its capacity approximate from 16 up).
//!
//! # Invariants
//! 1. No Python code runs while the store is borrowed: a key's `__eq__`, a `__hash__`, a
//!    finalizer run by a decref, a garbage collection started by an allocation. The store
//!    hashes before it borrows, compares inside the borrow only keys made of exact
//!    built-in scalars (`int`, `float`, `str`, `bytes`, `bool`, `None`, flat tuples of
//!    them, whose `==` runs no Python code), and hands every object it lets go of back to
//!    the caller, who drops it after the borrow ends.
//! 2. Any other comparison happens with the borrow released, on a new reference to the
//!    stored key; the store's `generation`, bumped by every change of its structure, says
//!    afterwards whether the probe may resume where it stopped or must start again. So a
//!    raising `__eq__` propagates as itself with nothing changed, and an `__eq__` that
//!    calls the same cached function (re-entry) works: no deadlock, no panic.
//! 3. The borrow is a flag. With the GIL it is taken and released with the GIL held and
//!    can never be found taken (invariant 1: nothing in a borrow lets another thread or a
//!    re-entry in); if it were, the call raises `RuntimeError` rather than alias the store.
//!    On a free-threaded interpreter it is a spin lock (compare-and-swap, release store).
//! 4. `table` is an open-addressing index (linear probing, backward-shift deletion) of the
//!    live slots, at most half full; `slots` holds at most `capacity` live entries, linked
//!    newest to oldest for SIEVE; `len` counts them.
//! 5. `consort.CachedFunction` is a subclass of `_CachedFunctionBase` (made with
//!    `PyType_FromSpecWithBases`) whose `tp_call` answers plain positional keys, hit or
//!    miss, without PyO3's trampoline: no argument extraction, no attach count. Code on that
//!    path drops no `Py` (PyO3 would defer the decref to its pool, drained only by an
//!    attached call) and makes no `PyErr`: it releases objects with `Py_DecRef`, returns
//!    the function's exception as the NULL it got, and clears any error it provokes and
//!    takes the full path instead: the base's `tp_call` (PyO3's trampoline, then `call`).
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple, PyType};

use crate::shared::{parse_ttl, type_name};

/// The largest `max_size` (the shared backend's bound too).
pub(crate) const MAX_SIZE: u64 = 1 << 30;

/// "No slot": an empty table position, the end of the SIEVE list, a hand at the start.
const NIL: u32 = u32::MAX;

/// How often a lookup starts its probe again because the cache changed while a key's
/// `__eq__` ran, before it gives up (a lookup: a miss; a store: nothing stored).
const RESTARTS: usize = 16;

/// Fibonacci hashing spreads Python's hashes (small ints hash to themselves).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// An in-process cache of a function's results (the memory backend of
/// :func:`consort.cache`).
///
/// Results are kept as the very objects the function returned (no serialization: a hit
/// returns the object stored), keyed by the positional arguments, plus the keyword
/// arguments sorted by name, compared as ``functools.lru_cache`` compares them (``hash``
/// and ``==``: ``1``, ``1.0`` and ``True`` are one key; unhashable arguments raise
/// ``TypeError``). Exactly ``max_size`` entries fit; eviction is SIEVE. Thread-safe: a
/// key whose ``__eq__`` raises propagates its exception and changes nothing, and one that
/// calls the cached function again works.
///
/// Args:
///     fn_obj: the function.
///     max_size: how many results fit, 1 to 2**30.
///     ttl: seconds a result lives (positive and finite); ``None``: until evicted.
#[pyclass(
    frozen,
    dict,
    weakref,
    subclass,
    module = "consort",
    name = "_CachedFunctionBase"
)]
pub(crate) struct CachedFunction {
    function: Py<PyAny>,
    capacity: usize,
    ttl: Option<Duration>,
    /// The zero of the entries' expiry times.
    epoch: Instant,
    store: Borrowed<Store>,
}

/// What `cache_info()` of the memory backend returns (warp_cache 0.7's `CacheInfo`).
#[pyclass(frozen, eq, hash, get_all, module = "consort")]
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheInfo {
    /// Calls (and `get`s) answered from the cache.
    hits: u64,
    /// Calls (and `get`s) that found nothing.
    misses: u64,
    /// The capacity, exactly as asked.
    max_size: usize,
    /// Entries stored now (an expired one not yet replaced included).
    current_size: usize,
}

#[pymethods]
impl CacheInfo {
    fn __repr__(&self) -> String {
        format!(
            "CacheInfo(hits={}, misses={}, max_size={}, current_size={})",
            self.hits, self.misses, self.max_size, self.current_size
        )
    }
}

#[pymethods]
impl CachedFunction {
    #[new]
    #[pyo3(signature = (fn_obj, max_size, ttl=None))]
    fn new(
        fn_obj: Bound<'_, PyAny>,
        max_size: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<CachedFunction> {
        if !fn_obj.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "CachedFunction wraps a callable, not a {}",
                type_name(&fn_obj)
            )));
        }
        let capacity = max_size_arg(max_size)?;
        let ttl = parse_ttl("ttl", ttl)?;
        Ok(CachedFunction {
            function: fn_obj.unbind(),
            capacity,
            ttl,
            epoch: Instant::now(),
            store: Borrowed::new(Store::new(capacity)),
        })
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.call(py, args, kwargs)
    }

    /// The cached result for these arguments, or None (the function is not called). Counts
    /// a hit or a miss.
    #[pyo3(signature = (*args, **kwargs))]
    fn get(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let key = Key::of(py, args, kwargs)?;
        self.lookup(py, &key, true)
    }

    /// `(True, value)` for a cached result, `(False, None)` otherwise: tells a cached None
    /// from a miss. Counts a hit or a miss.
    #[pyo3(signature = (*args, **kwargs))]
    fn _probe(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(bool, Option<Py<PyAny>>)> {
        let key = Key::of(py, args, kwargs)?;
        Ok(match self.lookup(py, &key, true)? {
            Some(value) => (true, Some(value)),
            None => (false, None),
        })
    }

    /// Adds one hit (`True`) or one miss (`False`) to the counts: the async wrapper counts
    /// a call that waited for another's result as one hit.
    fn _record(&self, hit: bool) -> PyResult<()> {
        let mut store = self.store.borrow()?;
        if hit {
            store.hits += 1;
        } else {
            store.misses += 1;
        }
        Ok(())
    }

    /// Stores `value` as the result for these arguments (replacing any). Counts nothing.
    #[pyo3(signature = (value, *args, **kwargs))]
    fn set(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let key = Key::of(py, args, kwargs)?;
        self.put(py, &key, value, true)
    }

    /// Hits, misses, the capacity and the number of entries.
    fn cache_info(&self) -> PyResult<CacheInfo> {
        let store = self.store.borrow()?;
        Ok(CacheInfo {
            hits: store.hits,
            misses: store.misses,
            max_size: self.capacity,
            current_size: store.len,
        })
    }

    /// Removes every entry and zeroes the hit and miss counts.
    fn cache_clear(&self) -> PyResult<()> {
        let old = {
            let mut store = self.store.borrow()?;
            let mut fresh = Store::new(self.capacity);
            // A comparison in flight must see that everything changed.
            fresh.generation = store.generation.wrapping_add(1);
            std::mem::replace(&mut *store, fresh)
        };
        // Invariant 1: the entries' finalizers run with the store free.
        drop(old);
        Ok(())
    }

    /// A method when looked up through an instance (as ``functools.lru_cache`` wrappers
    /// are): ``obj.f(x)`` calls ``f(obj, x)``, ``obj`` being part of the key.
    fn __get__(
        slf: Bound<'_, Self>,
        instance: Option<Bound<'_, PyAny>>,
        owner: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = owner;
        bind_method(slf.into_any(), instance)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let function = self.function.bind(py);
        let part = |attr: &str| {
            function
                .getattr(attr)
                .and_then(|name| name.extract::<String>())
                .unwrap_or_else(|_| "?".to_owned())
        };
        format!(
            "<consort.CachedFunction {}.{}>",
            part("__module__"),
            part("__qualname__")
        )
    }
}

/// `instance is None`: the wrapper itself; else `types.MethodType(wrapper, instance)`.
pub(crate) fn bind_method(
    wrapper: Bound<'_, PyAny>,
    instance: Option<Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let py = wrapper.py();
    match instance {
        Some(instance) if !instance.is_none() => {
            static METHOD_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            let method = METHOD_TYPE.import(py, "types", "MethodType")?;
            Ok(method.call1((wrapper, instance))?.unbind())
        }
        _ => Ok(wrapper.unbind()),
    }
}

impl CachedFunction {
    /// A call: the cached result, or the function's, then stored.
    #[inline]
    fn call(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let key = Key::of(py, args, kwargs)?;
        if let Some(value) = self.lookup(py, &key, true)? {
            return Ok(value);
        }
        let result = self.function.bind(py).call(args, kwargs)?;
        self.put(py, &key, &result, false)?;
        Ok(result.unbind())
    }

    /// The value stored for `key`, if any and alive; counts a hit or a miss when `count`.
    fn lookup(
        &self,
        py: Python<'_>,
        key: &Key<'_, '_>,
        count: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        let (mut store, found) = match self.locate(py, key) {
            Ok(located) => located,
            Err(Located::Failed(err)) => return Err(err),
            // The cache kept changing under the key's `__eq__`: a miss.
            Err(Located::Unsettled) => {
                let mut store = self.store.borrow()?;
                if count {
                    store.misses += 1;
                }
                return Ok(None);
            }
        };
        let now = self.ttl.map(|_| self.now());
        let hit = found.and_then(|at| {
            let slot = &mut store.slots[at as usize];
            if now.is_some_and(|now| now >= slot.expires) {
                return None;
            }
            slot.visited = true;
            slot.value.as_ref().map(|value| value.clone_ref(py))
        });
        if count {
            if hit.is_some() {
                store.hits += 1;
            } else {
                store.misses += 1;
            }
        }
        Ok(hit)
    }

    /// Stores `value` for `key`: a new entry (evicting one when full), or, for a key
    /// already there, a new value when `replace` or the old one expired.
    fn put(
        &self,
        py: Python<'_>,
        key: &Key<'_, '_>,
        value: &Bound<'_, PyAny>,
        replace: bool,
    ) -> PyResult<()> {
        let expires = match self.ttl {
            Some(ttl) => self.now().saturating_add(ttl.as_nanos() as u64),
            None => u64::MAX,
        };
        let released = {
            let (mut store, found) = match self.locate(py, key) {
                Ok(located) => located,
                // The cache kept changing under the key's `__eq__`: store nothing.
                Err(Located::Unsettled) => return Ok(()),
                Err(Located::Failed(err)) => return Err(err),
            };
            match found {
                Some(at) => {
                    let now = self.ttl.map(|_| self.now());
                    let slot = &mut store.slots[at as usize];
                    if replace || now.is_some_and(|now| now >= slot.expires) {
                        slot.expires = expires;
                        slot.visited = false;
                        [slot.value.replace(value.clone().unbind()), None]
                    } else {
                        [None, None]
                    }
                }
                None => {
                    let evicted = if store.len >= self.capacity {
                        store.evict()
                    } else {
                        [None, None]
                    };
                    store.insert(
                        key.hash,
                        key.object().clone().unbind(),
                        key.plain,
                        value.clone().unbind(),
                        expires,
                    );
                    evicted
                }
            }
        };
        // Invariant 1: whatever was let go of is dropped with the store free.
        drop(released);
        Ok(())
    }

    /// Finds `key`, comparing outside the borrow what must be (invariant 2). Returns the
    /// borrowed store and the key's slot, if any.
    fn locate<'a>(
        &'a self,
        py: Python<'_>,
        key: &Key<'_, '_>,
    ) -> Result<(Guard<'a, Store>, Option<u32>), Located> {
        let mut store = self.store.borrow().map_err(Located::Failed)?;
        let mut from = store.home(key.hash);
        let mut restarts = 0;
        loop {
            match store.probe(py, key, from) {
                Probe::Found(at) => return Ok((store, Some(at))),
                Probe::Absent => return Ok((store, None)),
                Probe::Failed(err) => return Err(Located::Failed(err)),
                Probe::Compare {
                    slot,
                    position,
                    stored,
                } => {
                    let generation = store.generation;
                    drop(store);
                    // The key's own `==`, with the store free: it may raise, or call this
                    // function again.
                    let equal = equal(key.object(), stored.bind(py));
                    drop(stored);
                    let equal = equal.map_err(Located::Failed)?;
                    store = self.store.borrow().map_err(Located::Failed)?;
                    if store.generation != generation {
                        restarts += 1;
                        if restarts > RESTARTS {
                            return Err(Located::Unsettled);
                        }
                        from = store.home(key.hash);
                        continue;
                    }
                    if equal {
                        return Ok((store, Some(slot)));
                    }
                    from = (position + 1) & (store.table.len() - 1);
                }
            }
        }
    }

    /// Nanoseconds since the cache was made.
    #[inline]
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Why `locate` found no answer.
enum Located {
    /// The key's `__eq__` (or its hash, or the borrow) raised.
    Failed(PyErr),
    /// The cache changed under every comparison, `RESTARTS` times.
    Unsettled,
}

/// A key as the cache uses it: the object compared, its hash, and whether it is made of
/// exact built-in scalars only (compared inside the borrow: invariant 1).
struct Key<'a, 'py> {
    object: KeyObject<'a, 'py>,
    hash: isize,
    plain: bool,
}

/// The positional arguments as they came (borrowed: no reference count to touch on a
/// hit), or the tuple made with the keyword arguments.
enum KeyObject<'a, 'py> {
    Args(&'a Bound<'py, PyAny>),
    Composite(Bound<'py, PyAny>),
}

impl<'a, 'py> Key<'a, 'py> {
    /// `args`, or `(args, tuple(sorted(kwargs.items())))` when there are keyword arguments
    /// (warp_cache's and `functools.lru_cache`'s key, without `kwd_mark`).
    #[inline]
    fn of(
        py: Python<'py>,
        args: &'a Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Key<'a, 'py>> {
        let (object, plain) = match kwargs.filter(|kwargs| !kwargs.is_empty()) {
            None => (
                KeyObject::Args(args.as_any()),
                args.iter_borrowed().all(|item| is_plain(&item)),
            ),
            Some(kwargs) => {
                let items = kwargs.items();
                items.sort()?;
                let object =
                    PyTuple::new(py, [args.clone().into_any(), items.to_tuple().into_any()])?;
                (KeyObject::Composite(object.into_any()), false)
            }
        };
        let hash = match &object {
            KeyObject::Args(args) => args.hash()?,
            KeyObject::Composite(object) => object.hash()?,
        };
        Ok(Key {
            object,
            hash,
            plain,
        })
    }

    #[inline]
    fn object(&self) -> &Bound<'py, PyAny> {
        match &self.object {
            KeyObject::Args(args) => args,
            KeyObject::Composite(object) => object,
        }
    }
}

/// `a == b` as containers compare their items (`PyObject_RichCompareBool`: identity
/// first, then `__eq__`, its result taken as a bool).
#[inline]
fn equal(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: both pointers are live objects (borrowed for the call), the GIL is held
    // (`Bound`), and the function returns -1 only with an exception set, fetched here.
    match unsafe { pyo3::ffi::PyObject_RichCompareBool(a.as_ptr(), b.as_ptr(), pyo3::ffi::Py_EQ) } {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(PyErr::fetch(a.py())),
    }
}

/// An exact `int`, `float`, `str`, `bytes`, `bool` or `None`: its `==` against any other
/// such object runs no Python code.
#[inline]
fn is_plain(item: &Bound<'_, PyAny>) -> bool {
    item.is_exact_instance_of::<PyInt>()
        || item.is_exact_instance_of::<PyString>()
        || item.is_none()
        || item.is_exact_instance_of::<PyFloat>()
        || item.is_exact_instance_of::<PyBool>()
        || item.is_exact_instance_of::<PyBytes>()
}

/// `max_size` as warp_cache master checks it, with its messages.
fn max_size_arg(max_size: &Bound<'_, PyAny>) -> PyResult<usize> {
    if max_size.is_instance_of::<PyBool>() || !max_size.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "max_size must be an int, got {}",
            type_name(max_size)
        )));
    }
    let value: i128 = max_size.extract().unwrap_or(i128::MAX);
    if value < 1 {
        return Err(PyValueError::new_err(
            "max_size must be >= 1 for the memory backend",
        ));
    }
    if value > i128::from(MAX_SIZE) {
        return Err(PyValueError::new_err(format!(
            "max_size must be <= {MAX_SIZE} for the memory backend (got {max_size})"
        )));
    }
    Ok(value as usize)
}

/// One entry, or a free slot (`key` None).
struct Slot {
    hash: isize,
    key: Option<Py<PyAny>>,
    value: Option<Py<PyAny>>,
    /// The key is made of exact built-in scalars (see `is_plain`).
    plain: bool,
    visited: bool,
    /// Nanoseconds after the cache's epoch; `u64::MAX`: never.
    expires: u64,
    /// Toward the newest entry (`NIL` at the newest).
    newer: u32,
    /// Toward the oldest entry (`NIL` at the oldest).
    older: u32,
}

/// The entries, their index and their SIEVE order (invariant 4).
struct Store {
    slots: Vec<Slot>,
    /// Free slots, reused before `slots` grows.
    free: Vec<u32>,
    /// Slot numbers, `NIL` where empty; a power of two long.
    table: Vec<u32>,
    /// `64 - log2(table.len())`.
    shift: u32,
    len: usize,
    newest: u32,
    oldest: u32,
    /// Where the next eviction starts (`NIL`: at the oldest).
    hand: u32,
    /// Bumped by every insert and removal (invariant 2).
    generation: u64,
    hits: u64,
    misses: u64,
}

/// What one probe of the table found.
enum Probe {
    Found(u32),
    Absent,
    /// A candidate of the same hash whose comparison may run Python code: compare it
    /// outside the borrow, then resume at `position + 1` if nothing changed.
    Compare {
        slot: u32,
        position: usize,
        stored: Py<PyAny>,
    },
    Failed(PyErr),
}

impl Store {
    fn new(capacity: usize) -> Store {
        let table_len = 16usize;
        Store {
            slots: Vec::with_capacity(capacity.min(64)),
            free: Vec::new(),
            table: vec![NIL; table_len],
            shift: 64 - table_len.trailing_zeros(),
            len: 0,
            newest: NIL,
            oldest: NIL,
            hand: NIL,
            generation: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The table position a hash starts its probe at.
    #[inline]
    fn home(&self, hash: isize) -> usize {
        ((hash as u64).wrapping_mul(SPREAD) >> self.shift) as usize
    }

    /// Walks the table from `from` for `key` (invariant 1: compares only plain keys).
    #[inline]
    fn probe(&self, py: Python<'_>, key: &Key<'_, '_>, from: usize) -> Probe {
        let mask = self.table.len() - 1;
        let mut position = from;
        loop {
            let at = self.table[position];
            if at == NIL {
                return Probe::Absent;
            }
            let slot = &self.slots[at as usize];
            if slot.hash == key.hash {
                if let Some(stored) = slot.key.as_ref() {
                    if stored.as_ptr() == key.object().as_ptr() {
                        return Probe::Found(at);
                    }
                    if !(key.plain && slot.plain) {
                        return Probe::Compare {
                            slot: at,
                            position,
                            stored: stored.clone_ref(py),
                        };
                    }
                    match equal(key.object(), stored.bind(py)) {
                        Ok(true) => return Probe::Found(at),
                        Ok(false) => {}
                        Err(err) => return Probe::Failed(err),
                    }
                }
            }
            position = (position + 1) & mask;
        }
    }

    /// Adds a new entry as the newest (the caller made room and checked it is absent).
    fn insert(&mut self, hash: isize, key: Py<PyAny>, plain: bool, value: Py<PyAny>, expires: u64) {
        if (self.len + 1) * 2 > self.table.len() {
            self.grow();
        }
        let slot = Slot {
            hash,
            key: Some(key),
            value: Some(value),
            plain,
            visited: false,
            expires,
            newer: NIL,
            older: self.newest,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = slot;
                at
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if self.newest != NIL {
            self.slots[self.newest as usize].newer = at;
        } else {
            self.oldest = at;
        }
        self.newest = at;
        let mask = self.table.len() - 1;
        let mut position = self.home(hash);
        while self.table[position] != NIL {
            position = (position + 1) & mask;
        }
        self.table[position] = at;
        self.len += 1;
        self.generation = self.generation.wrapping_add(1);
    }

    /// SIEVE: from the hand toward the newest (wrapping to the oldest), clears visited
    /// entries and evicts the first unvisited one. Returns its key and value, to be
    /// dropped by the caller after the borrow.
    fn evict(&mut self) -> [Option<Py<PyAny>>; 2] {
        if self.len == 0 {
            return [None, None];
        }
        let mut at = if self.hand == NIL {
            self.oldest
        } else {
            self.hand
        };
        loop {
            let slot = &mut self.slots[at as usize];
            if !slot.visited {
                break;
            }
            slot.visited = false;
            at = if slot.newer == NIL {
                self.oldest
            } else {
                slot.newer
            };
        }
        self.hand = self.slots[at as usize].newer;
        self.remove(at)
    }

    /// Unlinks slot `at` from the list and the table and frees it.
    fn remove(&mut self, at: u32) -> [Option<Py<PyAny>>; 2] {
        let (newer, older, hash) = {
            let slot = &self.slots[at as usize];
            (slot.newer, slot.older, slot.hash)
        };
        match newer {
            NIL => self.newest = older,
            newer => self.slots[newer as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            older => self.slots[older as usize].newer = newer,
        }
        if self.hand == at {
            self.hand = newer;
        }
        // Backward-shift deletion: the entries after it in its run move up.
        let mask = self.table.len() - 1;
        let mut hole = self.home(hash);
        while self.table[hole] != at {
            hole = (hole + 1) & mask;
        }
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let moving = self.table[next];
            if moving == NIL {
                break;
            }
            let home = self.home(self.slots[moving as usize].hash);
            // `moving` stays if its home lies cyclically in (hole, next].
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.table[hole] = moving;
                hole = next;
            }
        }
        self.table[hole] = NIL;
        self.len -= 1;
        self.free.push(at);
        self.generation = self.generation.wrapping_add(1);
        let slot = &mut self.slots[at as usize];
        [slot.key.take(), slot.value.take()]
    }

    /// Doubles the table and places every live slot again (no Python code: hashes are
    /// stored).
    fn grow(&mut self) {
        let table_len = self.table.len() * 2;
        self.table = vec![NIL; table_len];
        self.shift = 64 - table_len.trailing_zeros();
        let mask = table_len - 1;
        for (at, slot) in self.slots.iter().enumerate() {
            if slot.key.is_none() {
                continue;
            }
            let mut position = ((slot.hash as u64).wrapping_mul(SPREAD) >> self.shift) as usize;
            while self.table[position] != NIL {
                position = (position + 1) & mask;
            }
            self.table[position] = at as u32;
        }
        self.generation = self.generation.wrapping_add(1);
    }
}

/// A value borrowed by one caller at a time (invariant 3).
struct Borrowed<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a `Guard`, and at most one `Guard` exists at a
// time: `busy` is taken under the GIL or by a compare-and-swap (invariant 3) and released by
// the guard's drop; so a `T` that may move between threads may be shared through a
// `Borrowed`.
unsafe impl<T: Send> Sync for Borrowed<T> {}

impl<T> Borrowed<T> {
    fn new(value: T) -> Borrowed<T> {
        Borrowed {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the borrow, or raises if it is taken. With the GIL, a plain load and store, no
    /// locked instruction: the flag only ever changes with the GIL held, which orders it.
    #[cfg(not(Py_GIL_DISABLED))]
    #[inline]
    fn borrow(&self) -> PyResult<Guard<'_, T>> {
        if self.busy.load(Ordering::Relaxed) {
            return Err(busy());
        }
        self.busy.store(true, Ordering::Relaxed);
        Ok(Guard { owner: self })
    }

    /// Takes the borrow if it is free.
    #[cfg(not(Py_GIL_DISABLED))]
    #[inline]
    fn try_borrow(&self) -> Option<Guard<'_, T>> {
        if self.busy.load(Ordering::Relaxed) {
            return None;
        }
        self.busy.store(true, Ordering::Relaxed);
        Some(Guard { owner: self })
    }

    /// Takes the borrow if it is free.
    #[cfg(Py_GIL_DISABLED)]
    #[inline]
    fn try_borrow(&self) -> Option<Guard<'_, T>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Guard { owner: self })
    }

    /// Takes the borrow, waiting for another thread's (a free-threaded interpreter: no
    /// borrow runs Python code or waits, invariant 1, so it is short).
    #[cfg(Py_GIL_DISABLED)]
    #[inline]
    fn borrow(&self) -> PyResult<Guard<'_, T>> {
        let mut spins = 0u32;
        while self
            .busy
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Ok(Guard { owner: self })
    }
}

#[cold]
fn busy() -> PyErr {
    PyRuntimeError::new_err("the memory cache was re-entered from inside one of its own operations")
}

/// The one borrow of a `Borrowed`.
struct Guard<'a, T> {
    owner: &'a Borrowed<T>,
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard holds `busy`, so no other reference to the value exists.
        unsafe { &*self.owner.value.get() }
    }
}

impl<T> std::ops::DerefMut for Guard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference through it.
        unsafe { &mut *self.owner.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.owner.busy.store(false, Ordering::Release);
    }
}

/// The type exported as `consort.CachedFunction`: a subclass of `_CachedFunctionBase` whose
/// only change is its `tp_call`, `call_slot`, which runs [`CachedFunction::call`] without
/// PyO3's argument extraction (the positional arguments arrive as the tuple the key is made
/// of; the keyword arguments as a dict or NULL). Everything else (construction, `__get__`,
/// the methods, the instance dict, deallocation) is inherited. Made once, at module import.
pub(crate) fn call_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    let base = py.get_type::<CachedFunction>();
    // SAFETY: `base` is a live type object; `Py_tp_call` is a valid slot id, whose value is
    // NULL or a `ternaryfunc`.
    let base_call = unsafe {
        let slot = pyo3::ffi::PyType_GetSlot(base.as_type_ptr(), pyo3::ffi::Py_tp_call);
        std::mem::transmute::<*mut std::ffi::c_void, Option<pyo3::ffi::ternaryfunc>>(slot)
    };
    if base_call.is_none() {
        return Err(PyRuntimeError::new_err(
            "_CachedFunctionBase has no __call__",
        ));
    }
    let _ = BASE_CALL.set(base_call);
    let mut slots = [
        pyo3::ffi::PyType_Slot {
            slot: pyo3::ffi::Py_tp_call,
            pfunc: call_slot as *mut std::ffi::c_void,
        },
        pyo3::ffi::PyType_Slot {
            slot: pyo3::ffi::Py_tp_doc,
            pfunc: CALL_TYPE_DOC.as_ptr() as *mut std::ffi::c_void,
        },
        pyo3::ffi::PyType_Slot::default(),
    ];
    let mut spec = pyo3::ffi::PyType_Spec {
        // CPython keeps this pointer as the type's `tp_name`: a static string.
        name: c"consort.CachedFunction".as_ptr(),
        basicsize: 0,
        itemsize: 0,
        flags: pyo3::ffi::Py_TPFLAGS_DEFAULT as std::ffi::c_uint,
        slots: slots.as_mut_ptr(),
    };
    let bases = PyTuple::new(py, [base])?;
    // SAFETY: `spec` and `slots` are valid for the call (CPython copies the slots and the
    // doc; the name is static), the slot array ends with the zeroed sentinel, `call_slot`
    // has the `ternaryfunc` signature, and `bases` is a tuple of one type object. The result
    // is a new reference or NULL with an exception set, which `from_owned_ptr_or_err` takes.
    let made = unsafe {
        let ty = pyo3::ffi::PyType_FromSpecWithBases(&mut spec, bases.as_ptr());
        Bound::from_owned_ptr_or_err(py, ty)?
    };
    Ok(made.cast_into::<PyType>()?)
}

/// The subclass's own docstring (the base's says the rest; `help()` shows both).
const CALL_TYPE_DOC: &std::ffi::CStr = c"CachedFunction(fn_obj, max_size, ttl=None)\n--\n\nAn in-process cache of a function's results (the memory backend of consort.cache): the very objects returned, keyed by hash and ==, exactly max_size entries, SIEVE eviction, thread-safe.";

/// `tp_call` of `consort.CachedFunction`: a hit on a plain positional key is answered
/// without PyO3's trampoline (`CachedFunction::fast_hit`); anything else goes through the
/// base class's `tp_call` (PyO3's trampoline, so reference counts drop at once, errors
/// are raised and a panic is an exception, never an abort).
unsafe extern "C" fn call_slot(
    slf: *mut pyo3::ffi::PyObject,
    args: *mut pyo3::ffi::PyObject,
    kwargs: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    // SAFETY: CPython calls `tp_call` with the GIL held (this thread is attached), `slf` an
    // instance of the subclass (so of `CachedFunction`'s layout), `args` a tuple and
    // `kwargs` NULL or a dict, all borrowed for the duration of the call.
    let (py, no_keywords) = unsafe {
        (
            Python::assume_attached(),
            kwargs.is_null() || pyo3::ffi::PyDict_Size(kwargs) == 0,
        )
    };
    if no_keywords {
        // SAFETY: as above.
        let (function, args_tuple) = unsafe {
            (
                pyo3::Borrowed::from_ptr(py, slf).cast_unchecked::<CachedFunction>(),
                pyo3::Borrowed::from_ptr(py, args).cast_unchecked::<PyTuple>(),
            )
        };
        let function = function.get();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            function.fast(py, &args_tuple)
        })) {
            Ok(Fast::Hit(value)) => return value,
            Ok(Fast::Absent(hash)) => {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    function.fast_miss(py, &args_tuple, hash)
                }));
                return outcome.unwrap_or_else(|_| {
                    // SAFETY: the GIL is held; the message is a valid C string.
                    unsafe {
                        pyo3::ffi::PyErr_SetString(
                            pyo3::ffi::PyExc_RuntimeError,
                            c"consort's memory cache failed (a bug: a panic)".as_ptr(),
                        );
                    }
                    std::ptr::null_mut()
                });
            }
            Ok(Fast::Other) | Err(_) => {}
        }
    }
    // The full path is the base class's `tp_call`: PyO3's trampoline (attach count,
    // argument extraction, panics and errors turned into exceptions), then `call`.
    let base_call = BASE_CALL.get().copied().flatten();
    match base_call {
        // SAFETY: the base's `tp_call` slot, called with the arguments CPython gave us.
        Some(base_call) => unsafe { base_call(slf, args, kwargs) },
        None => {
            // Not reachable: `call_type` sets it before the type exists.
            // SAFETY: the GIL is held; the message is a valid C string.
            unsafe {
                pyo3::ffi::PyErr_SetString(
                    pyo3::ffi::PyExc_RuntimeError,
                    c"consort.CachedFunction has no base call".as_ptr(),
                );
            }
            std::ptr::null_mut()
        }
    }
}

/// `_CachedFunctionBase`'s `tp_call` (PyO3's), read once by `call_type`.
static BASE_CALL: std::sync::OnceLock<Option<pyo3::ffi::ternaryfunc>> = std::sync::OnceLock::new();

/// What the fast path found for a plain positional key.
enum Fast {
    /// A live entry: a new reference to its value.
    Hit(*mut pyo3::ffi::PyObject),
    /// No entry (every candidate compared inside the borrow): the key's hash.
    Absent(isize),
    /// Anything else: the full path decides.
    Other,
}

/// What a plain probe of the table found.
enum PlainProbe {
    Found(u32),
    Absent,
    /// A candidate that needs the full path (a key that is not plain, an error).
    Other,
}

impl Store {
    /// Walks the table for a plain positional key (invariant 1: compares plain keys only).
    /// No `Py` is dropped and no `PyErr` made (see `CachedFunction::fast`).
    #[inline]
    fn plain_probe(&self, args: &Bound<'_, PyAny>, hash: isize) -> PlainProbe {
        let mask = self.table.len() - 1;
        let mut position = self.home(hash);
        loop {
            let at = self.table[position];
            if at == NIL {
                return PlainProbe::Absent;
            }
            let slot = &self.slots[at as usize];
            if slot.hash == hash {
                let Some(stored) = slot.key.as_ref() else {
                    return PlainProbe::Other;
                };
                if stored.as_ptr() == args.as_ptr() {
                    return PlainProbe::Found(at);
                }
                if !slot.plain {
                    return PlainProbe::Other;
                }
                // SAFETY: both are live objects, the GIL is held; both keys are plain, so
                // the comparison runs no Python code (invariant 1); -1 sets an error, cleared
                // here (the full path compares again and raises it).
                match unsafe {
                    pyo3::ffi::PyObject_RichCompareBool(
                        args.as_ptr(),
                        stored.as_ptr(),
                        pyo3::ffi::Py_EQ,
                    )
                } {
                    1 => return PlainProbe::Found(at),
                    0 => {}
                    _ => {
                        // SAFETY: the GIL is held.
                        unsafe { pyo3::ffi::PyErr_Clear() };
                        return PlainProbe::Other;
                    }
                }
            }
            position = (position + 1) & mask;
        }
    }
}

impl CachedFunction {
    /// The lookup for positional arguments made of exact built-in scalars, without PyO3's
    /// trampoline: it must drop no `Py` (PyO3 would defer the decref to its pool, which only
    /// an attached call drains) and make no `PyErr`: it borrows, increments one reference
    /// count on a hit, and clears any error it provokes (the full path then raises it).
    #[inline]
    fn fast(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> Fast {
        if !args.iter_borrowed().all(|item| is_plain(&item)) {
            return Fast::Other;
        }
        // SAFETY: `args` is a live tuple and the GIL is held; -1 means an error is set, which
        // is cleared (the full path hashes again and raises it).
        let hash = unsafe { pyo3::ffi::PyObject_Hash(args.as_ptr()) };
        if hash == -1 {
            // SAFETY: the GIL is held.
            unsafe { pyo3::ffi::PyErr_Clear() };
            return Fast::Other;
        }
        let Some(mut store) = self.store.try_borrow() else {
            return Fast::Other;
        };
        let at = match store.plain_probe(args.as_any(), hash) {
            PlainProbe::Found(at) => at,
            PlainProbe::Absent => return Fast::Absent(hash),
            PlainProbe::Other => return Fast::Other,
        };
        if self.ttl.is_some() && self.now() >= store.slots[at as usize].expires {
            return Fast::Other;
        }
        store.hits += 1;
        let slot = &mut store.slots[at as usize];
        slot.visited = true;
        match slot.value.as_ref() {
            Some(value) => Fast::Hit(value.clone_ref(py).into_ptr()),
            None => Fast::Other,
        }
    }

    /// The miss after `fast` found the key absent: counts it, calls the function, stores the
    /// result (unless someone stored the key meanwhile), and returns it as a new reference,
    /// or NULL with the function's exception set. The same rules as `fast`: whatever the
    /// store lets go of is released with `Py_DecRef` after the borrow.
    fn fast_miss(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        hash: isize,
    ) -> *mut pyo3::ffi::PyObject {
        if let Some(mut store) = self.store.try_borrow() {
            store.misses += 1;
        }
        // SAFETY: the function and `args` are live, the GIL is held; the result is a new
        // reference or NULL with the function's exception set, returned as it is.
        let result = unsafe {
            pyo3::ffi::PyObject_Call(self.function.as_ptr(), args.as_ptr(), std::ptr::null_mut())
        };
        if result.is_null() {
            return result;
        }
        let expires = match self.ttl {
            Some(ttl) => self.now().saturating_add(ttl.as_nanos() as u64),
            None => u64::MAX,
        };
        let mut released: [Option<Py<PyAny>>; 2] = [None, None];
        if let Some(mut store) = self.store.try_borrow() {
            match store.plain_probe(args.as_any(), hash) {
                PlainProbe::Absent => {
                    if store.len >= self.capacity {
                        released = store.evict();
                    }
                    // SAFETY: `result` is a live object (we hold a reference); this takes
                    // another, for the store.
                    let value = unsafe { Bound::from_borrowed_ptr(py, result) }.unbind();
                    store.insert(hash, args.clone().into_any().unbind(), true, value, expires);
                }
                PlainProbe::Found(at) => {
                    let slot = &mut store.slots[at as usize];
                    if self.ttl.is_some() && self.now() >= slot.expires {
                        // SAFETY: as above.
                        let value = unsafe { Bound::from_borrowed_ptr(py, result) }.unbind();
                        slot.expires = expires;
                        slot.visited = false;
                        released[0] = slot.value.replace(value);
                    }
                }
                // Stored by nobody: a rare candidate that needs the full path's comparison.
                PlainProbe::Other => {}
            }
        }
        for object in released.into_iter().flatten() {
            // SAFETY: an owned reference the store let go of, released with the GIL held and
            // the store free (invariant 1); `into_ptr` keeps PyO3's drop (and its pool) out.
            unsafe { pyo3::ffi::Py_DecRef(object.into_ptr()) };
        }
        result
    }
}
