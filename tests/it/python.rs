//! The same promises against the real appose 0.12.0 Python worker, whose stdout interleaves
//! under load, which prints freely, and which can be killed mid-task.

use consort::ExitStatus;
use consort_tests::wait_until;

use super::*;

fn python() -> ServiceBuilder {
    Service::appose_python(consort_tests::python())
        .with_close_grace(Duration::from_secs(5))
        .with_kill_grace(GRACE)
}

#[test]
fn python_flood_of_concurrent_tasks_all_complete() {
    let _watchdog = watchdog("python_flood_of_concurrent_tasks_all_complete");
    // appose's own service loses about 50 of 3,200 such tasks to interleaved lines.
    let n_tasks = if consort_tests::slow_tests() {
        10_000
    } else {
        3_200
    };
    let service = python().start().expect("start python");
    let tasks: Vec<Task> = (0..n_tasks)
        .map(|task_idx| {
            service
                .task("x + 1")
                .input("x", task_idx)
                .submit()
                .expect("submit")
        })
        .collect();
    for (task_idx, task) in tasks.iter().enumerate() {
        assert_eq!(finish(task).expect("complete")["result"], task_idx + 1);
    }
    eprintln!(
        "{} noise fragments, e.g. {:?}",
        service.invalid_lines().len(),
        service.invalid_lines().first()
    );
}

#[test]
fn python_tasks_with_interleaved_updates_all_complete() {
    let _watchdog = watchdog("python_tasks_with_interleaved_updates_all_complete");
    // appose's own service loses about 80 of these 300 tasks.
    let service = python().start().expect("start python");
    let recorder = Recorder::default();
    let script = "for step in range(20):\n    task.update(current=step, maximum=20)\nx";
    let tasks: Vec<Task> = (0..300)
        .map(|task_idx| {
            service
                .task(script)
                .input("x", task_idx)
                .listen(recorder.listener())
                .submit()
                .expect("submit")
        })
        .collect();
    for (task_idx, task) in tasks.iter().enumerate() {
        assert_eq!(finish(task).expect("complete")["result"], task_idx);
    }
    let events = recorder.events();
    for task in &tasks {
        let terminals = events
            .iter()
            .filter(|(_, event)| &event.task == task.id() && is_terminal(event.kind))
            .count();
        assert_eq!(terminals, 1);
    }
}

#[test]
fn python_worker_sigkilled_with_pending_tasks_ends_them_crashed() {
    let _watchdog = watchdog("python_worker_sigkilled_with_pending_tasks_ends_them_crashed");
    let service = python().start().expect("start python");
    let script = "import sys, time\nprint('about to sleep')\nsys.stderr.write('sleeping\\n')\ntime.sleep(600)";
    let tasks = submit_running(&service, 8, script, None);
    assert!(wait_until(TASK_LIMIT, || service.stderr_lines().len() >= 8));
    let killed_at = Instant::now();
    consort_tests::kill(service.pid(), 9);
    for task in &tasks {
        let report = crashed(task);
        assert_eq!(report.status, ExitStatus::Signal(9));
        assert!(
            report.stderr.iter().any(|line| line == "sleeping"),
            "{report:?}"
        );
        assert!(
            report.stdout.iter().any(|line| line == "about to sleep"),
            "{report:?}"
        );
        assert!(report
            .appose_message()
            .starts_with("Worker crashed with exit code -9."));
    }
    let latency = killed_at.elapsed();
    eprintln!("SIGKILL -> 8 Python tasks CRASHED in {latency:?}");
    assert!(
        latency <= Duration::from_millis(500) * slowdown(),
        "{latency:?}"
    );
}

#[test]
fn python_completion_written_just_before_exit_is_not_lost() {
    let _watchdog = watchdog("python_completion_written_just_before_exit_is_not_lost");
    // appose's own service reports such a task CRASHED five times out of five: its monitor
    // does not wait for stdout to be read to its end.
    for _round in 0..3 {
        let service = python().start().expect("start python");
        let task = service
            .task("import time\ntime.sleep(0.3)\ntask.outputs['big'] = 'x' * 10_000_000")
            .submit()
            .expect("submit");
        assert!(wait_until(TASK_LIMIT, || task.state() == TaskState::Running));
        // stdin EOF: the worker lets the task finish, writes its COMPLETION and exits.
        assert_eq!(service.close(), ExitStatus::Code(0));
        let outputs = finish(&task).expect("the COMPLETION written before exit wins");
        assert_eq!(outputs["big"].as_str().map(str::len), Some(10_000_000));
    }
}

#[test]
fn python_worker_that_fails_to_import_crashes_its_first_task_with_the_traceback() {
    let _watchdog =
        watchdog("python_worker_that_fails_to_import_crashes_its_first_task_with_the_traceback");
    let mut command = Command::new(consort_tests::python());
    command.arg("-c").arg("import consort_no_such_module");
    let service = Service::new(command).start().expect("python itself starts");
    let report = crashed(&submit(&service, "1"));
    assert_eq!(report.status, ExitStatus::Code(1));
    assert!(
        report
            .stderr
            .iter()
            .any(|line| line.contains("ModuleNotFoundError")
                && line.contains("consort_no_such_module")),
        "{:?}",
        report.stderr
    );
}

#[test]
fn python_invalid_utf8_and_partial_prints_do_not_lose_responses() {
    let _watchdog = watchdog("python_invalid_utf8_and_partial_prints_do_not_lose_responses");
    // appose's own service stops reading at invalid UTF-8, and loses a COMPLETION glued to a
    // print() without newline.
    let service = python().start().expect("start python");
    let invalid = service
        .task("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe bad bytes\\n')\nsys.stdout.flush()\n1")
        .submit()
        .expect("submit");
    assert_eq!(finish(&invalid).expect("complete")["result"], 1);
    let partial = service
        .task("import sys\nsys.stdout.write('partial')\nsys.stdout.flush()\n2")
        .submit()
        .expect("submit");
    assert_eq!(finish(&partial).expect("complete")["result"], 2);
    let later = service.task("3").submit().expect("submit");
    assert_eq!(finish(&later).expect("complete")["result"], 3);
    let noise = service.invalid_lines();
    assert!(
        noise.iter().any(|line| line.contains("bad bytes")),
        "{noise:?}"
    );
    assert!(noise.iter().any(|line| line == "partial"), "{noise:?}");
}
