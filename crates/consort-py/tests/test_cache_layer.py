"""`consort.cache`'s pure-Python layer: names, the low-level factory, pickling by name, and
the argument checks made before any function is seen (the warp_cache behaviour itself is
`test_warp_compat.py`'s)."""

import pickle
import types

import pytest

import consort
import consort.compat.warp_cache as warp_compat

pytestmark = pytest.mark.timeout(60)


def echo(x):
    return ("echo", x)


@consort.cache(max_size=4, backend="shared")
def shared_square(x):
    return x * x


def test_decorator_and_low_level_share_one_cache():
    decorated = consort.cache(max_size=8, backend="shared")(echo)
    decorated.cache_clear()
    decorated(1)
    low = consort.SharedCachedFunction(echo, 8)
    assert low.shm_name == decorated.shm_name == consort.cache_name(echo)
    assert low.get(1) == ("echo", 1)
    assert isinstance(low, consort.SharedCachedFunction)
    assert isinstance(low, warp_compat.SharedCachedFunction)
    assert type(low) is consort._core.SharedCachedFunction
    assert low.__wrapped__ is echo and low.__name__ == "echo"


def test_names():
    first = lambda x: 1  # noqa: E731
    second = lambda x: 2  # noqa: E731
    assert consort.cache_name(first) != consort.cache_name(second)
    assert consort.cache_name(first) == consort.cache_name(first)
    name = consort.cache_name(echo)
    assert name.startswith("test_cache_layer.echo-") and len(name) == len("test_cache_layer.echo-") + 16

    def inner():
        pass

    assert "._locals_.inner-" in consort.cache_name(inner)
    as_main = types.FunctionType(echo.__code__, {"__name__": "__main__"}, "echo")
    as_mp_main = types.FunctionType(echo.__code__, {"__name__": "__mp_main__"}, "echo")
    as_main.__module__, as_mp_main.__module__ = "__main__", "__mp_main__"
    assert consort.cache_name(as_main) == consort.cache_name(as_mp_main)
    long = types.FunctionType(echo.__code__, {}, "x" * 300)
    long.__qualname__ = "x" * 300
    assert len(consort.cache_name(long)) <= 128


def test_shared_wrapper_pickles_by_name():
    assert pickle.loads(pickle.dumps(shared_square)) is shared_square
    local = consort.cache(max_size=4, backend="shared")(lambda x: x)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(local)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"max_size": 0}, ValueError, "max_size must be >= 1 for the memory backend"),
        ({"max_size": 0, "backend": "shared"}, ValueError, "max_size must be >= 1 for the shared backend"),
        ({"max_size": 2**30 + 1}, ValueError, "max_size must be <= 1073741824 for the memory backend (got 1073741825)"),
        ({"max_size": True}, TypeError, "max_size must be an int, got bool"),
        ({"ttl": -1}, ValueError, "ttl must be a positive, finite number of seconds or None (got -1)"),
        ({"ttl": "1"}, TypeError, "ttl must be a number of seconds or None, got str"),
        ({"max_key_size": 0, "backend": "shared"}, ValueError, "max_key_size must be >= 1 (got 0)"),
        ({"max_value_size": 2**24 + 1, "backend": "shared"}, ValueError, "max_value_size must be <= 16777216"),
    ],
)
def test_bad_arguments_are_refused_before_any_function(kwargs, error, words):
    with pytest.raises(error) as caught:
        consort.cache(**kwargs)
    assert words in str(caught.value)


def test_async_waiters_count_one_hit_each_on_memory():
    import asyncio

    calls = []

    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return [x]

    fn = consort.cache(max_size=4)(slow)

    async def main():
        return await asyncio.gather(*(fn(1) for _ in range(5)))

    results = asyncio.run(main())
    assert all(r is results[0] for r in results)  # the leader's very object
    info = fn.cache_info()
    assert (info.hits, info.misses, len(calls)) == (4, 1, 1)


@pytest.mark.parametrize("oversize", ["value", "key"])
def test_async_waiters_count_one_hit_each_on_shared_when_nothing_was_stored(oversize):
    """The waiters get the leader's result, so each is a hit, even when that result was
    never stored (too big): `hits + misses` equals the number of calls."""
    import asyncio

    calls, gates = [], []

    async def big(x):
        calls.append(x)
        await gates[0].wait()
        return "v" * 200

    fn = consort.cache(max_size=4, backend="shared", max_key_size=64, max_value_size=64)(big)
    fn.cache_clear()
    arg = "k" * 100 if oversize == "key" else 1

    async def main():
        gates.append(asyncio.Event())
        calls_done = asyncio.gather(*(fn(arg) for _ in range(5)))
        while not calls:  # the leader is in, and the waiters queued behind it
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        gates[0].set()
        return await calls_done

    results = asyncio.run(main())
    assert results == ["v" * 200] * 5
    info = fn.cache_info()
    assert (info.hits, info.misses, len(calls), info.oversize_skips) == (4, 1, 1, 1)
