#!/usr/bin/env bash
# Issue 14's measurement: `consort map --workers 2` over 2,000 lines of which 21 SIGKILL their
# own worker, for --retries 0..3 and --isolated, with one or more builds side by side in one
# run. Prints, per round, build and configuration: innocent lines lost, killers crashed, and
# lines per second.
#   scripts/bench-killers.sh ROUNDS BIN_DIR...   (e.g. 3 /work/base/target/release target/release)
set -euo pipefail
rounds=$1; shift
python="${CONSORT_TEST_PYTHON:-$("$(dirname "$0")/venv.sh")}"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
seq 0 1999 | sed 's/.*/{"x": &}/' > "$work/lines"
script=$(printf 'import os\nif x %% 95 == 7:\n    os.kill(os.getpid(), 9)\nx * 2')
printf 'round\tbuild\tconfig\tinnocent_lost\tkillers_crashed\tlines_per_s\n'
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    for config in "--retries 0" "--retries 1" "--retries 2" "--retries 3" "--isolated"; do
      start=$(date +%s.%N)
      # shellcheck disable=SC2086
      "$bin/consort" map --workers 2 $config --python "$python" "$script" \
        < "$work/lines" > "$work/out" 2>/dev/null || true
      end=$(date +%s.%N)
      "$python" - "$work/out" "$round" "$bin" "$config" "$start" "$end" <<'PY'
import json, sys
out, rnd, build, config, start, end = sys.argv[1:]
lost = killers = 0
n = 0
for line in open(out):
    rec = json.loads(line)
    n += 1
    killer = rec.get("index", -1) % 95 == 7
    crashed = rec.get("status") == "crashed"
    if crashed and killer:
        killers += 1
    elif not killer and rec.get("status") != "complete":
        lost += 1
lost += 2000 - n  # lines that got no output line are lost too
print(f"{rnd}\t{build}\t{config}\t{lost}\t{killers}\t{2000 / (float(end) - float(start)):.0f}")
PY
    done
  done
done
