"""Real processes on one cache: fork and spawn children, a forked child's handle, eight
processes cold-starting one name at once, and a SIGKILL storm (writers killed at random
every few ms while a checker verifies every value it reads and times every call)."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import consort
import procs
from conftest import wait_until

TESTS = Path(__file__).parent


def results(queue, count, timeout=60):
    return sorted(queue.get(timeout=timeout) for _ in range(count))


def join_all(processes, timeout=60):
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            pytest.fail(f"child {p.pid} did not finish")
        assert p.exitcode == 0, p.exitcode


def test_fork_children_share_one_cache_and_not_the_parents_handle(name):
    cache = consort.SharedCache(name, 64)
    cache["parent"] = "hello"
    assert procs.cache_fds(cache.path) == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    path = cache.path
    children = [
        ctx.Process(target=procs.fork_child, args=(cache, path, i, queue)) for i in range(3)
    ]
    for child in children:
        child.start()
    got = results(queue, 3)
    join_all(children)
    # One fd of the file before (the inherited handle's), two after the first use (the
    # child's own handle too).
    assert got == [(i, 1, "hello", 2, i) for i in range(3)], got
    assert [cache.get(f"child-{i}") for i in range(3)] == [0, 1, 2]
    cache["after"] = 1  # the parent's handle is untouched
    assert cache.check()["live"] == 5


def test_spawn_children_reopen_a_pickled_cache(name):
    cache = consort.SharedCache(name, 64)
    cache["parent"] = "hello"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=procs.spawn_child, args=(cache, i, queue)) for i in range(2)]
    for child in children:
        child.start()
    got = results(queue, 2)
    join_all(children)
    assert got == [(0, "hello", 64), (1, "hello", 64)], got
    assert cache["child-0"] == 0 and cache["child-1"] == 1


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_module_level_cache_works_in_pool_children(name, method):
    procs.MODULE_CACHE = consort.SharedCache(name, 64)  # opened in the parent (fork inherits)
    try:
        ctx = multiprocessing.get_context(method)
        queue = ctx.Manager().Queue()
        with ctx.Pool(2) as pool:
            pool.starmap(procs.module_level_child, [(name, i, queue) for i in range(6)])
        assert results(queue, 6) == [(i, True) for i in range(6)]
        assert all(f"module-{i}" in procs.MODULE_CACHE for i in range(6))
    finally:
        procs.MODULE_CACHE = None


FORK_THEN_WAIT = """
import os, sys, time
import consort
name, stop = sys.argv[1], sys.argv[2]
cache = consort.SharedCache(name, 8)
cache["k"] = 1
if os.fork() == 0:
    deadline = time.monotonic() + 60
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_forked_child_does_not_keep_its_dead_parents_handle_alive(name, tmp_path):
    """A child forked without exec used to share its parent's open file description, and
    with it the parent's liveness lock: a parent killed holding a shard lock looked alive
    while the child lived, and every process wedged on that lock (the storm below caught
    it). Now the dead parent's participant slot is free at once: all 128 handles of a
    cache can be opened while the child lives on."""
    stop = tmp_path / "stop"
    parent = subprocess.Popen(
        [sys.executable, "-c", FORK_THEN_WAIT, name, str(stop)], stdout=subprocess.PIPE, text=True
    )
    handles = []
    try:
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait(timeout=10)
        handles = [consort.SharedCache(name, 8) for _ in range(consort.MAX_HANDLES)]
        assert handles[0]["k"] == 1
        with pytest.raises(consort.CacheError, match="open handles"):
            consort.SharedCache(name, 8)["x"] = 1
    finally:
        stop.touch()
        parent.kill()
        del handles


COLD_START = """
import os, sys, time
import consort
name, index, go, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
deadline = time.monotonic() + 30
while not os.path.exists(go):
    assert time.monotonic() < deadline, "no go"
c = consort.SharedCache(name, 1000)
c[index] = os.getpid()
while not all(i in c for i in range(n)):
    assert time.monotonic() < deadline, "not everyone wrote"
    time.sleep(0.001)
print(c.check()["live"])
"""


def test_eight_processes_cold_start_one_name_at_once(name, cache_dir, tmp_path):
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", COLD_START, name, str(i), str(go), "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    try:
        time.sleep(0.3)  # let them all reach the start line (their speed is not asserted)
        go.touch()
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert int(out) >= 8
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{name}.cache"]


STORM_SECONDS = float(os.environ.get("CONSORT_STORM_SECONDS", "5"))


def start_writer(name, keys, capacity, stop_file, fork_sleeper):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import procs; "
        "procs.storm_writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], "
        "sys.argv[6] == '1')"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), name, str(keys), str(capacity),
         str(stop_file), "1" if fork_sleeper else "0"],
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_storm_leaves_no_wrong_value_and_no_wedged_call(name, tmp_path):
    keys, capacity, n_writers = 48, 32, 4
    stop_file = tmp_path / "stop"
    cache = consort.SharedCache(name, capacity)
    checker_code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import procs; "
        "procs.storm_checker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))"
    )
    writers = [start_writer(name, keys, capacity, stop_file, i % 2 == 0) for i in range(n_writers)]
    checker = subprocess.Popen(
        [sys.executable, "-c", checker_code, str(TESTS), name, str(keys), str(capacity),
         str(STORM_SECONDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    kills = 0
    rng = random.Random(15)
    try:
        # Let the writers start writing before the first kill.
        assert wait_until(lambda: cache.stats()["inserts"] > 100, timeout=30)
        deadline = time.monotonic() + STORM_SECONDS
        while time.monotonic() < deadline and checker.poll() is None:
            time.sleep(rng.uniform(0.002, 0.010))
            index = rng.randrange(n_writers)
            writers[index].send_signal(signal.SIGKILL)
            writers[index].wait(timeout=10)
            kills += 1
            writers[index] = start_writer(name, keys, capacity, stop_file, index % 2 == 0)
        # A wedged call would keep the checker from finishing: its timeout is the verdict.
        try:
            out, err = checker.communicate(timeout=STORM_SECONDS + 60)
        except subprocess.TimeoutExpired:
            pytest.fail("the checker is wedged: a cache call did not return")
    finally:
        for writer in writers:
            writer.kill()
            writer.wait(timeout=10)
        checker.kill()
        stop_file.touch()
    assert checker.returncode == 0, err
    reads, hits, wrong, writes, max_read, max_write, problem = out.split(maxsplit=6)
    assert int(wrong) == 0, problem
    assert int(reads) > 1000 and int(hits) > 0 and int(writes) > 0, out
    # The promise is "within milliseconds"; a second is a generous bound for a loaded
    # machine, and far from a wedge.
    assert float(max_read) < 1.0 and float(max_write) < 1.0, out
    assert kills > 50, kills
    # Everything works after the storm, and the cache is consistent.
    t0 = time.monotonic()
    cache["after"] = procs.storm_value(1, 1)
    assert procs.verify(1, cache["after"]) == ""
    assert time.monotonic() - t0 < 1.0
    report = cache.check()
    assert report["live"] <= capacity
    print(f"storm: {kills} kills, checker {out.strip()}, stats {cache.stats()}")
