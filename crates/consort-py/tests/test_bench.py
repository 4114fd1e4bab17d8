"""`python -m consort.bench cache --json` runs end to end and prints the keys the issue
names, a number for each peer that is installed (consort's own always), and leaves no cache
file behind, in the user's cache directory or in /dev/shm. It checks no speed: figures are
for the benchmark, on a quiet machine."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

KEYS = {
    "consort_shared_calls_per_s": None,
    "warp_shared_calls_per_s": "warp_cache",
    "warp_memory_calls_per_s": "warp_cache",
    "lru_cache_calls_per_s": None,
    "cachebox_calls_per_s": "cachebox",
    "diskcache_get_per_s": "diskcache",
    "diskcache_memoize_calls_per_s": "diskcache",
    "sharedcache_get_per_s": None,
    "sharedcache_two_process_get_per_s": None,
}


def _shm_names():
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.timeout(240)
def test_the_cache_benchmark_prints_every_key_and_leaves_nothing_behind(cache_dir):
    before = _shm_names()
    proc = subprocess.run(
        [sys.executable, "-m", "consort.bench", "cache", "--rounds", "1", "--calls", "2000",
         "--json"],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == set(KEYS)
    for key, module in KEYS.items():
        installed = module is None or importlib.util.find_spec(module) is not None
        if installed:
            assert isinstance(result[key], int) and result[key] > 0, (key, result[key])
        else:
            assert result[key] is None, (key, result[key])
    # The test's own CONSORT_CACHE_DIR stands for the user's: nothing was written there.
    assert not cache_dir.exists() or not any(cache_dir.iterdir()), list(cache_dir.iterdir())
    assert _shm_names() - before == set(), _shm_names() - before
