"""consort as a drop-in for warp_cache 0.7: the behaviour `docs/design/python-cache.md` pins.

Provenance: the expectations come from warp_cache 0.7.0 (toloco/warp_cache, tag `0.7.0`:
`warp_cache/_decorator.py`, `src/shared_store.rs`, `src/store.rs`, `src/serde.rs`,
`src/shm/{mod,region}.rs`, and its tests `tests/test_shared_basic.py`, `tests/test_async.py`,
`tests/test_shared_multiprocess.py`), each checked against the PyPI wheel.

By default the tests run against `consort.compat.warp_cache`; with `--against-warp-cache`
they run against the real `warp_cache`, which proves they describe its real behaviour.
Where consort differs on purpose (a warp_cache bug), the test asserts warp_cache's real
behaviour under `--against-warp-cache` and consort's documented one otherwise, citing the row
of the design note's Part 2 table ("row N").
Without the consort package installed every test fails with ImportError; none skips.
"""

import asyncio
import functools
import gc
import importlib
import inspect
import json
import multiprocessing
import os
import queue as queue_module
import stat
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

pytestmark = pytest.mark.timeout(120)

CHILD_TIMEOUT = 60
WARP_SHM_DIR = "/dev/shm"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


class Impl:
    """The implementation under test, seen through warp_cache's names."""

    def __init__(self, is_warp):
        self.is_warp = is_warp
        self.module_name = os.environ["WARP_COMPAT_IMPL"]
        self.mod = importlib.import_module(self.module_name)
        if is_warp:
            from warp_cache._warp_cache_rs import SharedCachedFunction

            self.SharedCachedFunction = SharedCachedFunction
            self.top_cache = self.mod.cache
            self.cache_dir = WARP_SHM_DIR
        else:
            import consort

            self.SharedCachedFunction = self.mod.SharedCachedFunction
            self.top_cache = consort.cache
            self.cache_dir = os.environ["CONSORT_CACHE_DIR"]
        self.cache = self.mod.cache
        self.Backend = self.mod.Backend
        self.CacheInfo = self.mod.CacheInfo
        self.SharedCacheInfo = self.mod.SharedCacheInfo
        self.BaseCacheInfo = self.mod.BaseCacheInfo

    def files(self, needle):
        """The cache files whose name contains `needle`."""
        if not os.path.isdir(self.cache_dir):
            return []
        return sorted(n for n in os.listdir(self.cache_dir) if needle in n)

    def remove_files(self, needle):
        for name in self.files(needle):
            try:
                os.unlink(os.path.join(self.cache_dir, name))
            except OSError:
                pass


def _remove_warp_session_files():
    for name in os.listdir(WARP_SHM_DIR):
        if name.startswith("warp_cache_") and ("test_warp_compat" in name or "_warp_compat_targets" in name):
            os.unlink(os.path.join(WARP_SHM_DIR, name))
        elif name.startswith("wcompat.") or (name.startswith("warp_cache_") and "wcompat" in name):
            os.unlink(os.path.join(WARP_SHM_DIR, name))


@pytest.fixture(scope="session")
def impl(against_warp_cache):
    if against_warp_cache:
        # warp_cache never removes its files and its own tests clean the wrong directory
        # (design note, row 1): remove what earlier runs of these tests left in /dev/shm.
        _remove_warp_session_files()
    implementation = Impl(against_warp_cache)
    yield implementation
    if against_warp_cache:
        _remove_warp_session_files()


@pytest.fixture(scope="session")
def targets(impl):
    """The module-level caches shared with child processes."""
    import _warp_compat_targets

    return _warp_compat_targets


@pytest.fixture(autouse=True)
def cache_dir():
    """The session's `CONSORT_CACHE_DIR` (set by `conftest.pytest_configure`), for every test here.

    It overrides any per-test `cache_dir` fixture of the package's conftest: the module-level
    caches of `_warp_compat_targets` are opened once, and every child process must find them
    in the same directory as the parent.
    """
    return os.environ["CONSORT_CACHE_DIR"]


@pytest.fixture(autouse=True)
def _fresh_shared_names(request, impl):
    """Removes the files of this test's own caches (named after the test) before and after it."""
    needle = request.node.originalname + "."
    impl.remove_files(needle)
    yield
    gc.collect()
    impl.remove_files(needle)


def shm_name(request, suffix):
    """An explicit cache name, valid for consort-cache, that `_fresh_shared_names` cleans."""
    return f"wcompat.{request.node.originalname}.{suffix}"


def info_of(fn):
    info = fn.cache_info()
    return (info.hits, info.misses, info.current_size)


def counted(fn):
    """`fn` with a list of its calls in `.calls`; it keeps `fn`'s name, so its cache's name too."""
    calls = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


def run_python(impl, code, extra_env=None):
    """Runs `code` in a fresh interpreter with the implementation's environment; returns JSON."""
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env.get("PYTHONPATH", "")
    prelude = (
        "import importlib, json, os, sys\nimpl = importlib.import_module(os.environ['WARP_COMPAT_IMPL'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=env,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(method, target, *args):
    """Runs `target(queue, *args)` in a `multiprocessing` child; returns what it reported."""
    ctx = multiprocessing.get_context(method)
    results = ctx.Queue()
    child = ctx.Process(target=target, args=(results, *args))
    child.start()
    try:
        status, value, info = results.get(timeout=CHILD_TIMEOUT)
    except queue_module.Empty:
        child.kill()
        child.join(CHILD_TIMEOUT)
        pytest.fail(f"{method} child reported nothing within {CHILD_TIMEOUT} s (exit {child.exitcode})")
    child.join(CHILD_TIMEOUT)
    assert child.exitcode == 0, f"{method} child exited {child.exitcode}"
    assert status == "ok", f"{method} child failed: {value}"
    return value, info


BACKENDS = ["memory", "shared"]


# ── public names and defaults ────────────────────────────────────────────────


def test_public_names(impl):
    assert {"Backend", "BaseCacheInfo", "CachedCallable", "CacheInfo", "SharedCacheInfo", "cache"} <= set(
        impl.mod.__all__
    )
    for name in impl.mod.__all__:
        assert hasattr(impl.mod, name), name
    assert int(impl.Backend.MEMORY) == 0 and int(impl.Backend.SHARED) == 1
    assert issubclass(impl.Backend, int)
    assert callable(impl.SharedCachedFunction)


def test_defaults(impl):
    for cache_fn in (impl.cache, impl.top_cache):
        params = inspect.signature(cache_fn).parameters
        assert list(params) == ["max_size", "ttl", "backend", "max_key_size", "max_value_size"]
        assert params["max_size"].default == 128
        assert params["ttl"].default is None
        assert params["backend"].default in (impl.Backend.MEMORY, "memory")
        assert params["max_key_size"].default is None
        assert params["max_value_size"].default is None
    plain = impl.cache()(lambda x: x)
    plain(1)
    info = plain.cache_info()
    assert type(info).__name__ == "CacheInfo" and info.max_size == 128


def test_shared_defaults_are_512_and_4096(impl):
    def echo(x):
        return x

    def make(n):
        return b"v" * n

    fn = impl.cache(max_size=8, backend="shared")(echo)
    fn("k" * 400)
    fn("k" * 400)
    assert fn.cache_info().hits == 1  # a 400-character key fits under 512 bytes
    fn("k" * 600)
    assert fn.cache_info().oversize_skips == 1
    big_value = impl.cache(max_size=8, backend="shared")(make)
    big_value(3000)
    big_value(3000)
    assert big_value.cache_info().hits == 1
    big_value(5000)
    assert big_value.cache_info().oversize_skips == 1


def test_sharedcachedfunction_signature_and_positional_call(impl, request):
    fn = impl.SharedCachedFunction(lambda x: x + 1, 8, None, 512, 4096, shm_name(request, "pos"))
    assert fn(1) == 2 and fn(1) == 2
    assert info_of(fn) == (1, 1, 1)
    kw = impl.SharedCachedFunction(
        lambda x: x,
        max_size=8,
        ttl=None,
        max_key_size=64,
        max_value_size=64,
        shm_name=shm_name(request, "kw"),
    )
    assert kw.cache_info().max_size == 8


@pytest.mark.parametrize(
    "backend, error, message",
    [
        ("disk", ValueError, "Unknown backend: 'disk'. Use 'memory' or 'shared'."),
        (2.5, TypeError, "backend must be a Backend, int, or str, got float"),
        (7, ValueError, "7 is not a valid Backend"),
    ],
)
def test_bad_backend(impl, backend, error, message):
    with pytest.raises(error) as caught:
        impl.cache(backend=backend)
    assert str(caught.value) == message


def test_backend_spellings(impl):
    for spelling in ("shared", impl.Backend.SHARED, 1):
        fn = impl.cache(max_size=4, backend=spelling)(lambda x: x)
        assert type(fn.cache_info()).__name__ == "SharedCacheInfo"
    for spelling in ("memory", impl.Backend.MEMORY, 0):
        fn = impl.cache(max_size=4, backend=spelling)(lambda x: x)
        assert type(fn.cache_info()).__name__ == "CacheInfo"


def test_memory_backend_warns_about_size_limits(impl):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impl.cache(max_key_size=3, max_value_size=4)(lambda x: x)
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    assert messages == [
        "max_key_size has no effect with the memory backend",
        "max_value_size has no effect with the memory backend",
    ]
    assert all(w.filename == __file__ for w in caught)  # stacklevel=2: the caller's line


# ── cache_info, cache_clear, get, set ────────────────────────────────────────


@pytest.mark.parametrize("backend", BACKENDS)
def test_hits_misses_and_info(impl, backend):
    counter = counted(lambda x: x * 2)
    fn = impl.cache(max_size=64, backend=backend)(counter)
    assert fn(1) == 2 and fn(1) == 2 and fn(2) == 4
    assert len(counter.calls) == 2
    info = fn.cache_info()
    assert (info.hits, info.misses, info.max_size, info.current_size) == (1, 2, 64, 2)
    assert isinstance(info, impl.BaseCacheInfo)
    if backend == "shared":
        assert isinstance(info, impl.SharedCacheInfo)
        assert type(info).__name__ == "SharedCacheInfo"
        assert (
            repr(info) == "SharedCacheInfo(hits=1, misses=2, max_size=64, current_size=2, oversize_skips=0)"
        )
        assert info.oversize_skips == 0
    else:
        assert isinstance(info, impl.CacheInfo)
        assert type(info).__name__ == "CacheInfo"
        assert repr(info) == "CacheInfo(hits=1, misses=2, max_size=64, current_size=2)"
        assert not hasattr(info, "oversize_skips")
    with pytest.raises(AttributeError):
        info.hits = 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_clear_zeroes_everything(impl, backend):
    counter = counted(lambda x: x * 2)
    fn = impl.cache(max_size=16, max_key_size=64 if backend == "shared" else None, backend=backend)(counter)
    fn(1)
    fn(1)
    fn(2)
    if backend == "shared":
        fn("x" * 100)  # an oversize key
        assert fn.cache_info().oversize_skips == 1
    fn.cache_clear()
    info = fn.cache_info()
    assert (info.hits, info.misses, info.current_size) == (0, 0, 0)
    if backend == "shared":
        assert info.oversize_skips == 0
    calls = len(counter.calls)
    fn(1)
    assert len(counter.calls) == calls + 1  # recomputed
    assert info_of(fn) == (0, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_and_set(impl, backend):
    counter = counted(lambda x, y=0: x + y)
    fn = impl.cache(max_size=16, backend=backend)(counter)
    assert fn.get(1) is None  # a miss, counted
    assert info_of(fn) == (0, 1, 0)
    fn(1)
    assert fn.get(1) == 1  # a hit, counted
    assert info_of(fn) == (1, 2, 1)
    fn.set(99, 5)  # counts nothing
    assert info_of(fn) == (1, 2, 2)
    assert fn(5) == 99 and len(counter.calls) == 1
    fn.set(100, 5)  # overwrites
    assert fn.get(5) == 100
    fn.set(7, 1, y=2)
    assert fn(1, y=2) == 7 and fn.get(y=2, x=1) is None  # keywords are not bound to positions
    assert len(counter.calls) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_none_is_a_hit(impl, backend):
    counter = counted(lambda x: None)
    fn = impl.cache(max_size=16, backend=backend)(counter)
    assert fn(1) is None and fn(1) is None
    assert len(counter.calls) == 1
    assert fn._probe(1) == (True, None)
    assert fn._probe(2) == (False, None)
    assert info_of(fn) == (2, 2, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raising_function_stores_nothing(impl, backend):
    """Row 15: warp_cache's memory backend counts no miss for a call that raised."""

    def boom(x):
        raise KeyError(x)

    counter = counted(boom)
    fn = impl.cache(max_size=16, backend=backend)(counter)
    for _ in range(2):
        with pytest.raises(KeyError):
            fn(1)
    assert len(counter.calls) == 2
    hits, misses, size = info_of(fn)
    assert (hits, size) == (0, 0)
    if impl.is_warp and backend == "memory":
        assert misses == 0
    else:
        assert misses == 2


def test_unpicklable_value_raises_and_stores_nothing(impl):
    fn = impl.cache(max_size=8, backend="shared")(lambda x: threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        fn(1)
    with pytest.raises(TypeError, match="pickle"):
        fn.set(threading.Lock(), 2)
    assert fn.cache_info().current_size == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_hit_identity(impl, backend):
    fn = impl.cache(max_size=8, backend=backend)(lambda x: [x])
    first, second = fn(1), fn(1)
    assert first == second == [1]
    if backend == "memory":
        assert first is second  # the very object stored
    else:
        assert first is not second  # deserialized on every hit


# ── functools.wraps, signature, methods ──────────────────────────────────────


def _documented(a, b: int = 2, *, c=3) -> int:
    """Adds things."""
    return a + b + c


@pytest.mark.parametrize("backend", BACKENDS)
def test_wraps_and_signature(impl, backend):
    """Row 12: warp_cache 0.7.0's sync wrappers carry none of fn's metadata."""
    fn = impl.cache(max_size=8, backend=backend)(_documented)
    assert fn(1) == 6
    if impl.is_warp:
        for attr in ("__wrapped__", "__name__", "__qualname__"):
            assert not hasattr(fn, attr)
        assert fn.__module__ == "builtins"
        with pytest.raises(ValueError, match="not supported by signature"):
            inspect.signature(fn)
        return
    assert fn.__wrapped__ is _documented
    assert fn.__name__ == "_documented"
    assert fn.__qualname__ == "_documented"
    assert fn.__module__ == __name__
    assert fn.__doc__ == "Adds things."
    assert fn.__annotations__ == _documented.__annotations__
    assert inspect.signature(fn) == inspect.signature(_documented)


class _Thing:
    """A picklable instance for the method tests (the instance is part of the key)."""

    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return isinstance(other, _Thing) and other.n == self.n

    def __hash__(self):
        return hash(self.n)

    def _times(self, x):
        return self.n * x


@pytest.mark.parametrize("backend", BACKENDS)
def test_methods(impl, backend):
    """Row 12: warp_cache's wrapper is not a descriptor, so a method gets no `self`."""
    _Thing.times = impl.cache(max_size=8, backend=backend)(_Thing._times)
    try:
        if impl.is_warp:
            with pytest.raises(TypeError, match="missing 1 required positional argument"):
                _Thing(2).times(3)
            return
        _Thing.times.cache_clear()
        assert _Thing(2).times(3) == 6
        assert _Thing(2).times(3) == 6
        assert _Thing(5).times(3) == 15
        assert _Thing.times.cache_info().hits == 1
    finally:
        del _Thing.times


# ── async ────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_basic(impl, backend):
    calls = []

    async def add(a, b=0):
        """Adds."""
        calls.append(a)
        return a + b

    fn = impl.cache(max_size=16, backend=backend)(add)
    assert fn.__wrapped__ is add and fn.__name__ == "add" and fn.__doc__ == "Adds."
    assert inspect.signature(fn) == inspect.signature(add)

    async def main():
        return [await fn(1, 2), await fn(1, 2), await fn(2)]

    assert asyncio.run(main()) == [3, 3, 2]
    assert calls == [1, 2]
    assert info_of(fn) == (1, 2, 2)
    fn.cache_clear()
    assert info_of(fn) == (0, 0, 0)
    # Row 13: consort's async wrapper is a coroutine function and has get/set.
    if impl.is_warp:
        assert not inspect.iscoroutinefunction(fn)
        assert not hasattr(fn, "get") and not hasattr(fn, "set")
    else:
        assert inspect.iscoroutinefunction(fn)
        fn.set(42, 7)
        assert asyncio.run(fn(7)) == 42
        assert fn.get(7) == 42


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_single_flight_on_one_key(impl, backend):
    """Ten concurrent calls on one key compute once (row 13: how the waiters are counted)."""
    calls = []

    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.05)
        return x * 10

    fn = impl.cache(max_size=16, backend=backend)(slow)

    async def main():
        return await asyncio.gather(*(fn(1) for _ in range(10)))

    assert asyncio.run(main()) == [10] * 10
    assert calls == [1]
    hits, misses, size = info_of(fn)
    assert size == 1
    if impl.is_warp:
        assert (hits, misses) == (9, 10)  # each waiter counts a miss, then a hit
    else:
        assert (hits, misses) == (9, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_single_flight_different_keys(impl, backend):
    calls = []

    async def slow(x):
        calls.append(x)
        await asyncio.sleep(0.02)
        return x * 10

    fn = impl.cache(max_size=16, backend=backend)(slow)

    async def main():
        return await asyncio.gather(*(fn(k) for k in (1, 2, 3, 1, 2, 3)))

    assert asyncio.run(main()) == [10, 20, 30, 10, 20, 30]
    assert sorted(calls) == [1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_leader_failure_hands_over(impl, backend):
    """The leader's exception reaches only the leader; a waiter retries and the rest share it."""
    calls = []

    async def flaky(x):
        calls.append(x)
        await asyncio.sleep(0.02)
        if len(calls) == 1:
            raise ValueError("transient")
        return x * 10

    fn = impl.cache(max_size=16, backend=backend)(flaky)

    async def main():
        tasks = [asyncio.ensure_future(fn(1)) for _ in range(5)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, ValueError) for r in results) == 1
    assert results.count(10) == 4
    assert len(calls) == 2


def test_async_shared_unhashable_arguments(impl):
    """Row 13: warp_cache's in-flight table needs hashable arguments, even on the shared backend."""
    calls = []

    async def total(items):
        calls.append(items)
        await asyncio.sleep(0.01)
        return sum(items)

    fn = impl.cache(max_size=8, backend="shared")(total)

    async def main():
        return await asyncio.gather(*(fn([1, 2, 3]) for _ in range(3)))

    if impl.is_warp:
        with pytest.raises(TypeError, match="unhashable"):
            asyncio.run(main())
        return
    assert asyncio.run(main()) == [6, 6, 6]
    assert len(calls) == 1


def test_async_leader_cancelled(impl):
    """A cancelled leader hands over to a waiter (ordered by events, not by sleeps)."""
    calls = []
    events = {}

    async def slow(x):
        calls.append(x)
        if len(calls) == 1:
            events["started"].set()
            await asyncio.sleep(3600)  # the first leader only ever ends by cancellation
        return x * 10

    fn = impl.cache(max_size=16)(slow)

    async def main():
        events["started"] = asyncio.Event()  # made inside the loop that waits on it
        leader = asyncio.ensure_future(fn(1))
        await events["started"].wait()
        waiters = [asyncio.ensure_future(fn(1)) for _ in range(3)]
        await asyncio.sleep(0)  # every waiter runs up to its wait on the leader's flight
        leader.cancel()
        return await asyncio.gather(*waiters)

    assert asyncio.run(main()) == [10, 10, 10]
    assert len(calls) == 2


# ── max_size, ttl bounds ─────────────────────────────────────────────────────


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_size", [0, -1])
def test_max_size_below_one(impl, backend, max_size):
    """Row 3: warp_cache accepts 0 (out of bounds on the shared backend) and overflows on < 0."""
    code = f"""
    try:
        def wcompat_probe(x):
            return x
        fn = impl.cache(max_size={max_size}, backend={backend!r})(wcompat_probe)
        results = [fn(i) for i in range(5)]
        i = fn.cache_info()
        print(json.dumps({{"accepted": [i.max_size, i.current_size]}}))
    except Exception as err:
        print(json.dumps({{"error": type(err).__name__, "message": str(err)}}))
    """
    # A subprocess: warp_cache's shared backend writes out of bounds for max_size=0.
    outcome = run_python(impl, code)
    if not impl.is_warp:
        assert outcome["error"] == "ValueError"
        assert outcome["message"].startswith("max_size must be >= 1")
    elif max_size < 0:
        assert outcome == {"error": "OverflowError", "message": "can't convert negative int to unsigned"}
    else:
        max_seen, current = outcome["accepted"]
        assert max_seen == 0 and current > max_seen  # holds entries it has no room for


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_size_above_limit(impl, backend):
    """Row 4: at most 2**30. warp_cache has no bound: the shared backend truncates to 32 bits.

    warp_cache is only ever given 2**32 + 5 on the shared backend (a 5-entry cache): any size it
    takes at face value is preallocated, and one of 2**30 fills this machine's memory.
    """
    if impl.is_warp:
        if backend == "memory":
            # No bound: it tries to preallocate 2**31 entries (here under a 2 GiB address-space
            # limit, so the attempt fails in the child instead of filling the machine).
            code = """
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
            try:
                impl.cache(max_size=2**31)(lambda x: x)
                print(json.dumps("accepted"))
            except BaseException as err:
                print(json.dumps(type(err).__name__))
            """
            env = dict(os.environ, PYTHONPATH=TESTS_DIR)
            prelude = (
                "import importlib, json, os\nimpl = importlib.import_module(os.environ['WARP_COMPAT_IMPL'])\n"
            )
            proc = subprocess.run(
                [sys.executable, "-c", prelude + textwrap.dedent(code)],
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT,
                env=env,
            )
            assert "ValueError" not in proc.stdout + proc.stderr
            assert proc.returncode != 0 or json.loads(proc.stdout.strip().splitlines()[-1]) in (
                "accepted",
                "MemoryError",
            )
            return
        outcome = run_python(
            impl,
            """
            def wcompat_probe(x):
                return x
            fn = impl.cache(max_size=2**32 + 5, backend="shared")(wcompat_probe)
            print(json.dumps(fn.cache_info().max_size))
            """,
        )
        assert outcome == 5
        return
    for too_big in (2**30 + 1, 2**40):
        with pytest.raises(ValueError) as caught:
            impl.cache(max_size=too_big, backend=backend)(lambda x: x)
        assert str(caught.value).startswith("max_size must be <= 1073741824")
        assert str(too_big) in str(caught.value)
    with pytest.raises(ValueError, match="max_size must be <= 1073741824"):
        impl.SharedCachedFunction(lambda x: x, 2**30 + 1)


def test_max_size_type(impl):
    with pytest.raises(TypeError):
        impl.cache(max_size=2.5)(lambda x: x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_ttl(impl, backend):
    """Row 11: warp_cache panics (memory) or never expires (shared) on a negative ttl."""
    if not impl.is_warp:
        for ttl in (0, -1, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="ttl must be a positive"):
                impl.cache(ttl=ttl, backend=backend)(lambda x: x)
        return
    if backend == "memory":
        with pytest.raises(BaseException) as caught:
            impl.cache(ttl=-1)(lambda x: x)
        assert type(caught.value).__name__ == "PanicException"
    else:
        fn = impl.cache(ttl=-1, backend="shared")(lambda x: x)
        fn.cache_clear()
        fn(1)
        fn(1)
        assert fn.cache_info().hits == 1  # a negative ttl means "never expire"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ttl_expires(impl, backend):
    fn = impl.cache(max_size=8, ttl=1.0, backend=backend)(lambda x: x)
    fn(1)
    assert fn(1) == 1 and fn.cache_info().hits == 1
    import time

    deadline = time.monotonic() + 10
    while fn.get(1) is not None:  # poll: the entry must expire, not "after 1 s exactly"
        assert time.monotonic() < deadline, "entry never expired"
        time.sleep(0.05)
    misses = fn.cache_info().misses
    fn(1)
    assert fn.cache_info().misses == misses + 1


# ── capacity and SIEVE ───────────────────────────────────────────────────────


@pytest.mark.parametrize("backend", BACKENDS)
def test_sieve_evicts_unvisited_first(impl, backend):
    counter = counted(lambda x: x)
    fn = impl.cache(max_size=3, backend=backend)(counter)
    for k in (1, 2, 3, 2, 3, 4):
        fn(k)
    assert len(counter.calls) == 4
    counter.calls.clear()
    fn(2)
    fn(3)
    assert len(counter.calls) == 0
    fn(1)
    assert len(counter.calls) == 1  # 1 was the unvisited one


@pytest.mark.parametrize("backend", BACKENDS)
def test_sieve_is_not_lru(impl, backend):
    """a b c, hit a, d (evicts b, clears a), hit c, e: SIEVE evicts d (LRU would evict a)."""
    fn = impl.cache(max_size=3, backend=backend)(lambda x: x)
    for k in "abc":
        fn(k)
    fn("a")
    fn("d")
    fn("c")
    fn("e")
    assert [k for k in "abcde" if fn.get(k) is not None] == ["a", "c", "e"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sieve_second_chance(impl, backend):
    fn = impl.cache(max_size=2, backend=backend)(lambda x: x)
    for k in (1, 2, 1, 2, 3):
        fn(k)
    assert [k for k in (1, 2, 3) if fn.get(k) is not None] == [2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_size", [1, 2, 3, 5, 15, 16, 17, 100])
def test_max_size_is_exact(impl, backend, max_size):
    """Row 5: warp_cache's memory backend shards, so from 16 up its capacity is approximate."""
    fn = impl.cache(max_size=max_size, backend=backend)(lambda x: x)
    sizes = []
    for k in range(3 * max_size):
        fn(k)
        sizes.append(fn.cache_info().current_size)
    assert fn.cache_info().max_size == max_size
    if impl.is_warp and backend == "memory" and max_size >= 16:
        if max_size in (17, 100):
            assert sizes[-1] > max_size  # holds more than it was asked for
        return
    assert sizes == [min(k + 1, max_size) for k in range(3 * max_size)]


def test_memory_backend_threads(impl):
    fn = impl.cache(max_size=8)(lambda x: x * 3)
    errors = []

    def hammer(seed):
        try:
            for i in range(2000):
                k = (i * 7 + seed) % 40
                assert fn(k) == k * 3
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert fn.cache_info().current_size <= 8


def test_memory_key_eq_raises(impl):
    """Row 10: warp_cache turns a raising `__eq__` into SystemError."""

    class Key:
        def __init__(self, boom):
            self.boom = boom

        def __hash__(self):
            return 1

        def __eq__(self, other):
            if self.boom or other.boom:
                raise RuntimeError("eq boom")
            return self is other

    fn = impl.cache(max_size=4)(lambda k: 1)
    fn(Key(False))
    if impl.is_warp:
        with pytest.raises(SystemError):
            fn(Key(True))
    else:
        with pytest.raises(RuntimeError, match="eq boom"):
            fn(Key(True))
        assert fn.cache_info().current_size == 1


def test_memory_key_eq_reenters(impl):
    class Key:
        def __hash__(self):
            return 2

        def __eq__(self, other):
            fn(99)  # re-enters the same cache
            return self is other

    fn = impl.cache(max_size=4)(lambda k: 2)
    fn(Key())
    assert fn(Key()) == 2
    assert fn.cache_info().current_size <= 4


# ── keys ─────────────────────────────────────────────────────────────────────


def test_one_vs_one_point_oh_vs_true(impl):
    memory = impl.cache(max_size=8)(lambda x: x)
    assert [memory(x) for x in (1, 1.0, True)] == [1, 1, 1]
    assert info_of(memory) == (2, 1, 1)  # one key, as functools.lru_cache(typed=False)
    shared = impl.cache(max_size=8, backend="shared")(lambda x: x)
    results = [shared(x) for x in (1, 1.0, True)]
    assert results == [1, 1.0, True] and [type(r) for r in results] == [int, float, bool]
    assert info_of(shared) == (0, 3, 3)  # three keys


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyword_keys(impl, backend):
    counter = counted(lambda a, b=2: a + b)
    fn = impl.cache(max_size=8, backend=backend)(counter)
    fn(a=1, b=2)
    fn(b=2, a=1)
    assert len(counter.calls) == 1  # keyword order does not matter
    fn(1)
    fn(1, 2)
    fn(1, b=2)
    assert len(counter.calls) == 4  # but arguments are not bound to the signature


def test_shared_key_types(impl):
    fn = impl.cache(max_size=64, backend="shared")(lambda x: x)
    keys = [
        None,
        True,
        False,
        0,
        -5,
        2**63 - 1,
        2**70,
        0.0,
        -0.0,
        3.5,
        "",
        "héllo",
        b"",
        b"\x00\xff",
        (1, "a", b"b"),
        ((1,), (2,)),
        [1, 2],
        {"a": 1},
    ]
    for k in keys:
        assert fn(k) == k
    assert fn.cache_info().misses == len(keys)
    for k in keys:
        assert fn(k) == k
    assert fn.cache_info().hits == len(keys)
    nan = impl.cache(max_size=8, backend="shared")(lambda x: 1)
    nan(float("nan"))
    nan(float("nan"))
    assert nan.cache_info().hits == 1  # the same bytes


def test_surrogates(impl):
    """Row 9: warp_cache 0.7.0 cannot encode a str with a lone surrogate."""
    fn = impl.cache(max_size=8, backend="shared")(lambda s: s + "\udc80")
    if impl.is_warp:
        with pytest.raises(UnicodeEncodeError):
            fn("\ud800")
        return
    assert fn("\ud800") == "\ud800\udc80"
    assert fn("\ud800") == "\ud800\udc80"
    assert info_of(fn) == (1, 1, 1)


def test_key_means_the_same_whatever_the_hash_seed(impl, targets):
    targets.text_len.cache_clear()
    assert targets.text_len("hello world") == 11
    old = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "12345"
    try:
        value, info = run_child("spawn", targets.child_text_len, "hello world")
    finally:
        if old is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = old
    assert value == 11
    assert info[0] == 1  # the child's call was a hit


# ── oversize entries ─────────────────────────────────────────────────────────


def test_oversize_counting(impl, request):
    counter = counted(lambda x: x)
    fn = impl.SharedCachedFunction(
        counter, 8, max_key_size=16, max_value_size=16, shm_name=shm_name(request, "k")
    )
    big = "k" * 1000
    assert fn(big) == big and fn(big) == big
    assert len(counter.calls) == 2  # computed and returned every time, never stored
    info = fn.cache_info()
    assert (info.hits, info.misses, info.current_size, info.oversize_skips) == (0, 0, 0, 2)  # no miss
    assert fn.get(big) is None
    assert (fn.cache_info().misses, fn.cache_info().oversize_skips) == (1, 2)  # get: a miss only
    fn.set(1, big)
    assert fn.cache_info().oversize_skips == 3
    fn.set("v" * 1000, 1)
    assert fn.cache_info().oversize_skips == 4
    assert fn.cache_info().current_size == 0

    value_counter = counted(lambda x: "v" * 1000)
    values = impl.SharedCachedFunction(
        value_counter, 8, max_key_size=16, max_value_size=16, shm_name=shm_name(request, "v")
    )
    values(1)
    values(1)
    assert len(value_counter.calls) == 2
    info = values.cache_info()
    assert (info.hits, info.misses, info.current_size, info.oversize_skips) == (0, 2, 0, 2)  # a miss each


# ── re-decoration with other parameters ──────────────────────────────────────


def test_redecoration_same_parameters_attaches(impl, request):
    name = shm_name(request, "same")
    first = impl.SharedCachedFunction(lambda x: ("first", x), 8, shm_name=name)
    first(1)
    second = impl.SharedCachedFunction(lambda x: ("second", x), 8, shm_name=name)
    assert second.get(1) == ("first", 1)  # one cache per name


def test_redecoration_other_size_recreates(impl, request):
    name = shm_name(request, "size")
    counter = counted(lambda x: x)
    old = impl.SharedCachedFunction(counter, 16, shm_name=name)
    old(1)
    assert old.cache_info().max_size == 16
    new = impl.SharedCachedFunction(lambda x: x, 8, shm_name=name)
    assert new.cache_info().max_size == 8
    assert new.cache_info().current_size == 0  # recreated: a memo is disposable
    old(1)  # the old handle goes on working, on the new cache
    assert len(counter.calls) == 2
    assert old.cache_info().max_size == 8
    assert new.get(1) == 1


@pytest.mark.parametrize("limit", ["max_key_size", "max_value_size"])
def test_redecoration_other_limits_recreates(impl, request, limit):
    name = shm_name(request, limit)
    first = impl.SharedCachedFunction(lambda x: x, 8, shm_name=name)
    first(1)
    second = impl.SharedCachedFunction(lambda x: x, 8, shm_name=name, **{limit: 1024})
    assert second.cache_info().current_size == 0
    assert second.get(1) is None


def test_redecoration_with_the_decorator(impl):
    def f(x):
        return x

    big = impl.cache(max_size=8, backend="shared")(f)
    big(1)
    small = impl.cache(max_size=4, backend="shared")(f)
    assert small.cache_info().max_size == 4
    assert small.cache_info().current_size == 0
    same = impl.cache(max_size=4, backend="shared")(f)
    small(2)
    assert same.get(2) == 2


def test_redecoration_other_ttl(impl, request):
    """Row 6: warp_cache ignores a different ttl and keeps the old cache (and its TTL)."""
    name = shm_name(request, "ttl")
    forever = impl.SharedCachedFunction(lambda x: ("forever", x), 8, shm_name=name)
    forever(1)
    expiring = impl.SharedCachedFunction(lambda x: ("expiring", x), 8, ttl=60.0, shm_name=name)
    if impl.is_warp:
        assert expiring.get(1) == ("forever", 1)
    else:
        assert expiring.cache_info().current_size == 0
        assert expiring(1) == ("expiring", 1)


# ── names and files ──────────────────────────────────────────────────────────


def _outer_one():
    def inner(x):
        return ("one", x)

    return inner


def _outer_two():
    def inner(x):
        return ("two", x)

    return inner


def test_names_follow_module_and_qualname(impl):
    one = impl.cache(max_size=4, backend="shared")(_outer_one())
    two = impl.cache(max_size=4, backend="shared")(_outer_two())
    one.cache_clear()
    two.cache_clear()
    assert one(1) == ("one", 1)
    assert two(1) == ("two", 1)  # another qualname, another cache
    again = impl.cache(max_size=4, backend="shared")(_outer_one())
    assert again.get(1) == ("one", 1)  # the same qualname, the same cache
    names = impl.files("_outer_one")
    assert names, "no cache file named after the function"
    if impl.is_warp:
        assert any(n.startswith("warp_cache_test_warp_compat__outer_one.<locals>.inner_") for n in names)
    allowed = "._-<>" if impl.is_warp else "._-"
    for name in impl.files("_outer_"):
        assert all(c.isalnum() or c in allowed for c in name), name


def test_lambdas_do_not_share(impl):
    """Row 7: every lambda of a module shares one warp_cache cache, so one returns another's values."""
    first = impl.cache(max_size=4, backend="shared")(lambda x: ("first", x))
    second = impl.cache(max_size=4, backend="shared")(lambda x: ("second", x))
    first.cache_clear()
    assert first(1) == ("first", 1)
    if impl.is_warp:
        assert second(1) == ("first", 1)  # a wrong value
    else:
        assert second(1) == ("second", 1)


def test_consort_files_are_private(impl):
    """Row 2: warp_cache 0.7.0 writes `/dev/shm/{name}.data` and `.lock` with the umask."""
    old_umask = os.umask(0o022)
    try:
        fn = impl.cache(max_size=4, backend="shared")(lambda x: x)
        fn(1)
    finally:
        os.umask(old_umask)
    names = impl.files("test_consort_files_are_private.")
    if impl.is_warp:
        assert sorted(n.rsplit(".", 1)[1] for n in names) == ["data", "lock"]
        for n in names:
            assert stat.S_IMODE(os.stat(os.path.join(impl.cache_dir, n)).st_mode) == 0o644
        return
    assert len(names) == 1 and names[0].endswith(".cache")
    assert stat.S_IMODE(os.stat(os.path.join(impl.cache_dir, names[0])).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(impl.cache_dir).st_mode) == 0o700


def test_explicit_name_is_validated(impl, request):
    if impl.is_warp:
        with pytest.raises(OSError, match="Failed to create shared cache"):
            impl.SharedCachedFunction(lambda x: x, 4, shm_name="no/such/dir")
        return
    for bad in ("no/such/dir", ".hidden", "", "x" * 129):
        with pytest.raises(ValueError):
            impl.SharedCachedFunction(lambda x: x, 4, shm_name=bad)
    ok = impl.SharedCachedFunction(lambda x: x, 4, shm_name=shm_name(request, "ok"))
    assert ok(1) == 1


def test_main_script_spawn_child_shares(impl, tmp_path):
    """Row 8: a spawn child names the main script `__mp_main__`, so warp_cache opens another cache."""
    script = tmp_path / "main_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import importlib, json, multiprocessing, os
            impl = importlib.import_module(os.environ["WARP_COMPAT_IMPL"])

            @impl.cache(max_size=8, backend="shared")
            def compat_main_fn(x):
                return x + 1

            def child(q):
                compat_main_fn(1)
                q.put(compat_main_fn.cache_info().hits)

            if __name__ == "__main__":
                compat_main_fn.cache_clear()
                compat_main_fn(1)
                ctx = multiprocessing.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=child, args=(q,))
                p.start()
                hits = q.get(timeout=60)
                p.join(60)
                print(json.dumps(hits))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=CHILD_TIMEOUT, cwd=tmp_path
    )
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        hits = json.loads(proc.stdout.strip().splitlines()[-1])
        assert hits == (0 if impl.is_warp else 1)
    finally:
        impl.remove_files("compat_main_fn")


# ── processes ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_shares_values_and_counts(impl, targets, method):
    square = targets.square
    square.cache_clear()
    assert square(3) == 9 and square(3) == 9
    results, child_info = run_child(method, targets.child_calls, [3, 5])
    assert results == [9, 25]
    assert child_info == (2, 2, 2)  # the parent's hit and miss, the child's hit and miss
    assert info_of(square) == (2, 2, 2)
    assert square.get(5) == 25  # written by the child


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_oversize_skips_are_shared_by_every_process(impl, targets, method):
    """Like hits and misses, `oversize_skips` lives in the file: a child's skip shows in
    the parent, and a clear anywhere zeroes it everywhere."""
    text_len = targets.text_len
    text_len.cache_clear()
    text_len("y" * 1000)
    assert text_len.cache_info().oversize_skips == 1
    value, child_skips = run_child(method, targets.child_oversize, 2000)
    assert (value, child_skips) == (2000, 2)
    assert text_len.cache_info().oversize_skips == 2
    text_len.cache_clear()
    _, child_skips = run_child(method, targets.child_oversize, 3000)
    assert child_skips == 1


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_clear_zeroes_counts_for_every_process(impl, targets, method):
    square = targets.square
    square.cache_clear()
    square(2)
    square(2)
    run_child(method, targets.child_calls, [2, 4])
    assert info_of(square) == (2, 2, 2)
    _, info = run_child(method, targets.child_clear)
    assert info == (0, 0, 0)
    assert info_of(square) == (0, 0, 0)  # a child's clear, seen by the parent
    square(6)
    square(6)
    square.cache_clear()
    values, info = run_child(method, targets.child_get, [6])
    assert values == [None]
    assert info == (0, 1, 0)  # the parent's clear, seen by a child: only its own miss


def test_fork_child_after_parent_used_the_cache_many_times(impl, targets):
    """A forked child must work on its own (consort reopens after fork), again and again."""
    square = targets.square
    square.cache_clear()
    for round_idx in range(3):
        results, _ = run_child("fork", targets.child_calls, [round_idx, round_idx + 100])
        assert results == [round_idx**2, (round_idx + 100) ** 2]
        assert square.get(round_idx + 100) == (round_idx + 100) ** 2
