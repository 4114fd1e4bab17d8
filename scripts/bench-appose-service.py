"""Measures appose-python's own Service, for side-by-side numbers with `consort bench`.

    python scripts/bench-appose-service.py roundtrip [--tasks N] [--concurrency C] [--worker appose|consort]
    python scripts/bench-appose-service.py crash [--kills N]

Prints one JSON object with the keys of `consort bench roundtrip --json` / `bench crash
--json`. Every wait is bounded (appose's wait_for() has none): a task still running after
--give-up seconds counts as hung. Not a test: it reports what it sees.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import appose
from appose.service import ResponseType, Service, TaskStatus

SCRIPT = "task.outputs['result'] = 1"


def new_service(worker):
    """A Service as an appose user makes one, on the interpreter running this script."""
    if worker == "appose":
        # appose.system() looks `python` up on PATH; put this interpreter's directory first
        # so that the worker is this venv's Python (the one with appose), unresolved.
        bin_dir = os.path.dirname(sys.executable)
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        return appose.system().python()
    # consort's Python worker, through the consort binary.
    consort = os.environ.get("CONSORT", "target/release/consort")
    return Service(os.getcwd(), None, consort, "worker", "python", "--python", sys.executable)


def bounded_wait(task, deadline):
    with task.cv:
        if task.status == TaskStatus.INITIAL:
            task.start()
        return task.cv.wait_for(lambda: task.status.is_finished(), timeout=max(0.0, deadline - time.monotonic()))


def roundtrip(args):
    began = time.monotonic()
    service = new_service(args.worker)
    warm = service.task(SCRIPT)
    bounded_wait(warm, time.monotonic() + 60)
    if warm.status != TaskStatus.COMPLETE:
        service.kill()
        raise SystemExit(f"the warm-up task ended {warm.status}: {warm.error}\n" + "\n".join(service.error_lines()))
    start_ms = (time.monotonic() - began) * 1e3
    deadline = time.monotonic() + args.give_up
    submit_lock = threading.Lock()  # appose's Service is not thread-safe to submit from
    counter = iter(range(args.tasks))
    counter_lock = threading.Lock()
    latencies, counts = [], {"complete": 0, "failed": 0, "crashed": 0, "hung": 0}
    record = threading.Lock()
    hung_states = []

    def run():
        while True:
            with counter_lock:
                if next(counter, None) is None:
                    return
            submitted = time.monotonic()
            with submit_lock:
                task = service.task(SCRIPT)
                task.start()
            ended = bounded_wait(task, deadline)
            with record:
                if not ended:
                    counts["hung"] += 1
                    hung_states.append(task.status.name)
                elif task.status == TaskStatus.COMPLETE:
                    counts["complete"] += 1
                    latencies.append(time.monotonic() - submitted)
                elif task.status == TaskStatus.CRASHED:
                    counts["crashed"] += 1
                else:
                    counts["failed"] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.give_up + 30)
    elapsed = time.monotonic() - t0
    if hung_states:
        # Where the hung tasks stopped, and whether the worker's output got garbled.
        print(f"hung tasks by status: {sorted(hung_states)}; invalid stdout lines: "
              f"{len(service.invalid_lines())}: {service.invalid_lines()[:3]}", file=sys.stderr)
    latencies.sort()
    pct = lambda p: latencies[round((len(latencies) - 1) * p)] * 1e6 if latencies else 0.0
    print(json.dumps({"tasks_per_s": counts["complete"] / elapsed, "p50_us": pct(0.5), "p99_us": pct(0.99),
                      **counts, "start_ms": start_ms}))
    service.kill()


def crash(args):
    delays = []
    for _ in range(args.kills):
        service = new_service(args.worker)
        task = service.task("import time\ntime.sleep(3600)")
        launched, crashed = threading.Event(), []

        def listen(event):
            if event.response_type == ResponseType.LAUNCH:
                launched.set()
            elif event.response_type == ResponseType.CRASH:
                crashed.append(time.monotonic())

        task.listen(listen)
        task.start()
        if not launched.wait(60):
            raise SystemExit("the waiting task did not start")
        killed = time.monotonic()
        service.kill()
        bounded_wait(task, time.monotonic() + 60)
        if crashed:
            delays.append(crashed[0] - killed)
        service.wait_for()
    if not delays:
        raise SystemExit("no task reported CRASHED")
    delays.sort()
    pct = lambda p: delays[round((len(delays) - 1) * p)] * 1e3
    print(json.dumps({"p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": delays[-1] * 1e3, "kills": len(delays)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["roundtrip", "crash"])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--give-up", type=float, default=60.0)
    parser.add_argument("--worker", choices=["appose", "consort"], default="appose")
    args = parser.parse_args()
    (roundtrip if args.mode == "roundtrip" else crash)(args)


if __name__ == "__main__":
    main()
