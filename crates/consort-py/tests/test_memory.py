"""The memory backend (`consort.CachedFunction`, `consort.cache()`'s default): objects kept as
they are, exact capacity, SIEVE, and thread safety with keys whose `__eq__` raises, re-enters
the cache or churns it, with finalizers that re-enter, across many threads.

Threads switch as often as the interpreter lets them (`sys.setswitchinterval`), so a lookup is
interrupted inside a key's `__eq__` as often as possible; every thread is joined with a bound.
"""

import gc
import pickle
import sys
import threading

import pytest

import consort

pytestmark = pytest.mark.timeout(120)

THREADS = 8
JOIN_TIMEOUT = 60


@pytest.fixture(autouse=True)
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target, n=THREADS):
    """Runs `target(i)` in `n` threads; returns the exceptions they raised (none expected to
    escape: a target records what it expects itself)."""
    errors = []
    start = threading.Barrier(n)

    def body(i):
        try:
            start.wait(JOIN_TIMEOUT)
            target(i)
        except BaseException as err:  # the test must hear about it, not hang
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    return errors


def check_consistent(fn, max_size):
    info = fn.cache_info()
    assert 0 <= info.current_size <= max_size
    assert info.max_size == max_size
    return info


class Colliding:
    """A key whose hash collides with every other's, so every lookup runs `__eq__`."""

    def __init__(self, n, boom=False):
        self.n = n
        self.boom = boom

    def __hash__(self):
        return 7

    def __eq__(self, other):
        if self.boom:
            raise LookupError(f"eq boom {self.n}")
        return isinstance(other, Colliding) and other.n == self.n

    def __repr__(self):
        return f"Colliding({self.n}, boom={self.boom})"


def test_hit_returns_the_very_object_and_counts():
    fn = consort.cache(max_size=4)(lambda x: object())
    first = fn(1)
    assert fn(1) is first and fn.get(1) is first and fn._probe(1) == (True, first)
    assert fn._probe(2) == (False, None)
    info = fn.cache_info()
    assert (info.hits, info.misses, info.current_size) == (3, 2, 1)
    assert repr(info) == "CacheInfo(hits=3, misses=2, max_size=4, current_size=1)"
    assert info == fn.cache_info() and hash(info) == hash(fn.cache_info())


def test_exact_capacity_and_sieve_at_many_sizes():
    for max_size in (1, 2, 7, 64, 300):
        fn = consort.cache(max_size=max_size)(lambda x: x)
        for k in range(4 * max_size):
            fn(k)
            assert fn.cache_info().current_size == min(k + 1, max_size)
        # With no hits SIEVE keeps the newest (`get` would mark them visited: not used here).
        present = list(range(3 * max_size, 4 * max_size))
        # Visit the first half of those; the next inserts evict the unvisited rest first.
        visited = present[: max_size // 2]
        fresh = list(range(10_000, 10_000 + max_size - len(visited)))
        for k in visited:
            fn(k)
        for k in fresh:
            fn(k)
        kept = {k for k in visited + fresh if fn._probe(k)[0]}
        assert kept == set(visited + fresh)


def test_raising_hash_and_eq_propagate_as_themselves():
    class BadHash:
        def __hash__(self):
            raise ArithmeticError("hash boom")

    fn = consort.cache(max_size=4)(lambda k: 1)
    with pytest.raises(ArithmeticError, match="hash boom"):
        fn(BadHash())
    fn(Colliding(1))
    with pytest.raises(LookupError, match="eq boom"):
        fn(Colliding(2, boom=True))
    with pytest.raises(LookupError, match="eq boom"):
        fn.set(5, Colliding(3, boom=True))
    with pytest.raises(LookupError, match="eq boom"):
        fn.get(Colliding(3, boom=True))
    info = fn.cache_info()
    assert info.current_size == 1 and fn(Colliding(1)) == 1


def test_unhashable_argument_raises_type_error():
    fn = consort.cache(max_size=4)(lambda k: 1)
    with pytest.raises(TypeError, match="unhashable"):
        fn([1, 2])


def test_raising_eq_from_many_threads():
    max_size = 16
    fn = consort.cache(max_size=max_size)(lambda k: ("v", k.n))

    def hammer(i):
        raised = 0
        for j in range(400):
            n = (i * 31 + j) % 24
            boom = j % 5 == 0
            try:
                assert fn(Colliding(n, boom)) == ("v", n)
            except LookupError as err:
                # The key's own exception, itself (never a SystemError or RuntimeError).
                assert "eq boom" in str(err)
                raised += 1
        assert raised > 0

    assert run_threads(hammer) == []
    check_consistent(fn, max_size)
    for n in range(24):
        assert fn(Colliding(n)) == ("v", n)


def test_reentrant_eq_from_many_threads():
    max_size = 8

    class Reentrant:
        def __init__(self, n):
            self.n = n

        def __hash__(self):
            return 3

        def __eq__(self, other):
            # Calls the same cached function (a plain key, so no recursion without end).
            assert fn(self.n % 5) == (self.n % 5) * 2
            return isinstance(other, Reentrant) and other.n == self.n

    fn = consort.cache(max_size=max_size)(lambda k: k.n * 2 if isinstance(k, Reentrant) else k * 2)

    def hammer(i):
        for j in range(300):
            n = (i + j) % 12
            assert fn(Reentrant(n)) == n * 2

    assert run_threads(hammer) == []
    check_consistent(fn, max_size)


def test_eq_that_churns_the_cache_still_answers():
    """An `__eq__` that inserts a new key every time never lets a lookup settle: the call
    still returns the function's result (computed, maybe not stored), and nothing breaks."""
    counter = iter(range(10**9))

    class Churning:
        def __hash__(self):
            return 11

        def __eq__(self, other):
            fn(("churn", next(counter)))
            return self is other

    fn = consort.cache(max_size=4)(lambda k: "result")
    fn(Churning())
    for _ in range(20):
        assert fn(Churning()) == "result"
    check_consistent(fn, 4)

    def hammer(i):
        for _ in range(50):
            assert fn(Churning()) == "result"

    assert run_threads(hammer, 4) == []
    check_consistent(fn, 4)


def test_finalizer_of_an_evicted_value_reenters():
    """Evicted keys and values are dropped after the store is free: a `__del__` that calls
    the cache works."""
    seen = []

    class Noisy:
        def __init__(self, n):
            self.n = n

        def __del__(self):
            seen.append(fn(-1))  # re-enters while being evicted

    fn = consort.cache(max_size=2)(lambda k: Noisy(k) if k >= 0 else "plain")
    for k in range(10):
        fn(k)
    gc.collect()
    assert seen and all(v == "plain" for v in seen)
    fn.cache_clear()  # drops the rest, with the same finalizers
    check_consistent(fn, 2)


def test_many_threads_many_keys_counts_add_up():
    max_size = 64
    fn = consort.cache(max_size=max_size)(lambda a, b=0: (a, b))
    calls_per_thread = 3000

    def hammer(i):
        for j in range(calls_per_thread):
            k = (j * 7919 + i) % 200
            if j % 3:
                assert fn(k) == (k, 0)
            else:
                assert fn(k, b=i) == (k, i)

    assert run_threads(hammer) == []
    info = check_consistent(fn, max_size)
    assert info.hits + info.misses == THREADS * calls_per_thread
    assert info.current_size == max_size


def test_threads_with_clear_and_set():
    max_size = 32
    fn = consort.cache(max_size=max_size)(lambda k: k + 1)

    def hammer(i):
        for j in range(2000):
            k = (i * 13 + j) % 50
            if j % 97 == 0:
                fn.cache_clear()
            elif j % 11 == 0:
                fn.set(k + 1, k)
            else:
                assert fn(k) == k + 1

    assert run_threads(hammer) == []
    check_consistent(fn, max_size)


def test_keyword_keys_and_ttl():
    fn = consort.cache(max_size=8, ttl=60)(lambda a, b=1: a * b)
    assert fn(2, b=3) == 6 and fn(b=3, a=2) == 6
    assert fn(2) == 2 and fn(2, 1) == 2
    info = fn.cache_info()
    assert (info.hits, info.misses) == (0, 4)  # arguments are not bound to the signature
    assert fn(2, b=3) == 6 and fn.cache_info().hits == 1


def test_constructor_checks():
    with pytest.raises(ValueError, match="max_size must be >= 1 for the memory backend"):
        consort.CachedFunction(lambda x: x, 0)
    with pytest.raises(ValueError, match=r"max_size must be <= 1073741824 for the memory backend \(got 1073741825\)"):
        consort.CachedFunction(lambda x: x, 2**30 + 1)
    with pytest.raises(TypeError, match="max_size must be an int"):
        consort.CachedFunction(lambda x: x, True)
    with pytest.raises(ValueError, match="ttl must be a positive"):
        consort.CachedFunction(lambda x: x, 4, 0)
    with pytest.raises(TypeError, match="callable"):
        consort.CachedFunction(5, 4)
    big = consort.CachedFunction(lambda x: x, 2**30)  # nothing is preallocated
    assert big(1) == 1 and big.cache_info().max_size == 2**30


@consort.cache(max_size=4)
def module_level_square(x):
    return x * x


def test_pickles_by_name():
    assert pickle.loads(pickle.dumps(module_level_square)) is module_level_square
    local = consort.cache(max_size=4)(lambda x: x)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(local)


def test_help_is_useful():
    doc = consort.cache.__doc__
    for words in ("max_size", "backend", "shared", "cache_info", "SIEVE", "ttl"):
        assert words in doc
    assert "SIEVE" in consort.CachedFunction.__doc__


def test_plain_key_meets_an_equal_object_of_its_hash():
    """A plain key (answered without PyO3's trampoline) whose stored twin is a user object
    of the same hash takes the full path, and finds it, as `lru_cache` would."""

    class Five:
        def __hash__(self):
            return hash(5)

        def __eq__(self, other):
            return other == 5

    fn = consort.cache(max_size=4)(lambda k: ("computed", type(k).__name__))
    assert fn(Five()) == ("computed", "Five")
    assert fn(5) == ("computed", "Five")  # one key, as 5 and 5.0 are
    assert fn(5.0) == ("computed", "Five")
    info = fn.cache_info()
    assert (info.hits, info.misses, info.current_size) == (2, 1, 1)
    assert fn.get(5) == ("computed", "Five")


def test_fast_and_full_paths_agree_on_counts():
    fn = consort.cache(max_size=3)(lambda *a, **k: (a, sorted(k.items())))
    calls = [(1,), (1,), ("a", 2.5), ("a", 2.5), (None, b"x"), (1,), ((1, 2),), ((1, 2),)]
    for args in calls:
        fn(*args)
    fn(1, z=2)
    fn(1, z=2)
    info = fn.cache_info()
    assert info.hits + info.misses == len(calls) + 2
    assert (info.hits, info.misses) == (5, 5)
    assert info.current_size == 3
