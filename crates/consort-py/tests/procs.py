"""Code that runs in the child processes of test_processes.py (importable by spawn children)."""

import hashlib
import os
import sys
import time

import consort


def cache_fds(path):
    """How many of this process's fds refer to the file ``path`` (by inode: the creator's fd
    carries the name of the temporary file the cache was built in)."""
    want = os.stat(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.fstat(int(fd))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            count += 1
    return count


def fork_child(cache, path, index, queue):
    """In a forked child: the inherited handle still reads (its fd and mapping now refer to
    a description of the child's own); the cache reads the parent's entry, takes a write
    (opening a handle of its own on first use) and reports."""
    try:
        before = cache_fds(path)
        parent = cache["parent"]
        cache[f"child-{index}"] = index
        after = cache_fds(path)
        queue.put((index, before, parent, after, cache[f"child-{index}"]))
    except BaseException as err:  # reported, not lost in the child's stderr
        queue.put((index, repr(err)))


def spawn_child(cache, index, queue):
    """In a spawn child: the cache came pickled (by name) and is reopened here."""
    try:
        queue.put((index, cache["parent"], cache.capacity))
        cache[f"child-{index}"] = index
    except BaseException as err:
        queue.put((index, repr(err)))


MODULE_CACHE = None


def module_level_child(name, index, queue):
    """Opens a module-level cache once and uses it (fork or spawn)."""
    global MODULE_CACHE
    if MODULE_CACHE is None:
        MODULE_CACHE = consort.SharedCache(name, 64)
    MODULE_CACHE[f"module-{index}"] = os.getpid()
    queue.put((index, MODULE_CACHE[f"module-{index}"] == os.getpid()))


def blob(key, n):
    """The payload a storm writer stores as generation ``n`` of ``key``."""
    return hashlib.shake_128(f"{key}:{n}".encode()).digest((key * 31 + n) % 3000)


def storm_value(key, n):
    return (key, n, blob(key, n))


def verify(key, value):
    """'' if ``value`` is one a writer stored under ``key``, else what is wrong."""
    if not (isinstance(value, tuple) and len(value) == 3):
        return f"not a storm value: {value!r:.80}"
    k, n, data = value
    if k != key:
        return f"value of key {k} under key {key}"
    if data != blob(key, n):
        return f"torn payload for key {key} generation {n}"
    return ""


def storm_writer(name, keys, capacity, stop_file, fork_sleeper):
    """Writes, replaces and removes storm values until killed. With ``fork_sleeper``, first
    forks a child that only sleeps (until ``stop_file`` exists): if a forked child kept its
    parent's liveness lock, a writer killed holding a shard lock would wedge the cache."""
    cache = consort.SharedCache(name, capacity)
    cache["warm"] = 1
    if fork_sleeper and os.fork() == 0:
        while not os.path.exists(stop_file):
            time.sleep(0.05)
        os._exit(0)
    n = int.from_bytes(os.urandom(4), "little")
    while True:
        n += 1
        key = n % keys
        op = n % 11
        if op == 0:
            cache.pop(key, None)
        else:
            cache[key] = storm_value(key, n)


def storm_checker(name, keys, capacity, seconds):
    """Reads every key over and over for ``seconds``, verifying each value and timing each
    call; writes keys of its own too (a wedged shard lock would stop them). Prints a summary
    line: reads hits wrong writes max_read_s max_write_s first_problem."""
    cache = consort.SharedCache(name, capacity)
    reads = hits = wrong = writes = 0
    max_read = max_write = 0.0
    problem = ""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        key = i % keys
        t0 = time.perf_counter()
        value = cache.get(key)
        dt = time.perf_counter() - t0
        max_read = max(max_read, dt)
        reads += 1
        if value is not None:
            hits += 1
            what = verify(key, value)
            if what:
                wrong += 1
                problem = problem or what
        if i % 16 == 0:
            own = keys + i % 8
            t0 = time.perf_counter()
            cache[own] = storm_value(own, i)
            dt = time.perf_counter() - t0
            max_write = max(max_write, dt)
            writes += 1
            got = cache.get(own)
            if got is not None and verify(own, got):
                wrong += 1
                problem = problem or verify(own, got)
    print(reads, hits, wrong, writes, f"{max_read:.6f}", f"{max_write:.6f}", repr(problem))
    sys.stdout.flush()
