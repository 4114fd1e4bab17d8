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
//!
//! # The vectorcall type (invariants)
//! 1. `consort.SharedCachedFunction` is a subclass of the PyO3 class
//!    `_SharedCachedFunctionBase` (made by [`call_type`] with `PyType_FromSpecWithBases`),
//!    one word larger: that word, at `FAST.offset` (the base's `__basicsize__`), holds
//!    [`vectorcall_slot`], written by the subclass's `tp_new` right after the base's
//!    `tp_new` made the object; the type's `__vectorcalloffset__` names it. CPython reads a
//!    NULL there (an object made by the base's `tp_new` called directly) as "no vectorcall"
//!    and uses `tp_call` (the base's, PyO3's), so that case is slower, never wrong.
//! 2. A vectorcall runs inside PyO3's own trampoline (`fastcall_cfunction_with_keywords`):
//!    attach count, errors raised, a panic made an exception, as any PyO3 method; only the
//!    argument extraction and the `*args` tuple are skipped. A call with positional
//!    arguments that all have a tagged encoding (`codec::encode_positional`, byte for byte
//!    the key `encode_call` makes of their tuple) is answered from the slice CPython
//!    passed; a miss calls the function by vectorcall with that same slice. Anything else
//!    (keywords, an argument to pickle) makes the tuple and dict `tp_call` would have made
//!    and runs `__call__`.
//! 3. Every object is made through the subclass: `Memoize` makes its functions by calling
//!    the type with a [`Pending`] holding the Rust value, so `type(f)` is always
//!    `consort.SharedCachedFunction` (pickling's copyreg entry, `isinstance`).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use consort_cache::Config;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

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
#[pyclass(
    frozen,
    dict,
    weakref,
    subclass,
    name = "_SharedCachedFunctionBase",
    module = "consort"
)]
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
        if let Ok(pending) = fn_obj.cast::<Pending>() {
            return pending.get().take();
        }
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

    /// `__call__` for the positional arguments of a vectorcall (invariant 2): `None` when
    /// one of them has no tagged encoding (the caller takes the general path).
    #[inline]
    fn call_positional<'a, 'py: 'a>(
        &self,
        py: Python<'py>,
        positional: impl ExactSizeIterator<Item = Borrowed<'a, 'py, PyAny>>,
        args: *const *mut pyo3::ffi::PyObject,
        nargsf: usize,
    ) -> PyResult<Option<Py<PyAny>>> {
        let mut key = Buf::new();
        if !self.prefix.is_empty() {
            key.push(&self.prefix);
        }
        if !codec::encode_positional(positional, &mut key)? {
            return Ok(None);
        }
        // As `__call__`: the cache's own limits, the shared oversize count.
        let cache = self.holder.cache(py)?;
        if key.len() > cache.max_key() {
            cache.count_oversize();
            return Ok(Some(self.vectorcall_function(py, args, nargsf)?.unbind()));
        }
        if let Some(value) = lookup(py, &cache, &key)? {
            return Ok(Some(value));
        }
        let result = self.vectorcall_function(py, args, nargsf)?;
        self.store(py, &key, &result)?;
        Ok(Some(result.unbind()))
    }

    /// Calls the wrapped function with the positional arguments of a vectorcall.
    #[inline]
    fn vectorcall_function<'py>(
        &self,
        py: Python<'py>,
        args: *const *mut pyo3::ffi::PyObject,
        nargsf: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `args` and `nargsf` are what CPython passed to our vectorcall (valid for
        // the call; the offset flag, if set, lets the callee use `args[-1]` as we may); no
        // keywords; the GIL is held. The result is a new reference or NULL with an error.
        unsafe {
            let result =
                PyObject_VectorcallDict(self.function.as_ptr(), args, nargsf, std::ptr::null_mut());
            Bound::from_owned_ptr_or_err(py, result)
        }
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
        {
            let cache = self.holder.cache(py)?;
            if encoded.len() > cache.max_value() {
                cache.count_oversize();
                return Ok(());
            }
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

/// A `SharedCachedFunction` on its way into an object of the vectorcall type (invariant 3):
/// `Memoize` passes one as `fn_obj` to the type, whose constructor takes the value out.
#[pyclass(frozen, module = "consort")]
pub(crate) struct Pending(std::sync::Mutex<Option<SharedCachedFunction>>);

impl Pending {
    fn take(&self) -> PyResult<SharedCachedFunction> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| PyValueError::new_err("a pending shared cached function was used twice"))
    }
}

/// `value` as an object of `consort.SharedCachedFunction` (the vectorcall type).
pub(crate) fn instantiate(py: Python<'_>, value: SharedCachedFunction) -> PyResult<Py<PyAny>> {
    let Some(fast) = FAST.get() else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "consort.SharedCachedFunction is not made yet",
        ));
    };
    let pending = Bound::new(py, Pending(std::sync::Mutex::new(Some(value))))?;
    Ok(fast.ty.bind(py).call1((pending, 1))?.unbind())
}

/// What the vectorcall type needs at run time, set once by [`call_type`].
struct Fast {
    /// Where the vectorcall pointer lives in an object (invariant 1).
    offset: usize,
    /// The base's `tp_new` (PyO3's).
    base_new: pyo3::ffi::newfunc,
    /// The subclass itself.
    ty: Py<PyType>,
}

static FAST: std::sync::OnceLock<Fast> = std::sync::OnceLock::new();

/// `Py_TPFLAGS_HAVE_VECTORCALL` (in the limited API from 3.12; the flag and
/// `__vectorcalloffset__` work from 3.9 on).
const HAVE_VECTORCALL: std::ffi::c_ulong = 1 << 11;

/// `PY_VECTORCALL_ARGUMENTS_OFFSET`: the flag bit of `nargsf`.
const ARGUMENTS_OFFSET: usize = 1 << (usize::BITS - 1);

extern "C" {
    /// CPython's `PyObject_VectorcallDict` (exported from 3.9, in the limited API from
    /// 3.12; `PyObject_Vectorcall` is an inline function before 3.11).
    fn PyObject_VectorcallDict(
        callable: *mut pyo3::ffi::PyObject,
        args: *const *mut pyo3::ffi::PyObject,
        nargsf: usize,
        kwargs: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// The type exported as `consort.SharedCachedFunction` (invariant 1). Made once, at
/// module import.
pub(crate) fn call_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    let base = py.get_type::<SharedCachedFunction>();
    let base_size: usize = base.getattr("__basicsize__")?.extract()?;
    let offset = base_size.next_multiple_of(std::mem::align_of::<pyo3::ffi::vectorcallfunc>());
    let size = offset + std::mem::size_of::<pyo3::ffi::vectorcallfunc>();
    // SAFETY: `base` is a live type object; `Py_tp_new` is a valid slot id, whose value is
    // NULL or a `newfunc`.
    let base_new = unsafe {
        let slot = pyo3::ffi::PyType_GetSlot(base.as_type_ptr(), pyo3::ffi::Py_tp_new);
        std::mem::transmute::<*mut std::ffi::c_void, Option<pyo3::ffi::newfunc>>(slot)
    };
    let Some(base_new) = base_new else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "_SharedCachedFunctionBase has no __new__",
        ));
    };
    let mut members = [
        pyo3::ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: pyo3::ffi::Py_T_PYSSIZET,
            offset: offset as pyo3::ffi::Py_ssize_t,
            flags: pyo3::ffi::Py_READONLY,
            doc: std::ptr::null(),
        },
        pyo3::ffi::PyMemberDef::default(),
    ];
    let mut slots = [
        pyo3::ffi::PyType_Slot {
            slot: pyo3::ffi::Py_tp_new,
            pfunc: new_slot as *mut std::ffi::c_void,
        },
        pyo3::ffi::PyType_Slot {
            slot: pyo3::ffi::Py_tp_members,
            pfunc: members.as_mut_ptr().cast(),
        },
        pyo3::ffi::PyType_Slot {
            slot: pyo3::ffi::Py_tp_doc,
            pfunc: CALL_TYPE_DOC.as_ptr() as *mut std::ffi::c_void,
        },
        pyo3::ffi::PyType_Slot::default(),
    ];
    let mut spec = pyo3::ffi::PyType_Spec {
        // CPython keeps this pointer as the type's `tp_name`: a static string.
        name: c"consort.SharedCachedFunction".as_ptr(),
        basicsize: std::ffi::c_int::try_from(size)
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("basic size overflow"))?,
        itemsize: 0,
        flags: (pyo3::ffi::Py_TPFLAGS_DEFAULT | HAVE_VECTORCALL) as std::ffi::c_uint,
        slots: slots.as_mut_ptr(),
    };
    let bases = PyTuple::new(py, [base])?;
    // SAFETY: `spec`, `slots` and `members` are valid for the call (CPython copies the
    // slots, the members and the doc; the names are static), both arrays end with their
    // zeroed sentinel, `new_slot` has the `newfunc` signature, and `bases` is a tuple of one
    // type object. The result is a new reference or NULL with an exception set.
    let made = unsafe {
        let ty = pyo3::ffi::PyType_FromSpecWithBases(&mut spec, bases.as_ptr());
        Bound::from_owned_ptr_or_err(py, ty)?
    };
    let made = made.cast_into::<PyType>()?;
    let _ = FAST.set(Fast {
        offset,
        base_new,
        ty: made.clone().unbind(),
    });
    Ok(made)
}

/// The subclass's docstring (the base's says the rest).
const CALL_TYPE_DOC: &std::ffi::CStr = c"SharedCachedFunction(fn_obj, max_size, ttl=None, max_key_size=512, max_value_size=4096, shm_name=None, *, dir=None)\n--\n\nA function whose results are cached in shared memory, for every process.";

/// `tp_new` of the subclass: the base's, then the vectorcall pointer (invariant 1).
unsafe extern "C" fn new_slot(
    subtype: *mut pyo3::ffi::PyTypeObject,
    args: *mut pyo3::ffi::PyObject,
    kwargs: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    let Some(fast) = FAST.get() else {
        // Not reachable: `call_type` sets it before the type exists.
        // SAFETY: the GIL is held (CPython calls `tp_new` attached); a valid C string.
        unsafe {
            pyo3::ffi::PyErr_SetString(
                pyo3::ffi::PyExc_RuntimeError,
                c"consort.SharedCachedFunction is not ready".as_ptr(),
            );
        }
        return std::ptr::null_mut();
    };
    // SAFETY: the base's `tp_new`, called with what CPython gave us; `subtype` is this type
    // (it is not subclassable), whose objects are `offset` + one word long, so the word at
    // `offset` of a new object is ours and aligned for a function pointer.
    unsafe {
        let object = (fast.base_new)(subtype, args, kwargs);
        if !object.is_null() {
            object
                .cast::<u8>()
                .add(fast.offset)
                .cast::<pyo3::ffi::vectorcallfunc>()
                .write(vectorcall_slot);
        }
        object
    }
}

/// The vectorcall of `consort.SharedCachedFunction`, through PyO3's trampoline.
unsafe extern "C" fn vectorcall_slot(
    callable: *mut pyo3::ffi::PyObject,
    args: *const *mut pyo3::ffi::PyObject,
    nargsf: usize,
    kwnames: *mut pyo3::ffi::PyObject,
) -> *mut pyo3::ffi::PyObject {
    struct Def;
    impl
        pyo3::impl_::trampoline::MethodDef<
            pyo3::impl_::trampoline::fastcall_cfunction_with_keywords::Func,
        > for Def
    {
        const METH: pyo3::impl_::trampoline::fastcall_cfunction_with_keywords::Func = vectorcall;
    }
    // SAFETY: CPython calls a vectorcall attached, with these arguments; the trampoline
    // takes `nargsf` as a `Py_ssize_t` of the same size, and hands it back unchanged.
    unsafe {
        pyo3::impl_::trampoline::fastcall_cfunction_with_keywords::<Def>(
            callable,
            args,
            nargsf as pyo3::ffi::Py_ssize_t,
            kwnames,
        )
    }
}

/// The body of the vectorcall (invariant 2).
unsafe fn vectorcall(
    py: Python<'_>,
    callable: *mut pyo3::ffi::PyObject,
    args: *const *mut pyo3::ffi::PyObject,
    nargsf: pyo3::ffi::Py_ssize_t,
    kwnames: *mut pyo3::ffi::PyObject,
) -> PyResult<*mut pyo3::ffi::PyObject> {
    let nargsf = nargsf as usize;
    let nargs = nargsf & !ARGUMENTS_OFFSET;
    // SAFETY: `callable` is an object of the subclass (so of the base's layout), `kwnames`
    // NULL or a tuple of strings, `args` holds `nargs` positional arguments and then one
    // value per keyword name, all borrowed for the call; the GIL is held.
    let (function, kwnames) = unsafe {
        (
            Borrowed::from_ptr(py, callable).cast_unchecked::<SharedCachedFunction>(),
            Borrowed::from_ptr_or_opt(py, kwnames).map(|names| names.cast_unchecked::<PyTuple>()),
        )
    };
    let function = function.get();
    let keywords = kwnames.as_ref().map_or(0, |names| names.len());
    // SAFETY: as above: `nargs + keywords` valid object pointers, borrowed for the call.
    let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
    if keywords == 0 {
        let positional = (0..nargs).map(arg);
        if let Some(value) = function.call_positional(py, positional, args, nargsf)? {
            return Ok(value.into_ptr());
        }
    }
    let all: Vec<Borrowed<'_, '_, PyAny>> = (0..nargs + keywords).map(arg).collect();
    let tuple = PyTuple::new(py, &all[..nargs])?;
    let kwargs = match kwnames {
        Some(names) if keywords > 0 => {
            let dict = PyDict::new(py);
            for (name, value) in names.iter().zip(&all[nargs..]) {
                dict.set_item(name, value)?;
            }
            Some(dict)
        }
        _ => None,
    };
    Ok(function.__call__(py, &tuple, kwargs.as_ref())?.into_ptr())
}
