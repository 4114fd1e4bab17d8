"""``consort.cache``: a memoizing decorator, a drop-in for warp_cache 0.7's ``cache``.

Two backends, chosen per decorator:

- ``"memory"`` (the default, as in warp_cache): an in-process cache of Python objects
  (:class:`CachedFunction`, in Rust): no serialization, a hit returns the very object stored,
  keys compared as ``functools.lru_cache`` compares them.
- ``"shared"``: consort's crash-consistent shared-memory cache
  (:class:`consort.SharedCachedFunction`), shared by every process that decorates the same
  function (same module and qualified name), whatever ``PYTHONHASHSEED`` is.

Both evict with SIEVE and hold exactly ``max_size`` entries. Every wrapper carries
``functools.update_wrapper`` metadata (``__wrapped__``, ``__name__``, the signature), binds
as a method, and has ``cache_info()``, ``cache_clear()``, ``get(*args, **kw)`` and
``set(value, *args, **kw)``. ``async def`` functions get a coroutine-function wrapper with
single-flight: concurrent calls on one key in one event loop compute once.

Where warp_cache 0.7 has bugs, consort does the right thing instead; the differences are
listed in ``docs/design/python-cache.md`` (Part 2).
"""

from __future__ import annotations

import asyncio
import copyreg
import enum
import functools
import hashlib
import inspect
import math
import pickle
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from consort import _core
from consort._core import CacheInfo, CachedFunction, SharedCacheInfo

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

MAX_SIZE = 1 << 30
"""The largest ``max_size`` of either backend."""

MAX_ITEM = 1 << 24
"""The largest ``max_key_size`` / ``max_value_size`` (consort-cache's item limit, 16 MiB)."""

DEFAULT_MAX_KEY_SIZE = 512
DEFAULT_MAX_VALUE_SIZE = 4096

__all__ = [
    "AsyncCachedFunction",
    "Backend",
    "BaseCacheInfo",
    "CacheInfo",
    "CachedCallable",
    "CachedFunction",
    "SharedCacheInfo",
    "SharedCachedFunction",
    "cache",
    "cache_name",
]


class Backend(enum.IntEnum):
    """Where ``consort.cache`` keeps results (warp_cache's ``Backend``, same values)."""

    MEMORY = 0
    """In this process, as Python objects."""
    SHARED = 1
    """In shared memory, for every process that decorates the same function."""


@runtime_checkable
class BaseCacheInfo(Protocol):
    """What both backends' ``cache_info()`` results have (``isinstance`` works)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def current_size(self) -> int: ...


class CachedCallable(Protocol[_P, _R_co]):
    """A cached function, for type checkers: the wrapped signature and the cache's methods."""

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...
    def cache_info(self) -> BaseCacheInfo: ...
    def cache_clear(self) -> None: ...


_BACKEND_NAMES = {"memory": Backend.MEMORY, "shared": Backend.SHARED}


def _resolve_backend(backend: object) -> Backend:
    """A ``Backend``, its int, or ``"memory"``/``"shared"``, with warp_cache's errors."""
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, int):
        return Backend(backend)
    if isinstance(backend, str):
        try:
            return _BACKEND_NAMES[backend]
        except KeyError:
            raise ValueError(f"Unknown backend: {backend!r}. Use 'memory' or 'shared'.") from None
    raise TypeError(f"backend must be a Backend, int, or str, got {type(backend).__name__}")


def _check_max_size(max_size: object, backend: Backend) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"max_size must be an int, got {type(max_size).__name__}")
    where = "the shared backend" if backend == Backend.SHARED else "the memory backend"
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1 for {where}")
    if max_size > MAX_SIZE:
        raise ValueError(f"max_size must be <= {MAX_SIZE} for {where} (got {max_size})")
    return max_size


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, got {type(ttl).__name__}")
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive, finite number of seconds or None (got {ttl!r})")
    return ttl


def _check_limit(what: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1 (got {value})")
    if value > MAX_ITEM:
        raise ValueError(f"{what} must be <= {MAX_ITEM} (got {value})")
    return value


# ── names ───────────────────────────────────────────────────────────────────


def _slug(text: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)


def _code_digest(code: types.CodeType, into: Any) -> None:
    into.update(code.co_code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, into)
        else:
            into.update(repr(const).encode("utf-8", "surrogatepass"))
        into.update(b"\0")


def cache_name(fn: Callable[..., Any]) -> str:
    """The shared cache name ``consort.cache`` derives from a function.

    ``module.qualname`` with every character outside ``[A-Za-z0-9._-]`` made ``_`` (so
    ``outer.<locals>.inner`` reads ``outer._locals_.inner``), cut to 111 characters, then
    ``-`` and 16 hex digits of a hash of the exact module and qualified name. A function of
    the main script is named as ``__main__`` also in a ``spawn`` child (which imports it as
    ``__mp_main__``), and a lambda's hash also covers its first line and its code, so two
    lambdas of one function do not share a cache.
    """
    module = getattr(fn, "__module__", None) or "unknown"
    if module == "__mp_main__":
        module = "__main__"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "unknown"
    extra = ""
    if "<lambda>" in qualname:
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if isinstance(code, types.CodeType):
            digest = hashlib.blake2b(digest_size=16)
            _code_digest(code, digest)
            extra = f"{code.co_firstlineno}:{digest.hexdigest()}"
    exact = "\0".join((module, qualname, extra)).encode("utf-8", "surrogatepass")
    tag = hashlib.blake2b(exact, digest_size=8).hexdigest()
    readable = (_slug(module) + "." + _slug(qualname))[:111]
    if readable.startswith("."):
        readable = "f" + readable[:110]
    return f"{readable}-{tag}"


# ── the wrappers ────────────────────────────────────────────────────────────


def _reduce_by_name(wrapper: Any) -> str:
    """Pickles a cached function as a reference to its module-level name (as functions
    pickle), so ``multiprocessing`` can hand it to a ``spawn`` child."""
    try:
        return str(wrapper.__qualname__)
    except AttributeError:
        raise pickle.PicklingError(f"cannot pickle {wrapper!r}: it has no __qualname__") from None


copyreg.pickle(CachedFunction, _reduce_by_name)
copyreg.pickle(_core.SharedCachedFunction, _reduce_by_name)


class _NativeFactoryMeta(type):
    """``isinstance(x, SharedCachedFunction)`` holds for the native objects it makes."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _core.SharedCachedFunction)


class SharedCachedFunction(metaclass=_NativeFactoryMeta):
    """warp_cache's low-level ``SharedCachedFunction``, over consort's shared cache.

    ``SharedCachedFunction(fn_obj, max_size, ttl=None, max_key_size=512, max_value_size=4096,
    shm_name=None)`` returns a :class:`consort.SharedCachedFunction` (the native wrapper)
    carrying ``fn_obj``'s metadata (``functools.update_wrapper``). Without ``shm_name`` the
    cache is named by :func:`cache_name`, as ``consort.cache(backend="shared")`` names it;
    with it, the name is used as given (``ValueError`` unless it is 1 to 128 characters of
    ``[A-Za-z0-9._-]`` not starting with ``.``). A cache of the name with other parameters
    is recreated (a memo is disposable). Coroutine functions are not detected (as in
    warp_cache): use :func:`cache`.
    """

    def __new__(
        cls,
        fn_obj: Callable[..., Any],
        max_size: int,
        ttl: float | None = None,
        max_key_size: int = DEFAULT_MAX_KEY_SIZE,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        shm_name: str | None = None,
        *,
        dir: Any = None,
    ) -> Any:
        _check_max_size(max_size, Backend.SHARED)
        _check_ttl(ttl)
        _check_limit("max_key_size", max_key_size)
        _check_limit("max_value_size", max_value_size)
        name = cache_name(fn_obj) if shm_name is None else shm_name
        native = _core.SharedCachedFunction(
            fn_obj, max_size, ttl, max_key_size, max_value_size, name, dir=dir
        )
        return _wrap(native, fn_obj)


def _wrap(wrapper: Any, fn: Any) -> Any:
    try:
        functools.update_wrapper(wrapper, fn)
    except AttributeError:  # a callable without a __dict__ to copy: keep what was copied
        pass
    return wrapper


_MISSING = object()
_RETRY = object()
"""What a failed or cancelled leader hands its waiters: look again, one of you leads."""


def _memory_flight_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return (args, tuple(sorted(kwargs.items()))) if kwargs else args


def _shared_flight_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # The shared backend tells 1, 1.0 and True apart and takes unhashable arguments: so
    # does its flight key (pickle's bytes; two equal objects that pickle differently only
    # miss the coalescing, never share a wrong result).
    try:
        return pickle.dumps((args, sorted(kwargs.items())), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # unpicklable: the call itself will say so; no coalescing
        return object()


class AsyncCachedFunction(Protocol[_P, _R]):
    """What ``consort.cache`` returns for an ``async def`` function (for type checkers).

    It is an ``async def`` function (``inspect.iscoroutinefunction`` is true) with
    ``functools.wraps`` metadata and the cache's methods; ``get`` and ``set`` are sync.
    """

    __wrapped__: Callable[_P, Any]

    async def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...
    def cache_info(self) -> BaseCacheInfo: ...
    def cache_clear(self) -> None: ...
    def get(self, *args: _P.args, **kwargs: _P.kwargs) -> _R | None: ...
    def set(self, value: _R, *args: _P.args, **kwargs: _P.kwargs) -> None: ...


def _async_wrapper(fn: Callable[..., Any], inner: Any, flight_key: Callable[..., Any]) -> Any:
    """An ``async def`` wrapper over ``inner`` (a sync wrapper whose ``__call__`` is never
    used), with single-flight per (event loop, key)."""
    flights: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Future[Any]]]
    flights = weakref.WeakKeyDictionary()
    probe = inner._probe
    store = inner.set
    # A waiter is given the leader's result: one hit, whether or not that result could be
    # stored (too big, unpicklable) or is still there.
    record = inner._record

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        key = _MISSING
        while True:
            table = flights.get(loop)
            if table:
                if key is _MISSING:
                    key = flight_key(args, kwargs)
                future = table.get(key)
                if future is not None:
                    # shield: a waiter's cancellation must not cancel everyone's flight.
                    result = await asyncio.shield(future)
                    if result is _RETRY:
                        continue
                    record(True)
                    return result
            hit, value = probe(*args, **kwargs)
            if hit:
                return value
            if key is _MISSING:
                key = flight_key(args, kwargs)
            if table is None:
                table = flights.setdefault(loop, {})
            future = loop.create_future()
            table[key] = future
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                future.set_result(_RETRY)
                raise
            else:
                future.set_result(result)  # the waiters have it before it is stored
            finally:
                if table.get(key) is future:
                    del table[key]
            store(result, *args, **kwargs)
            return result

    wrapper.cache_info = inner.cache_info  # type: ignore[attr-defined]
    wrapper.cache_clear = inner.cache_clear  # type: ignore[attr-defined]
    wrapper.get = inner.get  # type: ignore[attr-defined]
    wrapper.set = inner.set  # type: ignore[attr-defined]
    wrapper._probe = inner._probe  # type: ignore[attr-defined]
    return wrapper


def cache(
    max_size: int = 128,
    ttl: float | None = None,
    backend: str | int | Backend = "memory",
    max_key_size: int | None = None,
    max_value_size: int | None = None,
) -> Callable[[Callable[_P, _R]], CachedCallable[_P, _R]]:
    """A decorator caching a function's results (warp_cache 0.7's ``cache``, compatible).

    ::

        @consort.cache(max_size=256)                    # in this process
        def parse(text): ...

        @consort.cache(max_size=4096, backend="shared") # shared by every process
        def embed(word): ...

    The wrapped function has ``cache_info()`` (``CacheInfo(hits, misses, max_size,
    current_size)``, plus ``oversize_skips`` for the shared backend), ``cache_clear()``
    (on the shared backend: for every process), ``get(*args, **kw)`` (the cached result or
    ``None``; counts a hit or a miss; never calls the function) and ``set(value, *args,
    **kw)``. It keeps the function's ``__name__``, ``__doc__``, ``__wrapped__`` and
    signature, and binds as a method (the instance is then part of the key). An ``async
    def`` function gets an ``async def`` wrapper whose concurrent calls on one key, in one
    event loop, compute once (the others await the first's result; an exception reaches only
    the call that raised it, and another call then computes).

    Keys are the positional arguments plus the keyword arguments sorted by name (not bound
    to the signature: ``f(1)`` and ``f(x=1)`` are two keys). The memory backend compares
    them with ``hash`` and ``==`` (``1``, ``1.0`` and ``True`` are one key; unhashable
    arguments raise ``TypeError``); the shared one encodes them (``1``, ``1.0`` and ``True``
    are three keys; anything not built in is pickled).

    Args:
        max_size: how many results fit, exactly: 1 to 2**30. Eviction is SIEVE.
        ttl: seconds a result lives (positive, finite); ``None``: until evicted.
        backend: ``"memory"`` (default), ``"shared"``, or a :class:`Backend` or its int.
        max_key_size: shared backend: the longest encoded key in bytes (default 512).
        max_value_size: shared backend: the longest encoded result in bytes (default
            4096). A result over either limit is returned and counted in
            ``oversize_skips``, never stored. The memory backend warns and ignores both.

    The shared cache is named after the function's module and qualified name
    (:func:`cache_name`); its file is ``<dir>/<name>.cache`` in ``$CONSORT_CACHE_DIR`` or
    ``/dev/shm/consort-cache-<uid>``, 0600 in a 0700 directory. Decorating a function whose
    cache exists with other parameters recreates it (processes holding the old one reopen).

    Raises:
        ValueError: an unknown backend, ``max_size`` below 1 or above 2**30, a ``ttl`` that
            is not positive and finite, a size limit out of 1 to 2**24.
        TypeError: an argument of the wrong type.
    """
    resolved = _resolve_backend(backend)
    _check_max_size(max_size, resolved)
    _check_ttl(ttl)
    _check_limit("max_key_size", max_key_size)
    _check_limit("max_value_size", max_value_size)

    def decorator(fn: Callable[_P, _R]) -> CachedCallable[_P, _R]:
        if not callable(fn):
            raise TypeError(f"consort.cache decorates a callable, not a {type(fn).__name__}")
        if resolved == Backend.SHARED:
            inner = SharedCachedFunction(
                fn,
                max_size,
                ttl,
                DEFAULT_MAX_KEY_SIZE if max_key_size is None else max_key_size,
                DEFAULT_MAX_VALUE_SIZE if max_value_size is None else max_value_size,
            )
            flight_key = _shared_flight_key
        else:
            if max_key_size is not None:
                warnings.warn("max_key_size has no effect with the memory backend", stacklevel=2)
            if max_value_size is not None:
                warnings.warn("max_value_size has no effect with the memory backend", stacklevel=2)
            inner = _wrap(CachedFunction(fn, max_size, ttl), fn)
            flight_key = _memory_flight_key
        if inspect.iscoroutinefunction(inspect.unwrap(fn)):
            return _async_wrapper(fn, inner, flight_key)  # type: ignore[no-any-return]
        return inner  # type: ignore[no-any-return]

    return decorator
