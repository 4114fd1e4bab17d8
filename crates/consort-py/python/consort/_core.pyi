"""Type stubs of consort's native module (kept by hand, as pydantic-core's)."""

import os
import pathlib
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, final, overload

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

MAX_SIZE: int
"""The largest ``max_size`` of the shared backend: 2**30."""

MAX_HANDLES: int
"""How many handles may have one cache open at once, all processes together (128)."""

class CacheError(RuntimeError):
    """A shared cache could not do what was asked (see the message)."""

class CacheCorruptError(CacheError):
    """The cache file is corrupt or was truncated under this process; recreate the cache."""

class CacheMismatchError(ValueError):
    """A cache of this name exists with other parameters; pass ``recreate=True`` to replace it."""

def _sigbus_guard_reassert() -> None:
    """Puts consort's SIGBUS guard back on top of a SIGBUS handler installed since."""

def _sigbus_guard_step_aside() -> None:
    """Puts back the SIGBUS disposition the guard replaced, until the reassert."""

def default_dir() -> pathlib.Path:
    """The directory caches live in when none is given.

    ``$CONSORT_CACHE_DIR`` when set, else ``/dev/shm/consort-cache-<uid>``; created 0700
    when a cache is first opened there.
    """

def derived_name(qualified: str) -> str:
    """The cache name the shared backend derives from a function's ``module.qualname``."""

@final
class SharedCache:
    """A mapping in shared memory, shared by every process that opens the same name.

    ``SharedCache(name, capacity)`` opens the cache ``name`` (the file
    ``<dir>/<name>.cache``), creating it if it does not exist. Every process that opens the
    same name in the same directory sees the same entries. Reads are lock-free and keep the
    GIL; writes release it while they may wait for another process.

    Keys and values: ``None``, ``bool``, ``int`` (any size), ``float``, ``str`` (lone
    surrogates included), ``bytes`` and tuples of them have a fixed binary encoding, so
    ``1``, ``1.0`` and ``True`` are three keys and a key means the same in every process
    whatever ``PYTHONHASHSEED`` is; anything else is pickled (types are taken exactly: an
    ``IntEnum`` member is pickled, and is not the key ``1``). With ``raw_bytes=True``,
    values must be ``bytes`` and are stored as they are.

    Eviction is SIEVE; ``capacity`` is exactly the number of entries that fit (a cache of
    fewer than 2,048 entries is one shard, with one eviction order over all its entries).

    Args:
        name: 1 to 128 characters of ``[A-Za-z0-9._-]``, not starting with ``.``.
        capacity: how many entries fit, 1 to 2**30.
        max_key: the longest encoded key, in bytes.
        max_value: the longest encoded value, in bytes.
        ttl: seconds an entry lives unless ``set`` gives it another TTL; ``None``: forever.
        dir: the directory of the cache file (default: :func:`default_dir`); it must be a
            0700 directory of this user's, and is created so if it does not exist.
        recreate: replace an existing cache of this name that was made with other
            parameters (other processes see theirs retired and reopen). Without it, such a
            cache raises :class:`CacheMismatchError`.
        raw_bytes: store ``bytes`` values as they are, without encoding.
        shards: the most independent writer locks to spread keys over (a cache under
            2,048 entries is one shard; a larger one uses the largest number up to this
            that divides ``capacity``).

    Raises:
        ValueError: a bad name or argument (the message names it and its bound).
        CacheMismatchError: the cache exists with other parameters.
        PermissionError: the directory or file is not private to this user.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        max_key: int = 512,
        max_value: int = 4096,
        ttl: float | None = None,
        dir: str | os.PathLike[str] | None = None,
        *,
        recreate: bool = False,
        raw_bytes: bool = False,
        shards: int = 8,
    ) -> None: ...
    @property
    def name(self) -> str:
        """The cache's name."""
    @property
    def capacity(self) -> int:
        """How many entries fit, exactly."""
    @property
    def max_key(self) -> int:
        """The longest encoded key, in bytes."""
    @property
    def max_value(self) -> int:
        """The longest encoded value, in bytes."""
    @property
    def ttl(self) -> float | None:
        """The default TTL in seconds, or ``None``."""
    @property
    def raw_bytes(self) -> bool:
        """Whether ``bytes`` values are stored as they are."""
    @property
    def path(self) -> pathlib.Path:
        """The cache file."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    def __getitem__(self, key: Any) -> Any:
        """The value of ``key``; ``KeyError`` if it has none (or it expired)."""
    def __setitem__(self, key: Any, value: Any) -> None:
        """Stores ``value`` under ``key`` with the default TTL.

        Raises ``ValueError`` when the encoded key or value is over ``max_key`` or
        ``max_value``, ``TypeError`` when the value cannot be encoded or pickled; nothing is
        stored then.
        """
    def __delitem__(self, key: Any) -> None:
        """Removes ``key``; ``KeyError`` if it has no entry."""
    def __contains__(self, key: Any) -> bool:
        """Whether ``key`` has an entry that has not expired."""
    def __len__(self) -> int:
        """How many entries ``get`` would find now: expired ones still stored are removed
        first (one pass over the cache, under each shard's lock in turn)."""
    @overload
    def get(self, key: Any) -> Any | None:
        """The value of ``key``, or ``None`` (or ``default``, if given) when it has none."""
    @overload
    def get(self, key: Any, default: _T) -> Any | _T: ...
    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Stores ``value`` under ``key``; ``ttl`` (seconds) overrides the default TTL."""
    def pop(self, key: Any, *default: Any) -> Any:
        """Removes ``key`` and returns its value; ``default`` if given, else ``KeyError``."""
    def clear(self) -> None:
        """Removes every entry (each shard atomically)."""
    def stats(self) -> dict[str, int]:
        """Counters summed over every process, and the fill.

        Keys: ``hits``, ``misses``, ``inserts``, ``evictions``, ``expirations``,
        ``recoveries`` (a dead writer's operation rolled back), ``oversize_skips`` (of its
        ``memoize`` functions), ``len``, ``capacity``.
        """
    def reset_stats(self) -> None:
        """Zeroes the hit and miss counters of every process."""
    def check(self) -> dict[str, int]:
        """Checks every structural invariant under each shard's lock.

        Returns ``{"shards": ..., "live": ..., "free": ...}``; raises
        :class:`CacheCorruptError` naming what is wrong.
        """
    def close(self) -> None:
        """Refuses every later call with ``ValueError``; the file stays for other processes.

        The mapping and file descriptor are released when the object is garbage-collected
        (another thread may still be inside a call).
        """
    def __enter__(self) -> SharedCache: ...
    def __exit__(self, *exc: object) -> bool: ...
    def memoize(
        self, ttl: float | None = None
    ) -> Callable[[Callable[_P, _R]], SharedCachedFunction[_P, _R]]:
        """A decorator caching a function's results in this cache.

        Keys are the function's ``module.qualname`` and its arguments, so several functions
        can share one cache; ``ttl`` (seconds) applies to the entries it stores. Results too
        large for ``max_value`` are returned and not stored.
        """

@final
class SharedCacheInfo:
    """What :meth:`SharedCachedFunction.cache_info` returns (warp_cache's, field for field)."""

    @property
    def hits(self) -> int:
        """Hits, summed over every process of the cache."""
    @property
    def misses(self) -> int:
        """Misses, summed over every process of the cache."""
    @property
    def max_size(self) -> int:
        """The capacity, exactly as asked."""
    @property
    def current_size(self) -> int:
        """Entries stored now."""
    @property
    def oversize_skips(self) -> int:
        """Results computed but not stored (key or value over its limit), in this process."""

@final
class SharedCachedFunction(Generic[_P, _R]):
    """A function whose results are cached in shared memory, for every process.

    The shared backend's hot path: the arguments are encoded in Rust (the same encoding as
    :class:`SharedCache` keys; keyword arguments sorted by name), a hit is decoded without
    pickle for the built-in types, and a miss calls the function and stores its result.
    A result whose encoded key or value is over ``max_key_size`` or ``max_value_size`` is
    returned and counted in ``oversize_skips``, never stored.

    The cache is named ``shm_name``, or after the function's ``module.qualname``
    (:func:`derived_name`); one with other parameters (size, key and value limits, TTL) is
    replaced, since a memo is disposable.

    Args:
        fn_obj: the function.
        max_size: how many results fit, 1 to 2**30 (``ValueError("max_size must be >= 1
            ...")`` / ``"max_size must be <= 1073741824 ..."`` otherwise).
        ttl: seconds a result lives; ``None``: until evicted.
        max_key_size: the longest encoded key, in bytes.
        max_value_size: the longest encoded result, in bytes.
        shm_name: the cache's name.
        dir: the directory of the cache file (default: :func:`default_dir`).
    """

    def __init__(
        self,
        fn_obj: Callable[_P, _R],
        max_size: int,
        ttl: float | None = None,
        max_key_size: int = 512,
        max_value_size: int = 4096,
        shm_name: str | None = None,
        *,
        dir: str | os.PathLike[str] | None = None,
    ) -> None: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """The cached result, or the function's (then stored)."""
    def get(self, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        """The cached result for these arguments, or ``None``; never calls the function."""
    def _probe(self, *args: _P.args, **kwargs: _P.kwargs) -> tuple[bool, _R | None]:
        """``(True, result)`` when cached, ``(False, None)`` otherwise."""
    def _record(self, hit: bool) -> None:
        """Counts one hit or miss without a lookup (an async waiter given its leader's result)."""
    def set(self, value: _R, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Stores ``value`` as the result for these arguments (skipped when oversize)."""
    def cache_info(self) -> SharedCacheInfo:
        """Hits, misses and oversize skips of every process, capacity, fill."""
    def cache_clear(self) -> None:
        """Removes every entry and zeroes the hit and miss counts for every process.

        For a function made by :meth:`SharedCache.memoize`, that is the whole cache's
        entries and counts, other functions' included.
        """
    # Binds as a method through an instance (the instance is then part of the key).
    @overload
    def __get__(self, instance: None, owner: type | None = None) -> SharedCachedFunction[_P, _R]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R]: ...
    @property
    def shm_name(self) -> str:
        """The cache's name (its file is ``<dir>/<name>.cache``)."""
    @property
    def cache_path(self) -> pathlib.Path:
        """The cache file."""

@final
class CacheInfo:
    """What :meth:`CachedFunction.cache_info` returns (warp_cache's ``CacheInfo``, field for
    field, with value equality and hashing)."""

    @property
    def hits(self) -> int:
        """Calls (and ``get`` calls) answered from the cache."""
    @property
    def misses(self) -> int:
        """Calls (and ``get`` calls) that found nothing."""
    @property
    def max_size(self) -> int:
        """The capacity, exactly as asked."""
    @property
    def current_size(self) -> int:
        """Entries stored now (an expired one not yet replaced included)."""

@final
class CachedFunction(Generic[_P, _R]):
    """An in-process cache of a function's results (the memory backend of :func:`consort.cache`).

    Results are kept as the very objects the function returned (no serialization: a hit
    returns the object stored), keyed by the positional arguments plus the keyword arguments
    sorted by name, compared as ``functools.lru_cache`` compares them (``hash`` and ``==``:
    ``1``, ``1.0`` and ``True`` are one key; unhashable arguments raise ``TypeError``).
    Exactly ``max_size`` entries fit; eviction is SIEVE. Thread-safe: a key whose ``__eq__``
    raises propagates its exception and changes nothing, and one that calls the cached
    function again works.

    Args:
        fn_obj: the function.
        max_size: how many results fit, 1 to 2**30.
        ttl: seconds a result lives (positive and finite); ``None``: until evicted.
    """

    def __init__(self, fn_obj: Callable[_P, _R], max_size: int, ttl: float | None = None) -> None: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """The cached result, or the function's (then stored)."""
    def get(self, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        """The cached result for these arguments, or ``None``; never calls the function."""
    def _probe(self, *args: _P.args, **kwargs: _P.kwargs) -> tuple[bool, _R | None]:
        """``(True, result)`` when cached, ``(False, None)`` otherwise."""
    def _record(self, hit: bool) -> None:
        """Counts one hit (``True``) or one miss (``False``)."""
    def set(self, value: _R, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Stores ``value`` as the result for these arguments (replacing any)."""
    def cache_info(self) -> CacheInfo:
        """Hits, misses, the capacity and the number of entries."""
    def cache_clear(self) -> None:
        """Removes every entry and zeroes the hit and miss counts."""
    # Binds as a method through an instance (the instance is then part of the key).
    @overload
    def __get__(self, instance: None, owner: type | None = None) -> CachedFunction[_P, _R]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., _R]: ...
