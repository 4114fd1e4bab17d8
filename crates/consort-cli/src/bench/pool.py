"""The Python side of `consort bench pool`: tiny tasks and 1 ms-CPU tasks through
concurrent.futures.ProcessPoolExecutor and loky with the same number of workers.

Prints one JSON object: {"ppe_tiny": tasks/s, "ppe_cpu": ..., "loky_tiny": ..., "loky_cpu": ...};
loky's keys are null when loky is not installed. Each pool is started and warmed up (every
worker has run a task) before the clock starts, as consort's pool is.

Usage: python pool.py --workers N --tasks T
(`consort bench pool` embeds this file and runs it with `python -c`.)
"""

import argparse
import concurrent.futures
import json
import time


def tiny():
    return 1


def cpu_1ms():
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return 1


def rate(executor, fn, n_tasks, n_workers):
    # Warm-up: every worker started and has run a task.
    warm = [executor.submit(cpu_1ms) for _ in range(n_workers * 4)]
    for future in warm:
        future.result()
    begin = time.perf_counter()
    futures = [executor.submit(fn) for _ in range(n_tasks)]
    for future in futures:
        future.result()
    return n_tasks / (time.perf_counter() - begin)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    args = parser.parse_args()
    out = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.workers) as executor:
        out["ppe_tiny"] = rate(executor, tiny, args.tasks, args.workers)
        out["ppe_cpu"] = rate(executor, cpu_1ms, args.tasks, args.workers)
    try:
        import loky
    except ImportError:
        out["loky_tiny"] = out["loky_cpu"] = None
    else:
        executor = loky.get_reusable_executor(max_workers=args.workers)
        out["loky_tiny"] = rate(executor, tiny, args.tasks, args.workers)
        out["loky_cpu"] = rate(executor, cpu_1ms, args.tasks, args.workers)
        executor.shutdown(wait=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
