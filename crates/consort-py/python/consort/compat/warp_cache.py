"""warp_cache 0.7's public names over consort: switching is one import line.

::

    from warp_cache import cache                     # before
    from consort.compat.warp_cache import cache      # after

    import warp_cache                                # before
    import consort.compat.warp_cache as warp_cache   # after

``cache`` is :func:`consort.cache` (same parameters and defaults: the memory backend);
``Backend``, ``BaseCacheInfo``, ``CachedCallable``, ``CacheInfo`` and ``SharedCacheInfo``
are warp_cache's, with the same fields and reprs; ``SharedCachedFunction(fn_obj,
max_size, ttl=None, max_key_size=512, max_value_size=4096, shm_name=None)`` is its low-level
shared wrapper (in warp_cache it lives in ``warp_cache._warp_cache_rs``), and
``CachedFunction(fn_obj, max_size, ttl=None)`` the memory one.

What differs, on purpose (warp_cache's bugs; ``docs/design/python-cache.md``, Part 2): no
wedge or torn value after a SIGKILL; private files in ``$CONSORT_CACHE_DIR`` or
``/dev/shm/consort-cache-<uid>``; ``max_size`` must be 1 to 2**30 and ``ttl`` positive and
finite (``ValueError``); ``max_size`` is exact on both backends; re-decorating with other
parameters (TTL included) recreates the shared cache safely; lambdas do not share a cache; a
``spawn`` child of a main script finds the parent's cache; strings with lone surrogates are
keys and values like any other; a key's raising ``__eq__`` propagates as itself; a call that
raises counts a miss on both backends; wrappers carry ``functools.wraps`` metadata and bind as
methods; the async wrapper is a coroutine function with ``get``/``set``, and a call that waits
for another's result counts one hit.
"""

from consort._cache import (
    AsyncCachedFunction,
    Backend,
    BaseCacheInfo,
    CacheInfo,
    CachedCallable,
    CachedFunction,
    SharedCacheInfo,
    SharedCachedFunction,
    cache,
)

__all__ = [
    "Backend",
    "BaseCacheInfo",
    "CachedCallable",
    "CacheInfo",
    "SharedCacheInfo",
    "cache",
    "SharedCachedFunction",
]

# Importable for code that names them, as warp_cache's are, but not in __all__.
_ = (AsyncCachedFunction, CachedFunction)
