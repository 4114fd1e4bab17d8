#!/usr/bin/env bash
# Compares two builds of consort side by side, alternating them round after round so that
# both see the same minutes of a noisy machine:
#   - roundtrip: echo_worker's round trip against a pipe ping-pong (sequential, and tasks/s
#     at concurrency 16), and consort's Python worker (sequential and concurrency 16);
#   - crash: SIGKILL to CRASHED for consort's Python worker and for echo_worker, with each
#     build's floor (a bare process before the floor was taken on the worker itself);
#   - pool: consort's pool against ProcessPoolExecutor and loky, and the respawn time;
#   - cache: consort-cache gets against LMDB and moka, inserts, two processes.
# Each round prints one line per benchmark and build; the end prints each figure's median
# per build and the ratio NEW / BASE (above 1 is better for a rate, below 1 for a time).
#
#   scripts/bench-compare.sh BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]
#
# Each directory is a `target/release` holding `consort` and `examples/echo_worker`
# (`cargo build --release --bins --examples`), e.g. a worktree of the base commit built
# with its own CARGO_TARGET_DIR. The Python is the test venv's (scripts/venv.sh). Only
# flags that every build since d470a7a accepts are used, so old builds compare.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: $0 BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]}
new=${2:?usage: $0 BASE_RELEASE_DIR NEW_RELEASE_DIR [ROUNDS]}
rounds=${3:-4}
python=$(scripts/venv.sh)
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
for round in $(seq "$rounds"); do
  for side in base new; do
    dir=${!side}
    out=$results/$side.$round
    echo=$dir/examples/echo_worker
    "$dir/consort" bench roundtrip --worker "$echo" --tasks 5000 --json >"$out.echo.json"
    "$dir/consort" bench roundtrip --worker "$echo" --tasks 20000 --concurrency 16 --json >"$out.echo16.json"
    "$dir/consort" bench roundtrip --worker consort --python "$python" --tasks 3000 --json >"$out.py.json"
    "$dir/consort" bench roundtrip --worker consort --python "$python" --tasks 3000 --concurrency 16 --json >"$out.py16.json"
    "$dir/consort" bench crash --worker consort --python "$python" --kills 20 --json >"$out.crash.json"
    "$dir/consort" bench crash --worker "$echo" --kills 20 --json >"$out.crashecho.json"
    "$dir/consort" bench pool --python "$python" --workers 2 --tasks 2000 --kills 5 --json >"$out.pool.json"
    # Its stderr says only "redis skipped" when there is no redis-server; shown on failure.
    "$dir/consort" bench cache --gets 1000000 --json >"$out.cache.json" 2>"$out.cache.err" ||
      { cat "$out.cache.err" >&2; exit 1; }
    python3 - "$side" "$out" <<'PY'
import json, sys
side, out = sys.argv[1], sys.argv[2]
r = {name: json.load(open(f"{out}.{name}.json"))
     for name in ["echo", "echo16", "py", "py16", "crash", "crashecho", "pool", "cache"]}
e, c, p, q = r["echo"], r["echo16"], r["py"], r["py16"]
print(f"{side:4} roundtrip echo p50 {e['p50_us']:6.2f} us, pipe {e['pipe_p50_us']:5.2f} us, "
      f"ratio {e['p50_us'] / e['pipe_p50_us']:4.2f} | echo {e['tasks_per_s']:7.0f}/s, "
      f"c16 {c['tasks_per_s']:7.0f}/s | python {p['tasks_per_s']:6.0f}/s "
      f"(p50 {p['p50_us']:5.1f} us), c16 {q['tasks_per_s']:6.0f}/s")
def floor(k):
    bare = f", bare {k['floor_bare_p50_ms']:.3f}" if "floor_bare_p50_ms" in k else ""
    return f"floor {k['floor_p50_ms']:.3f}{bare}"
k, x = r["crash"], r["crashecho"]
print(f"{side:4} crash python p50 {k['p50_ms']:.3f} ms, p99 {k['p99_ms']:.3f} ({floor(k)}) | "
      f"echo p50 {x['p50_ms']:.3f} ms, p99 {x['p99_ms']:.3f} ({floor(x)})")
o = r["pool"]
ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"
print(f"{side:4} pool consort {o['consort_tasks_per_s']:6.0f}/s, PPE {ratio(o['consort_tasks_per_s'], o['ppe_tasks_per_s'])}, "
      f"loky {ratio(o['consort_tasks_per_s'], o['loky_tasks_per_s'])} | 1 ms CPU {o['consort_cpu_tasks_per_s']:5.0f}/s | "
      f"respawn {o['respawn_ms']:.1f} ms, spare {o['respawn_spare_ms']:.1f} ms, python -c pass {o['python_start_ms']:.1f} ms")
h = r["cache"]
print(f"{side:4} cache get {h['consort_get_per_s'] / 1e6:5.1f} M/s ({h['get_vs_lmdb']:.2f}x LMDB, "
      f"{h['get_vs_moka']:.2f}x moka), p50/p99 {h['consort_get_p50_ns']}/{h['consort_get_p99_ns']} ns | "
      f"insert {h['consort_insert_per_s'] / 1e6:4.2f} M/s | 2 procs {h['two_proc_vs_one']:.2f}x")
PY
  done
done
python3 - "$results" "$rounds" <<'PY'
import json, statistics, sys
results, rounds = sys.argv[1], int(sys.argv[2])
# (label, file, key, higher is better)
figures = [
    ("echo p50 us", "echo", "p50_us", False),
    ("echo tasks/s", "echo", "tasks_per_s", True),
    ("echo c16 tasks/s", "echo16", "tasks_per_s", True),
    ("python tasks/s", "py", "tasks_per_s", True),
    ("python c16 tasks/s", "py16", "tasks_per_s", True),
    ("crash python p50 ms", "crash", "p50_ms", False),
    ("crash echo p50 ms", "crashecho", "p50_ms", False),
    ("pool tiny tasks/s", "pool", "consort_tasks_per_s", True),
    ("pool 1 ms CPU tasks/s", "pool", "consort_cpu_tasks_per_s", True),
    ("pool respawn ms", "pool", "respawn_ms", False),
    ("pool respawn spare ms", "pool", "respawn_spare_ms", False),
    ("cache get/s", "cache", "consort_get_per_s", True),
    ("cache insert/s", "cache", "consort_insert_per_s", True),
    ("cache 2 procs get/s", "cache", "consort_get_2proc_per_s", True),
]
def median(side, name, key):
    return statistics.median(json.load(open(f"{results}/{side}.{r}.{name}.json"))[key]
                             for r in range(1, rounds + 1))
print(f"\nmedians of {rounds} rounds          base          new  new/base")
for label, name, key, higher in figures:
    b, n = median("base", name, key), median("new", name, key)
    kind = "(rate: higher is better)" if higher else "(time: lower is better)"
    print(f"{label:24} {b:12.4g} {n:12.4g} {n / b if b else float('nan'):9.3f}  {kind}")
PY
