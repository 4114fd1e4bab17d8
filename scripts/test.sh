#!/usr/bin/env bash
# Runs every test of the workspace against the real Appose worker: makes the venv if
# needed (scripts/venv.sh), runs the doctests, then nextest (each test in its own process,
# with time bounds from .config/nextest.toml). Extra arguments go to the test runner.
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
