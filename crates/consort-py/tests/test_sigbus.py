"""A cache file truncated under a live process is a `CacheCorruptError`, not a "Fatal Python
error: Bus error", whatever Python's `faulthandler` (enabled by pytest and by
`python -X faulthandler`) did to the SIGBUS disposition before or after the cache opened.

Each case is a real child process: it opens a cache, says so, waits for this process to
truncate the file, then makes one call that touches the truncated pages.
"""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import faulthandler, os, sys
import consort

name, mode, op = sys.argv[1:4]
if mode in ("before", "before-and-after", "before-disable"):
    faulthandler.enable()
c = consort.SharedCache(name, 256)
for i in range(64):
    c[f"k{i}"] = "v" * 100
if mode in ("after", "before-and-after"):
    faulthandler.enable()
if mode == "after-reenable":
    faulthandler.enable()
    faulthandler.disable()
    faulthandler.enable()
if mode == "before-disable":
    faulthandler.disable()
print("ready", flush=True)
sys.stdin.readline()  # the file is truncated now
try:
    if op == "get":
        for i in range(64):
            c.get(f"k{i}")
    else:
        for i in range(64):
            c[f"k{i}"] = "w" * 100
except consort.CacheCorruptError as err:
    print("corrupt:", err, flush=True)
else:
    print("no error", flush=True)
"""

MODES = ["before", "after", "before-and-after", "after-reenable", "before-disable", "none"]


@pytest.mark.parametrize("op", ["get", "set"])
@pytest.mark.parametrize("mode", MODES)
def test_a_truncated_file_is_a_corrupt_error_whatever_faulthandler_did(
    name, cache_dir, mode, op
):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, name, mode, op],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        os.truncate(cache_dir / f"{name}.cache", 0)
        out, err = child.communicate("go\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "Fatal Python error" not in err, err
    assert child.returncode == 0, f"exit {child.returncode}\n{err}"
    assert out.startswith("corrupt:"), out + err
    assert "truncated" in out, out


def test_a_bus_error_outside_any_cache_still_kills_with_faulthandlers_report(tmp_path):
    """The guard hands any other SIGBUS on: faulthandler still reports it, and the process
    still dies of it (no loop, no swallowed fault), with a cache open and faulthandler
    enabled after it."""
    code = r"""
import faulthandler, mmap, os, sys
import consort
c = consort.SharedCache("other", 16)
c["k"] = 1
faulthandler.enable()
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"x" * 8192)
f = open(path, "r+b")
m = mmap.mmap(f.fileno(), 8192)
os.truncate(path, 0)
m[4096]  # SIGBUS outside any cache mapping
print("survived", flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -7, f"exit {proc.returncode}\n{proc.stderr}"
    assert "survived" not in proc.stdout
    assert proc.stderr.count("Fatal Python error: Bus error") == 1, proc.stderr
