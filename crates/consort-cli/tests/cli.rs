//! The `consort` binary as scripts use it: outputs, events, exit codes, Ctrl-C.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use consort_tests::{python, wait_until, Watchdog};
use serde_json::Value;

fn consort() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consort"))
}

/// Runs `consort run` with the given worker and arguments.
fn run(worker: &str, args: &[&str]) -> Output {
    consort()
        .arg("run")
        .arg("--worker")
        .arg(worker)
        .arg("--python")
        .arg(python())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run consort")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_completed_task_prints_its_outputs_and_exits_0_on_both_python_workers() {
    let _watchdog = Watchdog::new("cli-complete", Duration::from_secs(60));
    for worker in ["consort", "appose"] {
        let output = run(
            worker,
            &[
                "--input",
                "x=6",
                "task.update('half', current=1, maximum=2); x*7",
            ],
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{worker}: {}",
            stderr(&output)
        );
        let outputs: Value = serde_json::from_slice(&output.stdout).expect("JSON outputs");
        assert_eq!(outputs, serde_json::json!({"result": 42}), "{worker}");
        assert!(
            stderr(&output).contains("progress: half [1/2]"),
            "{worker}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_failed_task_exits_1_with_the_traceback() {
    let _watchdog = Watchdog::new("cli-failed", Duration::from_secs(60));
    let output = run("appose", &["whee"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("NameError: name 'whee' is not defined"));
}

#[test]
fn bad_usage_and_a_missing_worker_exit_2_naming_the_problem() {
    let _watchdog = Watchdog::new("cli-usage", Duration::from_secs(60));
    let output = run("consort", &["--input", "x=nope", "x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--input x"), "{}", stderr(&output));
    let output = run("/nonexistent/worker", &["x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/worker"),
        "{}",
        stderr(&output)
    );
    let output = run("appose", &["--input", "a=@/nonexistent/data.npy", "a"]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("--input a=@/nonexistent/data.npy: No such file"),
        "{text}"
    );
    let output = consort().arg("run").output().expect("run consort");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_crashed_worker_exits_3_with_its_exit_code() {
    let _watchdog = Watchdog::new("cli-crashed", Duration::from_secs(60));
    for worker in ["consort", "appose"] {
        let output = run(
            worker,
            &["import os, sys; sys.stderr.write('bye\\n'); sys.stderr.flush(); os._exit(7)"],
        );
        assert_eq!(output.status.code(), Some(3), "{worker}");
        let text = stderr(&output);
        assert!(
            text.contains("exit code 7") && text.contains("bye"),
            "{worker}: {text}"
        );
    }
}

#[test]
fn a_timeout_cancels_with_the_escalation_and_exits_124() {
    let _watchdog = Watchdog::new("cli-timeout", Duration::from_secs(60));
    for worker in ["consort", "appose"] {
        // time.sleep ignores the cooperative cancel, so this takes the kill path.
        let output = run(
            worker,
            &["--timeout", "0.2", "import time; time.sleep(600)"],
        );
        assert_eq!(
            output.status.code(),
            Some(124),
            "{worker}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_timeout_honoured_by_the_script_also_exits_124() {
    let _watchdog = Watchdog::new("cli-timeout-coop", Duration::from_secs(60));
    // The script stops on its own when asked: the CANCEL path, without a kill.
    let script =
        "import time\nwhile not task.cancel_requested:\n    time.sleep(0.01)\ntask.cancel()";
    let output = run("appose", &["--timeout", "0.2", script]);
    assert_eq!(output.status.code(), Some(124), "{}", stderr(&output));
}

#[test]
fn a_timeout_that_is_not_a_positive_duration_is_a_usage_error_naming_it() {
    let _watchdog = Watchdog::new("cli-bad-timeout", Duration::from_secs(60));
    for command in ["run", "map"] {
        for bad in ["0", "-1", "nan", "1e30"] {
            // Refused while parsing, before any worker starts.
            let output = consort()
                .args([command, "--timeout", bad, "x"])
                .stdin(Stdio::null())
                .output()
                .expect("run consort");
            let text = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{command} {bad}: {text}");
            assert!(
                text.contains(&format!("invalid value '{bad}' for '--timeout <SECS>'")),
                "{command} {bad}: {text}"
            );
            assert!(output.stdout.is_empty(), "{command} {bad}");
        }
    }
}

#[test]
fn seconds_too_large_for_a_duration_are_usage_errors_not_panics() {
    let _watchdog = Watchdog::new("cli-huge-seconds", Duration::from_secs(60));
    let dir = std::env::temp_dir().join(format!("consort-cli-huge-{}", std::process::id()));
    let dir = dir.to_str().expect("a UTF-8 temp dir");
    let commands: [&[&str]; 2] = [
        &["bench", "roundtrip", "--give-up", "1e30", "--tasks", "1"],
        &[
            "cache",
            "torture",
            "huge",
            "--seconds",
            "1e30",
            "--dir",
            dir,
        ],
    ];
    for args in commands {
        // Refused before any worker or cache exists.
        let output = consort()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run consort");
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(
            text.contains("1e30") && text.contains("too large"),
            "{args:?}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn events_are_json_lines_ending_with_the_completion() {
    let _watchdog = Watchdog::new("cli-events", Duration::from_secs(60));
    let output = run("consort", &["--events", "task.update('m', current=1); 5"]);
    assert_eq!(output.status.code(), Some(0));
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|event| event["responseType"].clone())
        .collect();
    assert_eq!(kinds, ["LAUNCH", "UPDATE", "COMPLETION"]);
    assert_eq!(events[1]["message"], "m");
    assert_eq!(events[2]["outputs"]["result"], 5);
}

#[test]
fn the_script_can_come_from_stdin() {
    let _watchdog = Watchdog::new("cli-stdin", Duration::from_secs(60));
    let mut child = consort()
        .args(["run", "--python"])
        .arg(python())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn consort");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a = 20\na + 22\n")
        .expect("write script");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"result":42}"#
    );
}

#[test]
fn ctrl_c_cancels_exits_130_and_leaves_no_worker() {
    let _watchdog = Watchdog::new("cli-ctrl-c", Duration::from_secs(60));
    let script = "import os, sys, time\nsys.stderr.write('worker pid %d\\n' % os.getpid())\nsys.stderr.flush()\ntime.sleep(600)";
    let (mut child, worker) = spawn_run(&["run", "--python"], script);
    let consort_pid = child.id();
    consort::sys::Pid::new(consort_pid)
        .signal(2)
        .expect("SIGINT");
    let mut lines = Vec::new();
    let stderr = child.stderr.take().expect("stderr");
    for line in BufReader::new(stderr).lines() {
        lines.push(line.expect("stderr line"));
    }
    let status = child.wait().expect("wait consort");
    assert_eq!(status.code(), Some(130), "{lines:?}");
    assert!(
        !consort_tests::is_running(worker),
        "worker {worker} survived"
    );
}

#[test]
fn a_second_ctrl_c_kills_the_worker_and_still_exits_130() {
    let _watchdog = Watchdog::new("cli-ctrl-c-twice", Duration::from_secs(60));
    let (mut child, worker) = spawn_run(
        &["run", "--worker", "appose", "--python"],
        "import time\ntime.sleep(600)",
    );
    let consort_pid = child.id();
    let sigint = || {
        consort::sys::Pid::new(consort_pid)
            .signal(2)
            .expect("SIGINT")
    };
    sigint();
    // Send the second Ctrl-C once consort says it acted on the first.
    let mut lines = Vec::new();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for line in stderr.by_ref() {
        let line = line.expect("stderr line");
        let first_seen = line.contains("interrupted: cancelling");
        lines.push(line);
        if first_seen {
            sigint();
            break;
        }
    }
    lines.extend(stderr.map(|line| line.expect("stderr line")));
    let status = child.wait().expect("wait consort");
    assert_eq!(status.code(), Some(130), "{lines:?}");
    // The second Ctrl-C normally lands while the task still runs ("interrupted again");
    // if the 2 s grace ran out first it lands in the teardown, which kills just the same.
    assert!(
        !consort_tests::is_running(worker),
        "worker {worker} survived: {lines:?}"
    );
}

#[test]
fn a_ctrl_c_during_the_teardown_kills_the_worker_and_exits_130() {
    let _watchdog = Watchdog::new("cli-ctrl-c-teardown", Duration::from_secs(60));
    // A worker that completes the task, then ignores stdin EOF and SIGTERM, so closing it
    // takes the whole ladder (2 s + 1 s) unless a Ctrl-C cuts it short.
    let script = r#"trap '' TERM
read -r line
id=$(printf '%s' "$line" | sed -n 's/.*"task":"\([^"]*\)".*/\1/p')
printf '{"task":"%s","responseType":"LAUNCH"}\n' "$id"
printf '{"task":"%s","responseType":"COMPLETION","outputs":{"done":true}}\n' "$id"
exec sleep 600"#;
    let worker_line = shell_words::join(["sh", "-c", script]);
    let mut child = consort()
        .args(["run", "--worker", &worker_line, "x"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consort");
    let consort_pid = child.id();
    // The outputs are printed before the teardown starts.
    let mut outputs = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut outputs)
        .expect("read outputs");
    assert_eq!(outputs.trim(), r#"{"done":true}"#);
    let mut worker = None;
    assert!(wait_until(Duration::from_secs(30), || {
        worker = child_running(consort_pid, "sleep 600");
        worker.is_some()
    }));
    let worker = worker.expect("the worker");
    consort::sys::Pid::new(consort_pid)
        .signal(2)
        .expect("SIGINT");
    let output = child.wait_with_output().expect("wait consort");
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        !consort_tests::is_running(worker),
        "worker {worker} survived"
    );
}

/// Starts `consort ARGS PYTHON SCRIPT` with stderr piped, and finds its Python worker
/// (the worker's stderr is not relayed, so as the child's child).
fn spawn_run(args: &[&str], script: &str) -> (std::process::Child, u32) {
    let child = consort()
        .args(args)
        .arg(python())
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consort");
    let mut worker = None;
    assert!(wait_until(Duration::from_secs(30), || {
        worker = child_running(child.id(), "python");
        worker.is_some()
    }));
    (child, worker.expect("a worker process"))
}

/// A process whose parent is `parent` and whose command line contains `needle`.
fn child_running(parent: u32, needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let (ppid, _) = consort_tests::ppid_and_state(pid)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (ppid == parent && cmdline.contains(needle)).then_some(pid)
        })
}

#[test]
fn bench_json_has_the_documented_keys() {
    let _watchdog = Watchdog::new("cli-bench", Duration::from_secs(120));
    let output = consort()
        .args([
            "bench",
            "roundtrip",
            "--tasks",
            "20",
            "--concurrency",
            "4",
            "--json",
            "--python",
        ])
        .arg(python())
        .output()
        .expect("bench roundtrip");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for key in [
        "tasks_per_s",
        "p50_us",
        "p99_us",
        "complete",
        "failed",
        "crashed",
        "hung",
        "start_ms",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["complete"], 20);
    let output = consort()
        .args(["bench", "crash", "--kills", "2", "--json", "--python"])
        .arg(python())
        .output()
        .expect("bench crash");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for key in ["p50_ms", "p99_ms", "max_ms", "kills", "floor_p50_ms"] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["kills"], 2);
}

#[test]
fn bench_crash_measures_its_floor_on_the_same_worker() {
    let _watchdog = Watchdog::new("cli-bench-crash-floor", Duration::from_secs(120));
    for worker in ["consort", "appose"] {
        let output = consort()
            .args([
                "bench", "crash", "--kills", "2", "--json", "--worker", worker,
            ])
            .arg("--python")
            .arg(python())
            .output()
            .expect("bench crash");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{worker}: {}",
            stderr(&output)
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        // The floor names the worker it was measured on: the one under test, run from
        // the same command (here, the test Python), not a bare interpreter.
        assert_eq!(report["floor_worker"], worker, "{report}");
        assert_eq!(
            report["floor_program"].as_str(),
            python().to_str(),
            "{report}"
        );
        for key in [
            "floor_p50_ms",
            "floor_p99_ms",
            "floor_bare_p50_ms",
            "above_floor_p50_ms",
            "floor_settle_ms",
        ] {
            let value = report[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{worker}: {key} in {report}"));
            assert!(value.is_finite(), "{worker}: {key} in {report}");
        }
        assert!(report["floor_p50_ms"].as_f64() > Some(0.0), "{report}");
    }
}

#[test]
fn bench_idle_reports_the_cpu_of_each_phase() {
    let _watchdog = Watchdog::new("cli-bench-idle", Duration::from_secs(120));
    let output = consort()
        .args(["bench", "idle", "--secs", "1", "--workers", "2", "--json"])
        .arg("--python")
        .arg(python())
        .output()
        .expect("bench idle");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["secs"], 1.0, "{report}");
    assert_eq!(report["workers"], 2, "{report}");
    assert_eq!(report["pool_workers_measured"], 2, "{report}");
    for key in [
        "service_cpu_s",
        "service_worker_cpu_s",
        "pool_cpu_s",
        "pool_workers_cpu_s",
    ] {
        let value = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {report}"));
        assert!(value >= 0.0 && value.is_finite(), "{key} in {report}");
    }
    let output = consort()
        .args(["bench", "idle", "--secs", "0", "--json"])
        .output()
        .expect("bench idle");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--secs"), "{}", stderr(&output));
}

#[test]
fn worker_python_serves_appose_requests_on_stdin_and_stdout() {
    let _watchdog = Watchdog::new("cli-worker", Duration::from_secs(60));
    let mut child = consort()
        .args(["worker", "python", "--python"])
        .arg(python())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"task\":\"t\",\"requestType\":\"EXECUTE\",\"script\":\"6*7\",\"inputs\":{},\"queue\":null}\n")
        .expect("write request");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().expect("a line").expect("read"),
        r#"{"task":"t","responseType":"LAUNCH"}"#
    );
    assert_eq!(
        lines.next().expect("a line").expect("read"),
        r#"{"outputs":{"result":42},"task":"t","responseType":"COMPLETION"}"#
    );
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}

/// Issue 14: `--input` names that are no identifier (`a-b`, `1x`, an empty one), Python
/// keywords, `task` (which hid the script's handle on its task) and dunder names were
/// accepted silently, and a repeated `--input` kept the last value. Each is now a usage
/// error naming the input and why.
#[test]
fn issue_14_input_names_must_be_identifiers_given_once() {
    let _watchdog = Watchdog::new("cli-input-names", Duration::from_secs(60));
    let cases = [
        ("a-b=1", "--input \"a-b\": not an identifier"),
        ("1x=1", "--input \"1x\": not an identifier"),
        ("=1", "--input \"\": not an identifier"),
        ("na\u{ef}ve=1", "--input \"na\u{ef}ve\": not an identifier"),
        ("task=1", "--input \"task\": the script's own `task`"),
        ("class=1", "--input \"class\": a Python keyword"),
        (
            "__builtins__=1",
            "--input \"__builtins__\": a name Python reserves",
        ),
    ];
    for (spec, expected) in cases {
        let output = run("consort", &["--input", spec, "1"]);
        assert_eq!(output.status.code(), Some(2), "{spec}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(expected),
            "{spec}: {}",
            stderr(&output)
        );
    }
    let output = run("consort", &["--input", "x=1", "--input", "x=2", "x"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--input \"x\": given twice"),
        "{}",
        stderr(&output)
    );
    // Names that are fine: underscores, digits after the first character, a soft keyword.
    let output = run(
        "consort",
        &["--input", "_a1=2", "--input", "match=3", "_a1 * match"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let outputs: Value = serde_json::from_slice(&output.stdout).expect("JSON outputs");
    assert_eq!(outputs, serde_json::json!({"result": 6}));
}

/// Issue 14: a worker whose stdout line never ends was read (and dropped) forever while
/// its task waited, silently, until a timeout if there was one. The line is cut at the
/// limit (16 MiB by default): the pending tasks fail at once with the reason, and the run
/// ends (the framer never holds more than the limit meanwhile).
#[test]
fn issue_14_a_stdout_line_that_never_ends_fails_the_task_at_the_limit() {
    let _watchdog = Watchdog::new("cli-endless-line", Duration::from_secs(120));
    let dir = std::env::temp_dir().join(format!("consort-cli-endless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("endless.py");
    std::fs::write(
        &script,
        "import sys\nsys.stdin.readline()\nchunk = b'x' * 65536\nwhile True:\n    sys.stdout.buffer.write(chunk)\n",
    )
    .expect("write the worker");
    let worker = format!("{} {}", python().display(), script.display());
    // The timeout only bounds a failure of this test: the task must fail long before.
    let output = run(&worker, &["--timeout", "60", "1"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("over the limit of 16777216 bytes"),
        "{}",
        stderr(&output)
    );
}
