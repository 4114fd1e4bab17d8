#!/usr/bin/env bash
# Runs every test of the workspace against the real Appose worker: makes the venv if
# needed (scripts/venv.sh), runs the doctests, then nextest (each test in its own process,
# with time bounds from .config/nextest.toml), then builds the Python package
# (crates/consort-py) into the venv with pip and runs its pytest suite, each test bounded
# by --timeout. Extra arguments go to the Rust test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSORT_TEST_PYTHON="$(scripts/venv.sh)"
export CONSORT_TEST_PYTHON
cargo test -p consort --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci "$@"
else
  cargo test --workspace "$@"
fi
# The Python package, installed exactly as its README says (pip install ./crates/consort-py).
"$CONSORT_TEST_PYTHON" -m pip install --quiet --disable-pip-version-check --force-reinstall \
  --no-deps ./crates/consort-py
"$CONSORT_TEST_PYTHON" -m pytest crates/consort-py/tests --timeout=300 -q -p no:cacheprovider
# The same compatibility tests against the real warp_cache 0.7.0: they must describe it.
"$CONSORT_TEST_PYTHON" -m pytest crates/consort-py/tests/test_warp_compat.py --against-warp-cache \
  --timeout=300 -q -p no:cacheprovider
