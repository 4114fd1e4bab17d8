"""Shared pytest setup for consort's Python tests.

`--against-warp-cache` runs the warp_cache compatibility tests (`test_warp_compat.py`)
against the real `warp_cache` package instead of `consort.compat.warp_cache`, which proves
that those tests describe warp_cache's real behaviour.
The choice reaches child processes through `WARP_COMPAT_IMPL`.

Every session also gets a fresh, private `CONSORT_CACHE_DIR` (0700, removed at the end), so
no test sees a cache file left by another run or writes into a user's real cache directory.
"""

import os
import shutil
import tempfile

import pytest

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
