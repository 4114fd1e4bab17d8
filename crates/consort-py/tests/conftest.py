"""Shared by the package's tests.

Every test gets a private cache directory of its own (``CONSORT_CACHE_DIR``), so no test
touches the user's caches or another test's, and helpers run real Python processes with a
deadline.

`--against-warp-cache` runs the warp_cache compatibility tests (`test_warp_compat.py`)
against the real `warp_cache` package instead of `consort.compat.warp_cache`, which proves
that those tests describe warp_cache's real behaviour. The choice reaches child processes
through `WARP_COMPAT_IMPL`. Every session also gets a fresh, private `CONSORT_CACHE_DIR`
(removed at the end), which the compatibility tests use so that parent and child processes
find caches in the same directory.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """A fresh 0700 directory that does not exist yet, as ``CONSORT_CACHE_DIR``."""
    path = tmp_path / "caches"
    monkeypatch.setenv("CONSORT_CACHE_DIR", str(path))
    return path


@pytest.fixture
def name():
    """A cache name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


def wait_until(condition, timeout=10.0, interval=0.002):
    """Polls ``condition`` until it holds or ``timeout`` seconds pass; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def run_python(code, *args, env=None, timeout=60):
    """Runs ``code`` in a new interpreter (``sys.argv[1:]`` = args) and returns its stdout;
    fails the test, with its stderr, when it exits non-zero or outlives ``timeout``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout


WARP_IMPL = "warp_cache"
CONSORT_IMPL = "consort.compat.warp_cache"

_saved_env = {}
_session_dir = None


def pytest_addoption(parser):
    parser.addoption(
        "--against-warp-cache",
        action="store_true",
        default=False,
        help="run the warp_cache compatibility tests against the real warp_cache package",
    )


def pytest_configure(config):
    global _session_dir
    impl = WARP_IMPL if config.getoption("--against-warp-cache") else CONSORT_IMPL
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    _session_dir = tempfile.mkdtemp(prefix="consort-pytest-", dir=base)
    for name, value in (("WARP_COMPAT_IMPL", impl), ("CONSORT_CACHE_DIR", _session_dir)):
        _saved_env[name] = os.environ.get(name)
        os.environ[name] = value


def pytest_unconfigure(config):
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _session_dir is not None:
        shutil.rmtree(_session_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def against_warp_cache(request):
    """True when the session runs against the real warp_cache."""
    return request.config.getoption("--against-warp-cache")
