#!/usr/bin/env bash
# Makes (once) the Python environment consort's tests and examples use: a venv in .venv
# with the real Appose worker (appose==0.12.0), numpy, and uv (the env tests build
# environments with it), and what the Python package's tests need (a pip new enough for
# maturin's build backend, pytest, pytest-timeout, maturin). Prints its python's path.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import appose, numpy" >/dev/null 2>&1 || ! .venv/bin/uv --version >/dev/null 2>&1; then
  "${PYTHON:-python3}" -m venv .venv >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "appose==0.12.0" numpy uv >&2
fi
# loky: `consort bench pool` compares consort's pool against it.
if ! .venv/bin/python -c "import loky" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check loky >&2
fi
# The Python package (crates/consort-py): scripts/test.sh builds it with pip (maturin is its
# build backend) and runs its pytest suite, every test under a timeout.
if ! .venv/bin/python -c "import pytest, pytest_timeout, maturin" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check --upgrade pip >&2
  .venv/bin/pip install --quiet --disable-pip-version-check pytest pytest-timeout "maturin>=1.9.4,<2" >&2
fi
# warp-cache 0.7.0: the warp_cache compatibility tests also run against the real package
# (--against-warp-cache), which proves they describe what warp_cache really does.
if ! .venv/bin/python -c "import warp_cache" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check "warp-cache==0.7.0" >&2
fi
# mypy: tests/test_typing.py checks the native module's stubs and the Python layer with it.
if ! .venv/bin/python -c "import mypy" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check mypy >&2
fi
echo "$PWD/.venv/bin/python"
