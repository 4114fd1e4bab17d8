"""Module-level cached functions for the warp_cache compatibility tests' child processes.

Parent and children import this module, so each decorated function gets the same cache name
(module `_warp_compat_targets`, its qualname) in every process, fork or spawn.
The implementation under test is named by `WARP_COMPAT_IMPL` (set by `conftest.py`):
`consort.compat.warp_cache` or `warp_cache`.
"""

import importlib
import os

IMPL_NAME = os.environ["WARP_COMPAT_IMPL"]
impl = importlib.import_module(IMPL_NAME)

if IMPL_NAME == "warp_cache":
    from warp_cache._warp_cache_rs import SharedCachedFunction
else:
    SharedCachedFunction = impl.SharedCachedFunction


@impl.cache(max_size=16, backend="shared")
def square(x):
    return x * x


@impl.cache(max_size=16, backend="shared")
def text_len(s):
    return len(s)


def info_tuple(fn):
    info = fn.cache_info()
    return (info.hits, info.misses, info.current_size)


def child_calls(queue, xs):
    """Calls `square` on each of `xs`; reports the results and the counters it then sees."""
    try:
        results = [square(x) for x in xs]
        queue.put(("ok", results, info_tuple(square)))
    except BaseException as err:  # the parent must hear about any failure, not time out
        queue.put(("error", repr(err), None))


def child_get(queue, xs):
    """Looks `xs` up in `square` without computing anything."""
    try:
        queue.put(("ok", [square.get(x) for x in xs], info_tuple(square)))
    except BaseException as err:
        queue.put(("error", repr(err), None))


def child_clear(queue):
    """Clears `square` and reports the counters it sees right after."""
    try:
        square.cache_clear()
        queue.put(("ok", None, info_tuple(square)))
    except BaseException as err:
        queue.put(("error", repr(err), None))


def child_text_len(queue, s):
    """Calls `text_len(s)` (run with another PYTHONHASHSEED than the parent)."""
    try:
        queue.put(("ok", text_len(s), info_tuple(text_len)))
    except BaseException as err:
        queue.put(("error", repr(err), None))


def child_oversize(queue, n):
    """Calls `text_len` on a key over the 512-byte limit; reports its oversize skips."""
    try:
        value = text_len("x" * n)
        queue.put(("ok", value, text_len.cache_info().oversize_skips))
    except BaseException as err:
        queue.put(("error", repr(err), None))
