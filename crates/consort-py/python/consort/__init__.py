"""consort for Python: a shared-memory cache that no killed process can wedge or corrupt.

Many processes open the same cache by name and share it: reads are lock-free and never
return a torn or wrong value, and a process SIGKILLed at any instruction inside a cache
call leaves every other process able to read and write within milliseconds (its half-done
write is rolled back by the next writer).

- :func:`cache`: a memoizing decorator, compatible with warp_cache 0.7's (in this process,
  or ``backend="shared"``: in shared memory, for every process); :mod:`consort.compat.warp_cache`
  has warp_cache's names.
- :class:`SharedCache`: a mapping in shared memory (``c[k] = v``, ``c.get(k)``, per-entry
  TTL, ``memoize``).
- :class:`SharedCachedFunction`: a function whose results are cached in shared memory (the
  shared backend of ``consort.cache``; named by :func:`cache_name` as the decorator names
  it, so both reach one cache).
- :mod:`consort.errors`: the exceptions.

Files live in ``$CONSORT_CACHE_DIR`` when it is set (created 0700 if it does not exist),
else in ``/dev/shm/consort-cache-<uid>``; each cache is one ``<name>.cache`` file, 0600.
"""

from consort._core import (
    MAX_HANDLES,
    MAX_SIZE,
    SharedCache,
    SharedCacheInfo,
    default_dir,
)
from consort._cache import (
    Backend,
    BaseCacheInfo,
    CacheInfo,
    CachedFunction,
    SharedCachedFunction,
    cache,
    cache_name,
)
from consort.errors import CacheCorruptError, CacheError, CacheMismatchError
from consort import _faulthandler

_faulthandler.install()

__all__ = [
    "MAX_HANDLES",
    "MAX_SIZE",
    "Backend",
    "BaseCacheInfo",
    "CacheInfo",
    "CachedFunction",
    "CacheCorruptError",
    "CacheError",
    "CacheMismatchError",
    "SharedCache",
    "SharedCacheInfo",
    "SharedCachedFunction",
    "cache",
    "cache_name",
    "default_dir",
]
