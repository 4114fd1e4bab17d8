"""consort's Python cache beside its peers, in one run.

Loops (issue #15, "Performance"):

- zipf: warp_cache's own benchmark loop (`benchmarks/_bench_runner.py`, `bench_shared_throughput`):
  100,000 calls of a cached identity function, keys drawn Zipf-like over 2,000 ints
  (`random.Random(42).choices(range(2000), weights=1/(i+1))`), `max_size=256`; each round
  starts from an empty cache (warp_cache's runner reuses the shared file between rounds).
- hits: 100,000 calls over 200 keys, all in the cache (`max_size=256`, warmed first).
- get: `SharedCache.get` and `diskcache.Cache.get` on 2,000 16-byte keys holding 64-byte
  values, 200,000 lookups in a seeded random order, all hits; and the same `SharedCache.get`
  loop in two processes at once (started together on a barrier; total lookups over the wall
  time from the barrier to the last finish).

Peers: consort's decorator (shared and memory backends), warp-cache 0.7.0 (shared, memory),
functools.lru_cache, cachebox (`cached(LRUCache)`, as warp_cache's runner uses it), diskcache
(`Cache.get`, and `Cache.memoize`, which has no entry limit: it keeps all 2,000 keys), with
diskcache's directory on /dev/shm. A peer that is not installed reports null.

Peers alternate within each round (round 1: every peer once, round 2: every peer again, ...),
and each figure is the **median over the rounds** (calls or gets per second).
`--json` prints one object with exactly the keys the issue lists; the text report adds the
all-hits loop, consort's memory backend, the hit ratios and the machine.
"""

import argparse
import datetime
import functools
import gc
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

SUMMARY = "consort's cache vs warp_cache, lru_cache, cachebox, diskcache"

JSON_KEYS = (
    "consort_shared_calls_per_s",
    "warp_shared_calls_per_s",
    "warp_memory_calls_per_s",
    "lru_cache_calls_per_s",
    "cachebox_calls_per_s",
    "diskcache_get_per_s",
    "diskcache_memoize_calls_per_s",
    "sharedcache_get_per_s",
    "sharedcache_two_process_get_per_s",
)

MAX_SIZE = 256
ZIPF_CALLS = 100_000
ZIPF_KEYS = 2_000
HIT_KEYS = 200
GET_KEYS = 2_000
GET_LOOKUPS = 200_000
KEY_BYTES = 16
VALUE_BYTES = 64


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object (the issue's keys)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each figure is the median (default 5)")
    parser.add_argument(
        "--calls", type=int, default=ZIPF_CALLS, help=f"calls per loop (default {ZIPF_CALLS:,})"
    )


def zipf_keys(n, num_keys, *, seed=42):
    """warp_cache's `zipf_keys`, byte for byte: the same 100,000 keys as its runner."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(num_keys)]
    return rng.choices(range(num_keys), weights=weights, k=n)


def hit_keys(n):
    rng = random.Random(7)
    return [rng.randrange(HIT_KEYS) for _ in range(n)]


def get_keys():
    rng = random.Random(11)
    keys = [rng.randbytes(KEY_BYTES) for _ in range(GET_KEYS)]
    values = [rng.randbytes(VALUE_BYTES) for _ in range(GET_KEYS)]
    order = [keys[rng.randrange(GET_KEYS)] for _ in range(GET_LOOKUPS)]
    return keys, values, order


def time_calls(fn, keys):
    """Calls per second of `fn(k)` over `keys` (warp_cache's `_time_loop`)."""
    gc.collect()
    t0 = time.perf_counter()
    for k in keys:
        fn(k)
    return len(keys) / (time.perf_counter() - t0)


# ── the decorator peers ─────────────────────────────────────────────────────
# Each factory returns (fn, reset, hit_ratio) or raises ImportError. One function object per
# peer, so a shared backend keeps one file per peer for the whole run.


def _bench_identity_consort_shared(x):
    return x


def _bench_identity_consort_memory(x):
    return x


def _bench_identity_warp_shared(x):
    return x


def _bench_identity_warp_memory(x):
    return x


def _bench_identity_plain(x):
    return x


def _info_ratio(fn):
    info = fn.cache_info()
    total = info.hits + info.misses
    return info.hits / total if total else 0.0


def _consort_decorator(backend, identity):
    import consort

    fn = consort.cache(max_size=MAX_SIZE, backend=backend)(identity)
    return fn, fn.cache_clear, lambda: _info_ratio(fn)


def _warp_decorator(backend, identity):
    import warp_cache

    fn = warp_cache.cache(max_size=MAX_SIZE, backend=backend)(identity)
    return fn, fn.cache_clear, lambda: _info_ratio(fn)


def _lru_cache():
    fn = functools.lru_cache(maxsize=MAX_SIZE)(_bench_identity_plain)

    def ratio():
        info = fn.cache_info()
        return info.hits / (info.hits + info.misses) if info.hits + info.misses else 0.0

    return fn, fn.cache_clear, ratio


def _cachebox():
    import cachebox

    store = cachebox.LRUCache(maxsize=MAX_SIZE)
    fn = cachebox.cached(store)(_bench_identity_plain)
    return fn, store.clear, lambda: None


class _DiskDir:
    """diskcache's directory, on /dev/shm, removed at the end of the run."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.path = tempfile.mkdtemp(prefix="consort-bench-diskcache-", dir=base)
        self.caches = []

    def cache(self, sub):
        import diskcache

        cache = diskcache.Cache(os.path.join(self.path, sub))
        self.caches.append(cache)
        return cache

    def close(self):
        for cache in self.caches:
            cache.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _diskcache_memoize(disk_dir):
    cache = disk_dir.cache("memoize")
    fn = cache.memoize()(_bench_identity_plain)
    return fn, cache.clear, lambda: None


# ── SharedCache.get and diskcache.Cache.get ──────────────────────────────────


def _open_shared_cache(name, directory, create):
    import consort

    kwargs = dict(max_key=64, max_value=256, dir=directory)
    try:
        return consort.SharedCache(name, 2 * GET_KEYS, raw_bytes=True, recreate=create, **kwargs)
    except TypeError:  # a build without the keyword-only options
        return consort.SharedCache(name, 2 * GET_KEYS, **kwargs)


def _two_process_reader(name, directory, order, barrier, results):
    try:
        cache = _open_shared_cache(name, directory, create=False)
        get = cache.get
        barrier.wait(60)
        t0 = time.perf_counter()
        for k in order:
            get(k)
        t1 = time.perf_counter()
        results.put(("ok", t0, t1))
    except BaseException as err:
        results.put(("error", repr(err), None))


class _SharedGet:
    """`consort.SharedCache.get` on 16-byte keys and 64-byte values, in one and two processes."""

    def __init__(self, directory, keys, values, order):
        self.name = f"consort-bench-get-{os.getpid()}"
        self.directory = directory
        self.order = order
        self.cache = _open_shared_cache(self.name, directory, create=True)
        for k, v in zip(keys, values, strict=True):
            self.cache[k] = v
        lost = sum(self.cache.get(k) != v for k, v in zip(keys, values, strict=True))
        if lost:
            raise RuntimeError(
                f"SharedCache kept {GET_KEYS - lost} of {GET_KEYS} entries: the loop would not be all hits"
            )

    def one(self):
        return time_calls(self.cache.get, self.order)

    def two(self):
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [
            ctx.Process(
                target=_two_process_reader, args=(self.name, self.directory, self.order, barrier, results)
            )
            for _ in range(2)
        ]
        try:
            for p in procs:
                p.start()
            reports = [results.get(timeout=120) for _ in procs]
        finally:
            for p in procs:
                if p.pid is not None:
                    p.join(60)
                    if p.is_alive():
                        p.kill()
                        p.join(10)
        for status, detail, _ in reports:
            if status != "ok":
                raise RuntimeError(f"a reader failed: {detail}")
        start = min(r[1] for r in reports)
        end = max(r[2] for r in reports)
        return 2 * len(self.order) / (end - start)


def _diskcache_get(disk_dir, keys, values, order):
    cache = disk_dir.cache("get")
    for k, v in zip(keys, values, strict=True):
        cache.set(k, v)
    if any(cache.get(k) != v for k, v in zip(keys, values, strict=True)):
        raise RuntimeError("diskcache lost an entry: the loop would not be all hits")
    return lambda: time_calls(cache.get, order)


# ── the run ──────────────────────────────────────────────────────────────────


def _version(module):
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def _machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _remove_warp_files():
    """warp_cache never removes its files: remove the ones this run made."""
    if not os.path.isdir("/dev/shm"):
        return
    for name in os.listdir("/dev/shm"):
        if name.startswith("warp_cache_") and "_bench_identity_warp_" in name:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def run(args):
    rounds = max(1, args.rounds)
    zipf = zipf_keys(args.calls, ZIPF_KEYS)
    hits = hit_keys(args.calls)
    keys, values, order = get_keys()
    notes = []
    disk_dir = _DiskDir()
    consort_dir = tempfile.mkdtemp(
        prefix="consort-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    # consort's decorators open their caches here too, not in the user's cache directory;
    # the whole directory goes at the end.
    saved_cache_dir = os.environ.get("CONSORT_CACHE_DIR")
    os.environ["CONSORT_CACHE_DIR"] = consort_dir
    try:
        peers = {}
        factories = {
            "consort_shared": lambda: _consort_decorator("shared", _bench_identity_consort_shared),
            "consort_memory": lambda: _consort_decorator("memory", _bench_identity_consort_memory),
            "warp_shared": lambda: _warp_decorator("shared", _bench_identity_warp_shared),
            "warp_memory": lambda: _warp_decorator("memory", _bench_identity_warp_memory),
            "lru_cache": _lru_cache,
            "cachebox": _cachebox,
            "diskcache_memoize": lambda: _diskcache_memoize(disk_dir),
        }
        for name, make in factories.items():
            try:
                peers[name] = make()
            except (ImportError, AttributeError) as err:
                notes.append(f"{name}: not available ({err})")
        getters = {}
        try:
            shared_get = _SharedGet(consort_dir, keys, values, order)
            getters["sharedcache_get"] = shared_get.one
            getters["sharedcache_two_process_get"] = shared_get.two
        except (ImportError, AttributeError) as err:
            notes.append(f"sharedcache: not available ({err})")
        try:
            getters["diskcache_get"] = _diskcache_get(disk_dir, keys, values, order)
        except ImportError as err:
            notes.append(f"diskcache: not available ({err})")

        samples = {}
        ratios = {}
        for fn, reset, _ratio in peers.values():  # warm-up: fault the pages in, once
            reset()
            time_calls(fn, zipf[:10_000])
        for _ in range(rounds):
            for name, (fn, reset, ratio) in peers.items():
                reset()
                samples.setdefault(f"{name}_zipf", []).append(time_calls(fn, zipf))
                ratios[name] = ratio()
                reset()
                for k in range(HIT_KEYS):
                    fn(k)
                samples.setdefault(f"{name}_hits", []).append(time_calls(fn, hits))
            for name, measure in getters.items():
                samples.setdefault(name, []).append(measure())
        median = {name: statistics.median(values) for name, values in samples.items()}

        def figure(name):
            return median.get(name)

        result = {
            "consort_shared_calls_per_s": figure("consort_shared_zipf"),
            "warp_shared_calls_per_s": figure("warp_shared_zipf"),
            "warp_memory_calls_per_s": figure("warp_memory_zipf"),
            "lru_cache_calls_per_s": figure("lru_cache_zipf"),
            "cachebox_calls_per_s": figure("cachebox_zipf"),
            "diskcache_get_per_s": figure("diskcache_get"),
            "diskcache_memoize_calls_per_s": figure("diskcache_memoize_zipf"),
            "sharedcache_get_per_s": figure("sharedcache_get"),
            "sharedcache_two_process_get_per_s": figure("sharedcache_two_process_get"),
        }
        assert tuple(result) == JSON_KEYS
        if args.json:
            print(json.dumps({k: (round(v) if v is not None else None) for k, v in result.items()}))
        else:
            _report(args, rounds, median, samples, ratios, notes)
        return 0
    finally:
        if saved_cache_dir is None:
            os.environ.pop("CONSORT_CACHE_DIR", None)
        else:
            os.environ["CONSORT_CACHE_DIR"] = saved_cache_dir
        disk_dir.close()
        shutil.rmtree(consort_dir, ignore_errors=True)
        _remove_warp_files()


def _fmt(value):
    return "null" if value is None else f"{value / 1e6:7.2f} M/s"


def _report(args, rounds, median, samples, ratios, notes):
    print(f"consort.bench cache: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {_machine()}")
    print(f"command: python -m consort.bench cache --rounds {rounds} --calls {args.calls}")
    versions = ", ".join(
        f"{m} {_version(d)}"
        for m, d in (
            ("consort", "consort-ipc"),
            ("warp-cache", "warp-cache"),
            ("cachebox", "cachebox"),
            ("diskcache", "diskcache"),
        )
    )
    print(f"versions: {versions}")
    print(f"figures: median of {rounds} rounds; peers alternate within each round; min-max in brackets")
    print()
    print(f"decorator loops, max_size={MAX_SIZE}, {args.calls:,} calls")
    print(f"  {'peer':<20} {'zipf over 2,000 keys':>24} {'hit ratio':>9}   {'all hits, 200 keys':>24}")
    for name in (
        "consort_shared",
        "consort_memory",
        "warp_shared",
        "warp_memory",
        "lru_cache",
        "cachebox",
        "diskcache_memoize",
    ):
        z = samples.get(f"{name}_zipf")
        h = samples.get(f"{name}_hits")
        ratio = ratios.get(name)
        ratio_text = f"{ratio:9.3f}" if ratio is not None else f"{'':>9}"
        zipf_text = f"{_fmt(median.get(f'{name}_zipf')):>12} {_spread(z):>11}"
        hits_text = f"{_fmt(median.get(f'{name}_hits')):>12} {_spread(h):>11}"
        print(f"  {name:<20} {zipf_text} {ratio_text}   {hits_text}")
    print()
    print(
        f"gets, {KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values, {GET_KEYS:,} keys, {GET_LOOKUPS:,} lookups, all hits"
    )
    for name in ("sharedcache_get", "sharedcache_two_process_get", "diskcache_get"):
        print(f"  {name:<28} {_fmt(median.get(name)):>12} {_spread(samples.get(name)):>11}")
    ratios_text = _ratios(median)
    if ratios_text:
        print()
        print("same-run ratios (medians):")
        for line in ratios_text:
            print(f"  {line}")
    for note in notes:
        print(f"note: {note}")


def _spread(values):
    if not values:
        return ""
    return f"[{min(values) / 1e6:.2f}-{max(values) / 1e6:.2f}]"


def _ratios(median):
    pairs = (
        ("consort shared / warp shared (target >= 1.2)", "consort_shared_zipf", "warp_shared_zipf"),
        ("consort memory / warp memory (target >= 1)", "consort_memory_zipf", "warp_memory_zipf"),
        ("consort shared / warp shared, all hits", "consort_shared_hits", "warp_shared_hits"),
        ("SharedCache.get / diskcache get (target >= 20)", "sharedcache_get", "diskcache_get"),
        ("two processes / one (target >= 1.5)", "sharedcache_two_process_get", "sharedcache_get"),
        ("warp shared / warp memory", "warp_shared_zipf", "warp_memory_zipf"),
        ("warp shared / lru_cache", "warp_shared_zipf", "lru_cache_zipf"),
    )
    lines = []
    for label, top, bottom in pairs:
        if median.get(top) and median.get(bottom):
            lines.append(f"{label}: {median[top] / median[bottom]:.2f}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m consort.bench cache", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
