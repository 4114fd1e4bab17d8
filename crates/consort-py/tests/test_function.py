"""SharedCachedFunction, the shared backend's hot path: hits and misses, cache_info and
cache_clear, oversize entries, get/set/_probe, keyword arguments, errors, the derived name,
and the arguments warp_cache 0.7 checks."""

import functools

import pytest

import consort
import consort._core


def make(fn, max_size=16, **kwargs):
    return consort.SharedCachedFunction(fn, max_size, **kwargs)


def test_hits_misses_and_clear(name):
    calls = []

    def square(x):
        calls.append(x)
        return x * x

    f = make(square, shm_name=name)
    assert [f(2), f(2), f(3), f(2)] == [4, 4, 9, 4]
    assert calls == [2, 3]
    info = f.cache_info()
    assert (info.hits, info.misses, info.max_size, info.current_size, info.oversize_skips) == (
        2,
        2,
        16,
        2,
        0,
    )
    assert repr(info) == (
        "SharedCacheInfo(hits=2, misses=2, max_size=16, current_size=2, oversize_skips=0)"
    )
    f.cache_clear()
    info = f.cache_info()
    assert (info.hits, info.misses, info.current_size) == (0, 0, 0)
    assert f(2) == 4 and calls == [2, 3, 2]


def test_cache_clear_zeroes_the_counts_of_every_process(name):
    f = make(lambda x: x, shm_name=name)
    f(1), f(1)
    from conftest import run_python

    code = (
        "import sys, consort\n"
        "f = consort.SharedCachedFunction(lambda x: x, 16, shm_name=sys.argv[1])\n"
        "f(1); f(1); f(2)\n"
        "i = f.cache_info(); print(i.hits, i.misses)\n"
    )
    assert run_python(code, name).split() == ["3", "2"]
    f.cache_clear()
    assert run_python(code, name).split() == ["1", "2"]


def test_every_argument_type_and_keywords(name):
    f = make(lambda *a, **k: (a, sorted(k.items())), max_size=64, shm_name=name)
    args = [(1,), (1.0,), (True,), (None,), ("s",), (b"b",), ((1, 2),), ([1, 2],), (2**100,)]
    results = [f(*a) for a in args]
    assert results == [f(*a) for a in args]
    assert f.cache_info().misses == len(args) and f.cache_info().hits == len(args)
    assert f(1, b=2, a=1) == f(1, a=1, b=2)
    assert f.cache_info().hits == len(args) + 1


def test_oversize_keys_and_values_are_computed_counted_and_not_stored(name):
    f = make(lambda x: x, max_key_size=32, max_value_size=32, shm_name=name)
    assert f("k" * 100) == "k" * 100
    assert f(b"v" * 100) == b"v" * 100
    info = f.cache_info()
    assert info.oversize_skips == 2 and info.current_size == 0
    f.set("x" * 100, "small")  # the value fits, the key does not
    assert f.cache_info().oversize_skips == 3
    assert f.get("k" * 100) is None


def test_get_set_and_probe(name):
    f = make(lambda x: x * 10, shm_name=name)
    assert f.get(1) is None and f._probe(1) == (False, None)
    f.set(None, 1)
    assert f._probe(1) == (True, None)
    assert f(1) is None  # the cached None, not a call
    f.set("v", 2, kw=3)
    assert f.get(2, kw=3) == "v"


def test_exceptions_propagate_and_store_nothing(name):
    def boom(x):
        raise KeyError(x)

    f = make(boom, shm_name=name)
    with pytest.raises(KeyError):
        f(1)
    assert f.cache_info().current_size == 0


def test_an_unpicklable_result_raises_type_error(name):
    import threading

    f = make(lambda: threading.Lock(), shm_name=name)
    with pytest.raises(TypeError, match="cannot store"):
        f()
    assert f.cache_info().current_size == 0


def test_wraps_and_introspection(name):
    def documented(x: int) -> int:
        """Doubles."""
        return 2 * x

    f = functools.wraps(documented)(make(documented, shm_name=name))
    assert f.__wrapped__ is documented and f.__doc__ == "Doubles." and f(2) == 4


def test_the_name_derives_from_module_and_qualname():
    def outer():
        def inner(x):
            return x

        return inner

    f = make(outer())
    g = make(lambda x: x)
    assert "test_function.test_the_name_derives_from_module_and_qualname._locals_.outer" in f.shm_name
    assert "_lambda_" in g.shm_name
    assert f.shm_name != g.shm_name
    assert consort._core.derived_name("a<b>") != consort._core.derived_name("a_b_")
    assert len(consort._core.derived_name("m." + "x" * 300)) <= 128
    assert f(1) == 1 and g(2) == 2


def test_other_parameters_recreate_the_cache(name):
    f = make(lambda x: x, max_size=16, shm_name=name)
    f(1)
    g = make(lambda x: x, max_size=32, shm_name=name)
    assert g.cache_info().max_size == 32 and g.cache_info().current_size == 0
    assert f(5) == 5  # the old one follows the new file
    assert f.cache_info().max_size == 32


@pytest.mark.parametrize(
    "max_size, message",
    [
        (0, "max_size must be >= 1"),
        (-1, "max_size must be >= 1"),
        (2**30 + 1, "max_size must be <= 1073741824"),
        (2**80, "max_size must be <= 1073741824"),
    ],
)
def test_max_size_bounds(name, max_size, message):
    with pytest.raises(ValueError, match=message):
        make(lambda: 1, max_size=max_size, shm_name=name)


def test_bad_limits_and_ttl(name):
    with pytest.raises(ValueError, match="max_key_size must be >= 1"):
        make(lambda: 1, max_key_size=0, shm_name=name)
    with pytest.raises(ValueError, match="ttl"):
        make(lambda: 1, ttl=-1, shm_name=name)
    with pytest.raises(ValueError, match="invalid cache name"):
        make(lambda: 1, shm_name="no/slash")


def test_ttl(name):
    from conftest import wait_until

    calls = []
    # A second is the margin for the second call on a loaded machine; expiry is polled.
    f = make(lambda x: calls.append(x) or x, ttl=1.0, shm_name=name)
    f(1)
    f(1)
    assert calls == [1]
    assert wait_until(lambda: f.get(1) is None, timeout=10)
    f(1)
    assert calls == [1, 1]


def test_every_way_of_calling_reaches_one_entry_and_one_count(name):
    """The positional fast path (vectorcall, keys encoded from CPython's argument array) and
    the general path (tuple and dict) make the same key and the same counts."""
    calls = []

    def f(x, b=0):
        calls.append((x, b))
        return (x, b)

    g = make(f, shm_name=name)
    # The vectorcall type, which consort.SharedCachedFunction (the naming factory) makes.
    assert type(g) is consort._core.SharedCachedFunction
    assert isinstance(g, consort.SharedCachedFunction)
    assert g(1) == (1, 0)
    assert g.__call__(1) == (1, 0)
    assert g(*[1]) == (1, 0)
    assert functools.partial(g)(1) == (1, 0)
    assert calls == [(1, 0)]
    info = g.cache_info()
    assert (info.hits, info.misses, info.current_size) == (3, 1, 1)
    # Keywords take the general path, and spell one key however they are passed.
    assert g(1, b=2) == (1, 2) and g(1, **{"b": 2}) == (1, 2)
    assert calls == [(1, 0), (1, 2)]
    # An argument with no tagged encoding is pickled, on either path.
    assert g([1, 2]) == ([1, 2], 0) and g(*[[1, 2]]) == ([1, 2], 0)
    assert calls[-1] == ([1, 2], 0) and len(calls) == 3
    info = g.cache_info()
    assert (info.hits, info.misses, info.current_size) == (5, 3, 3)


def test_an_oversize_positional_key_is_counted_for_every_process(name):
    g = make(lambda x: len(x), shm_name=name, max_key_size=16)
    big = "x" * 64
    assert g(big) == 64 and g(big) == 64
    other = make(lambda x: len(x), shm_name=name, max_key_size=16)
    info = other.cache_info()
    assert (info.oversize_skips, info.current_size) == (2, 0)


def test_memoized_functions_are_shared_cached_functions(name):
    cache = consort.SharedCache(name, capacity=16)

    @cache.memoize()
    def double(x):
        return 2 * x

    assert type(double) is consort._core.SharedCachedFunction
    assert double(4) == 8 and double(4) == 8
