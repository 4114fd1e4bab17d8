//! issue 14: JSON nested deeper than serde_json's recursion limit (128 levels). A worker
//! sent a COMPLETION whose outputs were nested 126 levels deep, the decoder dropped the line
//! as noise, and the task waited for ever, silently. Now such a line is decoded (up to
//! `protocol::MAX_DEPTH` levels), and a line that names a task and a `responseType` but
//! cannot be decoded (deeper still, or not valid JSON) fails that task with the reason.
//!
//! The other direction too: a request nested too deep for the worker's decoder fails its
//! task with the reason, in consort's Rust SDK and in its Python worker, and the worker
//! serves on (before, both dropped the request, task id and all, and the task hung).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::{json, Value};

use super::*;

/// `depth` arrays around `1`: `[[[1]]]` for 3.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// How many arrays deep `value` is, counted without recursion.
fn depth_of(mut value: &Value) -> usize {
    let mut depth = 0;
    while let Value::Array(items) = value {
        depth += 1;
        value = &items[0];
    }
    depth
}

/// Submits a fake worker `write` task that writes `line` and stays.
#[track_caller]
fn write_line(service: &Service, line: String) -> Task {
    service
        .task("write")
        .input("chunks", json!([line]))
        .submit()
        .expect("submit")
}

fn completion(outputs: &str) -> String {
    format!("{{\"outputs\":{outputs},\"task\":\"$TASK\",\"responseType\":\"COMPLETION\"}}\n")
}

/// The message of a task that must have ended FAILED.
#[track_caller]
fn failure(task: &Task) -> String {
    match finish(task) {
        Err(TaskError::Failed { message }) => message,
        other => panic!("task {} should have failed, got {other:?}", task.id()),
    }
}

#[test]
fn issue_14_a_completion_nested_500_levels_deep_completes() {
    let _watchdog = watchdog("issue_14_a_completion_nested_500_levels_deep_completes");
    let service = start_fake(&["serve"]);
    let task = write_line(
        &service,
        completion(&format!("{{\"deep\":{}}}", nested(500))),
    );
    let outputs = finish(&task).expect("a deep COMPLETION is decoded");
    assert_eq!(depth_of(&outputs["deep"]), 500);
    assert!(
        service.invalid_lines().is_empty(),
        "{:?}",
        service.invalid_lines()
    );
}

#[test]
fn issue_14_a_completion_nested_beyond_the_limit_fails_its_task_with_the_reason() {
    let _watchdog =
        watchdog("issue_14_a_completion_nested_beyond_the_limit_fails_its_task_with_the_reason");
    let service = start_fake(&["serve"]);
    let task = write_line(
        &service,
        completion(&format!("{{\"deep\":{}}}", nested(100_000))),
    );
    let message = failure(&task);
    assert!(message.contains("COMPLETION"), "{message}");
    assert!(message.contains("100002 levels deep"), "{message}");
    // The worker is fine, and so is the supervisor's reading.
    assert_eq!(finish(&submit(&service, "echo")), Ok(Args::new()));
}

#[test]
fn issue_14_a_response_that_is_not_valid_json_fails_its_task_with_the_reason() {
    let _watchdog =
        watchdog("issue_14_a_response_that_is_not_valid_json_fails_its_task_with_the_reason");
    let service = start_fake(&["serve"]);
    let task = write_line(&service, completion("{\"trailing\":\"comma\",}"));
    let message = failure(&task);
    assert!(message.contains("COMPLETION"), "{message}");
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(message.contains("trailing comma"), "{message}");
}

#[test]
fn an_undecodable_line_for_no_pending_task_is_noise() {
    let _watchdog = watchdog("an_undecodable_line_for_no_pending_task_is_noise");
    let service = start_fake(&["serve"]);
    let stray = "{\"task\":\"nobody\",\"responseType\":\"COMPLETION\",\"outputs\":{,}}";
    let task = service
        .task("write")
        .input("chunks", json!([format!("{stray}\n"), completion("{}")]))
        .submit()
        .expect("submit");
    assert_eq!(finish(&task), Ok(Args::new()));
    assert_eq!(service.invalid_lines(), [stray]);
}

#[test]
fn a_response_cut_short_by_the_worker_s_exit_crashes_its_task() {
    let _watchdog = watchdog("a_response_cut_short_by_the_worker_s_exit_crashes_its_task");
    // The last line, unterminated at EOF, is a write the exit cut short: the task crashed,
    // it did not fail (a pool retries a crash).
    let service = start_fake(&["serve"]);
    let cut = "{\"task\":\"$TASK\",\"responseType\":\"COMPLETION\",\"outputs\":{\"x\":[1,";
    let task = service
        .task("write")
        .input("chunks", json!([cut]))
        .input("then", "exit")
        .submit()
        .expect("submit");
    assert_eq!(crashed(&task).status, consort::ExitStatus::Code(0));
}

/// Lines a raw worker writes, read on a thread of their own, so a worker that never
/// answers fails the test instead of hanging it.
struct RawWorker {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read and not yet asked for: answers come in any order.
    unclaimed: Vec<String>,
}

impl RawWorker {
    fn spawn(mut command: Command) -> RawWorker {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the worker");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        RawWorker {
            child,
            lines,
            unclaimed: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(line.as_bytes()).expect("write a request");
        stdin.write_all(b"\n").expect("write a request");
        stdin.flush().expect("flush");
    }

    /// The terminal response of task `id` (a COMPLETION, FAILURE or CANCELATION line).
    #[track_caller]
    fn terminal_of(&mut self, id: &str) -> String {
        let needle = format!("\"task\":\"{id}\"");
        let is_it = |line: &String| {
            line.contains(&needle)
                && ["COMPLETION", "FAILURE", "CANCELATION"]
                    .iter()
                    .any(|kind| line.contains(&format!("\"responseType\":\"{kind}\"")))
        };
        let deadline = Instant::now() + TASK_LIMIT * slowdown();
        loop {
            if let Some(idx) = self.unclaimed.iter().position(is_it) {
                return self.unclaimed.remove(idx);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.unclaimed.push(line),
                Err(err) => panic!("no answer for task {id}: {err:?}"),
            }
        }
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn execute(id: &str, script: &str, inputs: &str) -> String {
    format!(
        "{{\"task\":\"{id}\",\"requestType\":\"EXECUTE\",\"script\":\"{script}\",\
         \"inputs\":{inputs},\"queue\":null}}"
    )
}

#[test]
fn issue_14_the_sdk_worker_decodes_deep_inputs_fails_deeper_ones_and_serves_on() {
    let _watchdog =
        watchdog("issue_14_the_sdk_worker_decodes_deep_inputs_fails_deeper_ones_and_serves_on");
    let mut worker = RawWorker::spawn(Command::new(env!("CARGO_BIN_EXE_echo_worker")));
    worker.send(&execute(
        "deep",
        "echo",
        &format!("{{\"x\":{}}}", nested(500)),
    ));
    worker.send(&execute(
        "deeper",
        "echo",
        &format!("{{\"x\":{}}}", nested(100_000)),
    ));
    worker.send(&execute("ok", "echo", "{\"a\":1}"));
    let deep = worker.terminal_of("deep");
    assert!(deep.contains("COMPLETION"), "{deep:.200}");
    assert!(deep.contains(&nested(500)), "the input echoed whole");
    let deeper = worker.terminal_of("deeper");
    assert!(deeper.contains("FAILURE"), "{deeper}");
    assert!(deeper.contains("levels deep"), "{deeper}");
    let ok = worker.terminal_of("ok");
    assert!(
        ok.contains("COMPLETION") && ok.contains("{\"a\":1}"),
        "{ok}"
    );
}

#[test]
fn issue_14_consort_s_python_worker_fails_a_request_too_deep_for_it_and_serves_on() {
    let _watchdog =
        watchdog("issue_14_consort_s_python_worker_fails_a_request_too_deep_for_it_and_serves_on");
    let mut worker = RawWorker::spawn(consort::python::consort_worker_command(
        consort_tests::python(),
    ));
    worker.send(&execute(
        "deep",
        "len(str(x))",
        &format!("{{\"x\":{}}}", nested(500)),
    ));
    worker.send(&execute(
        "deeper",
        "1",
        &format!("{{\"x\":{}}}", nested(100_000)),
    ));
    worker.send(&execute("ok", "1 + 1", "{}"));
    let deep = worker.terminal_of("deep");
    assert!(deep.contains("COMPLETION"), "{deep}");
    let deeper = worker.terminal_of("deeper");
    assert!(deeper.contains("FAILURE"), "{deeper}");
    assert!(deeper.contains("too deeply nested"), "{deeper}");
    let ok = worker.terminal_of("ok");
    assert!(
        ok.contains("COMPLETION") && ok.contains("\"result\":2"),
        "{ok}"
    );
}
