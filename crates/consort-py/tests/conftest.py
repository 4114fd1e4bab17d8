"""Shared by the package's tests: every test gets a private cache directory of its own
(``CONSORT_CACHE_DIR``), so no test touches the user's caches or another test's, and
helpers to run real Python processes with a deadline."""

import os
import subprocess
import sys
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
