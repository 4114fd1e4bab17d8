#!/usr/bin/env bash
# Compares two builds of consort side by side, alternating them round after round so that
# both see the same minutes of a noisy machine: echo_worker's round trip against a pipe
# ping-pong (sequential, and tasks/s at concurrency 16), and consort's Python worker.
#
#   scripts/bench-compare.sh BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]
#
# Each directory is a `target/release` holding `consort` and `examples/echo_worker`
# (`cargo build --release --bins --examples`), e.g. a worktree of the base commit built
# with its own CARGO_TARGET_DIR. The Python is the test venv's (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: $0 BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]}
new=${2:?usage: $0 BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]}
rounds=${3:-4}
python=$(scripts/venv.sh)
for _ in $(seq "$rounds"); do
  for side in base new; do
    dir=${!side}
    e=$("$dir/consort" bench roundtrip --worker "$dir/examples/echo_worker" --tasks 5000 --json)
    c=$("$dir/consort" bench roundtrip --worker "$dir/examples/echo_worker" --tasks 20000 --concurrency 16 --json)
    p=$("$dir/consort" bench roundtrip --worker consort --python "$python" --tasks 3000 --json)
    q=$("$dir/consort" bench roundtrip --worker consort --python "$python" --tasks 3000 --concurrency 16 --json)
    python3 - "$side" "$e" "$c" "$p" "$q" <<'PY'
import json, sys
side = sys.argv[1]
e, c, p, q = (json.loads(arg) for arg in sys.argv[2:])
print(f"{side:4} echo p50 {e['p50_us']:6.2f} us, pipe {e['pipe_p50_us']:5.2f} us, "
      f"ratio {e['p50_us'] / e['pipe_p50_us']:4.2f} | echo {e['tasks_per_s']:7.0f}/s, "
      f"c16 {c['tasks_per_s']:7.0f}/s | python {p['tasks_per_s']:6.0f}/s "
      f"(p50 {p['p50_us']:5.1f} us), c16 {q['tasks_per_s']:6.0f}/s")
PY
  done
done
