"""The real Appose Python Service (appose 0.12.0) drives consort's workers.

Run by the Rust test `interop` in tests/it (so by scripts/test.sh and CI) as
    python tests/python/test_interop.py
with CONSORT_INTEROP_WORKERS set to a JSON object naming each worker's command line:
    {"echo": ["target/debug/echo_worker"], "python": ["python3", "-c", "..."]}

Every wait is bounded: appose's own Task.wait_for() has no timeout, so a lost response
would hang; here it fails the test instead.
"""

import json
import os
import sys
import threading
import unittest

from appose.service import ResponseType, Service, TaskException, TaskStatus

WORKERS = json.loads(os.environ["CONSORT_INTEROP_WORKERS"])
TIMEOUT = 30.0 * float(os.environ.get("CONSORT_TEST_SLOWDOWN", "1"))


def start(name):
    service = Service(os.getcwd(), None, *WORKERS[name])
    service.start()
    return service


def wait(task, timeout=TIMEOUT):
    """Waits for a task to end, bounded; raises TaskException like wait_for()."""
    with task.cv:
        if task.status == TaskStatus.INITIAL:
            task.start()
        ended = task.cv.wait_for(lambda: task.status.is_finished(), timeout=timeout)
    if not ended:
        raise AssertionError("task %s still %s after %.0f s" % (task.uuid, task.status, timeout))
    return task.wait_for()


class EchoWorkerTest(unittest.TestCase):
    """consort's Rust worker SDK (examples/echo_worker.rs) under Appose's Service."""

    def setUp(self):
        self.service = start("echo")

    def tearDown(self):
        self.service.close()
        self.service.wait_for()

    def test_echo(self):
        task = wait(self.service.task("echo", {"x": 1, "s": "\u00e9\u20ac\U0001f600", "l": [1, 2.5]}))
        self.assertEqual(task.status, TaskStatus.COMPLETE)
        self.assertEqual(task.outputs, {"x": 1, "s": "\u00e9\u20ac\U0001f600", "l": [1, 2.5]})

    def test_progress(self):
        task = self.service.task("progress", {"n": 5})
        events = []
        task.listen(events.append)
        wait(task)
        updates = [e for e in events if e.response_type == ResponseType.UPDATE]
        self.assertEqual([e.current for e in updates], [1, 2, 3, 4, 5])
        self.assertEqual({e.maximum for e in updates}, {5})
        self.assertEqual(events[0].response_type, ResponseType.LAUNCH)
        self.assertEqual(events[-1].response_type, ResponseType.COMPLETION)
        self.assertEqual(task.outputs, {"n": 5})

    def test_failure(self):
        with self.assertRaises(TaskException) as caught:
            wait(self.service.task("fail", {"message": "no good"}))
        self.assertEqual(caught.exception.task.status, TaskStatus.FAILED)
        self.assertEqual(caught.exception.task.error, "no good")

    def test_panic_fails_the_task_and_the_worker_lives_on(self):
        with self.assertRaises(TaskException) as caught:
            wait(self.service.task("panic"))
        self.assertIn("panic on request", caught.exception.task.error)
        self.assertEqual(wait(self.service.task("echo", {"ok": True})).outputs, {"ok": True})

    def test_cancel(self):
        task = self.service.task("sleep", {"seconds": 600})
        start_and_wait_launch(self, task)
        task.cancel()
        with self.assertRaises(TaskException):
            wait(task)
        self.assertEqual(task.status, TaskStatus.CANCELED)

    def test_thread_death_stress(self):
        stress(self, self.service, "echo", {"result": 1})


class PythonWorkerTest(unittest.TestCase):
    """consort's embedded Python worker under Appose's Service."""

    def setUp(self):
        self.service = start("python")

    def tearDown(self):
        self.service.close()
        self.service.wait_for()

    def test_result_and_progress(self):
        task = self.service.task("task.update('half', current=1, maximum=2)\nx * 7", {"x": 6})
        events = []
        task.listen(events.append)
        wait(task)
        self.assertEqual(task.result(), 42)
        updates = [e for e in events if e.response_type == ResponseType.UPDATE]
        self.assertEqual([(e.message, e.current, e.maximum) for e in updates], [("half", 1, 2)])

    def test_failure_has_the_traceback(self):
        with self.assertRaises(TaskException) as caught:
            wait(self.service.task("whee"))
        self.assertIn("NameError: name 'whee' is not defined", caught.exception.task.error)

    def test_main_queue_is_the_main_thread(self):
        task = wait(self.service.task("import threading\nthreading.current_thread().name", queue="main"))
        self.assertEqual(task.result(), "MainThread")

    def test_cooperative_cancel(self):
        script = "import time\nwhile not task.cancel_requested:\n    time.sleep(0.01)\ntask.cancel()"
        task = self.service.task(script)
        start_and_wait_launch(self, task)
        task.cancel()
        with self.assertRaises(TaskException):
            wait(task)
        self.assertEqual(task.status, TaskStatus.CANCELED)

    def test_busy_task_is_hard_cancelled(self):
        task = self.service.task("while True:\n    pass")
        start_and_wait_launch(self, task)
        task.cancel()
        with self.assertRaises(TaskException):
            wait(task)
        self.assertEqual(task.status, TaskStatus.CANCELED)
        # The worker survived it.
        self.assertEqual(wait(self.service.task("1 + 1")).result(), 2)

    def test_exports_reach_later_tasks(self):
        wait(self.service.task("def twice(v):\n    return 2 * v\ntask.export(twice=twice)"))
        self.assertEqual(wait(self.service.task("twice(21)")).result(), 42)

    def test_thread_death_stress(self):
        stress(self, self.service, "task.outputs['result'] = 1", {})


def start_and_wait_launch(test, task):
    """Starts a task and waits (bounded) until the worker reports it running."""
    launched = threading.Event()
    task.listen(lambda e: e.response_type == ResponseType.LAUNCH and launched.set())
    task.start()
    test.assertTrue(launched.wait(TIMEOUT))


def stress(test, service, script, inputs):
    """appose's test_thread_death_stress: 16 threads x 200 tasks, zero failures."""
    n_threads, n_tasks = 16, 200
    submit_lock = threading.Lock()
    failures = []

    def run():
        for _ in range(n_tasks):
            try:
                with submit_lock:
                    task = service.task(script, dict(inputs))
                    task.start()
                wait(task)
                if task.outputs.get("result") != 1:
                    failures.append("wrong outputs %r" % (task.outputs,))
            except BaseException as error:
                failures.append(repr(error))

    threads = [threading.Thread(target=run) for _ in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)
        test.assertFalse(thread.is_alive(), "a stress thread is still waiting")
    test.assertEqual(failures, [], "%d of %d tasks failed" % (len(failures), n_threads * n_tasks))
    test.assertEqual(service.invalid_lines(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
