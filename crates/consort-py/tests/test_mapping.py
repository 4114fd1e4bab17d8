"""SharedCache as a mapping: semantics, every key and value type, sizes, TTL, exact capacity
and SIEVE order on small caches, stats, recreate, permissions and bad arguments."""

import enum
import math
import os
import stat
import threading

import pytest

import consort
import procs
from conftest import run_python, wait_until


class Color(enum.IntEnum):
    RED = 1


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_mapping_semantics(name):
    c = consort.SharedCache(name, 100)
    assert len(c) == 0 and "a" not in c
    c["a"] = 1
    c["b"] = [1, 2]
    assert c["a"] == 1 and c["b"] == [1, 2] and "a" in c and len(c) == 2
    assert c.get("a") == 1 and c.get("zz") is None and c.get("zz", 7) == 7
    c["a"] = "replaced"
    assert c["a"] == "replaced" and len(c) == 2
    with pytest.raises(KeyError):
        c["zz"]
    del c["a"]
    with pytest.raises(KeyError):
        del c["a"]
    assert c.pop("b") == [1, 2]
    assert c.pop("b", "gone") == "gone"
    with pytest.raises(KeyError):
        c.pop("b")
    c.set("x", 1)
    c.clear()
    assert len(c) == 0 and "x" not in c
    assert c.check() == {"shards": 1, "live": 0, "free": 101}


VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**200) + 12345,
    10**400,
    1.5,
    -0.0,
    float("inf"),
    "",
    "héllo wörld ✓",
    "\ud800 lone surrogate \udfff",
    b"",
    bytes(range(256)),
    (),
    (1, "a", b"b", None, True, 2.5),
    ((1, (2, (3,))), "nested"),
    [1, 2, {"a": (3,)}],
    {"k": "v"},
    {1, 2},
    frozenset({"a", 1, (2, 3)}),
    frozenset(),
    [{1, 2}],
    Color.RED,
    Point(1, 2),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_type_round_trips_as_key_and_value(name, value):
    c = consort.SharedCache(name, 64)
    c["k"] = value
    got = c["k"]
    assert got == value and type(got) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, got) == math.copysign(1, value)
    try:
        hash(value)
    except TypeError:
        return
    c[value] = "as a key"
    assert c[value] == "as a key"


def test_nan_round_trips(name):
    c = consort.SharedCache(name, 8)
    c["nan"] = float("nan")
    assert math.isnan(c["nan"])
    c[float("nan")] = 1  # the same bits are the same key
    assert c[float("nan")] == 1


def test_one_and_one_point_oh_and_true_are_three_keys(name):
    c = consort.SharedCache(name, 8)
    c[1], c[1.0], c[True], c[Color.RED] = "int", "float", "bool", "enum"
    assert (c[1], c[1.0], c[True], c[Color.RED]) == ("int", "float", "bool", "enum")
    assert len(c) == 4


def test_a_key_means_the_same_whatever_pythonhashseed(name):
    c = consort.SharedCache(name, 64)
    keys = ["abc", ("x", 1, b"y"), frozenset({"a", "b", "c", "d"}), "\udcff"]
    for i, key in enumerate(keys):
        c[key] = i
    code = (
        "import sys, consort\n"
        "c = consort.SharedCache(sys.argv[1], 64)\n"
        "keys = ['abc', ('x', 1, b'y'), frozenset({'d', 'c', 'b', 'a'}), '\\udcff']\n"
        "print([c.get(k) for k in keys])\n"
    )
    for seed in ["0", "1", "12345"]:
        out = run_python(code, name, env={"PYTHONHASHSEED": seed})
        assert out.strip() == "[0, 1, 2, 3]", seed


def test_big_values(name):
    c = consort.SharedCache(name, 4, max_value=4 << 20)
    big = os.urandom(3 << 20)
    c["big"] = big
    assert c["big"] == big
    c["text"] = "x" * (1 << 20)
    assert c["text"] == "x" * (1 << 20)


def test_oversize_keys_and_values_raise_and_store_nothing(name):
    c = consort.SharedCache(name, 8, max_key=32, max_value=64)
    with pytest.raises(ValueError, match="max_value = 64"):
        c["k"] = b"x" * 100
    assert "k" not in c
    with pytest.raises(ValueError, match="max_key = 32"):
        c["k" * 100] = 1
    assert c.get("k" * 100) is None and ("k" * 100) not in c
    c["k"] = b"x" * 50
    assert c["k"] == b"x" * 50
    assert len(c) == 1


def test_unpicklable_values_raise_type_error_and_store_nothing(name):
    c = consort.SharedCache(name, 8)
    c["k"] = "old"
    with pytest.raises(TypeError, match="cannot store a .*lock"):
        c["k"] = threading.Lock()
    assert c["k"] == "old"
    with pytest.raises(TypeError):
        c[threading.Lock()] = 1
    with pytest.raises(TypeError):
        c.set("k", lambda: 1)
    assert c["k"] == "old" and len(c) == 1


def test_raw_bytes(name):
    c = consort.SharedCache(name, 8, raw_bytes=True)
    c["k"] = b"\x00raw"
    assert c["k"] == b"\x00raw"
    with pytest.raises(TypeError, match="raw_bytes"):
        c["k"] = "not bytes"
    assert c.raw_bytes and not consort.SharedCache(name + "-b", 8).raw_bytes


def test_ttl_default_and_per_entry(name):
    # A second is the margin for the first read on a loaded machine; expiry is polled.
    c = consort.SharedCache(name, 8, ttl=1.0)
    c["short"] = 1
    c.set("long", 2, ttl=3600)
    assert c["short"] == 1
    assert wait_until(lambda: "short" not in c, timeout=10)
    assert c.get("short") is None and c["long"] == 2
    d = consort.SharedCache(name + "-b", 8)
    d.set("e", 1, ttl=0.01)
    d["forever"] = 2
    assert wait_until(lambda: d.get("e") is None, timeout=10)
    assert d["forever"] == 2


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 10, 100, 1000, 2047, 2048, 3000])
def test_capacity_is_exactly_what_was_asked(name, capacity):
    c = consort.SharedCache(name, capacity, max_key=16, max_value=16)
    assert c.capacity == capacity and c.stats()["capacity"] == capacity
    if capacity <= 100:
        for i in range(capacity + 20):
            c[i] = i
        assert len(c) == capacity
    assert c.check()["free"] == capacity + c.check()["shards"] - len(c)


def test_sieve_order_on_a_small_cache(name):
    c = consort.SharedCache(name, 3)
    c["a"], c["b"], c["c"] = 1, 2, 3
    assert c["a"] == 1  # visited
    c["d"] = 4  # the hand clears a, evicts b
    assert [k in c for k in "abcd"] == [True, False, True, True]
    c["e"] = 5  # the hand goes on from b's place: c was visited by the check above
    assert len(c) == 3 and "e" in c
    assert c.stats()["evictions"] == 2


def test_stats_are_shared_and_reset_for_every_process(name):
    c = consort.SharedCache(name, 8)
    c["k"] = 1
    c["k"], c.get("nope")
    code = (
        "import sys, consort\n"
        "c = consort.SharedCache(sys.argv[1], 8)\n"
        "for _ in range(5): c['k']\n"
        "print(c.stats()['hits'])\n"
    )
    assert run_python(code, name).strip() == "6"
    s = c.stats()
    assert (s["hits"], s["misses"], s["inserts"], s["len"]) == (6, 1, 1, 1)
    c.reset_stats()
    s = c.stats()
    assert (s["hits"], s["misses"], s["inserts"]) == (0, 0, 1)


def test_mismatch_raises_unless_recreate(name):
    c = consort.SharedCache(name, 8)
    c["k"] = 1
    # In the caller's terms: the capacity it gave, not a per-shard figure.
    with pytest.raises(consort.CacheMismatchError, match=r"with capacity = 8, not 16"):
        consort.SharedCache(name, 16)
    with pytest.raises(consort.CacheMismatchError):
        consort.SharedCache(name, 8, max_value=100)
    with pytest.raises(ValueError):  # a CacheMismatchError is a ValueError
        consort.SharedCache(name, 8, ttl=5)
    d = consort.SharedCache(name, 16, recreate=True)
    assert d.capacity == 16 and "k" not in d
    # The old handle follows: its writes reopen, and a mismatch then raises.
    with pytest.raises(consort.CacheMismatchError):
        c["x"] = 1
    e = consort.SharedCache(name, 16)
    e["y"] = 2
    assert d["y"] == 2


def test_files_are_private(name, cache_dir):
    assert not cache_dir.exists()
    c = consort.SharedCache(name, 8)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    path = cache_dir / f"{name}.cache"
    assert str(c.path) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert consort.default_dir() == str(cache_dir) or str(consort.default_dir()) == str(cache_dir)


def test_a_directory_open_to_others_is_refused(name, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(PermissionError, match="0755"):
        consort.SharedCache(name, 8, dir=open_dir)
    c = consort.SharedCache(name, 8, dir=tmp_path / "mine")
    c["k"] = 1
    os.chmod(c.path, 0o644)
    with pytest.raises(PermissionError):
        consort.SharedCache(name, 8, dir=tmp_path / "mine")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "1 to 128"),
        ("a" * 129, "1 to 128"),
        (".hidden", "start with '.'"),
        ("../escape", "start with '.'"),
        ("x/../../escape", "only letters"),
        ("a b", "only letters"),
        ("a/b", "only letters"),
    ],
)
def test_bad_names_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        consort.SharedCache(bad, 8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"capacity": 0}, ValueError, "capacity must be >= 1"),
        ({"capacity": -5}, ValueError, "capacity must be >= 1"),
        ({"capacity": 2**30 + 1}, ValueError, "capacity must be <= 1073741824"),
        ({"capacity": "8"}, TypeError, "capacity"),
        ({"capacity": 8, "max_key": 0}, ValueError, "max_key must be >= 1"),
        ({"capacity": 8, "max_value": 2**25}, ValueError, "max_value must be <= 16777216"),
        ({"capacity": 8, "ttl": 0}, ValueError, "ttl must be a positive"),
        ({"capacity": 8, "ttl": -1}, ValueError, "ttl must be a positive"),
        ({"capacity": 8, "ttl": float("nan")}, ValueError, "ttl must be a positive"),
        ({"capacity": 8, "ttl": "1"}, TypeError, "ttl must be a number"),
        ({"capacity": 8, "shards": 0}, ValueError, "shards must be >= 1"),
    ],
)
def test_bad_arguments_name_the_problem(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        consort.SharedCache(name, **kwargs)


def test_bad_set_ttl(name):
    c = consort.SharedCache(name, 8)
    with pytest.raises(ValueError, match="ttl"):
        c.set("k", 1, ttl=-1)
    assert "k" not in c


def test_a_directory_that_is_a_file_is_refused(name, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises((PermissionError, OSError)):
        consort.SharedCache(name, 8, dir=afile)


def test_close_and_context_manager(name):
    with consort.SharedCache(name, 8) as c:
        c["k"] = 1
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c["k"]
    with pytest.raises(ValueError, match="closed"):
        c["k"] = 2
    assert consort.SharedCache(name, 8)["k"] == 1


def test_memoize(name):
    c = consort.SharedCache(name, 64)
    calls = []

    @c.memoize()
    def double(x):
        calls.append(x)
        return x * 2

    @c.memoize(ttl=3600)
    def triple(x):
        return x * 3

    assert double(2) == 4 and double(2) == 4 and calls == [2]
    assert triple(2) == 6  # same argument, another function: another key
    assert double(x=2) == 4 and calls == [2, 2]  # a keyword is another call signature
    info = double.cache_info()
    assert info.hits >= 1 and info.current_size == 3
    with pytest.raises(ValueError, match="ttl"):
        c.memoize(ttl=0)


def test_repr_and_properties(name):
    c = consort.SharedCache(name, 8, max_key=20, max_value=30, ttl=2.5)
    assert repr(c) == f"SharedCache('{name}', capacity=8, max_key=20, max_value=30, ttl=2.5)"

    assert (c.name, c.capacity, c.max_key, c.max_value, c.ttl) == (name, 8, 20, 30, 2.5)


def _mapped(path):
    """How many of this process's mappings and fds refer to the file ``path`` (by inode)."""
    want = os.stat(path)
    fds = procs.cache_fds(path)
    maps = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[4] == str(want.st_ino):
                maps += 1
    return fds, maps


@pytest.mark.parametrize("how", ["close", "with"])
def test_close_frees_the_mapping_and_the_fd_at_once(name, cache_dir, how):
    path = cache_dir / f"{name}.cache"
    c = consort.SharedCache(name, 8)
    c["k"] = 1
    assert _mapped(path) == (1, 1)
    if how == "close":
        c.close()
    else:
        with c:
            pass
    assert _mapped(path) == (0, 0)  # c is still referenced here: not the GC's doing
    with pytest.raises(ValueError, match="closed"):
        c.get("k")
    c.close()  # again: nothing to free, no error
    assert consort.SharedCache(name, 8)["k"] == 1


class ClosesOnLoad:
    """A value whose unpickling closes the cache it is being read from."""

    target = None

    def __reduce__(self):
        return (_close_target, ())


def _close_target():
    ClosesOnLoad.target.close()
    return "loaded"


def test_close_from_inside_a_read_frees_after_the_read(name, cache_dir):
    """The handle a read is using is freed when that read ends, not under it."""
    path = cache_dir / f"{name}.cache"
    c = consort.SharedCache(name, 8)
    c["k"] = ClosesOnLoad()
    ClosesOnLoad.target = c
    assert c["k"] == "loaded"
    assert c.closed
    assert _mapped(path) == (0, 0)


def test_len_does_not_count_expired_entries(name):
    """`len` agrees with `get`: an entry past its TTL is gone for both, removed or not."""
    c = consort.SharedCache(name, 64)
    c["kept"] = 1
    c.set("brief", 2, ttl=0.05)
    assert len(c) == 2
    assert wait_until(lambda: c.get("brief") is None)
    assert len(c) == 1
    assert c.stats()["len"] == 1  # len() removed it


def test_close_while_another_thread_is_inside_a_call_frees_when_it_ends(name, cache_dir):
    """`len()` runs with the GIL released (a pass over 50,000 slots): a `close()` from
    another thread meanwhile must not free the mapping under it. In a child process, so a
    use-after-free would be a crash reported here, not the end of the test run."""
    code = r"""
import os, sys, threading
import consort
sys.path.insert(0, sys.argv[2])
from test_mapping import _mapped
name = sys.argv[1]
c = consort.SharedCache(name, 50_000)
for i in range(50_000):
    c[i] = i
path = c.path
started, results = threading.Event(), []
def count():
    started.set()
    for _ in range(200):
        try:
            results.append(len(c))
        except ValueError as err:
            results.append(str(err))
            return
t = threading.Thread(target=count)
t.start()
started.wait()
c.close()
t.join(60)
assert not t.is_alive()
assert results and "closed" in results[-1], results[-3:]
assert all(isinstance(r, int) and r > 40_000 for r in results[:-1]), results[:3]
print(_mapped(path))
"""
    out = run_python(code, name, os.path.dirname(__file__))
    assert out.strip() == "(0, 0)"
